"""The run report from workers' progress records: numbers in run_summary.json, a self-contained HTML file (inline
images, nothing fetched), interrupted and failed workers told apart; and through the real CLI on the offline
checkpoints, a first run and a resumed run."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

from utils.report import ProgressLog, read_progress, summarise_worker, write_report

MODELS = [
    {"key": "esm1b", "name": "ckpt/esm1b", "model_name": "esm1b", "family": "ESM-1b", "layer": -1,
     "devices": ["cpu"], "checkpoint": "local:abc", "status": "done"},
    {"key": "t5", "name": "ckpt/t5", "model_name": "prot_t5", "family": "ProtT5", "layer": -1,
     "devices": ["cpu"], "checkpoint": "local:def", "status": "interrupted"},
]  # fmt: skip


def _simulate(log_dir: Path, label: str, chunks: list[tuple[int, int]], end: str | None, reused: int = 0) -> None:
    """A worker's progress records as the worker writes them, with times spread over a few seconds."""
    progress = ProgressLog(log_dir / f"{label}.log", label=label, model=label, device="cpu")
    progress.write("start", precision="fp32", sequences=10, reused=reused, reused_chunks=1 if reused else 0,
                   max_residues=1022)  # fmt: skip
    progress.write("loaded", seconds=0.5)
    for proteins, residues in chunks:
        time.sleep(0.01)
        progress.write("chunk", proteins=proteins, residues=residues, windowed=[1300] if residues > 1000 else [])
    if end:
        progress.write("end", status=end)
    progress.close()


def test_report_numbers_and_self_contained_html(tmp_path):
    started = time.time()
    log_dir, out = tmp_path / "logs", tmp_path / "out"
    stale = log_dir / "old.progress.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"t": started - 100, "event": "start", "label": "old"}) + "\n")
    _simulate(log_dir, "esm1b", [(4, 800), (4, 1500), (2, 300)], "done", reused=0)
    _simulate(log_dir, "t5", [(3, 500)], "interrupted", reused=6)
    _simulate(log_dir, "dead", [(1, 100)], None)
    (out / "train_embeddings_esm1b.pt").parent.mkdir(parents=True)
    (out / "train_embeddings_esm1b.pt").write_bytes(b"x" * 1000)
    splits = {"train": ["M" * n for n in (10, 50, 300, 1300, 1300)], "test": ["K" * 40, "M" * 10]}

    report = write_report(out, log_dir, Path("config.yaml"), splits, MODELS, started, "interrupted")
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert set(summary["versions"]) >= {"python", "torch", "transformers"}
    assert summary["splits"]["train"] == {
        "proteins": 5, "unique": 4, "residues": 2960,
        "lengths": {"min": 10, "p50": 300, "p90": 1300, "p99": 1300, "max": 1300},
    }  # fmt: skip
    workers = {w["label"]: w for w in summary["workers"]}
    assert set(workers) == {"esm1b", "t5", "dead"}  # the stale file of an earlier run is left out
    assert workers["esm1b"]["computed"] == 10 and workers["esm1b"]["computed_chunks"] == 3
    assert workers["esm1b"]["residues_computed"] == 2600 and workers["esm1b"]["windowed_lengths"] == [1300]
    assert len(workers["esm1b"]["rate_over_time"]) == 3 and workers["esm1b"]["residues_per_second"] > 0
    assert (workers["t5"]["status"], workers["t5"]["reused"]) == ("interrupted", 6)
    assert workers["dead"]["status"] == "failed"  # no end record: the process died
    assert summary["outputs"] == [{"file": "train_embeddings_esm1b.pt", "bytes": 1000}]
    assert summary["models"][0]["checkpoint"] == "local:abc"

    text = report.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)  # nothing fetched: opens offline
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) == 4  # lengths, throughput, timeline, reuse
    assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in images)
    assert "train_embeddings_esm1b.pt" in text and "local:abc" in text


def test_a_cut_last_line_keeps_the_records_before_it(tmp_path):
    started = time.time()
    _simulate(tmp_path, "w", [(2, 100), (2, 100)], None)
    path = tmp_path / "w.progress.jsonl"
    path.write_text(path.read_text() + '{"t": 1, "event": "chu')
    (events,) = read_progress(tmp_path, started).values()
    worker = summarise_worker(events, started)
    assert worker.computed == 4 and worker.status == "failed"
