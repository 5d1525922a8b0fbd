#!/usr/bin/env python
"""Turn any CIFAR-10 source into the official python layout, once, so every benchmark stage loads it in a second.

    python benchmarks/prepare_data.py SOURCE OUT_DIR

SOURCE is anything ``--data`` accepts (the official ``cifar-10-python.tar.gz``, a folder
holding ``cifar-10-batches-py/``, an image folder ``ROOT/train/<class>/*.jpg`` +
``ROOT/test/<class>/*``) or a ``.tar``/``.tar.gz`` of such an image folder (the JPEG copy
of CIFAR-10), whose images are decoded straight from the tar stream by a pool of processes
(nothing is unpacked to disk). OUT_DIR receives
``data_batch_1..5``, ``test_batch`` and ``batches.meta`` as the official archive stores
them (uint8 rows in R, G, B planes; labels; label names), which cifarzoo then reads as
``--data OUT_DIR``. Prints one line: the source, the split sizes and the seconds taken.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath

import cifarzoo  # noqa: F401  first: it sets OMP_WAIT_POLICY before torch loads OpenMP, as the CLI does
import numpy as np

from cifarzoo.data import Dataset, build_dataset, load
from cifarzoo.data.sources import CIFAR10, IMAGE_EXTENSIONS, decode_image
from cifarzoo.errors import CifarzooError

BATCHES_DIR, META, TEST_BATCH, TRAIN_BATCHES = CIFAR10.folder, CIFAR10.meta, CIFAR10.test, CIFAR10.train


def _image_members(path: Path) -> list[tuple[str, str, str, bytes]] | None:
    """``(split, class, "archive:member", bytes)`` of every ``[ROOT/]train|test/<class>/<image>`` member,
    read front to back from the tar stream; None when the archive holds ``cifar-10-batches-py/``."""
    members, roots = [], set()
    with tarfile.open(path, "r|*") as tar:  # "|": a stream, read once, nothing written to disk
        for m in tar:
            parts = PurePosixPath(m.name).parts
            if BATCHES_DIR in parts:
                return None
            if not m.isfile() or len(parts) < 3 or parts[-3] not in ("train", "test"):
                continue
            split, cls, name = parts[-3:]
            hidden = cls.startswith(".") or name.startswith(".")
            if hidden or PurePosixPath(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            roots.add("/".join(parts[:-3]) or ".")
            members.append((split, cls, f"{path}:{m.name}", tar.extractfile(m).read()))
    if len(roots) > 1:
        raise CifarzooError(f"{path}: image folders under more than one root ({', '.join(sorted(roots))})")
    return members


def read_image_archive(path: Path, workers: int) -> Dataset | None:
    """The JPEG copy read straight from its tar stream, its images decoded by ``workers`` processes;
    None for the official archive. Classes are the train folders sorted, images sorted by name within
    each class, as ``load`` reads an unpacked image folder."""
    members = _image_members(path)
    if members is None:
        return None
    classes = sorted({cls for split, cls, _, _ in members if split == "train"})
    if not classes or not any(split == "test" for split, _, _, _ in members):
        raise CifarzooError(f"{path}: the archive has no train/ and test/ folders of class folders")
    extra = sorted({cls for _, cls, _, _ in members if cls not in classes})
    if extra:
        raise CifarzooError(f"{path}: test class folder '{extra[0]}' has no train counterpart")
    label = {cls: i for i, cls in enumerate(classes)}
    arrays = []
    with ProcessPoolExecutor(max(1, workers)) as pool:  # its processes start at the first map
        for split in ("train", "test"):
            part = sorted((m for m in members if m[0] == split), key=lambda m: (label[m[1]], m[2]))
            datas, names = [m[3] for m in part], [m[2] for m in part]
            decoded = (pool.map(decode_image, datas, names, chunksize=max(1, len(part) // (4 * workers)))
                       if workers > 1 else map(decode_image, datas, names))
            arrays += [np.stack([image for image, _resized in decoded]),
                       np.array([label[m[1]] for m in part], dtype=np.int64)]
    return build_dataset(*arrays, classes, f"image archive {path.resolve()}")


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
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                   help="processes decoding the images of an image archive (default: the CPUs, at most 16)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if not args.source.exists():
        print(f"prepare_data.py: {args.source}: no such file or folder", file=sys.stderr)
        return 2
    try:
        ds = None
        if args.source.is_file() and tarfile.is_tarfile(args.source):
            ds = read_image_archive(args.source, args.workers)
        if ds is None:  # the official archive or a folder: what --data reads
            ds = load(str(args.source), progress=False)
        write_batches(ds, args.out)
    except CifarzooError as exc:
        print(f"prepare_data.py: {exc}", file=sys.stderr)
        return 2
    print(f"prepared {args.out} from {ds.source}: {len(ds.train_labels)} train / {len(ds.test_labels)} test images, "
          f"classes {', '.join(ds.classes)}, {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
