"""The whole-job check's outputs read back in each format (pt, HDF5, Parquet) and compared."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def read_pt(path: Path) -> tuple[list[str], np.ndarray, dict]:
    import torch

    data = torch.load(path, weights_only=True)
    return list(data["ids"]), data["embeddings"].float().numpy(), data["meta"]


def read_h5(path: Path) -> tuple[list[str], np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        ids = [str(f[name].attrs["original_id"]) for name in f]
        return ids, np.stack([f[name][()] for name in f]).astype(np.float32)


def read_parquet(path: Path) -> tuple[list[str], np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["id", "embedding"])
    ids = table.column("id").to_pylist()
    return ids, table.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(ids), -1).astype(np.float32)


def compare(reference: tuple[list[str], np.ndarray], other: tuple[list[str], np.ndarray]) -> dict[str, Any]:
    """Same ids in the same order, and the largest |Δ| between rows; by id when the order differs."""
    ids_a, a = reference
    ids_b, b = other
    same_ids = sorted(ids_a) == sorted(ids_b)
    same_order = ids_a == ids_b
    if same_order:
        delta = float(np.abs(a - b).max()) if len(a) else 0.0
    elif same_ids:
        index = {pid: i for i, pid in enumerate(ids_b)}
        delta = float(np.abs(a - b[[index[pid] for pid in ids_a]]).max()) if len(a) else 0.0
    else:
        delta = math.inf
    finite = bool(np.isfinite(a).all() and np.isfinite(b).all())
    return {"proteins": len(ids_a), "same_ids": same_ids, "same_order": same_order, "max_abs_delta": delta,
            "finite": finite}  # fmt: skip


def outputs(directory: Path, extension: str) -> dict[str, Path]:
    """'{split}_embeddings_{key}' → path, for the run's files of one format."""
    return {p.name.removesuffix(p.suffix): p for p in sorted(directory.glob(f"*_embeddings_*{extension}"))}


def readback(work: Path) -> dict[str, Any]:
    """The `readback` step: every .pt of the main run against its .h5 and .parquet (ids, order, max |Δ|)."""
    directory = work / "main" / "embeddings"
    files = {}
    for name, path in outputs(directory, ".pt").items():
        ids, vectors, _ = read_pt(path)
        entry: dict[str, Any] = {}
        for extension, reader in ((".h5", read_h5), (".parquet", read_parquet)):
            other = directory / f"{name}{extension}"
            try:
                entry[extension.lstrip(".")] = compare((ids, vectors), reader(other))
            except Exception as exc:  # noqa: BLE001 - a file that does not read back is this step's finding
                entry[extension.lstrip(".")] = {"error": f"{type(exc).__name__}: {exc}"}
        files[name] = entry
    equal = bool(files) and all(
        c.get("same_order") and c.get("max_abs_delta") == 0.0 for entry in files.values() for c in entry.values()
    )
    return {"files": files, "equal": equal}
