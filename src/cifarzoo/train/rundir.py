"""The run folder: the one record a training run leaves, and the one place that knows its format.

    config.json   every setting, data source and statistics, versions, device
    metrics.csv   one row per epoch (METRIC_COLUMNS; empty eval columns where an epoch was not evaluated)
    checkpoint.pt self-describing, atomic, rewritten every checkpoint_every epochs (see checkpoint.py)
    summary.json  final test figures, time, throughput, memory, size (or, for a failed
                  run, status "failed" with kind, reason and diagnosis)
    curves.png    loss and accuracy per epoch

Every file is written atomically (temp file, then rename), so an interrupted run
never leaves a half-written record. :meth:`RunDir.state` says what a folder holds.

A run folder has one writer at a time: :meth:`RunDir.claim` takes an exclusive lock on
``.lock`` in it for the run's life (``flock``: the kernel drops it when the process
dies, so a lock left by a killed run is no obstacle), and refuses a folder that
already holds a run unless told to overwrite it. The lock file is only ever a regular
file the lock made itself: a ``.lock`` that is a symbolic link or special file is
refused, never followed, and one left by an earlier run is replaced, never written into
(it could be a hard link to another file).
"""
from __future__ import annotations

import csv
import io
import math
import os
import pickle
import socket
import stat
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cifarzoo.errors import CifarzooError, FolderBusyError
from cifarzoo.io import atomic_write_bytes, check_target, make_folder, no_space, read_json_object, write_json

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"
LOCK_FILE = ".lock"  # held by the run's one writer (RunDir.claim)

METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "eval_loss", "eval_acc",
                  "epoch_seconds", "elapsed_seconds", "images_per_second")

CHECKPOINT_FORMAT = "cifarzoo.checkpoint"  # the format marker of checkpoint.pt (see checkpoint.py)
STOPPED = "stopped"  # summary.json's status of a run a callback stopped (e.g. early stopping)

# RunDir.state(): what a folder holds, and so what to do with it.
FINISHED = "finished"  # summary.json says finished: keep
FAILED = "failed"  # summary.json says failed (stall, non-finite loss, error): keep
RESUMABLE = "resume"  # an unfinished checkpoint: continue from it
FOREIGN = "foreign"  # a checkpoint that cannot be resumed (unreadable, not ours, or finished without summary)
EMPTY = "empty"  # no checkpoint and no verdict: nothing to continue from


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass(frozen=True)
class RunDir:
    """A run folder (it need not exist yet): its files, their writers and readers, and its state."""

    path: Path

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", Path(path))

    @classmethod
    def new(cls, model: str, root: str | os.PathLike = "runs") -> "RunDir":
        """``runs/<model>-<YYYYmmdd-HHMMSS>`` (a numeric suffix if that exists already)."""
        return cls(new_run_dir(model, root))

    @classmethod
    def of(cls, run_or_checkpoint: str | os.PathLike) -> "RunDir":
        """The run folder of a folder or of a checkpoint file in it."""
        path = Path(run_or_checkpoint)
        return cls(path.parent if path.is_file() else path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def curves_path(self) -> Path:
        return self.path / CURVES_FILE

    # ---- one writer
    def holds_run(self) -> bool:
        """Whether a run (finished, failed or interrupted after its first checkpoint) is recorded here."""
        return any(p.exists() for p in (self.checkpoint_path, self.summary_path, self.metrics_path))

    def claim(self, *, fresh: bool, force: bool = False) -> "RunLock":
        """Make the folder and become its one writer; returns the lock to release when the run ends.

        ``fresh``: a new run will be written here, refused where one is recorded already
        unless ``force`` (its records are then removed). Raises CifarzooError for a folder
        that cannot be made or written, or that another process is writing to.
        """
        created = not os.path.lexists(self.path)
        make_folder(self.path, "run folder")
        lock = RunLock.acquire(self.path / LOCK_FILE)
        lock.created_folder = created
        if fresh and self.holds_run():
            if not force:
                lock.release()
                raise CifarzooError(
                    f"{self.path} already holds a run; continue it with --resume {self.path}, "
                    "pass --force to overwrite it, or choose another --out")
            for p in (self.summary_path, self.metrics_path, self.checkpoint_path, self.curves_path,
                      self.config_path):
                p.unlink(missing_ok=True)
        return lock

    # ---- writing
    def write_config(self, info: dict) -> None:
        write_json(self.config_path, info)

    def write_metrics(self, rows: list[dict]) -> None:
        write_metrics(self.metrics_path, rows)

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_path, summary)

    def write_curves(self, rows: list[dict], title: str = "") -> None:
        from cifarzoo.plots import plot_curves

        plot_curves(self.curves_path, rows, title=title)

    # ---- reading (None / [] for a file that is missing or unreadable)
    def read_info(self) -> dict | None:
        """config.json as written (``{"config": TrainConfig dict, "data": ..., ...}``)."""
        return read_json_object(self.config_path)

    def saved_config(self) -> dict | None:
        """The TrainConfig dict the run was made with."""
        info = self.read_info()
        config = info.get("config") if info else None
        return config if isinstance(config, dict) else None

    def read_summary(self) -> dict | None:
        return read_json_object(self.summary_path)

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        try:
            return read_metrics(self.metrics_path)
        except (OSError, CifarzooError):
            return []

    def state(self) -> str:
        """FINISHED, FAILED, RESUMABLE, FOREIGN or EMPTY (see the constants above).

        The checkpoint's ``finished`` flag is read from its small header record, without
        loading the weights (:func:`checkpoint_header`)."""
        status = (self.read_summary() or {}).get("status")
        if status in (FINISHED, FAILED):
            return status
        if status == STOPPED:  # stopped by a callback (early stopping): as complete as a finished run
            return FINISHED
        if not self.checkpoint_path.exists():
            return EMPTY
        header = checkpoint_header(self.checkpoint_path)
        if header is None or header.get("format") != CHECKPOINT_FORMAT:  # truncated or not ours
            return FOREIGN
        # A checkpoint marked finished without its summary (stopped between the two
        # writes) cannot be resumed.
        return FOREIGN if header.get("finished") is not False else RESUMABLE

    def failure_summary(self, *, model: str, seed: int, epochs: int, data: str | None, kind: str,
                        reason: str, diagnosis: str) -> dict:
        """The summary.json of a run that stopped with an error (written by :meth:`write_summary`)."""
        return {
            "model": model, "status": FAILED, "seed": seed, "epochs": epochs,
            "epochs_completed": len(self.read_metrics()), "kind": kind, "reason": reason,
            "diagnosis": diagnosis, "data_source": data, "failed": timestamp(),
        }


class RunLock:
    """An exclusive ``flock`` on a run folder's lock file (see :meth:`RunDir.claim`)."""

    def __init__(self, path: Path, file):
        self.path, self.file = path, file
        self.created_folder = False  # the claim made the run folder (removed again if left empty)

    @classmethod
    def acquire(cls, path: Path) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # no flock on this platform: no lock
            return cls(path, None)
        while True:
            fd, created = _open_lock(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise FolderBusyError(f"{path.parent} is being written by another training run ({holder}); "
                                    "wait for it to end or choose another folder") from None
            if not _same_file(fd, path):  # a file its previous holder removed while we opened it
                os.close(fd)
            elif not created:  # left by a run that ended without removing it: make our own
                os.close(fd)
                try:
                    path.unlink()
                except OSError as exc:
                    raise CifarzooError(f"{path.parent}: cannot write in the folder ({exc.strerror}); "
                                        "choose another --out") from None
            else:
                break
        f = os.fdopen(fd, "w")
        try:
            f.write(f"pid {os.getpid()} on {socket.gethostname()} since {timestamp()}\n")
            f.flush()
        except OSError as exc:
            f.close()
            raise CifarzooError(no_space(path, exc) or f"{path}: cannot write ({exc.strerror})") from None
        return cls(path, f)

    def release(self) -> None:
        """Give the folder up; a folder the claim made and nothing was written into goes too
        (a run that failed before its first file leaves nothing behind)."""
        if self.file is None:
            return
        try:
            if _same_file(self.file.fileno(), self.path):  # only our own lock file, whatever is there now
                self.path.unlink()
            if self.created_folder and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()
        except OSError:  # e.g. the folder was made read-only: the lock goes with the process anyway
            pass
        self.file.close()
        self.file = None


# Settings that do not change what a run computes (threads: at most its last bits, as on
# another CPU): a run folder that differs only in these is the same run.
SPEED_SETTINGS = ("compile", "nan_check_every", "eval_batch_size", "threads")


def settings_changed(saved: dict, config) -> list[str]:
    """``"name saved (now new)"`` for each setting of TrainConfig ``config`` that differs from a run's ``saved`` one."""
    import json

    from cifarzoo.train.config import TrainConfig

    def normalized(d: dict) -> dict:
        d = json.loads(json.dumps(d))  # tuples as lists, as config.json holds them
        return {k: v for k, v in d.items() if k not in SPEED_SETTINGS}

    # A setting newer than the saved run (e.g. labels) was its default value then.
    want, have = normalized(config.to_dict()), normalized({**TrainConfig().to_dict(), **saved})
    if want.get("batch_size") is None:  # chosen by the trainer from the data size and saved resolved
        have.pop("batch_size", None)
        want.pop("batch_size", None)
    return [f"{k} {have.get(k)!r} (now {want.get(k)!r})"
            for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]


def _open_lock(path: Path) -> tuple[int, bool]:
    """(descriptor, whether this call created the file) of the lock file ``path``, opened without
    following a symbolic link (or blocking on a FIFO); anything but a regular file is refused."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    while True:
        check_target(path)  # before opening: a device is not even opened
        try:
            try:
                return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666), True
            except FileExistsError:
                fd = os.open(path, flags)
        except FileExistsError:  # made again between the two opens
            continue
        except FileNotFoundError as exc:
            if path.parent.is_dir():  # removed between the two opens
                continue
            raise CifarzooError(f"{path.parent}: cannot write in the folder ({exc.strerror})") from None
        except OSError as exc:
            check_target(path)  # ELOOP: made a symbolic link after the check
            raise CifarzooError(no_space(path, exc) or f"{path.parent}: cannot write in the folder "
                                f"({exc.strerror}); choose another --out") from None
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd, False
        os.close(fd)  # made a special file after the check


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` (not followed) is still the file open as ``fd``."""
    try:
        return os.fstat(fd).st_ino == os.lstat(path).st_ino
    except FileNotFoundError:
        return False


class _Opaque:
    """Whatever a checkpoint's header refers to besides plain values (tensors, their storages): a stand-in."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state) -> None:
        pass


class _Dict(dict):
    """An OrderedDict of the header (a state_dict, with its ``_metadata`` attribute)."""


class _HeaderUnpickler(pickle.Unpickler):
    """Reads ``torch.save``'s ``data.pkl`` record with every global replaced by :class:`_Opaque` (no
    code of the file's is ever run) and every tensor's storage by None: the plain values only."""

    def find_class(self, module: str, name: str):
        return _Dict if (module, name) == ("collections", "OrderedDict") else _Opaque

    def persistent_load(self, pid):
        return None


def checkpoint_header(path: str | os.PathLike) -> dict | None:
    """The plain top-level values of a checkpoint (``format``, ``version``, ``epoch``, ``finished``, ...;
    tensors as stand-ins) from its pickle record alone, without reading the weights; None for a file
    that is not a readable ``torch.save`` archive."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")), None)
            if name is None or z.getinfo(name).file_size > MAX_HEADER_BYTES:
                return None
            header = _HeaderUnpickler(io.BytesIO(z.read(name))).load()
    except Exception:  # not a zip, damaged record, or a pickle that is no checkpoint's
        return None
    return header if isinstance(header, dict) else None


MAX_HEADER_BYTES = 64 << 20  # a checkpoint's pickle record holds names and small values (resnet50's: ~100 kB)


def run_state(run_dir: str | os.PathLike) -> str:
    """``RunDir(run_dir).state()``."""
    return RunDir(run_dir).state()


def run_folder(model: str, out_dir: str | os.PathLike | None = None, root: str | os.PathLike = "runs") -> Path:
    """``out_dir``, or else a new :func:`new_run_dir` for ``model`` under ``root``. Every rank of a
    data-parallel run must write to (rank 0: into) the same folder: rank 0 names it, the others get its name."""
    if out_dir is not None:
        return Path(out_dir)
    from cifarzoo.train import distributed

    is_main = distributed.current().is_main
    return Path(distributed.broadcast_object(str(new_run_dir(model, root)) if is_main else None))


def new_run_dir(model: str, root: str | os.PathLike = "runs") -> Path:
    """``runs/<model>-<YYYYmmdd-HHMMSS>`` (a numeric suffix if that exists already); a model given
    from outside the zoo (``"pkg.nets:TinyNet"``) is named without its module."""
    from cifarzoo.models.registry import short_name

    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{short_name(model)}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path


def write_metrics(path: str | os.PathLike, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        # NaN (an epoch without evaluation) is an empty cell; read_metrics reads it back as NaN.
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else f"{v:.6g}" if isinstance(v, float) else v)
                    for k, v in r.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics.csv; one line naming the file and row when it is not what write_metrics writes."""
    rows = []
    try:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if None in r or None in r.values():  # cells beyond or short of the header
                    raise ValueError("its cells do not match the header")
                missing = [c for c in METRIC_COLUMNS if c not in r]
                if missing:
                    raise ValueError(f"no column {missing[0]!r}")
                rows.append({k: (int(v) if k == "epoch" else (float(v) if v != "" else float("nan")))
                             for k, v in r.items()})
    except (ValueError, csv.Error) as exc:  # UnicodeDecodeError is a ValueError too
        raise CifarzooError(f"{path}: damaged metrics file, row {len(rows) + 1}: {exc}") from None
    return rows
