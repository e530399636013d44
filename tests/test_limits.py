"""How long a protein one pass may take, per device and family (utils/worker.resolve_limits): pure, no model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from utils.families import Architecture
from utils.worker import CPU_T5_MAX_RESIDUES, WorkOrder, resolve_limits

PROT_T5_XL = Architecture(1024, 24, 32, 16384, 1_208_000_000, True, None)
ESM2_3B = Architecture(2560, 36, 40, 10240, 2_830_000_000, False, None)
ESM1B = Architecture(1280, 33, 20, 5120, 650_000_000, False, 1022)
GIB = 1 << 30


def _order(arch: Architecture, device: str = "cpu", precision: str = "fp32", max_residues: int | None = None):
    return WorkOrder(
        "m", "name", "prot_t5", arch, device, precision, None, 32, max_residues, 256, False, 100,
        Path("chunks"), "fp", (), Path("log"), 0, 42,
    )  # fmt: skip


def test_t5_on_cpu_is_windowed_past_4096_residues_unless_configured():
    assert resolve_limits(_order(PROT_T5_XL), 512 * GIB).max_residues == CPU_T5_MAX_RESIDUES
    assert resolve_limits(_order(PROT_T5_XL, max_residues=9000), 512 * GIB).max_residues == 9000


def test_t5_on_gpu_is_limited_by_memory_not_by_the_cpu_cap():
    h100 = resolve_limits(_order(PROT_T5_XL, "cuda:0", "fp16"), 80 * GIB)
    a6000 = resolve_limits(_order(PROT_T5_XL, "cuda:0", "fp16"), 48 * GIB)
    assert h100.max_residues > a6000.max_residues > CPU_T5_MAX_RESIDUES
    assert h100.max_residues < 35_000  # the 35,000-residue protein goes through recorded windows


def test_esm_is_not_capped_on_cpu_and_esm1b_keeps_its_positional_limit():
    assert resolve_limits(_order(ESM2_3B), 24 * GIB).max_residues > CPU_T5_MAX_RESIDUES
    assert resolve_limits(_order(ESM1B), 24 * GIB).max_residues == 1022
    assert resolve_limits(replace(_order(ESM1B), max_residues=5000), 24 * GIB).max_residues == 1022


def test_cpu_token_budget_is_fixed_and_gpu_budget_grows_with_memory():
    assert resolve_limits(_order(PROT_T5_XL), 24 * GIB).token_budget == 4096
    small = resolve_limits(_order(PROT_T5_XL, "cuda:0", "fp16"), 24 * GIB).token_budget
    large = resolve_limits(_order(PROT_T5_XL, "cuda:0", "fp16"), 80 * GIB).token_budget
    assert 1024 <= small < large <= 131072
