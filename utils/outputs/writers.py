"""Embeddings in input order → the final files. Each file appears atomically, and only after its model finished,
so a failed or interrupted run never leaves a partial file nor touches the good files of an earlier run.

.pt  {"ids": [str], "embeddings": float16 [N, D], "meta": {...}}; the concatenated file adds "columns".
.h5  the layout ProtTrans, bio_embeddings and protspace read: one top-level dataset per protein, named by its id,
     float16 [D]; datasets iterate in input order. HDF5 reads '/' in a name as a group separator, so '/' is written
     as '%2F' (and '%' as '%25', a lone '.' as '%2E'); the verbatim id is in each dataset's "original_id"
     attribute, as bio_embeddings writes it, and the whole FASTA header line in its "header" attribute. Model
     metadata are file attributes: scalars as they are, lists and mappings as JSON text; "model_name" names the
     model as ProtSpace does (prot_t5, esm2_3b, ...), which `protspace prepare` requires. The file's size is
     reserved on disk before HDF5 writes into it (h5_file_bytes, utils.files.reserve_space): HDF5 does not survive
     a failed write (a full disk left h5py raising in every object's cleanup, then a segmentation fault), so a full
     disk is an OSError before it starts.
.per_residue.h5  (run_params.per_residue) beside the .h5: the same names, float16 [L, D], the residue rows only.
.parquet  columns `id` (string), `embedding` (fixed_size_list<halffloat>[D]) and `header` (the whole FASTA header
     line, when meta has "headers"), rows in input order, written in row groups by a streaming writer, so neither
     writing nor reading needs the whole [N, D] matrix in memory (pyarrow.dataset, polars.scan_parquet read it in
     pieces). Model metadata are the file's key-value metadata: text
     as it is, anything else as JSON text.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from utils.files import atomic_torch_save, publish, reserve_space
from utils.inputs.keys import output_formats

CONCAT_KEY = "concat"
# meta["headers"] is one entry per protein, aligned with ids: in HDF5 it goes to each dataset (a file attribute that
# grows with the protein count would be read whole by every reader that lists the attributes).
HEADERS = "headers"
# Rows per Parquet row group: the unit a reader loads at a time (16,384 × 1,024-d float16 = 32 MiB).
PARQUET_ROWS_PER_GROUP = 16384
# What HDF5 adds to the data in the layout H5Writer writes, measured (h5py 3, HDF5 1.14; 1,000 and 3,000 datasets
# of 32 and 1,024 float16 values): ~390-420 bytes per dataset (its object header, the link, the attribute messages)
# beyond its values and the UTF-8 of its name, "original_id" and "header", and ~9 KB per file.
H5_DATASET_BYTES = 420
H5_FILE_BYTES = 16 << 10
PICKLE_STRING_BYTES = 12  # torch.save's pickle: opcode, length and memo per string of "ids" and "headers"
PARQUET_STRING_BYTES = 4  # Parquet's length prefix per string (the text is compressed, counted whole)
_H5_ERRNO = re.compile(r"errno = (\d+)")


def pt_path(output_dir: Path, split: str, output_key: str) -> Path:
    return output_dir / f"{split}_embeddings_{output_key}.pt"


def h5_path(output_dir: Path, split: str, output_key: str) -> Path:
    return output_dir / f"{split}_embeddings_{output_key}.h5"


def parquet_path(output_dir: Path, split: str, output_key: str) -> Path:
    return output_dir / f"{split}_embeddings_{output_key}.parquet"


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
            formats = output_formats(output_format)
            if "pt" in formats:
                planned.append((pt_path(output_dir, split, key), split, key))
            if "h5" in formats:
                pooled = h5_path(output_dir, split, key)
                planned.append((pooled, split, key))
                if per_residue and key != CONCAT_KEY:
                    planned.append((residues_h5_path(pooled), split, key))
            if "parquet" in formats:
                planned.append((parquet_path(output_dir, split, key), split, key))
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


class RowView:
    """Rows [N, D] that the writers which can stream (Parquet, HDF5) take a block at a time, and the others (.pt,
    the concatenation) whole. utils.outputs.gather.DiskRows reads them from the merge's scratch file."""

    rows: Any  # one entry per protein

    @property
    def shape(self) -> tuple[int, int]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.rows)

    def block(self, start: int, end: int) -> torch.Tensor:
        """Rows [start, end) as a float16 tensor."""
        raise NotImplementedError

    def whole(self) -> torch.Tensor:
        return self.block(0, len(self.rows))


def _whole(embeddings: torch.Tensor | RowView) -> torch.Tensor:
    return embeddings.whole() if isinstance(embeddings, RowView) else embeddings


def _as_list(values: Sequence[str]) -> list[str]:
    return values if isinstance(values, list) else list(values)


def write_pt(
    path: Path, ids: Sequence[str], embeddings: torch.Tensor | RowView, meta: dict[str, Any], **extra: Any
) -> None:
    """A torch.save'd dict: ids (list), embeddings (float16 [N, D]), meta. Plain Python lists, so that
    torch.load(weights_only=True) reads it."""
    if HEADERS in meta:
        meta = {**meta, HEADERS: _as_list(meta[HEADERS])}
    atomic_torch_save({"ids": _as_list(ids), "embeddings": _whole(embeddings), "meta": meta, **extra}, path)


def _attribute(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else json.dumps(value)


def h5_file_bytes(datasets: int, data_bytes: int, text_bytes: int) -> int:
    """The size of an H5Writer file: `datasets` datasets holding `data_bytes` of values in all, `text_bytes` the
    UTF-8 of their ids (counted twice: the name and "original_id") and headers."""
    return H5_FILE_BYTES + datasets * H5_DATASET_BYTES + data_bytes + text_bytes


def output_bytes(output_format: str, count: int, dim: int, id_bytes: int, header_bytes: int) -> int:
    """The size on disk of one split's final files of one model (or of the concatenation, `dim` = ΣD) in every
    format asked for: `count` proteins whose ids and headers take `id_bytes` and `header_bytes` of UTF-8. For the
    pre-flight disk check; .pt adds pickle's few bytes per string, HDF5 its per-dataset bytes (h5_file_bytes)."""
    formats = output_formats(output_format)
    vectors, text = count * dim * 2, id_bytes + header_bytes
    total = 0
    if "pt" in formats:
        total += vectors + text + 2 * count * PICKLE_STRING_BYTES
    if "h5" in formats:
        total += h5_file_bytes(count, vectors, id_bytes + text)
    if "parquet" in formats:
        total += vectors + text + 2 * count * PARQUET_STRING_BYTES
    return total


def text_bytes(ids: Sequence[str], headers: Sequence[str] = ()) -> int:
    """UTF-8 bytes of the ids (twice, as an HDF5 dataset holds them) and the headers of an output."""

    def size(texts: Sequence[str]) -> int:  # packed strings (utils.inputs.strings, utils.inputs.spill) know theirs
        total = getattr(texts, "total_bytes", None)
        return int(total()) if total is not None else sum(len(t.encode()) for t in texts)

    return 2 * size(ids) + size(headers)


def disk_error(exc: BaseException, path: Path) -> OSError | None:
    """h5py's error for a failed write (it raises RuntimeError or ValueError with HDF5's errno in the text) as the
    OSError it is, naming the file; None for any other error."""
    found = _H5_ERRNO.search(str(exc))
    code = exc.errno if isinstance(exc, OSError) and exc.errno else int(found.group(1)) if found else None
    return None if code is None else OSError(code, os.strerror(code), str(path))


class H5Writer:
    """One HDF5 file, written under a temporary name and renamed into place (fsynced) when the block ends cleanly.

    Proteins can be added one at a time, so a caller may stream per-residue rows without holding them all. A
    "headers" list in the attributes is aligned with the proteins in the order they are added (or reserved): the
    i-th dataset gets the i-th header as its "header" attribute. `size`: the file's expected size (h5_file_bytes),
    reserved on disk before the datasets are written; a write that fails anyway is an OSError naming the file.
    """

    def __init__(self, path: Path, attributes: dict[str, Any], size: int = 0):
        self.path = path
        self.attributes = {key: value for key, value in attributes.items() if key != HEADERS}
        self.headers: Sequence[str] = attributes.get(HEADERS) or ()
        self.created = 0
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.handle: Any = None
        self.size = size

    def __enter__(self) -> H5Writer:
        import h5py

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # track_order: datasets iterate in the order written (input order), not sorted by name.
            with h5py.File(self.tmp, "w", track_order=True) as handle:
                for key, value in self.attributes.items():
                    handle.attrs[key] = _attribute(value)
            # HDF5 then writes into blocks that are already the file's (h5_file_bytes over-estimates; a sixteenth
            # more for what it does not know), and truncates the file to its own end when it closes.
            reserve_space(self.tmp, self.size + self.size // 16)
            self.handle = h5py.File(self.tmp, "r+")
        except Exception as exc:
            self.tmp.unlink(missing_ok=True)
            error = disk_error(exc, self.path)
            if error is None:
                raise
            raise error from None
        return self

    def _label(self, dataset: Any, protein_id: str) -> None:
        dataset.attrs["original_id"] = protein_id
        if self.created < len(self.headers):
            dataset.attrs["header"] = self.headers[self.created]
        self.created += 1

    def add(self, protein_id: str, array: torch.Tensor) -> None:
        dataset = self.handle.create_dataset(h5_name(protein_id), data=array.detach().cpu().numpy())
        self._label(dataset, protein_id)

    def reserve(self, protein_id: str, shape: tuple[int, ...]) -> None:
        """Create an empty float16 dataset now (fixing its place in the file's order); fill() writes it later."""
        dataset = self.handle.create_dataset(h5_name(protein_id), shape=shape, dtype="float16")
        self._label(dataset, protein_id)

    def fill(self, protein_id: str, array: torch.Tensor) -> None:
        self.handle[h5_name(protein_id)][...] = array.detach().to(torch.float16).cpu().numpy()

    def __exit__(self, exc_type: object, exc: BaseException | None, *rest: object) -> None:
        try:
            try:
                self.handle.close()
            except Exception as closing:
                if exc is None:  # the close's failure is the one to report; else the first one is
                    exc = closing
            error = disk_error(exc, self.path) if exc is not None else None
            if error is not None:
                raise error from None
            if exc_type is None and exc is None:
                publish(self.tmp, self.path)
            elif exc_type is None:
                raise exc  # type: ignore[misc]  # the close failed for another reason
        finally:
            self.tmp.unlink(missing_ok=True)


class ParquetWriter:
    """One Parquet file written in row groups as blocks arrive, under a temporary name renamed into place (fsynced)
    when the block ends cleanly; only the current block is ever in memory."""

    def __init__(self, path: Path, dim: int, metadata: dict[str, Any]):
        self.path = path
        self.dim = dim
        # meta["headers"] (one per row) becomes a "header" column rather than metadata that grows with the job
        self.metadata = {key: value for key, value in metadata.items() if key != HEADERS}
        self.headers: Sequence[str] | None = metadata.get(HEADERS)
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.writer: Any = None
        self.rows = 0

    def __enter__(self) -> ParquetWriter:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = [("id", pa.string()), ("embedding", pa.list_(pa.float16(), self.dim))]
        self.schema = pa.schema(
            columns + ([("header", pa.string())] if self.headers is not None else []),
            metadata={
                key: value if isinstance(value, str) else json.dumps(value) for key, value in self.metadata.items()
            },
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # No dictionary encoding: ids are unique and float16 vectors barely repeat, so dictionaries only cost memory.
        self.writer = pq.ParquetWriter(self.tmp, self.schema, use_dictionary=False, compression="zstd")
        return self

    def write(self, ids: Sequence[str], embeddings: Any) -> None:
        """Append rows: `ids` and their vectors ([n, D] torch tensor, numpy array or RowView, any float dtype)."""
        import numpy as np
        import pyarrow as pa

        if isinstance(embeddings, RowView):  # gathered a row group at a time: never the whole matrix at once
            if len(embeddings) != len(ids):
                raise ValueError(f"{self.path.name}: got {len(embeddings)} vectors for {len(ids)} ids")
            for start in range(0, len(ids), PARQUET_ROWS_PER_GROUP):
                end = min(start + PARQUET_ROWS_PER_GROUP, len(ids))
                self.write(ids[start:end], embeddings.block(start, end))
            return
        if isinstance(embeddings, torch.Tensor):
            embeddings = embeddings.detach().cpu().to(torch.float16).numpy()
        vectors = np.ascontiguousarray(embeddings, dtype=np.float16)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(
                f"{self.path.name}: got {vectors.shape} vectors for {len(ids)} ids of dimension {self.dim}"
            )
        for start in range(0, len(ids), PARQUET_ROWS_PER_GROUP):
            end = min(start + PARQUET_ROWS_PER_GROUP, len(ids))
            column = pa.FixedSizeListArray.from_arrays(pa.array(vectors[start:end].reshape(-1)), self.dim)
            arrays = [pa.array(list(ids[start:end]), pa.string()), column]
            if self.headers is not None:
                arrays.append(pa.array(list(self.headers[self.rows + start : self.rows + end]), pa.string()))
            self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        self.rows += len(ids)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            self.writer.close()
            if exc_type is None:
                publish(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)


def write_parquet(
    path: Path, ids: Sequence[str], embeddings: torch.Tensor | RowView, meta: dict[str, Any], **extra: Any
) -> None:
    with ParquetWriter(path, embeddings.shape[1], {**meta, **extra}) as writer:
        writer.write(ids, embeddings)


def read_parquet(path: Path) -> tuple[list[str], torch.Tensor, dict[str, str]]:
    """(ids, float16 [N, D], metadata as text) of a file written here. Large files: read them in pieces with
    pyarrow.dataset or polars.scan_parquet instead."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    flat = column.values.to_numpy(zero_copy_only=False).astype(np.float16, copy=False)
    metadata = {key.decode(): value.decode() for key, value in (table.schema.metadata or {}).items()}
    return table.column("id").to_pylist(), torch.from_numpy(flat.reshape(-1, dim).copy()), metadata


def write_h5(
    path: Path,
    ids: Sequence[str],
    embeddings: torch.Tensor | RowView,
    meta: dict[str, Any],
    **extra: Any,
) -> None:
    """Per-protein vectors into `path` (per-residue rows are streamed from the chunks:
    utils.running.merge.write_residue_rows)."""
    size = h5_file_bytes(len(ids), len(ids) * embeddings.shape[1] * 2, text_bytes(ids, meta.get(HEADERS) or ()))
    with H5Writer(path, {**meta, **extra}, size) as writer:
        for start in range(0, len(ids), PARQUET_ROWS_PER_GROUP):
            end = min(start + PARQUET_ROWS_PER_GROUP, len(ids))
            block = embeddings.block(start, end) if isinstance(embeddings, RowView) else embeddings[start:end]
            for protein_id, vector in zip(ids[start:end], block, strict=True):
                writer.add(protein_id, vector)


def write_outputs(
    output_dir: Path,
    split: str,
    output_key: str,
    ids: Sequence[str],
    embeddings: torch.Tensor | RowView,
    meta: dict[str, Any],
    output_format: str,
    **extra: Any,
) -> list[Path]:
    """One split of one model (or the concatenated models) in every format asked for; returns the files written."""
    written = []
    formats = output_formats(output_format)
    if "pt" in formats:
        written.append(pt_path(output_dir, split, output_key))
        write_pt(written[-1], ids, embeddings, meta, **extra)
    if "h5" in formats:
        written.append(h5_path(output_dir, split, output_key))
        write_h5(written[-1], ids, embeddings, meta, **extra)
    if "parquet" in formats:
        written.append(parquet_path(output_dir, split, output_key))
        write_parquet(written[-1], ids, embeddings, meta, **extra)
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
