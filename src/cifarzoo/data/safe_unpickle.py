"""Read the official CIFAR pickles without letting a pickle run code or exhaust memory.

``pickle.load`` will call any importable function a file names, so a crafted
``data_batch_1`` could run ``os.system`` the moment it is read. The official files
only ever name what numpy needs to rebuild an array; :class:`RestrictedUnpickler`
allows exactly that and refuses every other global, before anything is called.

What the official files contain (Python 2 pickles, protocol 2):
- dicts, lists, tuples, Python 2 ``str`` (read as ``bytes`` with ``encoding="bytes"``),
  ints, ``None``/``True``/``False`` — all built by pickle opcodes, no globals;
- numpy arrays, as ``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b"b")``
  plus a ``numpy.dtype(...)`` and ``__setstate__`` with the raw bytes.
Numpy 2 renamed ``numpy.core`` to ``numpy._core``; files written by either name load.
Files re-saved by Python 3 are accepted too: with protocol 2 every ``bytes`` goes
through ``_codecs.encode(str, "latin1")`` (allowed for latin-1 only: it just builds
bytes), with protocol 5 arrays come as ``numpy._core.numeric._frombuffer``, and
numpy scalars (an ``np.int64`` label) as ``numpy.core.multiarray.scalar``.

Not running code is half of it; the other half is not allocating what a file merely
declares. A 22-byte pickle can declare a 2**40-byte string, a 117-byte one an array
of 400,000 images. So, before anything is allocated:
- every length the pickle declares (strings, bytes, frames, big ints) is checked
  against :data:`MAX_BATCH_BYTES`, the most a CIFAR batch file can hold;
- every array (``_reconstruct``, ``__setstate__``, ``_frombuffer``) is checked
  against the same bound, counted over the whole file, and object arrays are refused;
- the number of opcodes is bounded (:data:`MAX_OPCODES`), since one-byte opcodes
  such as ``EMPTY_DICT`` build 64-byte objects;
- what calls build from objects already read counts too: the bytes of the file read
  so far plus every ``_codecs.encode`` output (a memoized string may be passed to it
  any number of times) stay within :data:`MAX_BATCH_BYTES`.
This needs the pure-Python unpickler (``pickle._Unpickler``): the C one allocates a
declared length before reading it and cannot be hooked per opcode. It reads the
150 MB CIFAR-100 ``train`` file in about a second.
"""
from __future__ import annotations

import io
import pickle
import struct
from typing import IO

import numpy as np

from cifarzoo.errors import DataError

MAX_IMAGES = 60_000  # CIFAR-10 and CIFAR-100 hold 60,000 images in all
ROW_BYTES = 3 * 32 * 32  # one image: R, G, B planes of 32x32 uint8
# One file (or all files of a source together) holds at most MAX_IMAGES rows plus
# their labels and file names (the official files spend about 40 bytes per image on those).
MAX_BATCH_BYTES = MAX_IMAGES * (ROW_BYTES + 256)  # 199,680,000
# The official CIFAR-100 train file runs about 4 opcodes per image (file name, memo
# entry, fine and coarse label); 8 per image leaves room for other writers.
MAX_OPCODES = MAX_IMAGES * 8 + 10_000

# Take the objects from numpy's own reduce protocol instead of importing
# numpy.core.multiarray (deprecated in numpy 2, absent as numpy._core in numpy 1).
_RECONSTRUCT = np.ndarray((0,), np.uint8).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1, np.uint8).__reduce_ex__(5)[0]


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle asked for a global that is not on the allow-list."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.module = module
        self.name = name


class TooLarge(pickle.UnpicklingError):
    """The pickle declares more than a CIFAR batch file can hold; nothing was allocated."""


class _NdarrayType:
    """What the global ``numpy.ndarray`` resolves to: a token, not the class.

    The official files only pass ``numpy.ndarray`` to ``_reconstruct``; handing out
    the real class would let ``REDUCE``/``NEWOBJ`` call ``ndarray(shape)`` directly
    and allocate any shape the file declares.
    """

    __slots__ = ()  # no __dict__: BUILD cannot set attributes on this shared token

    def __call__(self, *args, **kwargs):
        raise RefusedGlobal("numpy", "ndarray called directly")


_NDARRAY = _NdarrayType()


class _BoundedReader(io.BytesIO):
    """The file's bytes; refuses any single read longer than ``limit`` before reading it."""

    def __init__(self, data: bytes, limit: int):
        super().__init__(data)
        self.limit = limit

    def read(self, n: int = -1) -> bytes:
        if n is not None and n > self.limit:
            raise TooLarge(f"it declares a {n:,}-byte object, more than a CIFAR batch file can "
                           f"hold (at most {self.limit:,} bytes)")
        data = super().read(n)
        if n is not None and 0 <= n != len(data):
            raise pickle.UnpicklingError("pickle data was truncated")
        return data

    def readline(self, size: int | None = -1) -> bytes:
        line = super().readline(size)
        if not line.endswith(b"\n"):  # the C unpickler checks this, the Python one does not
            raise pickle.UnpicklingError("pickle data was truncated")
        return line


def _counted(op):
    def step(self):
        self._opcodes += 1
        if self._opcodes > self.max_opcodes:
            raise TooLarge(f"it holds more than {self.max_opcodes:,} pickle opcodes, more than a "
                           f"CIFAR batch file has")
        op(self)
    return step


class RestrictedUnpickler(pickle._Unpickler):
    """An Unpickler that resolves only the globals allowed in :meth:`find_class`,
    and bounds every allocation a file declares (see the module doc).

    Every way a pickle can call something (``REDUCE``, ``BUILD``, ``INST``, ``OBJ``,
    ``NEWOBJ``) needs a callable obtained through :meth:`find_class` first, so
    refusing there refuses them all. Persistent ids are refused by the base class.
    ``data`` is the whole file, already in memory (its size checked by the caller).
    """

    def __init__(self, data: bytes, *, max_bytes: int = MAX_BATCH_BYTES, max_opcodes: int = MAX_OPCODES):
        self._reader = _BoundedReader(data, max_bytes)
        super().__init__(self._reader, encoding="bytes")
        self.max_bytes = max_bytes
        self._made = 0  # bytes built by calls (_codecs.encode), on top of the file's own bytes
        self.max_opcodes = max_opcodes
        self._opcodes = 0
        self._array_bytes = 0  # declared by all arrays so far
        self._allowed = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): self._dtype,
                         ("_codecs", "encode"): self._encode,
                         ("__builtin__", "bytes"): self._empty_bytes, ("builtins", "bytes"): self._empty_bytes}
        for mod in ("numpy.core", "numpy._core"):
            self._allowed[(f"{mod}.multiarray", "_reconstruct")] = self._reconstruct
            self._allowed[(f"{mod}.multiarray", "scalar")] = self._scalar
            self._allowed[(f"{mod}.numeric", "_frombuffer")] = self._frombuffer

    def find_class(self, module: str, name: str):  # noqa: D102 - see class doc
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None

    # ---- what the allowed globals do: check first, then build

    def _claim(self, shape: object, dtype: np.dtype) -> tuple[int, ...]:
        """Account for an array of ``shape`` x ``dtype`` before it exists."""
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
        if dtype.hasobject:
            raise RefusedGlobal("numpy", "ndarray of Python objects")
        nbytes = dtype.itemsize
        for d in shape:
            nbytes *= d
        self._array_bytes += nbytes
        if self._array_bytes > self.max_bytes:
            what = f"a {dtype} array of shape {shape} ({nbytes:,} bytes)" if nbytes > self.max_bytes else \
                f"arrays of {self._array_bytes:,} bytes in all"
            raise TooLarge(f"it declares {what}, more than a CIFAR batch file can hold (at most "
                           f"{self.max_bytes:,} bytes, {MAX_IMAGES:,} images)")
        return shape

    def _reconstruct(self, subtype, shape, dtype):
        if subtype is not _NDARRAY:
            raise pickle.UnpicklingError(f"_reconstruct of {subtype!r}, expected numpy.ndarray")
        dtype = self._dtype(dtype)
        return _RECONSTRUCT(np.ndarray, self._claim(shape, dtype), dtype)

    def _frombuffer(self, buf, dtype, shape, order):
        if not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError("_frombuffer without a byte buffer and a dtype")
        return _FROMBUFFER(buf, dtype, self._claim(shape, dtype), order)

    def _scalar(self, dtype, data=None):
        if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes) \
                or len(data) != dtype.itemsize:
            raise pickle.UnpicklingError("a numpy scalar that is not a number built from its bytes")
        return _SCALAR(dtype, data)

    @staticmethod
    def _dtype(obj, align=False, copy=True):
        if not isinstance(obj, (str, bytes)):
            raise pickle.UnpicklingError(f"numpy dtype from {type(obj).__name__}, expected a type code")
        # copy=True always: a shared dtype (np.dtype("u1") itself) must not get the file's __setstate__.
        return np.dtype(obj.decode("latin-1") if isinstance(obj, bytes) else obj, bool(align), True)

    def _encode(self, obj, encoding="utf-8", errors="strict"):
        # How Python 3 pickles bytes at protocol 2; other codecs (zlib, ...) are refused.
        if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
            raise RefusedGlobal("_codecs", f"encode with {encoding!r}")
        # Opcodes build at most the bytes they read; a call can build the same memoized
        # string again and again (60 x 50 MB), so count what every call builds, first.
        self._made += len(obj)  # latin-1: one byte a character
        if self._reader.tell() + self._made > self.max_bytes:
            raise TooLarge(f"its strings and the bytes built from them come to more than {self.max_bytes:,} "
                           f"bytes, more than a CIFAR batch file can hold (one string encoded many times)")
        return obj.encode("latin-1")

    @staticmethod
    def _empty_bytes(*args):
        if args:  # bytes(2**40) would allocate a terabyte
            raise RefusedGlobal("builtins", "bytes with arguments")
        return b""

    # ---- opcodes whose base version allocates or builds before we can check

    def _load_build(self):
        state, inst = self.stack[-1], self.stack[-2]
        if not isinstance(inst, (np.ndarray, np.dtype)):  # the only objects official files BUILD
            raise pickle.UnpicklingError(f"BUILD on {type(inst).__name__}, expected a numpy array or dtype")
        if isinstance(inst, np.ndarray):  # state: (version, shape, dtype, is_fortran, rawdata)
            if not (isinstance(state, tuple) and len(state) in (4, 5) and isinstance(state[-3], np.dtype)):
                raise pickle.UnpicklingError("numpy array state is not (version, shape, dtype, order, data)")
            self._claim(state[-4], state[-3])
        pickle._Unpickler.load_build(self)

    def _load_bytearray8(self):
        (n,) = struct.unpack("<Q", self.read(8))
        self.append(bytearray(self.read(n)))  # read() checks n first; the base allocates n first

    dispatch = {op: _counted(fn) for op, fn in pickle._Unpickler.dispatch.items()}
    dispatch[pickle.BUILD[0]] = _counted(_load_build)
    dispatch[pickle.BYTEARRAY8[0]] = _counted(_load_bytearray8)


def _read_bounded(f: IO[bytes], max_bytes: int) -> bytes | None:
    """The whole of ``f``, or None once it proves longer than ``max_bytes``.

    Never ``f.read(max_bytes)``: a file object allocates the size it is asked for.
    """
    buf = io.BytesIO()
    while chunk := f.read(1 << 20):
        if buf.tell() + len(chunk) > max_bytes:
            return None
        buf.write(chunk)
    return buf.getvalue()


def safe_load(data: bytes | IO[bytes], *, source: str, max_bytes: int = MAX_BATCH_BYTES) -> object:
    """Unpickle ``data`` (bytes or a binary file object) with the checks above.

    ``encoding="bytes"`` reads Python 2 ``str`` as ``bytes``, so the official files'
    keys come back as ``b"data"``, ``b"labels"``, ``b"label_names"``.
    ``source`` names the file in error messages (a path, or ``archive:member``).
    A file object is read whole, at most ``max_bytes`` of it.

    Raises DataError when the pickle asks for anything else (nothing from it has been
    called at that point), declares more than a CIFAR batch file can hold (nothing
    that large has been allocated), or is not a readable pickle at all (truncated,
    corrupt).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        data = _read_bounded(data, max_bytes)
    if data is None or len(data) > max_bytes:
        raise DataError(f"{source}: refused: larger than a CIFAR batch file can be "
                        f"(at most {max_bytes:,} bytes)")
    try:
        return RestrictedUnpickler(bytes(data), max_bytes=max_bytes).load()
    except RefusedGlobal as exc:
        raise DataError(
            f"{source}: refused to unpickle: it asks for {exc.module}.{exc.name}, which the "
            "official CIFAR files never contain (the file may be crafted to run code)"
        ) from None
    except TooLarge as exc:
        raise DataError(f"{source}: refused to unpickle: {exc}") from None
    except MemoryError:
        raise DataError(f"{source}: not enough memory to read it ({len(data):,} bytes)") from None
    except Exception as exc:  # any malformation: EOFError, UnpicklingError, ValueError, ...
        raise DataError(
            f"{source}: not a readable CIFAR pickle, the file is truncated or corrupt "
            f"({type(exc).__name__}: {exc})"
        ) from None
