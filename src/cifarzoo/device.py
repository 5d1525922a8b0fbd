"""Device, precision and autocast resolution, and what the device is called: one place for each.

Training, evaluation, prediction and the benchmarks all ask here, so ``--device auto``
and ``--precision auto`` mean the same thing everywhere.
"""
from __future__ import annotations

import contextlib
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


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on GPUs that support it, fp32 on CPU (bf16 on CPU only when asked:
    measured faster with one thread and slower with two on a shared machine, see benchmarks/RESULTS.md)."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise CifarzooError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return name


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
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


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
