"""Embeddings in input order → the final files. Each file appears atomically, and only after its model finished,
so a failed or interrupted run never leaves a partial file nor touches the good files of an earlier run.

.pt: {"ids": [str], "embeddings": float16 [N, D], "meta": {...}} (concatenated file: plus "columns").
.h5: one dataset per protein (float16 [D], or [L, D] per residue); '/' in an id is written as '%2F' (HDF5 would
     read it as a group), and the verbatim id is kept in the dataset's "id" attribute; model metadata as file attributes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from utils.store import atomic_torch_save


def pt_path(output_dir: Path, split: str, output_key: str) -> Path:
    return output_dir / f"{split}_embeddings_{output_key}.pt"


def h5_path(output_dir: Path, split: str, output_key: str) -> Path:
    return output_dir / f"{split}_embeddings_{output_key}.h5"


def h5_name(protein_id: str) -> str:
    return protein_id.replace("%", "%25").replace("/", "%2F")


def write_pt(path: Path, ids: list[str], embeddings: torch.Tensor, meta: dict[str, Any], **extra: Any) -> None:
    atomic_torch_save({"ids": ids, "embeddings": embeddings, "meta": meta, **extra}, path)


def write_h5(
    path: Path,
    ids: list[str],
    embeddings: torch.Tensor,
    meta: dict[str, Any],
    residues: list[torch.Tensor] | None = None,
) -> None:
    import h5py

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as handle:
            for key, value in meta.items():
                handle.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
            for i, protein_id in enumerate(ids):
                data = residues[i] if residues is not None else embeddings[i]
                dataset = handle.create_dataset(h5_name(protein_id), data=data.numpy())
                dataset.attrs["id"] = protein_id
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_h5(path: Path) -> dict[str, torch.Tensor]:
    """id → array, in file order (HDF5 sorts names; callers join by id)."""
    import h5py

    with h5py.File(path, "r") as handle:
        return {handle[name].attrs["id"]: torch.from_numpy(handle[name][()]) for name in handle}
