#!/usr/bin/env python
"""Turn any CIFAR-10 source into the official python layout, once, so every benchmark stage loads it in a second.

    python benchmarks/prepare_data.py SOURCE OUT_DIR

SOURCE is anything ``--data`` accepts (the official ``cifar-10-python.tar.gz``, a folder
holding ``cifar-10-batches-py/``, an image folder ``ROOT/train/<class>/*.jpg`` +
``ROOT/test/<class>/*``) or a ``.tar``/``.tar.gz`` of such an image folder (the JPEG copy
of CIFAR-10), which is unpacked into a temporary folder first. OUT_DIR receives
``data_batch_1..5``, ``test_batch`` and ``batches.meta`` as the official archive stores
them (uint8 rows in R, G, B planes; labels; label names), which cifarzoo then reads as
``--data OUT_DIR``. Prints one line: the source, the split sizes and the seconds taken.
"""
from __future__ import annotations

import argparse
import pickle
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import cifarzoo  # noqa: F401  first: it sets OMP_WAIT_POLICY before torch loads OpenMP, as the CLI does
import numpy as np

from cifarzoo.data import load
from cifarzoo.data.sources import CIFAR10

BATCHES_DIR, META, TEST_BATCH, TRAIN_BATCHES = CIFAR10.folder, CIFAR10.meta, CIFAR10.test, CIFAR10.train
from cifarzoo.errors import CifarzooError


def _is_image_archive(path: Path) -> bool:
    """A tar file that is not the official python archive (it has no cifar-10-batches-py/ member)."""
    if not (path.is_file() and tarfile.is_tarfile(path)):
        return False
    with tarfile.open(path) as tar:
        return not any(Path(m.name).parts[:1] == (BATCHES_DIR,) or Path(m.name).name == BATCHES_DIR
                       for m in tar.getmembers())


def _image_root(folder: Path) -> Path:
    """The folder that holds train/ and test/ inside an unpacked image archive."""
    for candidate in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    raise CifarzooError(f"{folder}: the archive has no train/ and test/ folders of class folders")


def _rows(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 32, 32, 3) -> (N, 3072) rows of R, G, B planes, as the official batches store them."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def write_batches(ds, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(ds.train_labels)), len(TRAIN_BATCHES))
    batches = [(name, ds.train_images[idx], ds.train_labels[idx]) for name, idx in zip(TRAIN_BATCHES, parts)]
    batches.append((TEST_BATCH, ds.test_images, ds.test_labels))
    for name, images, labels in batches:
        tmp = out / (name + ".tmp")
        with open(tmp, "wb") as f:
            pickle.dump({"batch_label": name, "labels": [int(v) for v in labels], "data": _rows(images)}, f, protocol=4)
        tmp.replace(out / name)
    with open(out / META, "wb") as f:
        pickle.dump({"label_names": list(ds.classes), "num_cases_per_batch": len(parts[0]), "num_vis": 3072}, f,
                    protocol=4)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="CIFAR-10 archive or folder (anything --data accepts, or the JPEG copy)")
    p.add_argument("out", type=Path, help="folder for the official python layout")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if not args.source.exists():
        print(f"prepare_data.py: {args.source}: no such file or folder", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="cifar10-") as tmp:
            spec = args.source
            if _is_image_archive(args.source):
                with tarfile.open(args.source) as tar:
                    # The "data" filter (Python >= 3.11.4) refuses links and paths outside tmp.
                    tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
                spec = _image_root(Path(tmp))
            ds = load(str(spec), progress=False)
            write_batches(ds, args.out)
    except CifarzooError as exc:
        print(f"prepare_data.py: {exc}", file=sys.stderr)
        return 2
    print(f"prepared {args.out} from {ds.source}: {len(ds.train_labels)} train / {len(ds.test_labels)} test images, "
          f"classes {', '.join(ds.classes)}, {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
