"""The Python API (utils.Embedder) against the real CLI on tiny checkpoints: the same vectors bit for bit (cast to
float16 as the job stores them), per-residue rows, windows recorded, the caller's order; and `import utils` stays
free of torch."""

from __future__ import annotations

import random
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from tests.conftest import REPO, load_output, random_protein, run_job
from utils.errors import UserError
from utils.outputs.writers import h5_name
from utils.running.store import sequence_digest

RUN_PARAMS = {  # small windows and budgets, so that the comparison covers windows and several batches
    "batch_size": 4,
    "max_tokens_per_batch": 400,
    "max_residues": 120,
    "window_overlap": 20,
    "output_format": "both",
    "per_residue": True,
}


def _proteins() -> list[tuple[str, str]]:
    rng = random.Random(23)
    records = [(f"p{i}", random_protein(rng, rng.randint(3, 110))) for i in range(17)]
    records += [("long_300", random_protein(rng, 300)), ("stop", random_protein(rng, 40) + "*"), ("m", "M")]
    records.insert(5, ("copy_of_p1", records[1][1]))
    return records


NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@pytest.fixture(
    scope="module",
    # ESM2 pools an inner layer (models.<key>.layer / Embedder(layer=...)); ProtT5 the last, the default.
    params=[("prot_t5", "cpu", -1), ("esm2", "cpu", 1), pytest.param(("prot_t5", "cuda:0", -1), marks=NO_GPU)],
    ids=lambda param: f"{param[0]}-{param[1]}-layer{param[2]}",
)
def cli_and_embedder(request, checkpoints, tmp_path_factory):
    from utils import Embedder

    layout, device, layer = request.param  # on a GPU both sides run in fp16 (precision auto)
    directory = tmp_path_factory.mktemp(f"embedder_{layout}")
    records = _proteins()
    test = [("copy_of_p0", records[0][1])]  # a duplicate: the job's unique sequences are exactly the train split's
    models = {"m": {"name": checkpoints[layout], "device": device, "layer": layer}}
    run_job(directory, models, records, test, run_params=RUN_PARAMS)
    embedder = Embedder(
        str(checkpoints[layout]),
        device=device,
        layer=layer,
        batch_size=RUN_PARAMS["batch_size"],
        max_tokens_per_batch=RUN_PARAMS["max_tokens_per_batch"],
        max_residues=RUN_PARAMS["max_residues"],
        window_overlap=RUN_PARAMS["window_overlap"],
    )
    yield directory, records, embedder
    embedder.close()


def _job_chunk_vectors(directory) -> dict[str, torch.Tensor]:
    """sequence digest → the float32 vector the job stored in its chunks (before the float16 final file)."""
    from utils.checks import preflight
    from utils.inputs.unique import unique_of
    from utils.running import plan
    from utils.running.store import ChunkStore

    config, splits, models = plan.prepare(directory / "config_t5.yaml")
    model = models[0]
    store = ChunkStore(config.store, preflight.chunk_settings(config, model, model.config.devices[0]), model.dim)
    found = {}
    for chunk in store.chunks_holding(unique_of(splits).digests):
        found.update(zip(chunk["digests"], chunk["pooled"], strict=True))
    return found


def test_vectors_equal_the_cli_output(cli_and_embedder):
    directory, records, embedder = cli_and_embedder
    vectors = embedder.embed([sequence for _, sequence in records])
    cli = load_output(directory / "out" / "train_embeddings_m.pt")
    assert isinstance(vectors, np.ndarray) and vectors.dtype == np.float32
    assert vectors.shape == tuple(cli["embeddings"].shape) == (len(records), embedder.dim)
    assert torch.equal(torch.from_numpy(vectors).to(torch.float16), cli["embeddings"])
    windowed = {records[i][0]: note for i, note in embedder.windowed.items()}
    assert windowed == cli["meta"]["windowed"] and set(windowed) == {"long_300"}
    # Before the float16 cast as well: the same batches give the job's float32 vectors bit for bit.
    chunks = _job_chunk_vectors(directory)
    for (rec_id, sequence), vector in zip(records, vectors, strict=True):
        assert torch.equal(torch.from_numpy(vector), chunks[sequence_digest(sequence.rstrip("*"))]), rec_id


def test_per_residue_rows_equal_the_cli_output(cli_and_embedder):
    directory, records, embedder = cli_and_embedder
    rows = embedder.embed([sequence for _, sequence in records], per_residue=True)
    with h5py.File(directory / "out" / "train_embeddings_m.per_residue.h5") as cli:
        for (rec_id, sequence), mine in zip(records, rows, strict=True):
            assert mine.shape == (len(sequence.rstrip("*")), embedder.dim), rec_id
            assert np.array_equal(mine, cli[h5_name(rec_id)][()].astype(np.float32)), rec_id


def test_results_follow_the_callers_order(cli_and_embedder):
    _, records, embedder = cli_and_embedder
    sequences = [sequence.rstrip("*") for _, sequence in records[:8]]
    forward = embedder.embed(sequences)
    backward = embedder.embed(sequences[::-1])
    # The same proteins, batched the same way (the plan sorts by length): row i follows sequence i.
    assert np.array_equal(forward, backward[::-1])
    one = embedder.embed([sequences[3]])
    atol = 1e-5 if embedder.precision == "fp32" else 2e-2
    assert np.allclose(one[0], forward[3], atol=atol)  # alone, unpadded: equal up to float rounding


def test_bad_sequences_are_refused_in_one_line(cli_and_embedder):
    *_, embedder = cli_and_embedder
    with pytest.raises(UserError, match="character '1' at residue 3"):
        embedder.embed(["MKV", "MK1V"])
    with pytest.raises(TypeError):
        embedder.embed("MKV")


def test_bad_settings_are_refused_before_loading(checkpoints, tmp_path):
    from utils import Embedder

    with pytest.raises(UserError) as refused:
        Embedder(str(checkpoints["esm2"]), device="gpu7", precision="fp8", batch_size=0)
    assert len(refused.value.problems) == 3
    with pytest.raises(UserError, match="^layer: 9 is out of range"):
        Embedder(str(checkpoints["esm2"]), layer=9)
    with pytest.raises(UserError, match="does not exist"):
        Embedder(str(tmp_path / "no_such_checkpoint"))


def test_importing_utils_does_not_import_torch():
    code = "import sys, utils; assert 'torch' not in sys.modules; assert utils.Embedder.__name__ == 'Embedder'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_any_iterable_of_strings_is_embedded(cli_and_embedder):
    _, records, embedder = cli_and_embedder
    sequences = [sequence.rstrip("*") for _, sequence in records[:4]]
    expected = embedder.embed(sequences)
    assert np.array_equal(embedder.embed(s for s in sequences), expected)  # a generator, read once
    assert np.array_equal(embedder.embed(np.array(sequences)), expected)  # numpy strings are str
    assert np.array_equal(embedder.embed(tuple(sequences)), expected)


def test_errors_name_the_callers_index_not_a_fasta_line(cli_and_embedder):
    *_, embedder = cli_and_embedder
    with pytest.raises(UserError) as refused:
        embedder.embed(["MKV", "MKV", "MK1V", ""])
    assert refused.value.problems[0].startswith("sequences[2] has character '1' at residue 3")
    assert refused.value.problems[1].startswith("sequences[3] has an empty sequence")
    assert not any("sequences:" in p for p in refused.value.problems)


def test_concurrent_calls_run_one_after_another(cli_and_embedder):
    from concurrent.futures import ThreadPoolExecutor

    _, records, embedder = cli_and_embedder
    sequences = [sequence.rstrip("*") for _, sequence in records[:6]]
    expected, rows = embedder.embed(sequences), embedder.embed(sequences, per_residue=True)
    # Calls that want residue rows and calls that do not, at once: each gets what it asked for.
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: embedder.embed(sequences, per_residue=k % 2 == 1), range(8)))
    for k, result in enumerate(results):
        if k % 2:
            assert all(np.array_equal(a, b) for a, b in zip(result, rows, strict=True))
        else:
            assert np.array_equal(result, expected)


def test_settings_are_checked_by_the_configs_rules(checkpoints):
    from utils import Embedder

    # Each refused by the config too (tests/test_config.py); refused before anything loads.
    cases = {
        "max_residues": 3,
        "window_overlap": -5,
        "max_tokens_per_batch": 0,
        "batch_size": True,
    }
    for key, value in cases.items():
        with pytest.raises(UserError, match=rf"^{key}: must be an integer ≥ \d+"):
            Embedder(str(checkpoints["esm2"]), **{key: value})
    with pytest.raises(UserError, match=r"^max_residues: must be an integer ≥ 16 or auto, got '100'"):
        Embedder(str(checkpoints["esm2"]), max_residues="100")


def test_a_closed_embedder_says_so(checkpoints):
    from utils import Embedder

    embedder = Embedder(str(checkpoints["esm2"]))
    assert embedder.embed(["MKV"]).shape == (1, embedder.dim)
    embedder.close()
    embedder.close()  # twice is harmless
    with pytest.raises(UserError, match="this Embedder is closed"):
        embedder.embed(["MKV"])
