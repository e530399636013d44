"""The run report's first lines say in words what a reader must know before using the embeddings: models that failed
or did not finish (and why), proteins that went through windows (how many, why, per model), proteins redone in fp32;
"Done" only for a clean run. Sizes in the unit that fits. Checked on the HTML's text, before any table or chart: from
recorded progress, and through the real CLI on a run with windows, fp32 redos and a model that fails to load."""

from __future__ import annotations

import html
import json
import random
import re
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, random_protein, run_cli, write_config, write_fasta
from utils.outputs.progress import ProgressLog, progress_path
from utils.outputs.report import worker_error, write_report
from utils.units import size_text


def first_lines(page: str) -> str:
    """The page's text before its first section (Inputs): the title, the status block and the run's one paragraph."""
    head = page.split("<h2>", 1)[0]
    assert "<svg" not in head and "<table" not in head
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", head.split("<body>", 1)[1]))).strip()


def model(key: str, status: str = "done", **fields) -> dict:
    return {"key": key, "name": f"ckpt/{key}", "model_name": key, "family": "ESM2", "layer": -1, "devices": ["cpu"],
            "checkpoint": "local:abc", "status": status, "problems": [], "log": f"logs/{key}*.log",
            "max_residues": {"set": None, "model": None}, **fields}  # fmt: skip


def record(log_dir: Path, key: str, chunks: list[dict], end: str | None, precision: str = "fp32",
           max_residues: int = 1022, reused: int = 0) -> Path:  # fmt: skip
    """A worker's progress file as a worker writes it: start, loaded, one record per chunk, end (none: it died)."""
    path = progress_path(log_dir / f"{key}.log", "run1")
    progress = ProgressLog(path, label=key, model=key, device="cpu")
    progress.write("start", precision=precision, sequences=10, reused=reused, reused_chunks=0,
                   max_residues=max_residues)  # fmt: skip
    progress.write("loaded", seconds=0.1)
    for chunk in chunks:
        progress.write("chunk", **{"proteins": 5, "residues": 500, "windowed": [], "redone_in_fp32": 0, **chunk})
    if end:
        progress.write("end", status=end)
    progress.close()
    return path


def report_text(tmp_path: Path, models: list[dict], paths: list[Path], status: str, outputs: int = 0) -> str:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    for n in range(outputs):
        (out / f"train_embeddings_m{n}.pt").write_bytes(b"x" * 10**n)
    splits = {"train": ["M" * n for n in (10, 50, 300, 1300, 2000)]}
    store = {
        "path": str(out / ".chunks"),
        "partitions": [
            {"directory": "esm2.fp32.layer6.0123456789abcdef", "settings": {}, "chunks": 3, "bytes": 12_000,
             "quarantined": 0, "used_by_this_run": True},
        ],
    }  # fmt: skip
    return write_report(out, paths, Path("c.yaml"), splits, models, time.time() - 5, status, store).read_text()


def test_windows_fp32_redos_and_a_failed_model_are_the_first_lines(tmp_path):
    logs = tmp_path / "logs"
    paths = [
        record(logs, "esm1b", [{"windowed": [1300, 2000]}, {}], "done", max_residues=1022),
        record(logs, "t5", [{"redone_in_fp32": 3}], "done", precision="fp16", max_residues=50_000),
        record(logs, "shortcut", [{"windowed": [300]}], "done", max_residues=100),
        record(logs, "dead", [], None),
    ]
    models = [
        model("esm1b", max_residues={"set": None, "model": 1022}),
        model("t5"),
        model("shortcut", max_residues={"set": 100, "model": None}),
        model("dead", "failed", problems=["RuntimeError: size mismatch for esm.encoder.layer.0"]),
    ]
    page = report_text(tmp_path, models, paths, "failed")
    text = first_lines(page)
    assert text.startswith("Embedding run report Failed: 1 of 4 models failed (dead)"), text
    assert "esm1b: 2 of 10 proteins went through overlapping windows, not one pass: longer than the 1,022 residues " \
           "the model's learned positions reach (the longest: 2,000). Their ids are in each output's " \
           "meta['windowed']." in text  # fmt: skip
    assert "t5: 3 proteins came out NaN or infinite in fp16 and were embedded again in fp32." in text
    assert "shortcut: 1 of 5 proteins went through overlapping windows, not one pass: longer than " \
           "run_params.max_residues, 100 residues (the longest: 300)." in text  # fmt: skip
    assert "dead: failed: RuntimeError: size mismatch for esm.encoder.layer.0. No output file was written for it; " \
           "its log: logs/dead*.log." in text  # fmt: skip
    assert not re.search(r"\bdone\b", text, re.IGNORECASE)
    assert "<title>Embedding run report: failed</title>" in page


def test_a_run_with_only_windows_is_not_done(tmp_path):
    paths = [record(tmp_path / "logs", "a", [{"windowed": [2000]}], "done", max_residues=1500),
             record(tmp_path / "logs", "b", [{"windowed": [2000]}], "done", max_residues=1500)]  # fmt: skip
    page = report_text(tmp_path, [model("a"), model("b")], paths, "done")
    text = first_lines(page)
    assert text.startswith("Embedding run report Finished, with notes: every model wrote its files, but not every "
                           "protein went through one pass"), text  # fmt: skip
    # Two models in the same situation share one line (memory never decides windows: a limit that is not the
    # model's own is the one set)
    assert "a, b: 1 of 5 proteins went through overlapping windows, not one pass: longer than " \
           "run_params.max_residues, 1,500 residues (the longest: 2,000)." in text  # fmt: skip
    assert not re.search(r"\bdone\b", text, re.IGNORECASE)


def test_a_clean_run_says_done_and_sizes_are_in_the_unit_that_fits(tmp_path):
    paths = [record(tmp_path / "logs", "a", [{}, {}], "done")]
    page = report_text(tmp_path, [model("a")], paths, "done", outputs=5)
    assert first_lines(page).startswith(
        "Embedding run report Done: every model finished; every protein it embedded went through one pass"
    )
    sizes = re.findall(r"<td>train_embeddings_m\d\.pt</td><td>([^<]+)</td>", page)
    assert sizes == ["1 B", "10 B", "100 B", "0.98 KiB", "9.77 KiB"]
    assert "MiB" not in page.split("Outputs written")[1].split("Chunk store")[0]


def test_an_interrupted_run_and_reused_chunks(tmp_path):
    paths = [record(tmp_path / "logs", "a", [{}], "interrupted", reused=2)]
    text = first_lines(report_text(tmp_path, [model("a", "interrupted"), model("b", "interrupted")], paths,
                                   "interrupted"))  # fmt: skip
    assert text.startswith("Embedding run report Interrupted: not every model finished; rerun the same command"), text
    assert "a: interrupted after 5 of 8 sequences;" in text and "b: interrupted before its worker started;" in text
    assert "2 unique sequences (all models together) came from chunks of earlier runs" in text


@pytest.mark.parametrize(
    ("n_bytes", "text"),
    [(0, "0 B"), (999, "999 B"), (1000, "0.98 KiB"), (6633, "6.48 KiB"), (15_338, "15.0 KiB"), (999_499, "976 KiB"),
     (1_234_567, "1.18 MiB"), (150 * 2**20, "150 MiB"), (5 * 10**9, "4.66 GiB"), (3.2e12, "2.91 TiB")],
)  # fmt: skip
def test_size_text(n_bytes, text):
    assert size_text(n_bytes) == text


def test_worker_error_is_this_runs_exception_line(tmp_path):
    log = tmp_path / "m.log"
    log.write_text(
        "2020-01-01 10:00:00,000 ERROR an error of an earlier run\n"
        f"{time.strftime('%Y-%m-%d %H:%M:%S')},123 INFO model loading\n"
        f"{time.strftime('%Y-%m-%d %H:%M:%S')},456 ERROR worker failed\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "    load()\n"
        "RuntimeError: size mismatch for a.weight\n"
        f"{time.strftime('%Y-%m-%d %H:%M:%S')} main: worker exited with code 1\n"
    )
    assert worker_error(log, time.time() - 60) == "RuntimeError: size mismatch for a.weight"
    assert worker_error(log, time.time() + 60) is None  # every record older than the run
    assert worker_error(tmp_path / "none.log", 0) is None


def skeleton(page: str) -> list[str]:
    """What a report page is laid out from: the status block, the section headings, the tables' columns."""
    return re.findall(r"<div class='status|<h[23]>[^<]*</h[23]>|<th>[^<]*</th>", page)


def test_the_example_report_is_the_offline_demos_and_current(tmp_path, monkeypatch):
    """examples/run_report.html is what the README's offline demo writes, with today's layout: a change to the
    report's sections or columns fails here until the example is remade (README: See it work offline)."""
    from utils.inputs.config import load_config

    example = (REPO / "examples" / "run_report.html").read_text(encoding="utf-8")
    current = report_text(tmp_path, [model("a")], [record(tmp_path / "logs", "a", [{}], "done")], "done", outputs=1)
    assert skeleton(example) == skeleton(current), "remake examples/run_report.html (README: See it work offline)"
    assert "<code>examples/config_offline.yaml</code>" in example
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "examples" / "config_offline.yaml")
    assert config.output_dir == Path("demo/embeddings") and config.run.report
    offline = (REPO / "README.md").read_text(encoding="utf-8").split("**See it work offline.**")[1].split("## ")[0]
    assert "`demo/embeddings/run_report.html`" in offline and "cp demo/embeddings/run_report.html examples/" in offline


# -- through the real CLI -------------------------------------------------------------------------------------------
def test_cli_report_of_a_run_with_windows_fp32_redos_and_a_failed_model(checkpoints, tmp_path):
    """ESM-1b windows a 1,300-residue protein (its learned positions), an ESM C whose fp16 overflows is redone in
    fp32, and an ESM2 whose config.json does not match its weights fails to load."""
    from tests.test_non_finite import _overflowing_esmc

    overflowing = _overflowing_esmc(checkpoints["esmc"], tmp_path / "esmc", 1e7)
    broken = tmp_path / "esm2"
    broken.mkdir()
    for file in checkpoints["esm2"].iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "intermediate_size": 2 * config["intermediate_size"]}))
    rng = random.Random(5)
    write_fasta(tmp_path / "train.fasta", [("long", random_protein(rng, 1300))] +
                [(f"p{i}", random_protein(rng, 30)) for i in range(5)])  # fmt: skip
    write_fasta(tmp_path / "test.fasta", [("t", random_protein(rng, 40))])
    models = {"esm1b": {"name": checkpoints["esm1b"]}, "esmc": {"name": overflowing, "precision": "fp16"},
              "esm2": {"name": broken}}  # fmt: skip
    config_path = write_config(tmp_path, models, run_params={"report": True})
    result = run_cli("generate_embeddings_t5.py", "--config", str(config_path))
    assert result.returncode == 1, result.stderr
    text = first_lines((tmp_path / "out" / "run_report.html").read_text())
    assert text.startswith("Embedding run report Failed: 1 of 3 models failed (esm2); the files of the models that "
                           "finished are written."), text  # fmt: skip
    assert "esm1b: 1 of 7 proteins went through overlapping windows, not one pass: longer than the 1,022 residues " \
           "the model's learned positions reach (the longest: 1,300)." in text  # fmt: skip
    assert "esmc: 7 proteins came out NaN or infinite in fp16 and were embedded again in fp32." in text
    assert re.search(r"esm2: failed: RuntimeError: .*ignore_mismatched_sizes.* No output file was written for it; "
                     rf"its log: {re.escape(str(tmp_path / 'logs'))}/esm2\*\.log\.", text), text  # fmt: skip
