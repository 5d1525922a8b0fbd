"""Files written so that nothing already saved is lost or half-written: one copy of each helper.

Every writer goes through :func:`atomic_file`: the bytes go to a temp file beside the
target (same folder, so the same file system), are flushed and fsynced, get the
permissions a plain ``open()`` would give, and only then are renamed over the target.
A crash or Ctrl-C mid-write leaves the previous file intact and no partial file under
the final name.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from cifarzoo.errors import CifarzooError


def _normal_permissions(fd: int) -> None:
    """mkstemp makes the file owner-only (0600); give it what a plain open() would (0666 less the umask)."""
    if hasattr(os, "fchmod"):  # POSIX
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[tuple[IO[bytes], Path]]:
    """Yield ``(binary file, temp path)`` beside ``path``; on a clean exit fsync and rename it over ``path``.

    On any exception (Ctrl-C included) the temp file is deleted and ``path`` is untouched.
    The temp path lets a caller check the written file (e.g. load it) before it is renamed.
    """
    path = Path(path)
    if path.is_dir():
        raise CifarzooError(f"{path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise CifarzooError(f"cannot write {path} ({exc.strerror or exc})") from None
    tmp = Path(name)
    try:
        _normal_permissions(fd)
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def open_regular(path: str | os.PathLike, error: type[CifarzooError] = CifarzooError) -> IO[bytes]:
    """``path`` opened for binary reading, refused with ``error`` unless it is a regular file.

    A FIFO would block the reader forever and ``/dev/zero`` never ends, so only regular
    files (symlinks to them included) are read. The open is non-blocking (opening a FIFO
    does not wait for a writer) and the check is an ``fstat`` of the open file, so what is
    read is what was checked.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise error(f"{path}: refused: it is {kind}; only regular files are read")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def atomic_write_bytes(path: str | os.PathLike, write: Callable[[IO[bytes]], Any] | bytes) -> None:
    """Write ``bytes`` (or call ``write(fileobj)``) to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path) as (f, _tmp):
        if isinstance(write, (bytes, bytearray)):
            f.write(write)
        else:
            write(f)


def json_safe(obj: Any) -> Any:
    """JSON has no NaN/Infinity: turn them into None (null) rather than emit invalid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as JSON that every parser reads: NaN/inf as null, never bare ``NaN`` (``allow_nan=False``)."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON (NaN/inf as null), written atomically."""
    text = json_text(obj) + "\n"
    atomic_write_bytes(path, text.encode())


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CifarzooError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise CifarzooError(f"{path}: not valid JSON ({exc})") from None


def read_json_object(path: str | os.PathLike) -> dict | None:
    """The JSON object in ``path``, or None when the file is missing, not valid JSON or not an object."""
    try:
        obj = read_json(path)
    except (CifarzooError, OSError):
        return None
    return obj if isinstance(obj, dict) else None


def save_figure(fig, path: str | os.PathLike, *, format: str = "png", dpi: float | None = None, **kwargs) -> None:
    """Render a matplotlib ``Figure`` (object-oriented API, no pyplot state) to ``path`` atomically."""
    atomic_write_bytes(path, figure_bytes(fig, format=format, dpi=dpi, **kwargs))


def figure_bytes(fig, *, format: str = "png", dpi: float | None = None, **kwargs) -> bytes:
    """A matplotlib ``Figure`` rendered in memory (PNG by default), e.g. for inline HTML.

    Every text is drawn literally: class and model names come from data, and a name such as
    ``pay_$_low_$`` would otherwise be parsed as mathtext (and crash the figure)."""
    import matplotlib
    from matplotlib.text import Text

    buf = io.BytesIO()
    with matplotlib.rc_context({"text.parse_math": False}):  # texts made while drawing (tick labels)
        for text in fig.findobj(Text):  # texts made before
            text.set_parse_math(False)
        fig.savefig(buf, format=format, dpi=dpi if dpi is not None else "figure", **kwargs)
    return buf.getvalue()
