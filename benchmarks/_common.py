"""What every benchmark records beside its numbers: when, where, which code, which command."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """Short commit of the working tree, "+dirty" when it has changes; $BENCH_COMMIT wins.

    A copy of the working tree without .git (e.g. one copied to a GPU machine) gets
    the commit from whoever starts the run, in $BENCH_COMMIT.
    """
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine(device) -> dict:
    """Device name, CPU, thread count and versions, for the record."""
    import torch

    info = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # cifarzoo sets PASSIVE unless set
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from cifarzoo.device import cpu_bf16

    info["cpu_bf16"] = cpu_bf16()  # "AMX-BF16", "AVX512-BF16" or None: what --precision auto decides on
    if getattr(device, "type", str(device)) == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["tf32_conv"] = bool(torch.backends.cudnn.allow_tf32)
        info["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    else:
        info["device_name"] = f"cpu ({info['cpu']}, {info['torch_threads']} threads)"
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def header(device, argv: list[str] | None = None) -> dict:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": git_commit(),
        "command": " ".join(["python"] + [str(a) for a in (argv if argv is not None else sys.argv)]),
        "machine": machine(device),
    }


def write_json(path, obj) -> None:
    """Write atomically, so a run killed by a time cap leaves the last complete file."""
    from cifarzoo.io import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=float) + "\n").encode())
