"""Files written so that nothing already saved is lost or half-written: one copy of each helper.

Every writer goes through :func:`atomic_file`: the bytes go to a temp file beside the
target (same folder, so the same file system), are flushed and fsynced, get the
permissions a plain ``open()`` would give, and only then are renamed over the target.
A crash or Ctrl-C mid-write leaves the previous file intact and no partial file under
the final name; a full disk is one line naming the file (:func:`no_space`).

Nothing is written through, or in place of, anything but a regular file or a folder:
a symbolic link, FIFO, socket or device at a target (a file, or a folder named to
write into) is refused (:func:`check_target`), never followed or replaced.
"""
from __future__ import annotations

import contextlib
import errno
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


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "a special file"


def check_target(path: str | os.PathLike, *, folder: bool = False) -> None:
    """Refuse to write to ``path`` where something other than a regular file (``folder``: a folder)
    is there already: a symbolic link, FIFO, socket or device is never followed or replaced.

    Only ``path`` itself is looked at (not the folders above it, which are the user's to choose).
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:  # nothing there (or a parent that is no folder: the write itself says so)
        return
    if stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise CifarzooError(f"{path} is a folder; give a file name")
    raise CifarzooError(f"{path} is {_kind(mode)}, not a {'folder' if folder else 'regular file'}; cifarzoo "
                        "never writes through or over one: remove it or choose another path")


def make_folder(path: str | os.PathLike, what: str = "folder") -> Path:
    """Create folder ``path`` (and its parents) unless it is one already; see :func:`check_target`."""
    path = Path(path)
    check_target(path, folder=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CifarzooError(f"{path}: exists and is not a folder; choose another --out") from None
    except OSError as exc:
        raise CifarzooError(no_space(path, exc) or f"{path}: cannot create the {what} ({exc.strerror}); "
                            "choose another --out") from None
    return path


def no_space(path: str | os.PathLike, exc: BaseException) -> str | None:
    """The one-line message for a write of ``path`` that failed because the disk is full, else None.

    ``exc`` may wrap the OSError: torch.save raises a RuntimeError whose context is the ENOSPC.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return (f"{path}: no space left on the device (or over the disk quota); it was not written and any "
                    "earlier version of it is unchanged: free some space and try again")
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[tuple[IO[bytes], Path]]:
    """Yield ``(binary file, temp path)`` beside ``path``; on a clean exit fsync and rename it over ``path``.

    On any exception (Ctrl-C included) the temp file is deleted and ``path`` is untouched.
    The temp path lets a caller check the written file (e.g. load it) before it is renamed.
    A target that is not a regular file is refused (:func:`check_target`), before the write
    and again before the rename; a full disk is a CifarzooError (:func:`no_space`).
    """
    path = Path(path)
    check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise CifarzooError(no_space(path, exc) or f"cannot write {path} ({exc.strerror or exc})") from None
    tmp = Path(name)
    try:
        _normal_permissions(fd)
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
        check_target(path)  # nothing put there meanwhile that the rename would replace
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        message = no_space(path, exc)
        if message:
            raise CifarzooError(message) from None
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


def png_data_uri(png: bytes) -> str:
    """``png`` as a ``data:`` URI, for self-contained HTML (the study, run and tuning reports)."""
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


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
