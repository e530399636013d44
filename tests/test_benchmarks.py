"""The benchmarks' pure parts: the fair-esm peer's batching, the profile summary, the engine variants' de-duplication.
(The benchmarks themselves run models and time them; they are run by hand, see benchmarks/README.md.)"""

from argparse import Namespace

import pytest

from benchmarks.device_profile import busy_time, format_profile, summarize_trace
from benchmarks.fair_esm_loop import fair_esm_batches


def test_fair_esm_batches_follow_get_batch_indices():
    # sorted by (length, index); a batch closes when (longest + 1) × (count + 1) would pass 4,096 tokens
    lengths = [100, 5000, 30, 2000, 2000, 1000, 50]
    assert fair_esm_batches(lengths) == [[2, 6, 0, 5], [3, 4], [1]]
    assert fair_esm_batches([]) == []
    assert fair_esm_batches([8, 8, 8], toks_per_batch=18) == [[0, 1], [2]]


def test_busy_time_counts_overlaps_once():
    assert busy_time([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25
    assert busy_time([]) == 0


def test_summarize_trace_ranks_kernels_and_measures_idle():
    events = [
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 100},
        {"ph": "X", "cat": "kernel", "name": "gemm", "ts": 10, "dur": 30},
        {"ph": "X", "cat": "kernel", "name": "gemm", "ts": 30, "dur": 20},  # overlaps the first: busy once
        {"ph": "X", "cat": "kernel", "name": "softmax", "ts": 60, "dur": 5},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoH", "ts": 70, "dur": 10},
        {"ph": "i", "cat": "kernel", "name": "marker", "ts": 5},  # not a timed event
    ]
    summary = summarize_trace(events, top=2)
    assert summary["window_us"] == 100
    assert summary["device_busy_us"] == 55  # [10, 50) + [60, 65) + [70, 80)
    assert summary["device_idle_fraction"] == pytest.approx(0.45)
    assert summary["idle_fraction_first_to_last_kernel"] == pytest.approx(1 - 55 / 70)
    assert [(row["name"], row["calls"]) for row in summary["top"]] == [("gemm", 2), ("Memcpy DtoH", 1)]
    assert summary["top"][0]["share"] == pytest.approx(50 / 65)
    summary["host_seconds"] = 0.1
    assert "device idle 45.0%" in format_profile("t", summary)


def test_summarize_trace_without_device_events_reports_no_idle_share():
    summary = summarize_trace([{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 10}])
    assert summary["device_idle_fraction"] is None and summary["top"] == []


def test_engine_variants_measuring_the_same_settings_run_once():
    from benchmarks.engine_side import select_variants

    args = Namespace(arch="t5_cpu", attention="auto", max_items=128, variants=["current", "b128", "sdpa"])
    skipped = select_variants(args)
    assert args.variants == ["current", "sdpa"] and len(skipped) == 1 and "b128" in skipped[0]
    args = Namespace(arch="esm2_3b", attention="auto", max_items=32, variants=["current", "b128"])
    assert select_variants(args) == [] and args.variants == ["current", "b128"]
