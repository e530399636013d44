"""Embeddings in input order → the final files. Each file appears atomically, and only after its model finished,
so a failed or interrupted run never leaves a partial file nor touches the good files of an earlier run.

.pt  {"ids": [str], "embeddings": float16 [N, D], "meta": {...}}; the concatenated file adds "columns".
.h5  the layout ProtTrans, bio_embeddings and protspace read: one top-level dataset per protein, named by its id,
     float16 [D]; datasets iterate in input order. HDF5 reads '/' in a name as a group separator, so '/' is written
     as '%2F' (and '%' as '%25', a lone '.' as '%2E'); the verbatim id is in each dataset's "original_id"
     attribute, as bio_embeddings writes it. Model metadata are file attributes: scalars as they are, lists and
     mappings as JSON text.
.per_residue.h5  (run_params.per_residue) beside the .h5: the same names, float16 [L, D], the residue rows only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from utils.store import atomic_torch_save

FORMATS = {"pt": ("pt",), "h5": ("h5",), "both": ("pt", "h5")}
CONCAT_KEY = "concat"


def pt_path(output_dir: Path, split: str, output_key: str) -> Path:
    return output_dir / f"{split}_embeddings_{output_key}.pt"


def h5_path(output_dir: Path, split: str, output_key: str) -> Path:
    return output_dir / f"{split}_embeddings_{output_key}.h5"


def residues_h5_path(pooled_h5: Path) -> Path:
    """The per-residue file that belongs beside a per-protein .h5 file."""
    return pooled_h5.with_suffix(".per_residue.h5")


def planned_outputs(
    output_dir: Path,
    splits: Sequence[str],
    output_keys: Sequence[str],
    output_format: str,
    per_residue: bool,
    concatenate: bool,
) -> list[tuple[Path, str, str]]:
    """Every final file a run writes, as (path, split, output key): the one list the pre-checks test for collisions
    and obstacles, built from the same path functions the writers use."""
    keys = list(output_keys) + ([CONCAT_KEY] if concatenate else [])
    planned = []
    for split in splits:
        for key in keys:
            if "pt" in FORMATS[output_format]:
                planned.append((pt_path(output_dir, split, key), split, key))
            if "h5" in FORMATS[output_format]:
                pooled = h5_path(output_dir, split, key)
                planned.append((pooled, split, key))
                if per_residue and key != CONCAT_KEY:
                    planned.append((residues_h5_path(pooled), split, key))
    return planned


def h5_name(protein_id: str) -> str:
    """Protein id → HDF5 dataset name; reversible (h5_id), so names of distinct ids never collide."""
    if protein_id == ".":
        return "%2E"
    return protein_id.replace("%", "%25").replace("/", "%2F")


def h5_id(name: str) -> str:
    if name == "%2E":
        return "."
    return name.replace("%2F", "/").replace("%25", "%")


def write_pt(path: Path, ids: list[str], embeddings: torch.Tensor, meta: dict[str, Any], **extra: Any) -> None:
    atomic_torch_save({"ids": ids, "embeddings": embeddings, "meta": meta, **extra}, path)


def _attribute(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else json.dumps(value)


class H5Writer:
    """One HDF5 file, written under a temporary name and renamed into place (fsynced) when the block ends cleanly.

    Proteins can be added one at a time, so a caller may stream per-residue rows without holding them all.
    """

    def __init__(self, path: Path, attributes: dict[str, Any]):
        self.path = path
        self.attributes = attributes
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.handle: Any = None

    def __enter__(self) -> H5Writer:
        import h5py

        self.path.parent.mkdir(parents=True, exist_ok=True)
        # track_order: datasets iterate in the order written (input order), not sorted by name.
        self.handle = h5py.File(self.tmp, "w", track_order=True)
        for key, value in self.attributes.items():
            self.handle.attrs[key] = _attribute(value)
        return self

    def add(self, protein_id: str, array: torch.Tensor) -> None:
        dataset = self.handle.create_dataset(h5_name(protein_id), data=array.detach().cpu().numpy())
        dataset.attrs["original_id"] = protein_id

    def reserve(self, protein_id: str, shape: tuple[int, ...]) -> None:
        """Create an empty float16 dataset now (fixing its place in the file's order); fill() writes it later."""
        dataset = self.handle.create_dataset(h5_name(protein_id), shape=shape, dtype="float16")
        dataset.attrs["original_id"] = protein_id

    def fill(self, protein_id: str, array: torch.Tensor) -> None:
        self.handle[h5_name(protein_id)][...] = array.detach().to(torch.float16).cpu().numpy()

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            self.handle.close()
            if exc_type is None:
                descriptor = os.open(self.tmp, os.O_RDONLY)
                try:
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
                os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)


def write_h5(
    path: Path,
    ids: list[str],
    embeddings: torch.Tensor,
    meta: dict[str, Any],
    residues: Sequence[torch.Tensor] | None = None,
    **extra: Any,
) -> None:
    """Per-protein vectors into `path`; with `residues` ([L, D] per protein), also the per-residue file beside it."""
    with H5Writer(path, {**meta, **extra}) as writer:
        for protein_id, vector in zip(ids, embeddings, strict=True):
            writer.add(protein_id, vector)
    if residues is not None:
        with H5Writer(residues_h5_path(path), {**meta, "rows": "residue rows only, [L, D] per protein"}) as writer:
            for protein_id, rows in zip(ids, residues, strict=True):
                writer.add(protein_id, rows.to(torch.float16))


def write_outputs(
    output_dir: Path,
    split: str,
    output_key: str,
    ids: list[str],
    embeddings: torch.Tensor,
    meta: dict[str, Any],
    output_format: str,
    residues: Sequence[torch.Tensor] | None = None,
    **extra: Any,
) -> list[Path]:
    """One split of one model (or the concatenated models) in every format asked for; returns the files written."""
    written = []
    if "pt" in FORMATS[output_format]:
        written.append(pt_path(output_dir, split, output_key))
        write_pt(written[-1], ids, embeddings, meta, **extra)
    if "h5" in FORMATS[output_format]:
        written.append(h5_path(output_dir, split, output_key))
        write_h5(written[-1], ids, embeddings, meta, residues, **extra)
    return written


def concatenate(parts: Sequence[tuple[str, torch.Tensor]]) -> tuple[torch.Tensor, dict[str, list[int]]]:
    """[(output_key, [N, D_k])] in config order → (float16 [N, ΣD], {output_key: [start, end)})."""
    if len({part.shape[0] for _, part in parts}) > 1:
        raise ValueError("models disagree on the number of proteins; cannot concatenate")
    columns: dict[str, list[int]] = {}
    start = 0
    for key, part in parts:
        columns[key] = [start, start + part.shape[1]]
        start += part.shape[1]
    return torch.cat([part.to(torch.float16) for _, part in parts], dim=1), columns


def read_h5(path: Path) -> dict[str, torch.Tensor]:
    """Verbatim id → array, in the file's order (input order for files written here). Files from other tools
    without the "original_id" attribute give their dataset names."""
    import h5py

    with h5py.File(path, "r") as handle:
        return {
            str(handle[name].attrs.get("original_id", h5_id(name))): torch.from_numpy(handle[name][()])
            for name in handle
        }


def read_h5_attributes(path: Path) -> dict[str, Any]:
    """File attributes; lists and mappings come back as the JSON text they were written as."""
    import h5py

    with h5py.File(path, "r") as handle:
        return {key: (value.item() if hasattr(value, "item") else value) for key, value in handle.attrs.items()}
