#!/usr/bin/env python3
"""Build the CIFAR-10 sample bundled with cifarzoo (``--data sample``).

Usage: python tools/make_sample.py ARCHIVE [OUT]
  ARCHIVE  the JPEG copy of CIFAR-10 (cifar10-jpeg.tar.gz), laid out as train/<class>/NNNN.jpg (5,000 per class),
           test/<class>/NNNN.jpg (1,000)
  OUT      default src/cifarzoo/data/sample/cifar10_sample.npz beside this script

Takes 500 training and 100 test images per class, chosen with a fixed seed, and stores
their JPEG bytes unchanged (no re-encoding, so the pixels are exactly those of the
JPEG copy) in one .npz:

    classes        (10,)   unicode   class names, sorted (= the official CIFAR-10 order)
    train_jpeg     (T,)    uint8     every training JPEG file, concatenated
    train_offsets  (N+1,)  int64     image i is train_jpeg[offsets[i]:offsets[i+1]]
    train_labels   (N,)    uint8     0..9
    train_names    (N,)    bytes     original member name, e.g. b"train/bird/0338.jpg"
    test_*                           the same for the test split

Each split is stored in a seeded random order, as the official batches are, so any
prefix of it is roughly class-balanced. The zip entries are deflated (the JPEG
headers repeat in every file, which deflate removes: ~5.4 MB of JPEG -> ~1.9 MB) and
written with a fixed timestamp, so rerunning this script reproduces the file byte for byte.
"""
from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

PER_CLASS = {"train": 500, "test": 100}
SEED = 0
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "src" / "cifarzoo" / "data" / "sample" / "cifar10_sample.npz"


def read_archive(archive: Path) -> dict[str, dict[str, dict[str, bytes]]]:
    """{split: {class: {member name: jpeg bytes}}}, in one sequential pass."""
    found: dict[str, dict[str, dict[str, bytes]]] = {"train": {}, "test": {}}
    with tarfile.open(archive, "r|*") as tar:
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3 and parts[0] in found:
                found[parts[0]].setdefault(parts[1], {})[m.name] = tar.extractfile(m).read()
    return found


def select(found, classes: list[str]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {"classes": np.array(classes)}
    for split, per_class in PER_CLASS.items():
        names: list[str] = []
        labels: list[int] = []
        for label, cls in enumerate(classes):
            members = sorted(found[split][cls])
            if len(members) < per_class:
                sys.exit(f"{split}/{cls}: only {len(members)} images, need {per_class}")
            chosen = sorted(rng.choice(len(members), size=per_class, replace=False))
            names += [members[i] for i in chosen]
            labels += [label] * per_class
        order = rng.permutation(len(names))
        names = [names[i] for i in order]
        blobs = [found[split][n.split("/")[1]][n] for n in names]
        sizes = np.array([len(b) for b in blobs], dtype=np.int64)
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        arrays[f"{split}_labels"] = np.array(labels, dtype=np.uint8)[order]
        arrays[f"{split}_names"] = np.array([n.encode() for n in names])
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but with fixed timestamps so the output is reproducible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)
    tmp.replace(path)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python tools/make_sample.py ARCHIVE [OUT]  (ARCHIVE: the JPEG copy, cifar10-jpeg.tar.gz)")
    archive = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT
    found = read_archive(archive)
    classes = sorted(found["train"])
    if len(classes) != 10 or sorted(found["test"]) != classes:
        sys.exit(f"{archive}: expected 10 classes in train/ and test/, found {classes}")
    arrays = select(found, classes)
    write_npz(out, arrays)
    n_train, n_test = len(arrays["train_labels"]), len(arrays["test_labels"])
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {n_train} train, {n_test} test images")


if __name__ == "__main__":
    main()
