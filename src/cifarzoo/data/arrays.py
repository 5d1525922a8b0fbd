"""Data from memory: NumPy arrays (e.g. ``keras.datasets.cifar10.load_data()``) as a :class:`Dataset`.

Accepted forms of ``data``::

    (x_train, y_train, x_test, y_test)
    ((x_train, y_train), (x_test, y_test))      # what keras.datasets.cifar10.load_data() returns

- images: ``(N, 32, 32, 3)`` RGB, channels last, **uint8 in 0..255**. Other integer
  dtypes are accepted when every value lies in 0..255 (converted without loss). Floating-
  point images are refused: ``x / 255.0`` in [0, 1] and a float copy of 0..255 pixels
  cannot be told apart in general, and guessing wrong trains on wrong inputs without
  any error. The message says how to convert them.
- labels: integer class indices, shape ``(N,)`` or ``(N, 1)`` (Keras' shape).
- ``classes``: the class names, one per label value; by default CIFAR-10's ten names,
  which needs every label in 0..9. Every class must have at least one training image.

The mean/std used for normalization are computed from the training images exactly as
for every file source (:func:`cifarzoo.data.sources.build_dataset`). A run trained from
arrays records the data spec :data:`ARRAYS_SPEC` in its config.json: the arrays are not
saved, so evaluating or resuming that run needs them again.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np

from cifarzoo.data.dataset import Dataset
from cifarzoo.errors import DataError

ARRAYS_SPEC = "arrays"  # the data spec saved in config.json for data given from memory
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FORMS = "give (x_train, y_train, x_test, y_test) or ((x_train, y_train), (x_test, y_test))"


def is_arrays(data: Any) -> bool:
    """Whether ``data`` is one of this module's forms (a tuple or list), not a spec string or path."""
    return isinstance(data, (tuple, list))


def split_arrays(data: Any) -> tuple[Any, Any, Any, Any]:
    """``(x_train, y_train, x_test, y_test)`` from either accepted form; raises naming the form expected."""
    if not is_arrays(data):
        raise DataError(f"data: expected arrays, got {type(data).__name__}; {FORMS}")
    if len(data) == 4:
        return tuple(data)
    if len(data) == 2 and all(is_arrays(p) and len(p) == 2 for p in data):
        (x_train, y_train), (x_test, y_test) = data
        return x_train, y_train, x_test, y_test
    shape = "(" + ", ".join(_describe(p) for p in data) + ")"
    raise DataError(f"data: got a {type(data).__name__} of {len(data)} items {shape}; {FORMS}")


def _describe(obj: Any) -> str:
    if is_arrays(obj):
        return f"{type(obj).__name__} of {len(obj)}"
    shape = getattr(obj, "shape", None)
    return f"array {tuple(shape)}" if shape is not None else type(obj).__name__


def check_images(x: Any, name: str) -> np.ndarray:
    """``x`` as uint8 ``(N, 32, 32, 3)``, or a DataError naming ``name`` and what is wrong."""
    try:
        x = np.asarray(x)
    except Exception as exc:
        raise DataError(f"{name}: cannot be read as an array ({exc})") from None
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        hint = ""
        if x.ndim == 4 and x.shape[1:] == (3, 32, 32):
            hint = " (channels first? use x.transpose(0, 2, 3, 1))"
        elif x.ndim == 3 and x.shape[1:] == (32, 32):
            hint = " (grayscale? repeat it: np.repeat(x[..., None], 3, axis=-1))"
        elif x.ndim == 3 and x.shape == (32, 32, 3):
            hint = " (one image? use x[None])"
        raise DataError(f"{name}: expected shape (N, 32, 32, 3), got {x.shape}{hint}")
    if len(x) == 0:
        raise DataError(f"{name}: holds no images (shape {x.shape})")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.floating):
        raise DataError(
            f"{name}: expected uint8 pixels in 0..255, got {x.dtype} (floats are ambiguous: 0..1 or 0..255?); "
            f"convert: (x * 255).round().astype('uint8') for 0..1 data, x.round().astype('uint8') for 0..255")
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{name}: pixel values must lie in 0..255, found {lo}..{hi} ({x.dtype})")
        return np.ascontiguousarray(x.astype(np.uint8))
    raise DataError(f"{name}: expected uint8 pixels in 0..255, got dtype {x.dtype}")


def check_labels(y: Any, n: int, name: str, images_name: str) -> np.ndarray:
    """``y`` as int64 ``(n,)`` from ``(n,)`` or ``(n, 1)`` integers, or a DataError."""
    try:
        y = np.asarray(y)
    except Exception as exc:
        raise DataError(f"{name}: cannot be read as an array ({exc})") from None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.shape[0] == n and y.shape[1] > 1:
        raise DataError(f"{name}: expected class indices of shape ({n},) or ({n}, 1), got {y.shape} "
                        "(one-hot? use y.argmax(1))")
    if y.ndim != 1:
        raise DataError(f"{name}: expected class indices of shape (N,) or (N, 1), got {y.shape}")
    if len(y) != n:
        raise DataError(f"{name}: {len(y)} labels for the {n} images of {images_name}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name}: expected integer class indices, got {y.dtype}"
                        + (" (convert with y.astype(int))" if np.issubdtype(y.dtype, np.floating) else ""))
    return y.astype(np.int64)


def check_classes(classes: Iterable[str] | None, y_train: np.ndarray, y_test: np.ndarray) -> tuple[str, ...]:
    """The class names (default CIFAR-10's), checked against the labels; raises naming the problem."""
    if classes is None:
        names = CIFAR10_CLASSES
        where = "CIFAR-10's 10 classes (the default; pass classes=[...] for other data)"
    else:
        if isinstance(classes, str):
            raise DataError(f"classes: expected a list of class names, got the string {classes!r}")
        names = tuple(str(c) for c in classes)
        where = f"the {len(names)} classes given"
        if not names:
            raise DataError("classes: the list of class names is empty")
        dup = sorted({c for c in names if names.count(c) > 1})
        if dup:
            raise DataError(f"classes: {dup[0]!r} appears more than once")
    for y, label_name in ((y_train, "y_train"), (y_test, "y_test")):
        bad = y[(y < 0) | (y >= len(names))]
        if len(bad):
            raise DataError(f"{label_name}: labels must lie in 0..{len(names) - 1} for {where}, "
                            f"found {int(bad[0])} ({len(bad)} labels out of range)")
    missing = [i for i in range(len(names)) if not np.any(y_train == i)]
    if missing:
        raise DataError(f"y_train: class {missing[0]} ({names[missing[0]]!r}) has no training image "
                        f"({len(missing)} of {len(names)} classes have none); pass classes= naming only the "
                        "classes the data holds, with labels 0..C-1")
    return names


def from_arrays(data: Any, classes: Iterable[str] | None = None) -> Dataset:
    """A :class:`Dataset` from arrays in memory, validated (see the module doc for the rules)."""
    from cifarzoo.data.sources import build_dataset

    x_train, y_train, x_test, y_test = split_arrays(data)
    x_train = check_images(x_train, "x_train")
    x_test = check_images(x_test, "x_test")
    y_train = check_labels(y_train, len(x_train), "y_train", "x_train")
    y_test = check_labels(y_test, len(x_test), "y_test", "x_test")
    names = check_classes(classes, y_train, y_test)
    return build_dataset(x_train, y_train, x_test, y_test, names, "arrays in memory")


def load_run_data(spec: str | None, *, labels: str = "fine", run: Any = None, progress: bool = True) -> Dataset:
    """The data a run was trained on, from the ``data`` spec and ``labels`` of its config.

    A run trained from arrays (spec :data:`ARRAYS_SPEC`) cannot reload them: the error
    says so in one line, and how to give the same data again (``run`` names the run).
    """
    if spec == ARRAYS_SPEC:
        raise DataError(f"{run or 'this run'}: the run was trained from arrays in memory, which its folder does "
                        f"not keep; pass --data PATH with the same data (or, in Python, data=(x_train, y_train, "
                        f"x_test, y_test))")
    from cifarzoo.data.sources import load

    return load(spec, labels=labels, progress=progress)


def as_keras_arrays(ds: Dataset) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((x_train, y_train), (x_test, y_test))`` of ``ds`` in Keras' shapes: labels uint8/int64 ``(N, 1)``."""
    dtype = np.uint8 if ds.num_classes <= 256 else np.int64
    return ((ds.train_images, ds.train_labels.astype(dtype)[:, None]),
            (ds.test_images, ds.test_labels.astype(dtype)[:, None]))


# --------------------------------------------------------------------------- the API's data argument
def resolve_data(data: Any, classes: Iterable[str] | None = None):
    """``(spec saved in config.json, Dataset or None)`` for the API's ``data`` argument."""
    if is_arrays(data):
        return ARRAYS_SPEC, from_arrays(data, classes)
    if classes is not None:
        raise DataError("classes= names the classes of arrays given as data=; a data source "
                        f"({data!r}) has its own class names")
    if isinstance(data, Dataset):
        return ARRAYS_SPEC, data
    if data is None or isinstance(data, (str, os.PathLike)):
        return (None if data is None else str(data)), None
    raise DataError(f"data: expected a --data spec ('sample', a path), a Dataset or arrays "
                    f"(x_train, y_train, x_test, y_test); got {type(data).__name__}")


def arrays_needed(run_dir, what: str) -> DataError:
    return DataError(
        f"{run_dir}: this run was trained on arrays in memory (data spec {ARRAYS_SPEC!r}), which a run folder "
        f"does not keep; pass them again to {what}: data=(x_train, y_train, x_test, y_test)")


def resume_dataset(run_dir: Any, info: dict, data: Any, classes: Iterable[str] | None = None,
                   labels: str | None = None) -> Dataset | None:
    """The Dataset to resume the run in ``run_dir`` (its config.json: ``info``) with (None: fit loads
    the run's own source); for ``data=`` of the API and ``--data`` of ``train --resume``.

    Only a run trained from arrays takes ``data`` (any ``data=`` form, or a ``--data`` spec
    of the same images saved to disk, loaded with ``labels``, default the run's own);
    it must hold the classes and training images the run was trained on.
    """
    spec = info.get("config", {}).get("data")
    saved = info.get("data", {})
    if spec != ARRAYS_SPEC:
        if data is not None:
            raise DataError(f"{run_dir}: a resumed run keeps its data ({spec or 'the default CIFAR-10'}); "
                            "give no data (data= / --data)")
        return None
    if data is None:
        raise arrays_needed(run_dir, "resume it")
    if classes is None and is_arrays(data):
        classes = saved.get("classes")
    spec, ds = resolve_data(data, classes)
    if ds is None:  # the same images, saved to disk meanwhile
        from cifarzoo.data.sources import load

        ds = load(spec, labels=labels or info.get("config", {}).get("labels", "fine"), progress=False)
    problem = other_arrays(saved, ds)
    if problem:
        raise DataError(f"{run_dir}: {problem}")
    return ds


def other_arrays(saved: dict, ds) -> str | None:
    """Why ``ds`` is not the data a run's config.json ``saved`` describes (classes, training-image mean), or None."""
    if saved.get("classes") is not None and list(ds.classes) != list(saved["classes"]):
        return f"trained on classes {saved['classes']}, the arrays given have {list(ds.classes)}"
    if saved.get("mean") is not None and not np.allclose(ds.mean, saved["mean"], rtol=0, atol=1e-6):
        return (f"these are not the arrays the run was trained on (training-image mean "
                f"{[round(m, 3) for m in ds.mean]}, config.json says {[round(m, 3) for m in saved['mean']]})")
    return None
