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


def start_result(benchmark: str, device, argv: list[str] | None) -> dict:
    """A results record's head: the benchmark's name, then :func:`header` with the command as typed
    (``argv``: the script's arguments; None: this process's)."""
    args = sys.argv[1:] if argv is None else argv
    return {"benchmark": benchmark, **header(device, [f"benchmarks/{benchmark}.py", *args])}


def markdown_head(title: str, result: dict, *, device_note: str = "", note: str = "") -> list[str]:
    """The lines every markdown report starts with: what, on which device, when, which commit and the command."""
    m = result["machine"]
    return [f"{title} on {m['device_name']}{device_note} — {result['date']}, commit {result['commit']}, "
            f"torch {m['torch']}{note}", "", f"`{result['command']}`", ""]


def fmt(value, spec: str) -> str:
    """``format(value, spec)``, or "-" for a value that was not measured (None)."""
    return "-" if value is None else format(value, spec)


def comma_list(text: str) -> list[str]:
    """``"vgg16, resnet18,"`` -> ["vgg16", "resnet18"]."""
    return [t.strip() for t in text.split(",") if t.strip()]


def add_output_options(parser, every: str) -> None:
    """--json and --markdown, both rewritten after ``every`` measured item (see :func:`save`)."""
    parser.add_argument("--json", metavar="OUT", help=f"write the results here (rewritten after every {every})")
    parser.add_argument("--markdown", metavar="OUT", help="write the tables here as markdown")


def write_json(path, obj) -> None:
    """Write atomically, so a run killed by a time cap leaves the last complete file."""
    from cifarzoo.io import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=float) + "\n").encode())


def write_text(path, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def save(args, result: dict, markdown) -> None:
    """Rewrite ``--json`` and ``--markdown`` after every model or run, so a run stopped by a time cap
    (or killed) keeps everything measured before it."""
    if getattr(args, "json", None):
        write_json(args.json, result)
    if getattr(args, "markdown", None):
        write_text(args.markdown, markdown(result))


def failure(exc: BaseException) -> dict:
    """What one model's or run's error leaves in the results: the others are still measured.

    An exception that is not one of cifarzoo's own one-line errors (CUDA out of memory,
    a compiler failure, any RuntimeError) keeps its type, so the record says what broke.
    """
    from cifarzoo.errors import CifarzooError

    first = (str(exc).strip().splitlines() or [""])[0]
    reason = first if isinstance(exc, CifarzooError) else f"{type(exc).__name__}: {first}"
    return {"status": "failed", "reason": reason[:300]}


def attempt(measure, device, *args) -> dict:
    """``measure(*args)``'s record, or, if it raises, :func:`failure`'s after freeing the device's memory:
    one model's or run's failure is its result, and the next one is measured."""
    try:
        return measure(*args)
    except Exception as exc:  # noqa: BLE001  a stall, a non-finite loss, out of memory, any crash
        free_device_memory(device)
        return failure(exc)


def finish(result: dict, items: str, markdown) -> int:
    """Print the markdown report; the exit status: 0 when every one of ``result[items]`` finished, else 1."""
    print(markdown(result))
    return 0 if all(r["status"] == "finished" for r in result[items]) else 1


def free_device_memory(device) -> None:
    """After a failed model, give its CUDA memory back before the next (an OOM must not cascade)."""
    import gc

    gc.collect()
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        torch.cuda.empty_cache()


def compile_problem(device: str) -> str | None:
    """None when torch.compile trains a tiny conv net on ``device`` (forward and backward), else why not.

    The GPU script calls this once before any stage: without a working Triton (CUDA) or C++
    (CPU) toolchain every compiled stage would fail model by model, each after its own wait.
    """
    import torch
    from torch import nn

    try:
        dev = torch.device(device)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                              nn.Linear(8 * 8 * 8, 10)).to(dev)
        x = torch.randn(4, 3, 8, 8, device=dev)
        torch.compile(model)(x).square().mean().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    except Exception as exc:  # any failure means: run eager
        return failure(exc)["reason"]
    return None


if __name__ == "__main__":  # python benchmarks/_common.py compile-check DEVICE: exit 0 if compile works
    if sys.argv[1:2] != ["compile-check"] or len(sys.argv) != 3:
        sys.exit("usage: python benchmarks/_common.py compile-check DEVICE")
    sys.path.insert(0, str(REPO / "src"))
    problem = compile_problem(sys.argv[2])
    print("torch.compile works" if problem is None else f"torch.compile fails: {problem}")
    sys.exit(0 if problem is None else 1)
