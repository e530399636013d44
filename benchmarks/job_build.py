"""The inputs of the whole-job check (benchmarks/gpu_job.py build): random-weight checkpoints in the hub layouts, a
CAFA-like FASTA pair and the configs that mirror config_t5.yaml."""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

MODELS = ("prot_t5_xl", "prost_t5", "esm2", "esmc")
BUILDER_KEY = {"prot_t5_xl": "prot_t5", "prost_t5": "prost_t5", "esm2": "esm2", "esmc": "esmc"}
SPECIES = [
    ("Homo sapiens", 9606, "HUMAN"),
    ("Mus musculus", 10090, "MOUSE"),
    ("Arabidopsis thaliana", 3702, "ARATH"),
    ("Escherichia coli (strain K12)", 83333, "ECOLI"),
    ("Saccharomyces cerevisiae", 559292, "YEAST"),
]


def real_sizes(model: str, esm2: str) -> dict[str, Any]:
    from tests.tiny_checkpoints import REAL_SIZES

    return REAL_SIZES[{"prot_t5_xl": "prot_t5_xl", "prost_t5": "prost_t5", "esm2": f"esm2_{esm2}",
                       "esmc": "esmc_600m"}[model]]  # fmt: skip


def build_checkpoints(
    root: Path, device: str, scale: str, esm2: str, models: tuple[str, ...] = MODELS
) -> dict[str, dict[str, Any]]:
    """Each model's checkpoint under root/<model>; → {model: {path, seconds, bytes}}."""
    import torch

    from tests.tiny_checkpoints import BUILDERS

    built = {}
    for model in models:
        started = time.perf_counter()
        sizes = real_sizes(model, esm2) if scale == "real" else None
        path = BUILDERS[BUILDER_KEY[model]](root / model, sizes=sizes, device=device if sizes else "cpu")
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        weights = sum(p.stat().st_size for p in path.glob("*.safetensors"))
        built[model] = {"path": str(path), "seconds": round(time.perf_counter() - started, 2), "bytes": weights}
        print(f"built {model}: {weights / 1e9:.2f} GB in {built[model]['seconds']} s", flush=True)
    return built


def accession(rng: random.Random, index: int) -> str:
    """A UniProt-shaped accession, unique by `index`: [OPQ][0-9][A-Z0-9]{3}[0-9], or A0A + 7 for TrEMBL-style."""
    if index % 4 == 3:
        return f"A0A{index:07d}"
    return f"{'OPQ'[index % 3]}{index % 10}{rng.choice('ABCDEFGHIJ')}{index // 10 % 1000:03d}{index % 7}"


def cafa_like_fasta(
    data: Path, proteins: int, test_share: float, max_length: int, long_lengths: list[int], seed: int
) -> dict[str, Any]:
    """train_sequences.fasta and testsuperset.fasta: → counts. Both long proteins in train, duplicates of train
    proteins (same accession) in test, ~5% repeated sequences under other accessions within each file."""
    from benchmarks.measure import synthetic_proteins

    rng = random.Random(seed)
    sequences = synthetic_proteins(proteins, seed, max_length, long_lengths)
    long = [s for s in sequences if len(s) in long_lengths][: len(long_lengths)]
    rest = [s for s in sequences if not any(s is x for x in long)]
    n_test = round(len(rest) * test_share)
    train_seqs, test_seqs = rest[n_test:] + long, rest[:n_test]
    rng.shuffle(train_seqs)
    data.mkdir(parents=True, exist_ok=True)
    train = []
    for i, sequence in enumerate(train_seqs):
        species, taxon, code = rng.choice(SPECIES)
        acc = accession(rng, i)
        kind = "tr" if acc.startswith("A0A") else "sp"
        header = (f"{kind}|{acc}|{acc if kind == 'tr' else f'P{i}'}_{code} Protein {i} OS={species} OX={taxon} "
                  f"GN=G{i} PE={rng.randint(1, 5)} SV={rng.randint(1, 3)}")  # fmt: skip
        train.append((acc, header, sequence, taxon))
    across = rng.sample(train, min(len(train), max(1, n_test // 5)))  # CAFA's test superset holds train proteins
    test = [(acc, f"{acc} {taxon}", sequence) for acc, _, sequence, taxon in across]
    test += [(a, f"{a} {rng.choice(SPECIES)[1]}", s) for a, s in
             ((accession(rng, len(train) + i), s) for i, s in enumerate(test_seqs))]  # fmt: skip
    rng.shuffle(test)
    write_fasta(data / "train_sequences.fasta", [(h, s) for _, h, s, _ in train])
    write_fasta(data / "testsuperset.fasta", [(h, s) for _, h, s in test])
    residues = sum(len(s) for _, _, s, _ in train) + sum(len(s) for _, _, s in test)
    unique = len({s for _, _, s, _ in train} | {s for _, _, s in test})
    return {"train": len(train), "test": len(test), "across_splits": len(across), "unique": unique,
            "residues": residues, "longest": max(map(len, sequences)), "long": sorted(map(len, long))}  # fmt: skip


def write_fasta(path: Path, records: list[tuple[str, str]]) -> None:
    with open(path, "w") as handle:
        for header, sequence in records:
            handle.write(f">{header}\n")
            handle.writelines(sequence[i : i + 60] + "\n" for i in range(0, len(sequence), 60))


def model_devices(device: str, gpus: int) -> dict[str, Any]:
    """config_t5.yaml's placement on this machine: two GPUs as there, one GPU twice, or the CPU."""
    if device == "cpu":
        return {"prot_t5_xl": "cpu", "prost_t5": "cpu", "esm2": "cpu", "esmc": "auto"}
    second = 1 if gpus >= 2 else 0
    return {"prot_t5_xl": 0, "prost_t5": second, "esm2": [0, 1] if gpus >= 2 else 0, "esmc": "auto"}


def job_config(
    work: Path, name: str, models: dict[str, str], devices: dict[str, Any], run_params: dict[str, Any]
) -> Path:
    import yaml

    config = {
        "paths": {
            "data_dir": str(work / "data"), "raw_train_sequences": "train_sequences.fasta",
            "raw_test_sequences": "testsuperset.fasta", "output_dir": str(work / name / "embeddings"),
            "log_dir": str(work / name / "logs"), "id_format": "uniprot",
        },
        "run_params": {"batch_size": 32, "save_every_n_batches": 100, "seed": 42, **run_params},
        "models": {key: {"name": path, "device": devices[key], "output_key": key} for key, path in models.items()},
    }  # fmt: skip
    path = work / f"config_{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def build(args: argparse.Namespace) -> dict[str, Any]:
    """The `build` step: data, checkpoints, the machine's matmul rate and both configs."""
    import torch

    from benchmarks.measure import device_name, matmul_rate

    work = args.work
    gpus = torch.cuda.device_count() if args.device != "cpu" else 0
    if args.device != "cpu" and not gpus:
        raise SystemExit("no GPU visible to torch (DEVICE=cpu for a dry run)")
    started = time.perf_counter()
    data = cafa_like_fasta(work / "data", args.proteins, args.test_share, args.max_length, args.long, args.seed)
    built = build_checkpoints(work / "checkpoints", args.device, args.scale, args.esm2, args.models)
    rate, kind = matmul_rate(args.device, quick=args.scale == "tiny")
    paths = {model: built[model]["path"] for model in args.models}
    devices = model_devices(args.device, gpus)
    job_config(work, "main", paths, devices, {"output_format": ["pt", "h5", "parquet"]})
    resume = {m: paths[m] for m in args.resume_models}
    job_config(work, "resume", resume, devices, {"output_format": "pt", "save_every_n_batches": 1})
    return {
        "device": args.device, "device_name": device_name(args.device if args.device != "cpu" else "cpu"),
        "gpus": gpus, "scale": args.scale, "esm2": args.esm2, "models": list(args.models), "data": data,
        "checkpoints": built, "matmul_rate_flops": rate, "matmul_rate_kind": kind, "devices": devices,
        "expected_auto": "cuda:0" if gpus else "cpu", "resume_models": list(args.resume_models),
        "seconds": round(time.perf_counter() - started, 2), "torch": torch.__version__,
    }  # fmt: skip
