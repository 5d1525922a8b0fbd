"""Device, precision and autocast resolution, and what the device is called: one place for each.

Training, evaluation, prediction and the benchmarks all ask here, so ``--device auto``
and ``--precision auto`` mean the same thing everywhere.
"""
from __future__ import annotations

import contextlib
import os
import platform
import resource

import torch

from cifarzoo.errors import CifarzooError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CifarzooError("--device cuda: no CUDA GPU is available to this torch build; use --device cpu")
    return torch.device(name)


# --------------------------------------------------------------------------- the CPU
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: not Linux)."""
    return frozenset(_cpuinfo("flags").split())


def cpu_model_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` says."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _cpuinfo(key: str) -> str:
    """The first CPU's ``key`` line in /proc/cpuinfo, or "" (no such file or line)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() == key:
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def cpu_bf16() -> str | None:
    """The CPU's native bf16 arithmetic as oneDNN uses it: "AMX-BF16", "AVX512-BF16", or None.

    Needs torch's oneDNN (mkldnn) with bf16 support and the CPU flag; without them bf16
    autocast on CPU is emulated and slower than fp32.
    """
    if not _mkldnn_bf16():
        return None
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX-BF16"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


def _mkldnn_bf16() -> bool:
    """Whether this torch's oneDNN (mkldnn) runs bf16 on this CPU."""
    if not torch.backends.mkldnn.is_available():
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else True


# bf16 autocast where the CPU multiplies bf16 natively: faster than fp32 at every width and
# thread count measured with the cores to itself. Training step, images per second of
# bf16+channels_last vs fp32+channels_last, torch 2.13 (benchmarks/RESULTS.md): AMD EPYC (Zen 4,
# AVX512-BF16, no AMX) fastnet at full width 2.25x on two threads (462 vs 205; 2.42x plain fp32),
# 1.93x on one; the quick preset's widths 1.10-1.40x on two threads, 1.29-1.68x on one. Intel
# Xeon with AMX, two threads: 1.03-1.37x at widths 0.125-0.5, 1.6-4.1x at full width. With the
# cores busy with other work, two-thread bf16 on the AMD machine ran up to 10x slower than fp32
# (oneDNN's threads wait on each other): there, train on one thread (--threads 1).
def choose_precision(name: str, device: torch.device) -> tuple[str, str]:
    """``(precision, why)`` for ``--precision name`` on ``device``.

    ``auto``: bf16 autocast on GPUs that support it; on CPU bf16 where the CPU multiplies bf16
    natively (AMX-BF16 or AVX512-BF16) and torch's oneDNN uses it; fp32 otherwise.
    """
    if name == "fp16" and device.type != "cuda":
        raise CifarzooError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if name != "auto":
        return name, "asked for"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: bf16, the GPU supports it"
        return "fp32", "auto: fp32, the GPU has no bf16"
    native = cpu_bf16()
    if native is None:
        return "fp32", "auto: fp32, the CPU has no native bf16 (AMX-BF16 or AVX512-BF16)"
    return "bf16", f"auto: bf16, the CPU has {native}"


def resolve_precision(name: str, device: torch.device) -> str:
    """The precision of :func:`choose_precision`, without the reason."""
    return choose_precision(name, device)[0]


def physical_cores(cpus: list[int] | None = None, sys_cpu: str = "/sys/devices/system/cpu") -> int:
    """Physical cores among ``cpus`` (default: the CPUs this process may run on); hyper-thread
    siblings, which share a core's (package, core id) in ``sys_cpu``'s topology, count once."""
    if cpus is None:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topo = f"{sys_cpu}/cpu{cpu}/topology"
        try:
            with open(f"{topo}/physical_package_id") as f1, open(f"{topo}/core_id") as f2:
                cores.add((f1.read().strip(), f2.read().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology: count the CPU itself
    return max(1, len(cores))


def resolve_threads(requested: int | None) -> tuple[int, str]:
    """``(torch threads, why)`` for CPU work: ``requested``; else $OMP_NUM_THREADS where set (torchrun
    and Ray set it for each worker); else the physical cores this process may use."""
    cpus = os.cpu_count() or 1
    if requested is not None:
        if requested > cpus:  # torch segfaults at 99,999 threads and crawls at 10,000
            raise CifarzooError(f"--threads {requested}: more than the {cpus} CPUs present")
        return requested, "asked for"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    note = ""
    if env.isdigit() and 1 <= int(env) <= cpus:
        return int(env), "OMP_NUM_THREADS"
    if env:
        note = f"; OMP_NUM_THREADS={env[:20]!r} ignored: not a count of 1..{cpus} CPUs present"
    n = physical_cores()
    return n, f"the {n} physical core{'s' if n != 1 else ''}{note}"


def resolve_compile(mode: str, device: torch.device, total_steps: int) -> bool:
    """Whether training wraps the model in torch.compile (``auto``: long GPU runs only).

    benchmarks/throughput.py calls this too, so its "project path" is what fit does.
    """
    return mode == "on" or (mode == "auto" and device.type == "cuda" and total_steps >= 1000)


def autocast_context(device: torch.device, precision: str):
    """Autocast for ``precision`` in ("fp32", "bf16", "fp16") on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model_name()}, {torch.get_num_threads()} threads)"


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """``(bytes, what was measured)``: the device's peak allocation, or on CPU the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    # ru_maxrss is KiB on Linux: the whole process's peak resident memory.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process peak RSS"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU): for wall-clock timing."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
