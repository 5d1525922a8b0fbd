"""Read the official CIFAR-10 pickles without letting a pickle run code.

``pickle.load`` will call any importable function a file names, so a crafted
``data_batch_1`` could run ``os.system`` the moment it is read. The official files
only ever name what numpy needs to rebuild an array; :class:`RestrictedUnpickler`
allows exactly that and refuses every other global, before anything is called.

What the official files contain (Python 2 pickles, protocol 2):
- dicts, lists, tuples, Python 2 ``str`` (read as ``bytes`` with ``encoding="bytes"``),
  ints, ``None``/``True``/``False`` — all built by pickle opcodes, no globals;
- numpy arrays, as ``numpy.core.multiarray._reconstruct(numpy.ndarray, ...)`` plus a
  ``numpy.dtype(...)`` and ``__setstate__`` with the raw bytes.
Numpy 2 renamed ``numpy.core`` to ``numpy._core``; files written by either name load.
``scalar`` (a numpy scalar, e.g. an ``np.int64`` label) is allowed too, as files
re-saved by other tools sometimes contain them; it only builds a number from bytes.
"""
from __future__ import annotations

import io
import pickle
from typing import IO

import numpy as np

from cifarzoo.errors import DataError

# Take the objects from numpy's own reduce protocol instead of importing
# numpy.core.multiarray (deprecated in numpy 2, absent as numpy._core in numpy 1).
_RECONSTRUCT = np.ndarray((0,), np.uint8).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]

_ALLOWED: dict[tuple[str, str], object] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _RECONSTRUCT
    _ALLOWED[(_mod, "scalar")] = _SCALAR
_ALLOWED[("numpy", "ndarray")] = np.ndarray
_ALLOWED[("numpy", "dtype")] = np.dtype


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle asked for a global that is not on the allow-list."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.module = module
        self.name = name


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals listed in ``_ALLOWED``.

    Every way a pickle can call something (``REDUCE``, ``BUILD``, ``INST``, ``OBJ``,
    ``NEWOBJ``) needs a callable obtained through :meth:`find_class` first, so
    refusing there refuses them all. Persistent ids are refused by the base class.
    """

    def find_class(self, module: str, name: str):  # noqa: D102 - see class doc
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None


def safe_load(data: bytes | IO[bytes], *, source: str) -> object:
    """Unpickle ``data`` (bytes or a binary file object) with the allow-list above.

    ``encoding="bytes"`` reads Python 2 ``str`` as ``bytes``, so the official files'
    keys come back as ``b"data"``, ``b"labels"``, ``b"label_names"``.
    ``source`` names the file in error messages (a path, or ``archive:member``).

    Raises DataError when the pickle asks for anything else (nothing from it has been
    called at that point) or is not a readable pickle at all (truncated, corrupt).
    """
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        return RestrictedUnpickler(stream, encoding="bytes").load()
    except RefusedGlobal as exc:
        raise DataError(
            f"{source}: refused to unpickle: it asks for {exc.module}.{exc.name}, which the "
            "official CIFAR-10 files never contain (the file may be crafted to run code)"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # any malformation: EOFError, UnpicklingError, ValueError, ...
        raise DataError(
            f"{source}: not a readable CIFAR-10 pickle, the file is truncated or corrupt "
            f"({type(exc).__name__}: {exc})"
        ) from None
