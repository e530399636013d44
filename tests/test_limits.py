"""Device policy (utils/engine/limits.py): pure, no model. Full length wherever one pass fits the device; windows only
for memory, the model's own limit (ESM-1b) or an explicit max_residues; batches sized by memory, attention included."""

from __future__ import annotations

from utils.engine.families import Architecture
from utils.engine.limits import device_limits, estimate_peak_bytes, heaviest_pass

PROT_T5_XL = Architecture(1024, 24, 32, 16384, 1_208_000_000, True, None)
ESM2_3B = Architecture(2560, 36, 40, 10240, 2_830_000_000, False, None)
ESM1B = Architecture(1280, 33, 20, 5120, 650_000_000, False, 1022)
GIB = 1 << 30


def test_t5_on_cpu_runs_full_length_when_memory_allows():
    # The same protein must get the same vector on every device: no speed cap on the CPU.
    assert device_limits(PROT_T5_XL, "cpu", "fp32", memory_bytes=512 * GIB).max_residues > 10_000
    assert device_limits(PROT_T5_XL, "cpu", "fp32", memory_bytes=24 * GIB).max_residues > 2_500
    assert device_limits(PROT_T5_XL, "cpu", "fp32", max_residues=9000, memory_bytes=512 * GIB).max_residues == 9000


def test_t5_on_gpu_is_limited_by_memory_linearly():
    # Attention never builds T × T (utils.engine.attention): the longest CAFA protein (35,000 residues) fits an A6000 in
    # one pass, where the padded engine's quadratic bias ran out of memory at 10,000 on an H100.
    h100 = device_limits(PROT_T5_XL, "cuda:0", "fp16", memory_bytes=80 * GIB)
    a6000 = device_limits(PROT_T5_XL, "cuda:0", "fp16", memory_bytes=48 * GIB)
    small = device_limits(PROT_T5_XL, "cuda:0", "fp16", memory_bytes=4 * GIB)
    assert h100.max_residues > a6000.max_residues > 35_000 > small.max_residues > 1_000
    assert estimate_peak_bytes(PROT_T5_XL, 2, h100.max_residues + 2) <= 0.8 * 80 * GIB
    assert estimate_peak_bytes(PROT_T5_XL, 2, 35_002) <= 24 * GIB  # the bound for one 35,000-residue pass


def test_esm1b_keeps_its_positional_limit():
    assert device_limits(ESM2_3B, "cpu", "fp32", memory_bytes=24 * GIB).max_residues > 10_000
    assert device_limits(ESM1B, "cpu", "fp32", memory_bytes=24 * GIB).max_residues == 1022
    assert device_limits(ESM1B, "cpu", "fp32", max_residues=5000, memory_bytes=24 * GIB).max_residues == 1022


def test_cpu_token_budget_is_fixed_and_gpu_budget_grows_with_memory():
    assert device_limits(PROT_T5_XL, "cpu", "fp32", memory_bytes=24 * GIB).max_tokens_per_batch == 4096
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
            tokens = sum(min(lengths[i], limits.max_residues) + 2 for i in batch)
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
