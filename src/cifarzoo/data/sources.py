"""Every place CIFAR-10 and CIFAR-100 can come from, turned into one :class:`Dataset`.

``load(spec, labels=...)`` is the only entry point the rest of cifarzoo needs;
``spec`` is the ``--data`` value:

=====================================  ===============================================
``None``, ``"default"`` or ``cifar10``  ``$CIFARZOO_DATA``, else ``~/.cache/cifarzoo``;
                                       the official CIFAR-10 archive is downloaded
                                       there if absent
``"cifar100"``                         the same folder, for CIFAR-100
``"sample"``                           6,000 real CIFAR-10 images bundled with the package
path to ``*.tar.gz`` (or .tar)         the official ``cifar-10-python.tar.gz`` or
                                       ``cifar-100-python.tar.gz``, read in place
folder                                 is or contains ``cifar-10-batches-py/`` or
                                       ``cifar-100-python/``, or contains one of the
                                       archives, or is an image-folder root
                                       ``ROOT/train/<class>/*.png|jpg`` + ``ROOT/test/<class>/*``
=====================================  ===============================================

``labels`` is CIFAR-100's choice of "fine" (100 classes, default) or "coarse" (20).
The official files are unpickled by :mod:`cifarzoo.data.safe_unpickle`, and their
sizes (file sizes, archive members' header sizes) are checked against what a CIFAR
dataset can be before they are read. Nothing here writes to disk except the
download, which goes to a temp file in the target folder and is renamed into place
only after its md5 matches. Errors are :class:`~cifarzoo.errors.DataError` with the
offending file in the message.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import os
import tarfile
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

import numpy as np
from PIL import ExifTags, Image, ImageOps

from cifarzoo.data.dataset import Dataset
from cifarzoo.data.safe_unpickle import MAX_BATCH_BYTES, MAX_IMAGES, ROW_BYTES, safe_load
from cifarzoo.errors import DataError
from cifarzoo.io import atomic_file, open_regular
from cifarzoo.progress import printable

# Module-level so tests (and mirrors) can point them elsewhere; read at call time.
DOWNLOAD_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
DOWNLOAD_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation, not for the whole 163 MB

IMAGE_SIZE = 32
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Every image is shrunk to 32x32; 50 Mpx covers a full-resolution 48-Mpx phone photo and keeps a
# decoded image (at most 4 bytes a pixel) near 200 MB. Pillow's own bomb limit is 179 Mpx.
MAX_IMAGE_PIXELS = 50_000_000
SAMPLE_PATH = Path(__file__).resolve().parent / "sample" / "cifar10_sample.npz"
# An official archive holds its folder and 8 files (CIFAR-10) or 4 (CIFAR-100); the bounds
# leave a wide margin for a repacked one while keeping a crafted one from costing memory
# (tarfile keeps each header) or minutes. Extended headers (long names, pax records) hold a
# path or a few attributes: 8 KiB is twice Linux's PATH_MAX.
CIFAR10_ARCHIVE_MEMBERS = 9
MAX_ARCHIVE_MEMBERS = 100
MAX_HEADER_BYTES = 8192
# CIFAR-100 has 100 fine classes (names of <= 13 characters) and 20 coarse ones (<= 30);
# 1,000 classes (ImageNet's count) of <= 100 characters are far beyond both yet keep
# every table small.
MAX_CLASSES = 1000
MAX_CLASS_NAME = 100
LABELS = ("fine", "coarse")  # CIFAR-100's two labellings: 100 classes, or their 20 superclasses


@dataclass(frozen=True)
class OfficialFormat:
    """The layout of one official CIFAR release (the python version of its archive)."""

    name: str  # "CIFAR-10"
    folder: str  # what the archive unpacks to
    archive: str  # the archive's official file name
    train: tuple[str, ...]  # batch files of the training split
    test: str
    meta: str  # holds the class names
    labelled: bool  # True: fine and coarse labels (CIFAR-100); False: one set

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, self.test, self.meta)

    def keys(self, labels: str) -> tuple[str, str]:
        """(label key of a batch, class-name key of the meta file) for ``labels``."""
        return (f"{labels}_labels", f"{labels}_label_names") if self.labelled else ("labels", "label_names")


CIFAR10 = OfficialFormat("CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                         tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta", False)
CIFAR100 = OfficialFormat("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz",
                          ("train",), "test", "meta", True)
FORMATS = (CIFAR10, CIFAR100)

ACCEPTED_FORMS = (
    "accepted: 'sample'; 'default' (or no --data) or 'cifar10'; 'cifar100'; a cifar-10-python.tar.gz or "
    "cifar-100-python.tar.gz archive; a folder that is or contains cifar-10-batches-py/ or cifar-100-python/, "
    "or contains one of the archives; or an image-folder root with train/<class>/*.png|jpg and test/<class>/*"
)


# --------------------------------------------------------------------------- entry point


def load(spec: str | os.PathLike | None = None, *, labels: str = "fine", progress: bool = True) -> Dataset:
    """Load CIFAR-10, CIFAR-100 or a CIFAR-shaped dataset from ``spec``; see the module doc.

    ``labels`` picks CIFAR-100's labelling: ``"fine"`` (100 classes, the default) or
    ``"coarse"`` (20 superclasses); sources with one set of labels accept only "fine".
    Returns a :class:`Dataset` of uint8 ``(N, 32, 32, 3)`` images, int64 labels, class
    names, and per-channel mean/std of the training images in [0, 255] units.
    ``progress`` shows a tqdm bar on stderr if a download is needed.
    Raises DataError naming the file and what is wrong with it.
    """
    if labels not in LABELS:
        raise DataError(f"--labels {labels}: expected one of {', '.join(LABELS)}")
    if spec is None or str(spec) in ("default", "cifar10"):
        return load_default(CIFAR10, labels=labels, progress=progress)
    if str(spec) == "cifar100":
        return load_default(CIFAR100, labels=labels, progress=progress)
    if str(spec) == "sample":
        return load_sample(labels=labels)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"--data {spec}: no such file or folder; {ACCEPTED_FORMS}")
    if not path.is_dir():
        open_regular(path, DataError).close()  # a FIFO or /dev/zero is refused, not read forever
    kind, target = _detect(path)
    if kind is None:
        what = "folder" if path.is_dir() else "file"
        raise DataError(f"--data {spec}: this {what} is not a CIFAR-10 or CIFAR-100 source; {ACCEPTED_FORMS}")
    return _LOADERS[kind](target, labels=labels)


def _detect(path: Path, formats: tuple[OfficialFormat, ...] = FORMATS) -> tuple[str | None, Path]:
    """Which source ``path`` is: ("archive"|"batches"|"images"|None, the path to read).

    Only the official layouts in ``formats`` are looked for (the default download
    folder may hold CIFAR-10 and CIFAR-100 side by side); image folders count as CIFAR-10's.
    """
    if path.is_file():
        if path.name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
            return "archive", path
        try:  # an archive under another name
            return ("archive" if _is_tar(path) else None), path
        except OSError:
            return None, path
    if path.is_dir():
        for fmt in formats:
            if _format_of_folder(path) is fmt:
                return "batches", path
            if (path / fmt.folder).is_dir():
                return "batches", path / fmt.folder
        if CIFAR10 in formats and (path / "train").is_dir():
            return "images", path
        for fmt in formats:
            if (path / fmt.archive).is_file():
                return "archive", path / fmt.archive
    return None, path


def _format_of_folder(folder: Path) -> OfficialFormat | None:
    """The official layout whose files ``folder`` holds (CIFAR-100's are files, not an image folder's dirs)."""
    for fmt in FORMATS:
        if any((folder / name).is_file() for name in fmt.files):
            return fmt
    return None


def _single_labelling(labels: str, source: str) -> None:
    if labels != "fine":
        raise DataError(f"--labels {labels}: {source} has one set of labels; only CIFAR-100 has "
                        f"coarse ones (use --labels fine, the default)")


# --------------------------------------------------------------------------- statistics


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 ``(N, H, W, C)`` images, [0, 255] units.

    Counts each channel's 256 values (a histogram), from which the sum and the sum of
    squares follow exactly as integers; the only rounding is the final float64
    division. Exact, ten times faster than summing a float64 copy, and chunked so
    memory stays at tens of MB for 50,000 images instead of 1.2 GB.
    """
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        raise DataError(f"cannot compute statistics of images with shape {images.shape} {images.dtype}")
    c = images.shape[-1]
    hist = np.zeros((c, 256), dtype=np.int64)
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].reshape(-1, c)
        for k in range(c):
            hist[k] += np.bincount(block[:, k], minlength=256)
    v = np.arange(256, dtype=np.int64)
    n = int(hist[0].sum())
    mean, std = [], []
    for k in range(c):
        s, ss = int(hist[k] @ v), int(hist[k] @ (v * v))
        mean.append(s / n)
        # Var = (n*SS - S^2) / n^2 in exact Python integers: no cancellation.
        std.append(float(np.sqrt((n * ss - s * s) / (n * n))))
    return tuple(mean), tuple(std)


def build_dataset(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    classes: Iterable[str],
    source: str,
    *,
    labelling: str | None = None,
) -> Dataset:
    """Check shapes, dtypes and label ranges, compute training stats, return a Dataset.

    Images must be uint8 ``(N, 32, 32, 3)``; labels integers in ``0..len(classes)-1``.
    ``labelling`` names the labelling of a source that has several (CIFAR-100: "fine" or
    "coarse"), None for a source with one. Every source goes through here, so a
    Dataset is always well-formed.
    """
    classes = tuple(str(c) for c in classes)
    check_class_names(classes, source)
    out = {}
    for split, images, ys in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        images = np.asarray(images)
        ys = np.asarray(ys)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise DataError(f"{source}: {split} images have shape {images.shape} {images.dtype}, "
                            f"expected (N, 32, 32, 3) uint8")
        if ys.shape != (len(images),) or not np.issubdtype(ys.dtype, np.integer):
            raise DataError(f"{source}: {split} labels have shape {ys.shape} {ys.dtype}, "
                            f"expected ({len(images)},) integers")
        _check_label_range(ys, len(classes), f"{source} ({split})")
        out[split] = (np.ascontiguousarray(images), ys.astype(np.int64))
    for split in ("train", "test"):  # an empty test split made training "finish" with a NaN accuracy
        if len(out[split][0]) == 0:
            raise DataError(f"{source}: no {'training' if split == 'train' else 'test'} images")
    mean, std = channel_stats(out["train"][0])
    return Dataset(out["train"][0], out["train"][1], out["test"][0], out["test"][1],
                   classes, source, mean, std, labelling)


def check_class_names(classes: tuple[str, ...], source: str) -> None:
    """Refuse an empty, oversized or ambiguous list of class names (see :data:`MAX_CLASSES`).

    Every table pads to the longest name, so one 150 MB name would cost gigabytes in
    ``data info``; two equal names would merge their counts.
    """
    if not classes:
        raise DataError(f"{source}: no classes")
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{source}: refused: {len(classes):,} classes, more than {MAX_CLASSES:,}")
    longest = max(classes, key=len)
    if len(longest) > MAX_CLASS_NAME:
        raise DataError(f"{source}: refused: a class name of {len(longest):,} characters "
                        f"({printable(longest[:40])}...), longer than {MAX_CLASS_NAME}")
    seen: set[str] = set()
    for name in classes:
        if name in seen:
            raise DataError(f"{source}: refused: class name {printable(name)!r} appears twice")
        seen.add(name)


def _check_label_range(labels: np.ndarray, num_classes: int, where: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise DataError(f"{where}: labels must lie in 0..{num_classes - 1} "
                        f"({num_classes} classes), found {int(bad[0])} "
                        f"({len(bad)} labels out of range)")


# --------------------------------------------------------------------------- official pickles


def _parse_batch(obj: object, source: str, num_classes: int, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One unpickled batch dict (``data`` + ``label_key``) -> (uint8 (N,32,32,3), int64 (N,))."""
    d = _str_keys(obj, source)
    for key in ("data", label_key):
        if key not in d:
            # keys of a crafted file may be of mixed types (sorted() would raise): sorted as text
            raise DataError(f"{source}: missing key '{key}' (found {sorted(d, key=repr)[:20]})")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_BYTES:
        desc = f"shape {data.shape} {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{source}: 'data' is {desc}, expected an (N, {ROW_BYTES}) uint8 array "
                        f"(rows of 3 channel planes of 32x32)")
    try:
        labels = np.asarray(d[label_key])
    except Exception as exc:
        raise DataError(f"{source}: '{label_key}' is not a list of integers ({exc})") from None
    if labels.ndim != 1 or len(labels) != len(data) or (len(labels) and not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{source}: '{label_key}' has shape {labels.shape} {labels.dtype}, "
                        f"expected {len(data)} integers (one per row of 'data')")
    _check_label_range(labels, num_classes, source)
    # Rows are channel-major (R plane, G plane, B plane); reorder to NHWC once here.
    images = np.ascontiguousarray(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int64)


def _parse_meta(obj: object, source: str, key: str) -> tuple[str, ...]:
    d = _str_keys(obj, source)
    names = d.get(key)
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{source}: '{key}' missing or empty, expected a list of class names")
    out = []
    for n in names:
        if isinstance(n, bytes):
            n = n.decode("utf-8", "replace")
        if not isinstance(n, str):
            raise DataError(f"{source}: '{key}' holds {type(n).__name__}, expected strings")
        out.append(n)
    return tuple(out)


def _str_keys(obj: object, source: str) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a pickled dict, found {type(obj).__name__}")
    return {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _assemble(fmt: OfficialFormat, labels: str, read: Callable[[str], object], where: str,
              source: str) -> Dataset:
    """Build a Dataset from the official files of ``fmt``; ``read(name)`` returns one unpickled."""
    label_key, names_key = fmt.keys(labels)
    classes = _parse_meta(read(fmt.meta), f"{where}/{fmt.meta}", names_key)
    check_class_names(classes, f"{where}/{fmt.meta}")  # before the batches are read
    splits, count = [], 0
    for name in (*fmt.train, fmt.test):
        images, y = _parse_batch(read(name), f"{where}/{name}", len(classes), label_key)
        count += len(images)
        if count > MAX_IMAGES:
            raise DataError(f"{where}/{name}: refused: the files up to this one hold {count:,} images, "
                            f"more than {fmt.name} has ({MAX_IMAGES:,} in all)")
        splits.append((images, y))
    train = splits[:-1]
    return build_dataset(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                         *splits[-1], classes, source, labelling=labels if fmt.labelled else None)


def _check_size(name: str, size: int, total: int) -> None:
    """Refuse a file of ``size`` bytes (``total`` with the files read before it) before reading it."""
    if size > MAX_BATCH_BYTES or total > MAX_BATCH_BYTES:
        what = f"it is {size:,} bytes" if size > MAX_BATCH_BYTES else \
            f"with it the dataset's files come to {total:,} bytes"
        raise DataError(f"{name}: refused: {what}, more than a CIFAR dataset's files can be "
                        f"(at most {MAX_BATCH_BYTES:,} bytes, {MAX_IMAGES:,} images)")


def load_batches_dir(folder: str | os.PathLike, *, labels: str = "fine") -> Dataset:
    """Read an unpacked official folder: ``cifar-10-batches-py`` (data_batch_1..5,
    test_batch, batches.meta) or ``cifar-100-python`` (train, test, meta)."""
    folder = Path(folder)
    fmt = _format_of_folder(folder) or (CIFAR100 if folder.name == CIFAR100.folder else CIFAR10)
    missing = [n for n in fmt.files if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)} (a {fmt.folder} folder "
                        f"holds {', '.join(fmt.files)})")
    if not fmt.labelled:
        _single_labelling(labels, f"{folder}")
    total = 0
    for name in fmt.files:  # every size checked before anything is read
        size = (folder / name).stat().st_size
        total += size
        _check_size(str(folder / name), size, total)

    def read(name: str) -> object:
        path = folder / name
        try:
            with open_regular(path, DataError) as f:
                return safe_load(f, source=str(path))
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None

    return _assemble(fmt, labels, read, str(folder), f"batches folder {folder.resolve()}")


class _ArchiveRefused(Exception):
    """A tar header declares more than a CIFAR archive holds; raised before its payload is read."""


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses, before reading them, header payloads (GNU long names, pax records)
    longer than :data:`MAX_HEADER_BYTES` and sparse members: ``tarfile`` reads such payloads
    whole, so a 1 MB .tar.gz declaring a gigabyte-long name would take gigabytes."""

    def _proc_member(self, tarfile_):
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                         tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE) and self.size > MAX_HEADER_BYTES:
            raise _ArchiveRefused(f"a member's extended header declares {self.size:,} bytes, more than a "
                                  f"CIFAR archive's headers hold (at most {MAX_HEADER_BYTES:,})")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _ArchiveRefused("it holds a sparse member, which a CIFAR archive never does")
        return super()._proc_member(tarfile_)

    def _proc_gnusparse_10(self, next, pax_headers, tarfile_):  # its map is as long as the file says
        raise _ArchiveRefused("it holds a sparse member, which a CIFAR archive never does")


def _tar_members(tar: tarfile.TarFile, path: Path) -> Iterator[tarfile.TarInfo]:
    """``tar``'s members in order, at most :data:`MAX_ARCHIVE_MEMBERS`, none kept after use
    (``tarfile`` keeps every header it has read: a million empty members take 667 MB)."""
    for count, member in enumerate(iter(tar.next, None), 1):
        if count > MAX_ARCHIVE_MEMBERS:
            raise DataError(f"{path}: refused: it holds more than {MAX_ARCHIVE_MEMBERS} members; an official "
                            f"CIFAR archive holds {CIFAR10_ARCHIVE_MEMBERS}")
        tar.members.clear()
        yield member


def _open_tar(f: IO[bytes]) -> tarfile.TarFile:
    """``f`` as a tar stream (``r|*``: any compression, one sequential pass) with bounded headers."""
    return tarfile.open(fileobj=f, mode="r|*", tarinfo=_BoundedTarInfo)


def _is_tar(path: Path) -> bool:
    """Whether ``path`` starts like a tar archive (``tarfile.is_tarfile`` reads its first header unbounded)."""
    try:
        with open_regular(path, DataError) as f, _open_tar(f):
            return True
    except _ArchiveRefused:
        return True  # load_archive refuses it with the reason
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, DataError):
        return False


def load_archive(path: str | os.PathLike, *, labels: str = "fine") -> Dataset:
    """Read the official ``cifar-10-python.tar.gz`` or ``cifar-100-python.tar.gz`` in place.

    The archive is read in one sequential pass (``r|*`` stream mode): random access
    into a .tar.gz would decompress from the start for every member. Each member's
    size is taken from its header and checked before a byte of it is read; so are the
    count of members and the length of extended headers (:class:`_BoundedTarInfo`).
    """
    path = Path(path)
    wanted = {name for fmt in FORMATS for name in fmt.files}
    members: dict[str, bytes] = {}
    total = 0
    try:
        with open_regular(path, DataError) as f, _open_tar(f) as tar:
            for m in _tar_members(tar, path):
                # Official layout: <folder>/<name>; accept any folder depth.
                name = m.name.rsplit("/", 1)[-1]
                if not m.isfile():
                    continue
                total += m.size  # every member counts: skipping one still decompresses it
                _check_size(f"{path}:{m.name}", m.size, total)
                if name in wanted:
                    if name in members:
                        raise DataError(f"{path}: holds more than one {name} ({m.name})")
                    members[name] = tar.extractfile(m).read()
    except DataError:
        raise
    except _ArchiveRefused as exc:
        raise DataError(f"{path}: refused: {exc}") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the archive, it is truncated or corrupt "
                        f"({type(exc).__name__}: {exc})") from None
    # The format whose files are (most) present; CIFAR-10 when neither is.
    fmt = max(FORMATS, key=lambda f: sum(n in members for n in f.files))
    missing = [n for n in fmt.files if n not in members]
    if missing:
        raise DataError(f"{path}: archive lacks {', '.join(missing)} (expected "
                        f"{fmt.folder}/{{{','.join(fmt.files)}}})")
    if not fmt.labelled:
        _single_labelling(labels, f"{path}")
    return _assemble(fmt, labels, lambda n: safe_load(members.pop(n), source=f"{path}:{fmt.folder}/{n}"),
                     f"{path}:{fmt.folder}", f"archive {path.resolve()}")


# --------------------------------------------------------------------------- images


def _to_rgb32(im: Image.Image) -> tuple[np.ndarray, bool]:
    """Any Pillow image -> ((32, 32, 3) uint8 RGB, whether it had to be resized).

    EXIF orientation is applied to every image (phone photos, and 32x32 ones too);
    16-bit greyscale is scaled to 8 bits; transparency is composited onto white;
    a non-square image is centre-cropped to a square first so objects keep their
    aspect ratio, then resized with Lanczos (antialiased when shrinking).
    """
    upright = im.getexif().get(ExifTags.Base.Orientation, 1) in (1, None)
    if im.mode == "RGB" and im.size == (IMAGE_SIZE, IMAGE_SIZE) and upright:  # the common, fast case
        return np.asarray(im, dtype=np.uint8), False
    if not upright:
        im = ImageOps.exif_transpose(im)
    im = _to_8bit(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    im = im.convert("RGB")
    resized = im.size != (IMAGE_SIZE, IMAGE_SIZE)
    if resized:
        im = ImageOps.fit(im, (IMAGE_SIZE, IMAGE_SIZE), method=Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8), resized


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit greyscale (modes ``I;16``, ``I;16B``, ..., and ``I`` as Pillow reads 16-bit PNGs)
    -> ``L``, scaled by 255/65535 and rounded; 8-bit modes unchanged.

    Pillow's own ``convert`` clips these to 255 (a solid white image). Float images
    and 32-bit ones with values outside 0..65535 are refused rather than guessed at.
    """
    if im.mode.startswith("I;16") or im.mode == "I":
        values = np.asarray(im)  # (H, W) uint16 or int32: no wider copy of the whole image
        lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ValueError(f"{im.mode} pixel values span {lo}..{hi}, outside the "
                             f"16-bit range 0..65535; save it as an 8- or 16-bit image")
        out = np.empty(values.shape, np.uint8)  # (H, W): mode L
        rows = max(1, (1 << 16) // max(1, values.shape[1]))  # blocks of ~64 kpx: 256 KB in uint32
        for r in range(0, len(values), rows):
            block = values[r:r + rows].astype(np.uint32)  # 65535 * 255 + 32767 < 2**32: exact
            block *= 255
            block += 32767
            block //= 65535
            out[r:r + rows] = block
        return Image.fromarray(out)
    if im.mode == "F":
        raise ValueError("floating-point pixels (mode F) have no fixed range; save it as an 8- or 16-bit image")
    return im


def _decode(data: bytes | Path, name: str, formats: tuple[str, ...] | None = None) -> tuple[np.ndarray, bool]:
    src = io.BytesIO(data) if isinstance(data, bytes) else open_regular(data, DataError)
    try:
        with src, Image.open(src, formats=formats) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:  # from the header, before decoding
                raise DataError(f"{name}: refused: {im.width}x{im.height} is {im.width * im.height:,} pixels, "
                                f"more than an input of a 32x32 classifier may be (at most "
                                f"{MAX_IMAGE_PIXELS:,})")
            im.load()
            return _to_rgb32(im)
    except DataError:
        raise
    except Exception as exc:  # Pillow's decoders raise more than OSError/ValueError on crafted files
        # (NotImplementedError for DDS, BLPFormatError, AttributeError for SPIDER, struct.error ...):
        # any failure to decode is this file's, named, and the other files are still read.
        raise _unreadable(name, exc) from None


def _unreadable(name: str, exc: Exception) -> DataError:
    text = (str(exc).splitlines() or [""])[0][:200]
    return DataError(f"{name}: cannot read this image ({type(exc).__name__}: {text})")


def image_to_rgb32(im: Image.Image, name: str) -> np.ndarray:
    """A PIL image given in memory (any mode; as :func:`load_image_file` converts a file) as (32, 32, 3)
    uint8 RGB; DataError naming ``name`` for one that cannot be converted (closed, float, ...)."""
    try:
        return _to_rgb32(im)[0]
    except DataError:
        raise
    except Exception as exc:  # a closed image is a ValueError, odd modes raise from inside Pillow
        raise _unreadable(name, exc) from None


def decode_image(data: bytes, name: str) -> tuple[np.ndarray, bool]:
    """An image file's bytes -> ((32, 32, 3) uint8 RGB, whether it had to be resized), as an image
    folder's files are read (e.g. straight from a tar stream). Raises DataError naming ``name``."""
    return _decode(data, name)


def load_image_file(path: str | os.PathLike) -> np.ndarray:
    """Read any image Pillow can open as a (32, 32, 3) uint8 RGB array, CIFAR-style.

    Any size or mode is accepted (see :func:`_to_rgb32` for the conversion); this is
    what ``predict`` feeds to :func:`cifarzoo.data.loader.normalize`.
    Raises DataError naming the file if it cannot be read.
    """
    return _decode(Path(path), str(path))[0]


def load_image_folder(root: str | os.PathLike, *, labels: str = "fine") -> Dataset:
    """Read ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (.png, .jpg, .jpeg).

    Class names are the train sub-folder names, sorted. Images not 32x32 are
    centre-cropped and resized with one warning giving the count. Files with other
    extensions are skipped with a warning; hidden files silently.
    """
    root = Path(root)
    _single_labelling(labels, f"image folder {root}")
    train_dir, test_dir = root / "train", root / "test"
    for d in (train_dir, test_dir):
        if not d.is_dir():
            raise DataError(f"{d}: missing; an image folder needs train/<class>/ and test/<class>/ sub-folders")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{train_dir}: no class folders (expected train/<class>/*.png|jpg)")
    extra = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and p.name not in classes)
    if extra:
        raise DataError(f"{test_dir / extra[0]}: class folder '{extra[0]}' has no counterpart in "
                        f"{train_dir} (train classes: {', '.join(classes)})")
    skipped: list[Path] = []
    resized = 0
    splits = {}
    for split_dir in (train_dir, test_dir):
        files: list[Path] = []
        labels: list[int] = []
        for label, cls in enumerate(classes):
            cdir = split_dir / cls
            if not cdir.is_dir():
                continue  # a test split may lack a class; train cannot (it defines them)
            found = sorted(p for p in cdir.iterdir() if p.is_file() and not p.name.startswith("."))
            images = [p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS]
            skipped += [p for p in found if p.suffix.lower() not in IMAGE_EXTENSIONS]
            if not images:
                raise DataError(f"{cdir}: class folder holds no .png/.jpg/.jpeg images")
            files += images
            labels += [label] * len(images)
        arr = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        for i, f in enumerate(files):
            arr[i], was_resized = _decode(f, str(f))
            resized += was_resized
        splits[split_dir.name] = (arr, np.array(labels, dtype=np.int64))
    if skipped:
        warnings.warn(f"{root}: skipped {len(skipped)} files that are not .png/.jpg/.jpeg "
                      f"(e.g. {skipped[0]})", stacklevel=2)
    if resized:
        total = len(splits["train"][0]) + len(splits["test"][0])
        warnings.warn(f"{root}: resized {resized} of {total} images to 32x32 "
                      f"(centre-cropped to square, Lanczos)", stacklevel=2)
    return build_dataset(*splits["train"], *splits["test"], classes, f"image folder {root.resolve()}")


def load_sample(path: str | os.PathLike = SAMPLE_PATH, *, labels: str = "fine") -> Dataset:
    """The bundled sample: 500 train + 100 test real CIFAR-10 images per class.

    Stored as the original JPEG bytes (see tools/make_sample.py) and decoded here on
    every call, about 0.4 s for the 6,000 images; nothing is cached on disk.
    """
    _single_labelling(labels, "the sample (CIFAR-10)")
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, zlib.error, EOFError) as exc:
        raise DataError(f"{path}: the bundled sample cannot be read, reinstall cifarzoo "
                        f"({type(exc).__name__}: {exc})") from None
    splits = {}
    for split in ("train", "test"):
        try:
            blob, offsets, labels = (arrays[f"{split}_{k}"] for k in ("jpeg", "offsets", "labels"))
        except KeyError as exc:
            raise DataError(f"{path}: the bundled sample lacks {exc}, reinstall cifarzoo") from None
        raw = blob.tobytes()
        images = np.empty((len(labels), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        for i, (a, b) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist())):
            images[i] = _decode(raw[a:b], f"{path}:{split}[{i}]", ("JPEG",))[0]
        splits[split] = (images, labels)
    return build_dataset(*splits["train"], *splits["test"], arrays["classes"].tolist(),
                         "sample (bundled: 500 train + 100 test CIFAR-10 JPEG images per class)")


# --------------------------------------------------------------------------- default + download


def default_root() -> Path:
    """``$CIFARZOO_DATA`` if set and non-empty, else ``~/.cache/cifarzoo``."""
    return Path(os.environ.get("CIFARZOO_DATA") or "~/.cache/cifarzoo").expanduser()


def load_default(fmt: OfficialFormat = CIFAR10, *, labels: str = "fine", progress: bool = True) -> Dataset:
    """Load ``fmt`` from :func:`default_root`, downloading its official archive there if absent."""
    root = default_root()
    if root.exists():
        kind, target = _detect(root, (fmt,))
        if kind is not None:
            return _LOADERS[kind](target, labels=labels)
        if root.is_file():
            raise DataError(f"CIFARZOO_DATA={root} is a file but not a CIFAR-10 or CIFAR-100 source; "
                            f"{ACCEPTED_FORMS}")
    return load_archive(download(root, fmt, progress=progress), labels=labels)


def download(folder: str | os.PathLike, fmt: OfficialFormat = CIFAR10, *, progress: bool = True) -> Path:
    """Download ``fmt``'s official archive into ``folder/<archive name>``; return its path.

    CIFAR-10 comes from :data:`DOWNLOAD_URL` (md5 :data:`DOWNLOAD_MD5`), CIFAR-100 from
    :data:`CIFAR100_URL` (:data:`CIFAR100_MD5`). The bytes go to a temp file in
    ``folder`` (same file system, so the final rename is atomic), the md5 is checked,
    and only then is the file renamed. Any failure or Ctrl-C deletes the temp file:
    the final name either holds a verified archive or does not exist.
    """
    url, expected = (DOWNLOAD_URL, DOWNLOAD_MD5) if fmt is CIFAR10 else (CIFAR100_URL, CIFAR100_MD5)
    folder = Path(folder)
    final = folder / fmt.archive
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Renamed into place only after the md5 check; deleted on any failure or Ctrl-C.
        with atomic_file(final, suffix=".part") as (out, _tmp):
            md5 = hashlib.md5()
            try:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    from tqdm import tqdm  # only needed on this rare path

                    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                              desc=f"downloading {fmt.archive}", disable=not progress) as bar:
                        while chunk := resp.read(1 << 20):
                            out.write(chunk)
                            md5.update(chunk)
                            bar.update(len(chunk))
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", None) or exc
                also = "a cifar-10-batches-py folder or an image folder" if fmt is CIFAR10 else \
                    "or its unpacked cifar-100-python folder"
                raise DataError(
                    f"could not download {fmt.name} from {url} ({reason}), so point --data PATH at a copy "
                    f"you already have ({fmt.archive}, {also}) or use --data sample for the "
                    f"6,000-image CIFAR-10 sample bundled with cifarzoo"
                ) from None
            got = md5.hexdigest()
            if got != expected:
                raise DataError(f"downloaded {url} has md5 {got}, expected {expected}; the corrupt "
                                f"download was deleted, try again or use --data PATH / --data sample")
    except OSError as exc:  # the folder: not creatable, not writable, full
        raise DataError(f"cannot write to {folder} to download {fmt.name} ({exc.strerror or exc}); "
                        f"set CIFARZOO_DATA to a writable folder, or use --data PATH or --data sample") from None
    return final


_LOADERS: dict[str, Callable[[Path], Dataset]] = {
    "archive": load_archive,
    "batches": load_batches_dir,
    "images": load_image_folder,
}
