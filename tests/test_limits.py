"""How long a protein one pass may take, per device and family (utils/worker.resolve_limits): pure, no model."""

from __future__ import annotations

from utils.families import Architecture
from utils.worker import CPU_T5_MAX_RESIDUES, resolve_limits

PROT_T5_XL = Architecture(1024, 24, 32, 16384, 1_208_000_000, True, None)
ESM2_3B = Architecture(2560, 36, 40, 10240, 2_830_000_000, False, None)
ESM1B = Architecture(1280, 33, 20, 5120, 650_000_000, False, 1022)
GIB = 1 << 30


def _limits(arch: Architecture, memory: int, device: str = "cpu", precision: str = "fp32", max_residues=None):
    return resolve_limits(arch, device, precision, None, max_residues, memory)


def test_t5_on_cpu_is_windowed_past_4096_residues_unless_configured():
    assert _limits(PROT_T5_XL, 512 * GIB).max_residues == CPU_T5_MAX_RESIDUES
    assert _limits(PROT_T5_XL, 512 * GIB, max_residues=9000).max_residues == 9000


def test_t5_on_gpu_is_limited_by_memory_not_by_the_cpu_cap():
    h100 = _limits(PROT_T5_XL, 80 * GIB, "cuda:0", "fp16")
    a6000 = _limits(PROT_T5_XL, 48 * GIB, "cuda:0", "fp16")
    assert h100.max_residues > a6000.max_residues > CPU_T5_MAX_RESIDUES
    assert h100.max_residues < 35_000  # the 35,000-residue protein goes through recorded windows


def test_esm_is_not_capped_on_cpu_and_esm1b_keeps_its_positional_limit():
    assert _limits(ESM2_3B, 24 * GIB).max_residues > CPU_T5_MAX_RESIDUES
    assert _limits(ESM1B, 24 * GIB).max_residues == 1022
    assert _limits(ESM1B, 24 * GIB, max_residues=5000).max_residues == 1022


def test_cpu_token_budget_is_fixed_and_gpu_budget_grows_with_memory():
    assert _limits(PROT_T5_XL, 24 * GIB).token_budget == 4096
    small = _limits(PROT_T5_XL, 24 * GIB, "cuda:0", "fp16").token_budget
    large = _limits(PROT_T5_XL, 80 * GIB, "cuda:0", "fp16").token_budget
    assert 1024 <= small < large <= 131072
