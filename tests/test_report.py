"""The run report from workers' progress records: numbers in run_summary.json, a self-contained HTML file (charts
drawn by matplotlib as inline SVG, nothing fetched), interrupted and failed workers told apart; and through the real
CLI on the offline checkpoints, a first run and a resumed run."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, cli_env, random_protein, run_cli, run_job, write_config, write_fasta
from utils.outputs.progress import ProgressLog, progress_path, read_progress, summarise_worker
from utils.outputs.report import write_report

MODELS = [
    {"key": "esm1b", "name": "ckpt/esm1b", "model_name": "esm1b", "family": "ESM-1b", "layer": -1,
     "devices": ["cpu"], "checkpoint": "local:abc", "status": "done"},
    {"key": "t5", "name": "ckpt/t5", "model_name": "prot_t5", "family": "ProtT5", "layer": -1,
     "devices": ["cpu"], "checkpoint": "local:def", "status": "interrupted"},
]  # fmt: skip


def _charts(text: str) -> list[ElementTree.Element]:
    """The report's inline SVG charts, each parsed as XML (a stray `<` or `&` from a name would fail here)."""
    return [ElementTree.fromstring(svg) for svg in re.findall(r"<svg\b.*?</svg>", text, re.S)]


def _simulate(log_dir: Path, label: str, chunks: list[tuple[int, int]], end: str | None, reused: int = 0) -> Path:
    """A worker's progress records as the worker writes them, with times spread over a few seconds."""
    path = progress_path(log_dir / f"{label}.log", "run1")
    progress = ProgressLog(path, label=label, model=label, device="cpu")
    progress.write("start", precision="fp32", sequences=10, reused=reused, reused_chunks=1 if reused else 0,
                   max_residues=1022)  # fmt: skip
    progress.write("loaded", seconds=0.5)
    for proteins, residues in chunks:
        time.sleep(0.01)
        progress.write("chunk", proteins=proteins, residues=residues, windowed=[1300] if residues > 1000 else [])
    if end:
        progress.write("end", status=end)
    progress.close()
    return path


def test_report_numbers_and_self_contained_html(tmp_path):
    started = time.time()
    log_dir, out = tmp_path / "logs", tmp_path / "out"
    other_run = log_dir / "old.run0.progress.jsonl"  # another run's, in the same log_dir
    other_run.parent.mkdir(parents=True)
    other_run.write_text(json.dumps({"t": started + 1, "event": "start", "label": "old"}) + "\n")
    paths = [
        _simulate(log_dir, "esm1b", [(4, 800), (4, 1500), (2, 300)], "done", reused=0),
        _simulate(log_dir, "t5", [(3, 500)], "interrupted", reused=6),
        _simulate(log_dir, "dead", [(1, 100)], None),
    ]
    (out / "train_embeddings_esm1b.pt").parent.mkdir(parents=True)
    (out / "train_embeddings_esm1b.pt").write_bytes(b"x" * 1000)
    splits = {"train": ["M" * n for n in (10, 50, 300, 1300, 1300)], "test": ["K" * 40, "M" * 10]}

    report = write_report(out, paths, Path("config.yaml"), splits, MODELS, started, "interrupted")
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert set(summary["versions"]) >= {"python", "torch", "transformers"}
    assert summary["splits"]["train"] == {
        "proteins": 5, "unique": 4, "residues": 2960,
        "lengths": {"min": 10, "p50": 300, "p90": 1300, "p99": 1300, "max": 1300},
    }  # fmt: skip
    workers = {w["label"]: w for w in summary["workers"]}
    assert set(workers) == {"esm1b", "t5", "dead"}  # the file of another run is left out
    assert workers["esm1b"]["computed"] == 10 and workers["esm1b"]["computed_chunks"] == 3
    assert workers["esm1b"]["residues_computed"] == 2600 and workers["esm1b"]["windowed_lengths"] == [1300]
    assert len(workers["esm1b"]["rate_over_time"]) == 3 and workers["esm1b"]["residues_per_second"] > 0
    assert (workers["t5"]["status"], workers["t5"]["reused"]) == ("interrupted", 6)
    assert workers["dead"]["status"] == "failed"  # no end record: the process died
    assert summary["outputs"] == [{"file": "train_embeddings_esm1b.pt", "bytes": 1000}]
    assert summary["models"][0]["checkpoint"] == "local:abc"

    text = report.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)  # nothing fetched: opens offline
    charts = _charts(text)
    assert len(charts) == 4 and "<img" not in text  # lengths, throughput, timeline, reuse
    titles = [chart.findtext("{http://www.w3.org/2000/svg}title") for chart in charts]
    assert titles == ["protein lengths per split", "residues / s over time, per worker", "time per model and device",
                      "unique sequences reused and computed, per worker"]  # fmt: skip
    shown = "".join(charts[0].itertext())
    assert "train: 5 proteins" in shown and "every model: 1,022" in shown  # the one-pass limit, dashed
    assert "windows (some model)" in shown  # the two 1,300-residue proteins are marked
    assert "train_embeddings_esm1b.pt" in text and "local:abc" in text


def test_names_in_the_charts_are_escaped(tmp_path):
    started = time.time()
    path = _simulate(tmp_path / "logs", "w<&>", [(2, 100), (2, 100)], "done")
    splits = {"a<&>b": ["M" * 10, "M" * 20], "test": ["K" * 40]}
    text = write_report(tmp_path / "out", [path], Path("c.yaml"), splits, MODELS, started, "done").read_text()
    charts = _charts(text)
    assert len(charts) == 4
    assert "a<&>b" not in text and "w<&>" not in text
    assert "a&lt;&amp;&gt;b: 2 proteins" in text and "w&lt;&amp;&gt; (cpu)" in text
    assert "a<&>b: 2 proteins" in "".join(charts[0].itertext())  # read back as the name it was


def test_a_run_with_no_progress_still_renders(tmp_path):
    """No worker wrote a record (the run stopped before any started): the length chart alone, no error."""
    splits = {"train": ["M" * 300], "test": []}
    report = write_report(tmp_path / "out", [], Path("c.yaml"), splits, [], time.time(), "failed")
    text = report.read_text()
    (lengths,) = _charts(text)
    assert "train: 1 proteins" in "".join(lengths.itertext())
    assert text.count("nothing to show") == 3  # throughput, timeline, reuse
    assert json.loads((tmp_path / "out" / "run_summary.json").read_text())["workers"] == []


def test_the_report_does_not_import_a_plotting_library_at_start_up():
    """matplotlib is imported when the report's charts are drawn, at the end of a run, never when the command or a
    worker starts (they import the report's modules for the progress records)."""
    code = (
        "import sys; import utils.running.local, utils.running.worker, utils.outputs.report\n"
        "from utils.outputs.progress import WorkerSummary\n"
        "from utils.outputs.report_html import chart_lengths, chart_rates, chart_reuse, chart_timeline\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'matplotlib', 'PIL'}))\n"
        "w = WorkerSummary('w', 'm', 'cpu', ended=5.0, loaded=1.0, rate=[(2.0, 10.0), (3.0, 12.0)], computed=4)\n"
        "charts = [chart_lengths({'s': [5, 50, 500]}, {'m': 100}), chart_rates([w]), chart_timeline([w]),"
        " chart_reuse([w])]\n"
        "assert all(chart and chart.startswith('<svg') for chart in charts)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_cut_last_line_keeps_the_records_before_it(tmp_path):
    started = time.time()
    path = _simulate(tmp_path, "w", [(2, 100), (2, 100)], None)
    path.write_text(path.read_text() + '{"t": 1, "event": "chu')
    (events,) = read_progress([path]).values()
    worker = summarise_worker(events, started)
    assert worker.computed == 4 and worker.status == "failed"


def test_compiles_and_the_last_forward_path_reach_the_summary(tmp_path):
    started = time.time()
    path = progress_path(tmp_path / "w.log", "run1")
    progress = ProgressLog(path, label="w", model="w", device="cuda:0")
    progress.write("start", precision="fp16", sequences=4)
    progress.write("loaded", seconds=1.0)
    progress.write("forward", path="packed, flex attention", fallback="")
    progress.write("chunk", proteins=2, residues=100, compiles=3, compile_seconds=41.5, compiled_anew=3)
    failed = "flex failed on a 9000-token batch: RuntimeError: x"
    progress.write("forward", path=f"packed, segments attention ({failed})", fallback=failed)
    progress.write("end", status="done", compiles=4, compile_seconds=50.0, compiled_anew=3)
    progress.close()
    summary = write_report(tmp_path / "out", [path], Path("c.yaml"), {"s": ["M" * 10]}, MODELS, started, "done")
    (worker,) = json.loads((tmp_path / "out" / "run_summary.json").read_text())["workers"]
    assert worker["forward"] == f"packed, segments attention ({failed})" and worker["forward_fallback"] == failed
    assert (worker["compiles"], worker["compile_seconds"], worker["compiled_anew"]) == (4, 50.0, 3)
    assert "4 (3 new, 50.0 s)" in summary.read_text()


# -- through the real CLI -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reported_runs(checkpoints, tmp_path_factory):
    """The same command twice: a first run, then a rerun that finds every chunk done. The first asks for varlen
    attention, which needs CUDA: it runs as segments, and says so."""
    directory = tmp_path_factory.mktemp("reported")
    rng = random.Random(29)
    train = [(f"p{i}", random_protein(rng, rng.randint(20, 300))) for i in range(24)] + [("long", "M" * 1500)]
    test = [("t0", train[0][1]), ("t1", random_protein(rng, 90))]
    models = {"esm1b": {"name": checkpoints["esm1b"]}, "esm2": {"name": checkpoints["esm2"]}}
    run_params = {"report": True, "save_every_n_batches": 1, "output_format": "both", "attention": "varlen"}
    first = run_job(directory, models, train, test, run_params=run_params)
    summaries = [json.loads((directory / "out" / "run_summary.json").read_text())]
    first_html = (directory / "out" / "run_report.html").read_text()
    second = run_cli("generate_embeddings_t5.py", "--config", str(directory / "config_t5.yaml"))
    assert second.returncode == 0, second.stderr
    summaries.append(json.loads((directory / "out" / "run_summary.json").read_text()))
    unique = len({s for _, s in train + test})
    return directory, summaries, unique, (first, second), first_html


def test_cli_run_report(reported_runs):
    import torch

    directory, (summary, _), unique, (first, _), text = reported_runs
    assert f"report: {directory / 'out' / 'run_report.html'}" in first.stderr
    assert summary["status"] == "done" and summary["versions"]["torch"] == torch.__version__
    assert summary["splits"]["train"]["proteins"] == 25 and summary["splits"]["test"]["unique"] == 2
    models = {m["key"]: m for m in summary["models"]}
    assert models["esm1b"]["checkpoint"].startswith("sha256:") and models["esm1b"]["model_name"] == "esm1b_2x32"
    workers = {w["label"]: w for w in summary["workers"]}
    assert set(workers) == {"esm1b", "esm2"}
    for worker in workers.values():
        assert (worker["status"], worker["computed"], worker["reused"]) == ("done", unique, 0)
        assert worker["computed_chunks"] == len(worker["rate_over_time"]) > 1
    assert workers["esm1b"]["windowed_lengths"] == [1500] and workers["esm2"]["windowed_lengths"] == []
    # The forward path that ran, why it is not the configured one, and what was compiled (nothing, for segments)
    reason = "varlen needs a CUDA device and torch ≥ 2.9, not cpu"
    for label, worker in workers.items():
        assert worker["forward"] == f"packed, segments attention ({reason})" and worker["forward_fallback"] == reason
        assert (worker["compiles"], worker["compiled_anew"]) == (0, 0)
        assert first.stderr.count(f"note: {label}: attention 'varlen' runs as segments: {reason}") == 1
    assert "<th>forward</th>" in text and f"packed, segments attention ({reason})" in text
    files = {o["file"] for o in summary["outputs"]}
    names = {f"{split}_embeddings_{key}" for split in ("train", "test") for key in models}
    assert files == {f"{name}.{ext}" for name in names for ext in ("pt", "h5")}
    assert len(_charts(text)) == 4


def test_rerun_report_shows_reuse(reported_runs):
    directory, (first, second), unique, _, _ = reported_runs
    workers = {w["label"]: w for w in second["workers"]}
    for worker in workers.values():
        assert (worker["status"], worker["computed"], worker["reused"]) == ("done", 0, unique)
        assert worker["reused_chunks"] == first["workers"][0]["computed_chunks"] or worker["reused_chunks"] > 1
    text = (directory / "out" / "run_report.html").read_text()
    assert "nothing to show" in text  # no throughput curve: nothing was computed


def test_interrupted_run_reports_what_was_done(checkpoints, tmp_path):
    from tests.test_faults import FAULT_HOOK

    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(FAULT_HOOK)
    rng = random.Random(31)
    write_fasta(tmp_path / "train.fasta", [(f"p{i}", random_protein(rng, 40)) for i in range(40)])
    write_fasta(tmp_path / "test.fasta", [("t", "MKV")])
    config = write_config(tmp_path, {"m": {"name": checkpoints["esm2"]}},
                          run_params={"report": True, "batch_size": 2, "save_every_n_batches": 1})  # fmt: skip
    env = {**cli_env(), "PYTHONPATH": str(tmp_path / "hook"), "TEST_EMBED_SLOW_S": "0.1"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "generate_embeddings_t5.py"), "--config", str(config)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if any('"chunk"' in p.read_text() for p in (tmp_path / "logs").glob("m.*.progress.jsonl")):
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["models"][0]["status"] == "interrupted"
    (worker,) = summary["workers"]
    assert worker["status"] == "interrupted" and 1 <= worker["computed"] < 41
    assert summary["outputs"] == []  # an interrupted model writes no final file
    assert (tmp_path / "out" / "run_report.html").exists()


def test_length_histogram_counts_from_sorted_lengths_equal_binning_each_protein():
    from utils.outputs.report_html import HISTOGRAM_BINS, _bin_counts

    rng = np.random.default_rng(0)
    for low, high, limit in [(2, 35_000, 1022), (30, 200, None), (7, 8, 7), (1, 2, 5000)]:
        lengths = np.sort(rng.integers(low, high, 5000).astype(np.int32))
        top = int(lengths[-1]) + 1
        edges = np.asarray([low * (top / low) ** (i / HISTOGRAM_BINS) for i in range(HISTOGRAM_BINS + 1)])
        which = np.clip(np.searchsorted(edges, lengths, side="right") - 1, 0, HISTOGRAM_BINS - 1)  # bin of each one
        total, windowed = _bin_counts(lengths, edges, limit)
        assert total.tolist() == np.bincount(which, minlength=HISTOGRAM_BINS).tolist()
        past = which[lengths > limit] if limit is not None else which[:0]
        assert windowed.tolist() == np.bincount(past, minlength=HISTOGRAM_BINS).tolist()
