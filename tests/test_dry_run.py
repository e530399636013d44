"""`--dry-run`: the plan of a config through the real CLI (splits, duplicates, windows and why, shards, batches, disk,
projected time), nothing written; the FLOP model behind the projection and the two-GPU placement of config_t5.yaml."""

from __future__ import annotations

import random
import re

import pytest

from tests.conftest import REPO, random_protein, run_cli, write_config, write_fasta
from utils.engine.families import Architecture, architecture


@pytest.fixture(scope="module")
def dry_run(checkpoints, tmp_path_factory):
    directory = tmp_path_factory.mktemp("dry_run")
    rng = random.Random(17)
    train = [(f"p{i}", random_protein(rng, rng.randint(30, 400))) for i in range(20)]
    train += [("long", random_protein(rng, 2500)), ("copy", train[0][1])]  # one duplicate within the split
    test = [("t0", train[1][1]), ("t1", random_protein(rng, 80))]  # one across splits
    write_fasta(directory / "train.fasta", train)
    write_fasta(directory / "test.fasta", test)
    models = {
        "esm1b": {"name": checkpoints["esm1b"]},
        "esm2": {"name": checkpoints["esm2"], "device": ["cpu", "cpu"], "layer": 1},
    }
    config = write_config(directory, models, run_params={"max_tokens_per_batch": 2048})
    result = run_cli("generate_embeddings_t5.py", "--config", str(config), "--dry-run")
    return directory, result, train, test


def test_exit_zero_and_nothing_written(dry_run):
    directory, result, _, _ = dry_run
    assert result.returncode == 0, result.stderr
    assert not (directory / "out").exists() and not (directory / "logs").exists()


def test_splits_duplicates_and_lengths(dry_run):
    _, result, train, test = dry_run
    out = result.stdout
    residues = sum(len(s) for _, s in train)
    assert f"train: 22 proteins, 21 unique, {residues:,} residues" in out
    assert "test: 2 proteins, 2 unique" in out
    unique = {s for _, s in train + test}
    assert f"all: 24 proteins, {len(unique)} unique sequences embedded once each (2 duplicates: 1 within" in out
    lengths = sorted(len(s) for _, s in train)
    assert f"max {max(lengths):,}" in out and f"min {min(lengths):,}" in out


def test_windows_shards_batches_and_projection(dry_run):
    _, result, train, test = dry_run
    out = result.stdout
    unique = {s for _, s in train + test}
    # ESM-1b: the 2,500-residue protein in windows of 1,022 overlapping by 255 (a quarter): starts 0, 767, 1478
    reason = "longer than the 1,022 residues the model's learned positions reach"
    assert f"windows: 1 protein(s), {reason}: 2,500 residues → 3 windows" in out
    # ESM2 sharded over two devices, balanced by residues, every unique sequence in exactly one shard
    shards = re.findall(r"esm2\[(\d)\] on cpu \(fp32\): (\d+) proteins, ([\d,]+) residues in (\d+) batches", out)
    assert [s[0] for s in shards] == ["0", "1"]
    assert sum(int(s[1]) for s in shards) == len(unique)
    assert sum(int(s[2].replace(",", "")) for s in shards) == sum(len(s) for s in unique)
    assert "hidden state 1 of 2" in out and "(esm2_2x32_layer1)" in out
    assert "≤ 2,048 tokens" in out
    assert re.search(r"work: [\d.,]+ [MGT]FLOP → projected [\d.]+ s \(measured [\d.,]+ [GT]FLOP/s matmul", out)
    assert "disk: about" in out and "projected wall time:" in out


def test_dry_run_stops_at_bad_input_like_the_run(tmp_path, checkpoints):
    write_fasta(tmp_path / "train.fasta", [("a", "MK1V")])
    write_fasta(tmp_path / "test.fasta", [("b", "MKV")])
    config = write_config(tmp_path, {"m": {"name": checkpoints["esm2"]}})
    result = run_cli("generate_embeddings_t5.py", "--config", str(config), "--dry-run")
    assert result.returncode == 2 and "character '1'" in result.stderr and "Traceback" not in result.stderr


# -- the FLOP model and the shipped two-GPU placement ----------------------------------------------------------------
def _real(model_type: str, **fields) -> Architecture:
    import transformers

    kind = {"t5": transformers.T5Config, "esm": transformers.EsmConfig, "esmc": transformers.EsmcConfig}[model_type]
    return architecture(kind(**fields))


T5_XL = {"num_layers": 24, "d_model": 1024, "d_kv": 128, "num_heads": 32, "d_ff": 16384, "feed_forward_proj": "relu"}
ESM = {"vocab_size": 33, "pad_token_id": 1, "max_position_embeddings": 1026}
# Each checkpoint's config.json (hub): ProtT5-XL-U50 and ProstT5 share the T5-XL encoder (vocab 128 and 150).
REAL = {
    "Rostlab/prot_t5_xl_half_uniref50-enc": _real("t5", vocab_size=128, **T5_XL),
    "Rostlab/ProstT5_fp16": _real("t5", vocab_size=150, **T5_XL),
    "facebook/esm1b_t33_650M_UR50S": _real("esm", hidden_size=1280, intermediate_size=5120, num_hidden_layers=33,
                                           num_attention_heads=20, position_embedding_type="absolute", **ESM),
    "facebook/esm2_t36_3B_UR50D": _real("esm", hidden_size=2560, intermediate_size=10240, num_hidden_layers=36,
                                        num_attention_heads=40, position_embedding_type="rotary", **ESM),
    "biohub/ESMC-600M": _real("esmc", hidden_size=1152, intermediate_size=3072, num_hidden_layers=36,
                              num_attention_heads=18),
}  # fmt: skip


def test_flop_model_counts_weights_and_attention():
    arch = REAL["Rostlab/prot_t5_xl_half_uniref50-enc"]
    assert arch.attention_width == 4096
    one = arch.matmul_flops(1)
    assert one == pytest.approx(2 * arch.params, rel=1e-3)  # two FLOPs per weight per token
    t = 1000
    assert arch.matmul_flops(t) - t * one == pytest.approx(24 * 4 * 4096 * (t * t - t), rel=1e-9)
    assert arch.matmul_flops(t, layers=12) == pytest.approx(arch.matmul_flops(t) / 2)


def test_shipped_config_balances_the_two_gpus():
    """config_t5.yaml: ProtT5-XL on GPU 0, ProstT5 on GPU 1 (the user's plan), ESM2-3B over both, ESM-1b on 0 and
    ESM C on 1: by 2 FLOPs per weight per residue, 6.55 against 6.39 GFLOP per residue, as its comments say."""
    from utils.inputs.config import load_config

    config = load_config(REPO / "config_t5.yaml")
    per_gpu: dict[str, float] = {}
    for model in config.models:
        for device in model.devices:
            share = REAL[model.name].params * 2 / 1e9 / len(model.devices)
            per_gpu[device] = per_gpu.get(device, 0.0) + share
    assert {m.key: m.devices for m in config.models}["prot_t5_xl"] == ("cuda:0",)
    assert {m.key: m.devices for m in config.models}["prost_t5"] == ("cuda:1",)
    assert per_gpu["cuda:0"] == pytest.approx(6.55, abs=0.01) and per_gpu["cuda:1"] == pytest.approx(6.39, abs=0.01)
    text = (REPO / "config_t5.yaml").read_text()
    assert "6.55 GFLOP per residue on GPU 0" in text and "6.39 GFLOP per residue on GPU 1" in text


def test_projection_is_flops_over_rate_times_mfu(tmp_path, checkpoints):
    """In-process, with the matmul rate given: the work is the FLOP model summed over the proteins' tokens, and the
    projected time that work over rate × the assumed CPU utilisation."""
    from utils.checks.dryrun import ASSUMED_MFU, dry_run
    from utils.running.plan import prepare

    lengths = [5, 50, 300, 700]
    write_fasta(tmp_path / "train.fasta", [(f"p{i}", "M" * n) for i, n in enumerate(lengths)])
    write_fasta(tmp_path / "test.fasta", [("t", "K" * 20)])
    config, splits, models = prepare(write_config(tmp_path, {"m": {"name": checkpoints["esm2"]}}))
    rate = 1e9
    text = "\n".join(dry_run(config, splits, models, rate={("cpu", "fp32"): rate}))
    arch = models[0].arch
    flops = sum(arch.matmul_flops(n + 2) for n in lengths + [20])  # <cls> and <eos>
    assert f"work: {flops / 1e6:,.1f} MFLOP → projected {flops / (rate * ASSUMED_MFU['cpu']):.1f} s" in text
    assert "measured 1.0 GFLOP/s matmul × assumed MFU 0.5" in text
