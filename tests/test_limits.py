"""Device policy (utils/engine/limits.py): pure, no model. Memory never changes what a protein's vector is: windows only
for the model's own limit (ESM-1b) or an explicit max_residues, the same on every device; memory decides batch sizes,
and a protein whose one pass does not fit fails its model with one line naming it, the need, the limit and the fix."""

from __future__ import annotations

import pytest

from utils.engine.families import Architecture
from utils.engine.limits import device_limits, estimate_peak_bytes, heaviest_pass, linear_bytes_per_token, weight_bytes
from utils.units import size_text

PROT_T5_XL = Architecture(1024, 24, 32, 16384, 1_208_000_000, True, None, 4096, (10.0, 2.6))
ESM2_3B = Architecture(2560, 36, 40, 10240, 2_830_000_000, False, None)
ESM2_650M = Architecture(1280, 33, 20, 5120, 650_000_000, False, None)
ESM1B = Architecture(1280, 33, 20, 5120, 650_000_000, False, 1022)
GIB = 1 << 30
MIB = 1 << 20


@pytest.mark.parametrize("memory", [150 * MIB, 3200 * MIB, 24 * GIB, 512 * GIB], ids=lambda m: f"{m >> 20}MiB")
@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_windows_never_depend_on_the_memory(memory, device):
    # The case: SLURM --mem 3200 with ESM2-650M in fp32 put every protein past 16 residues in windows.
    for arch in (PROT_T5_XL, ESM2_650M):
        assert device_limits(arch, device, "fp32", memory_bytes=memory).max_residues is None
        assert device_limits(arch, device, "fp32", max_residues=9000, memory_bytes=memory).max_residues == 9000
    assert device_limits(ESM1B, device, "fp32", memory_bytes=memory).max_residues == 1022


def test_esm1b_keeps_its_positional_limit():
    assert device_limits(ESM1B, "cpu", "fp32", memory_bytes=24 * GIB).max_residues == 1022
    assert device_limits(ESM1B, "cpu", "fp32", max_residues=5000, memory_bytes=24 * GIB).max_residues == 1022
    assert device_limits(ESM1B, "cpu", "fp32", max_residues=500, memory_bytes=24 * GIB).max_residues == 500


def test_only_t5_pays_for_a_position_bias_workspace():
    # ESM's attention keeps O(T) state; the T5 bias blocks (up to 3 × 64 MB) were charged to every family.
    tokens = 194
    esm = estimate_peak_bytes(ESM2_650M, 4, tokens)
    assert esm == weight_bytes(ESM2_650M, 4) + tokens * linear_bytes_per_token(ESM2_650M, 4)
    t5 = estimate_peak_bytes(PROT_T5_XL, 4, tokens)
    linear = tokens * linear_bytes_per_token(PROT_T5_XL, 4)
    assert t5 - weight_bytes(PROT_T5_XL, 4) - linear == 3 * 32 * tokens * tokens * 4


def test_a_protein_that_does_not_fit_fails_in_one_line_naming_it_the_need_the_limit_and_the_fix():
    limits = device_limits(ESM2_650M, "cpu", "fp32", memory_bytes=3200 * MIB, memory_source="SLURM's --mem")
    assert limits.fits(192) and limits.fits(800)  # the proteins (7-192 residues) run whole
    assert not limits.fits(40_000)
    assert limits.first_unfit([100, 40_000, 300]) == 1 and limits.first_unfit([100, 300]) is None
    line = limits.does_not_fit("MKTAYIAKQRQI…", 40_000)
    need = weight_bytes(ESM2_650M, 4) + 40_002 * linear_bytes_per_token(ESM2_650M, 4)
    assert "\n" not in line
    assert "protein MKTAYIAKQRQI… (40,000 residues) does not fit in memory" in line
    assert f"its one pass needs about {size_text(need)}" in line and "SLURM's --mem allows 3.12 GiB" in line
    # on the CPU the process itself (Python, torch) takes of the same memory: 95 % of it, less ~400 MiB
    assert limits.usable_bytes == int(0.95 * 3200 * MIB) - (400 << 20)
    longest = limits.longest_fitting()
    assert 500 < longest < 40_000 and limits.fits(longest) and not limits.fits(longest + 100)
    assert f"run_params.max_residues: {longest}" in line
    # windows (an explicit max_residues) count at the window: a long protein fits when its windows do
    windowed = device_limits(ESM2_650M, "cpu", "fp32", max_residues=500, memory_bytes=3200 * MIB)
    assert windowed.fits(40_000)
    # 150 MiB leaves nothing once the process is counted: no max_residues to suggest
    tiny = device_limits(ESM2_650M, "cpu", "fp32", memory_bytes=150 * MIB, memory_source="SLURM's --mem")
    assert not tiny.fits(10) and "max_residues" not in tiny.does_not_fit("P", 10)
    assert "leaves nothing for the model" in tiny.does_not_fit("P", 10)
    # a GPU's memory holds no process: 80 % of it is the model's
    assert device_limits(ESM2_650M, "cuda:0", "fp16", memory_bytes=8 * GIB).usable_bytes == int(0.8 * 8 * GIB)


def test_one_pass_is_limited_by_memory_linearly():
    # Attention never builds T × T (utils.engine.attention): the longest CAFA protein (35,000 residues) fits an A6000 in
    # one pass, where the padded engine's quadratic bias ran out of memory at 10,000 on an H100.
    h100 = device_limits(PROT_T5_XL, "cuda:0", "fp16", memory_bytes=80 * GIB).longest_fitting()
    a6000 = device_limits(PROT_T5_XL, "cuda:0", "fp16", memory_bytes=48 * GIB).longest_fitting()
    small = device_limits(PROT_T5_XL, "cuda:0", "fp16", memory_bytes=4 * GIB).longest_fitting()
    assert h100 > a6000 > 35_000 > small > 1_000
    assert estimate_peak_bytes(PROT_T5_XL, 2, h100 + 2) <= 0.8 * 80 * GIB
    assert estimate_peak_bytes(PROT_T5_XL, 2, 35_002) <= 24 * GIB  # the bound for one 35,000-residue pass
    assert device_limits(PROT_T5_XL, "cpu", "fp32", memory_bytes=24 * GIB).longest_fitting() > 2_500


def test_token_budget_fixed_on_cpu_unless_the_memory_allows_less_and_grows_with_gpu_memory():
    assert device_limits(PROT_T5_XL, "cpu", "fp32", memory_bytes=24 * GIB).max_tokens_per_batch == 4096
    tight = device_limits(ESM2_650M, "cpu", "fp32", memory_bytes=3200 * MIB)
    assert 500 < tight.max_tokens_per_batch < 4096
    assert estimate_peak_bytes(ESM2_650M, 4, tight.max_tokens_per_batch) <= tight.usable_bytes
    small = device_limits(PROT_T5_XL, "cuda:0", "fp16", memory_bytes=8 * GIB).max_tokens_per_batch
    large = device_limits(PROT_T5_XL, "cuda:0", "fp16", memory_bytes=80 * GIB).max_tokens_per_batch
    assert 1024 <= small < large <= 131072


def test_every_planned_gpu_batch_fits_the_memory_model():
    # The first H100 run packed a 10,000-residue protein with a dozen 3,000-residue ones (a linear token budget):
    # the batch ran out of memory and split again and again. Every batch the plan makes must fit.
    lengths = [35_000, 10_000, 3150, 3031, 3010, 2866, 2732] + [400] * 200 + [30] * 50
    for arch, memory in ((PROT_T5_XL, 80 * GIB), (PROT_T5_XL, 48 * GIB), (ESM2_3B, 80 * GIB)):
        limits = device_limits(arch, "cuda:0", "fp16", memory_bytes=memory)
        peak, _, _ = heaviest_pass(limits, arch, "fp16", lengths, 2)
        assert peak <= 0.8 * memory
        for batch in limits.plan_batches(lengths, 2):
            tokens = sum(limits.pass_residues(lengths[i]) + 2 for i in batch)
            assert tokens <= limits.max_tokens_per_batch or len(batch) == 1


def _cgroup_files(root, proc_cgroup: str, files: dict[str, str]):
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(proc_cgroup)
    for name, text in files.items():
        (root / "sys/fs/cgroup" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "sys/fs/cgroup" / name).write_text(text)
    return root


def test_cpu_memory_is_the_lowest_of_machine_cgroup_ulimit_and_slurm(tmp_path):
    from utils.engine.limits import cpu_memory_sources

    machine = cpu_memory_sources(tmp_path / "nothing", env={}, address_space=-1)
    assert list(machine) == ["machine"]  # no cgroup files, no ulimit (RLIM_INFINITY is -1), not in SLURM
    # cgroup v2: the lowest limit on the group or a group above it ("max" is none)
    v2 = _cgroup_files(
        tmp_path / "v2", "0::/job/step\n", {"job/memory.max": str(3 * GIB), "job/step/memory.max": "max\n"}
    )
    assert cpu_memory_sources(v2, env={}, address_space=-1)["cgroup"] == 3 * GIB
    # cgroup v1: the memory controller's group; v1 writes "no limit" as a huge number
    v1 = _cgroup_files(
        tmp_path / "v1",
        "5:cpu,cpuacct:/x\n4:memory:/docker/abc\n0::/\n",
        {"memory/memory.limit_in_bytes": "9223372036854771712", "memory/docker/abc/memory.limit_in_bytes": str(GIB)},
    )
    assert cpu_memory_sources(v1, env={}, address_space=-1)["cgroup"] == GIB
    # ulimit -v, and SLURM's --mem (MiB) or --mem-per-cpu × CPUs on the node
    assert cpu_memory_sources(v1, env={}, address_space=512 << 20)["ulimit -v"] == 512 << 20
    slurm = cpu_memory_sources(tmp_path / "nothing", env={"SLURM_MEM_PER_NODE": "2048"}, address_space=-1)
    assert slurm["SLURM"] == 2 * GIB
    per_cpu = {"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_ON_NODE": "4"}
    assert cpu_memory_sources(tmp_path / "nothing", env=per_cpu, address_space=-1)["SLURM"] == 4000 << 20
    # a limit above the machine's memory says nothing
    huge = {"SLURM_MEM_PER_NODE": str(1 << 40)}
    assert "SLURM" not in cpu_memory_sources(tmp_path / "nothing", env=huge, address_space=-1)


def test_cpu_device_memory_follows_ulimit_v(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    # The limit sits 1 GiB above the address space the import itself maps, measured here: a CUDA build of torch maps
    # over 3 GB at import where a CPU build maps about 1, and either must start under the limit.
    status = "open('/proc/self/status').read()"
    probe = f"import re, utils.engine.limits; print(re.search(r'VmSize:\\s+(\\d+)', {status})[1])"
    mapped = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    limit_kib = int(mapped.stdout) + (1 << 20)
    assert limit_kib << 10 < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # the ulimit is what binds
    code = "from utils.engine.limits import device_memory_bytes; print(device_memory_bytes('cpu'))"
    shell = f'ulimit -v {limit_kib} && {sys.executable} -c "{code}"'
    result = subprocess.run(["bash", "-c", shell], cwd=REPO, capture_output=True, text=True, check=True)
    assert int(result.stdout) == limit_kib << 10
