"""Shared fixtures: small fake CIFAR-10 datasets, written on the fly in every source format.

Fixtures (all function-scoped, a few ms each):

``fake_cifar``        FakeCifar: the arrays (60 train / 20 test images, 10 classes, CIFAR
                      names) from which every fake source below is written.
``fake_batches_dir``  ``tmp_path/cifar-10-batches-py`` in the official format.
``fake_archive``      ``tmp_path/cifar-10-python.tar.gz`` holding that folder.
``fake_image_folder`` ``tmp_path/images`` with ``train/<class>/NNNN.png`` + ``test/<class>/``.
``fake_cifar100``     FakeCifar100: 100 fine classes (CIFAR-100's names, 2 train / 1 test image
                      each), their 20 coarse superclasses (the official mapping).
``cifar100_archive``  ``tmp_path/cifar-100-python.tar.gz`` in the official layout (members
                      cifar-100-python/{train,test,meta}, dicts with data, fine_labels,
                      coarse_labels, filenames; meta with fine_ and coarse_label_names).
``cifar100_folder``   ``tmp_path/cifar-100-python`` unpacked from the same files.
``small_dataset``     a Dataset built from ``fake_cifar`` in memory (no files), with stats.
``bundled_sample``    session-scoped: ``cifarzoo.data.load("sample")`` (real CIFAR-10, 5,000
                      train / 1,000 test), decoded once per test run. Do not modify its arrays.
``fake_files``        the writers themselves, for tests that need a variant (a bad
                      label, a missing file): ``fake_files.write_batches(folder, fake)``,
                      ``.write_archive(path, fake)``, ``.write_image_folder(root, fake)``,
                      ``.dump_py2_pickle(path, obj)``, ``.make(train_per_class=..)``,
                      and for CIFAR-100 ``.make100(..)``, ``.write_cifar100_archive(path, fake)``,
                      ``.write_cifar100_folder(folder, fake)``, ``.cifar100_files(fake)``.

Each class has its own base colour plus noise, so a model can learn the fake data
and a bug that mixes up labels and images shows. The official files are written by
``Py2Pickler`` exactly as the real cifar-10-python.tar.gz (and converters that
mimic it) store them: Python 2 ``str`` for bytes, arrays under
``numpy.core``, so the restricted unpickler is tested against the true format.
"""
from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image


def pytest_configure(config):
    """Python's own Ctrl-C handler, as in a terminal: a suite started in the background (or a test
    worker process) may inherit SIGINT ignored, and the Ctrl-C tests, their subprocesses included,
    need it delivered."""
    import signal

    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)


CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck")


@dataclass
class FakeCifar:
    train_images: np.ndarray  # (N, 32, 32, 3) uint8
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray  # (M, 32, 32, 3) uint8
    test_labels: np.ndarray  # (M,) int64
    classes: tuple[str, ...]


def make_fake_cifar(train_per_class: int = 6, test_per_class: int = 2,
                    classes: tuple[str, ...] = CIFAR_CLASSES, seed: int = 0) -> FakeCifar:
    """Class-coloured noisy 32x32 images, shuffled like the official batches."""
    rng = np.random.default_rng(seed)
    k = len(classes)
    colours = rng.integers(30, 226, size=(k, 3))

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(k), per_class)
        noise = rng.integers(-30, 31, size=(len(labels), 32, 32, 3))
        images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        order = rng.permutation(len(labels))
        return images[order], labels[order].astype(np.int64)

    train, test = split(train_per_class), split(test_per_class)
    return FakeCifar(*train, *test, tuple(classes))


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 str and numpy under numpy.core, as the official files do."""

    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        if module.startswith("numpy._core"):
            name = name or obj.__qualname__
            self.write(pickle.GLOBAL + module.replace("numpy._core", "numpy.core").encode()
                       + b"\n" + name.encode() + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch[type] = save_global


def py2_pickle_bytes(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def dump_py2_pickle(path: Path, obj) -> Path:
    Path(path).write_bytes(py2_pickle_bytes(obj))
    return Path(path)


def official_files(fake: FakeCifar, n_batches: int = 5) -> dict[str, object]:
    """{file name: unpickled content} as in cifar-10-batches-py (rows channel-major)."""
    def rows(images):  # (N, 32, 32, 3) -> (N, 3072): R plane, G plane, B plane
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))

    files: dict[str, object] = {}
    parts = np.array_split(np.arange(len(fake.train_labels)), n_batches)
    for b, idx in enumerate(parts, start=1):
        files[f"data_batch_{b}"] = {
            b"batch_label": f"training batch {b} of {n_batches}".encode(),
            b"labels": fake.train_labels[idx].tolist(),  # a list of ints, as in the real files
            b"data": rows(fake.train_images[idx]),
            b"filenames": [f"train_{i}.png".encode() for i in idx],
        }
    files["test_batch"] = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": fake.test_labels.tolist(),
        b"data": rows(fake.test_images),
        b"filenames": [f"test_{i}.png".encode() for i in range(len(fake.test_labels))],
    }
    files["batches.meta"] = {b"label_names": [c.encode() for c in fake.classes],
                             b"num_cases_per_batch": len(parts[0]), b"num_vis": 3072}
    return files


def write_batches(folder: Path, fake: FakeCifar, *, overrides: dict | None = None,
                  skip: tuple[str, ...] = ()) -> Path:
    """Write the official folder layout into ``folder``.

    ``overrides`` maps file name -> content to pickle instead (bad shapes, labels...),
    or -> raw bytes to write as is; ``skip`` names files to leave out.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {**official_files(fake), **(overrides or {})}
    for name, content in files.items():
        if name in skip:
            continue
        data = content if isinstance(content, bytes) else py2_pickle_bytes(content)
        (folder / name).write_bytes(data)
    return folder


def write_archive(path: Path, fake: FakeCifar, *, overrides: dict | None = None,
                  skip: tuple[str, ...] = ()) -> Path:
    """Write a cifar-10-python.tar.gz-style archive (members cifar-10-batches-py/<name>)."""
    path = Path(path)
    files = {**official_files(fake), **(overrides or {})}
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            if name in skip:
                continue
            data = content if isinstance(content, bytes) else py2_pickle_bytes(content)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# CIFAR-100's 20 superclasses and their 5 classes each, as the dataset's page lists them;
# the meta file names both sets in alphabetical order.
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
CIFAR100_COARSE = tuple(sorted(CIFAR100_SUPERCLASSES))
CIFAR100_FINE = tuple(sorted(f for fines in CIFAR100_SUPERCLASSES.values() for f in fines))


@dataclass
class FakeCifar100(FakeCifar):
    """``train_labels``/``test_labels``/``classes`` are the fine ones; the coarse ones beside them."""

    train_coarse: np.ndarray  # (N,) int64 in 0..19
    test_coarse: np.ndarray  # (M,) int64
    coarse_classes: tuple[str, ...]


def make_fake_cifar100(train_per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> FakeCifar100:
    """Class-coloured noisy images for CIFAR-100's 100 classes, with the official coarse mapping."""
    fine = make_fake_cifar(train_per_class, test_per_class, CIFAR100_FINE, seed)
    to_coarse = np.array([next(i for i, c in enumerate(CIFAR100_COARSE) if f in CIFAR100_SUPERCLASSES[c])
                          for f in CIFAR100_FINE])
    return FakeCifar100(fine.train_images, fine.train_labels, fine.test_images, fine.test_labels,
                        fine.classes, to_coarse[fine.train_labels], to_coarse[fine.test_labels],
                        CIFAR100_COARSE)


def cifar100_files(fake: FakeCifar100) -> dict[str, object]:
    """{file name: unpickled content} as in cifar-100-python: train, test, meta."""
    def batch(split: str, label: str) -> dict:
        images = getattr(fake, f"{split}_images")
        return {
            b"filenames": [f"{fake.classes[y]}_s_{i:06d}.png".encode()
                           for i, y in enumerate(getattr(fake, f"{split}_labels"))],
            b"batch_label": label.encode(),
            b"fine_labels": getattr(fake, f"{split}_labels").tolist(),
            b"coarse_labels": getattr(fake, f"{split}_coarse").tolist(),
            b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1)),
        }

    return {"train": batch("train", "training batch 1 of 1"), "test": batch("test", "testing batch 1 of 1"),
            "meta": {b"fine_label_names": [c.encode() for c in fake.classes],
                     b"coarse_label_names": [c.encode() for c in fake.coarse_classes]}}


def write_cifar100_folder(folder: Path, fake: FakeCifar100, *, overrides: dict | None = None,
                          skip: tuple[str, ...] = ()) -> Path:
    """Write the unpacked cifar-100-python folder; ``overrides``/``skip`` as in :func:`write_batches`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in {**cifar100_files(fake), **(overrides or {})}.items():
        if name not in skip:
            (folder / name).write_bytes(content if isinstance(content, bytes) else py2_pickle_bytes(content))
    return folder


def write_cifar100_archive(path: Path, fake: FakeCifar100, *, overrides: dict | None = None,
                           skip: tuple[str, ...] = ()) -> Path:
    """Write cifar-100-python.tar.gz as the official one is laid out: the folder entry,
    the stray ``file.txt~`` it ships with, then meta, test, train."""
    path = Path(path)
    files = {**cifar100_files(fake), **(overrides or {})}
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo("cifar-100-python")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        stray = tarfile.TarInfo("cifar-100-python/file.txt~")
        tar.addfile(stray, io.BytesIO(b""))
        for name in ("meta", "test", "train"):
            if name in skip:
                continue
            content = files[name]
            data = content if isinstance(content, bytes) else py2_pickle_bytes(content)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_image_folder(root: Path, fake: FakeCifar, ext: str = ".png") -> Path:
    """Write ROOT/{train,test}/<class>/NNNN<ext>; NNNN is the image's rank within its class."""
    root = Path(root)
    for split, images, labels in (("train", fake.train_images, fake.train_labels),
                                  ("test", fake.test_images, fake.test_labels)):
        for k, name in enumerate(fake.classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for j, i in enumerate(np.flatnonzero(labels == k)):
                Image.fromarray(images[i]).save(d / f"{j:04d}{ext}")
    return root


@pytest.fixture
def fake_cifar() -> FakeCifar:
    return make_fake_cifar()


@pytest.fixture
def fake_batches_dir(tmp_path, fake_cifar) -> Path:
    return write_batches(tmp_path / "cifar-10-batches-py", fake_cifar)


@pytest.fixture
def fake_archive(tmp_path, fake_cifar) -> Path:
    return write_archive(tmp_path / "cifar-10-python.tar.gz", fake_cifar)


@pytest.fixture
def fake_image_folder(tmp_path, fake_cifar) -> Path:
    return write_image_folder(tmp_path / "images", fake_cifar)


@pytest.fixture
def fake_cifar100() -> FakeCifar100:
    return make_fake_cifar100()


@pytest.fixture
def cifar100_archive(tmp_path, fake_cifar100) -> Path:
    return write_cifar100_archive(tmp_path / "cifar-100-python.tar.gz", fake_cifar100)


@pytest.fixture
def cifar100_folder(tmp_path, fake_cifar100) -> Path:
    return write_cifar100_folder(tmp_path / "cifar-100-python", fake_cifar100)


@pytest.fixture
def small_dataset(fake_cifar):
    """A Dataset of the fake arrays (60 train / 20 test, 10 classes), stats computed."""
    from cifarzoo.data import build_dataset

    f = fake_cifar
    return build_dataset(f.train_images, f.train_labels, f.test_images, f.test_labels,
                         f.classes, "fake (tests/conftest.py)")


@pytest.fixture(scope="session")
def bundled_sample():
    """The real bundled sample, loaded once for the whole session (about 1 s)."""
    from cifarzoo.data import load

    return load("sample")


@pytest.fixture(scope="session")
def sample_subset(bundled_sample):
    """``subset(train_per_class, test_per_class=None)``: the first images of each class of the
    bundled sample, in their original order (None: the whole test split), as a Dataset."""
    from cifarzoo.data import Dataset

    ds = bundled_sample

    def first(labels, n):
        return np.sort(np.concatenate([np.flatnonzero(labels == c)[:n] for c in range(ds.num_classes)]))

    def subset(train_per_class: int, test_per_class: int | None = None) -> "Dataset":
        tr = first(ds.train_labels, train_per_class)
        te = first(ds.test_labels, test_per_class) if test_per_class else np.arange(len(ds.test_labels))
        return Dataset(ds.train_images[tr], ds.train_labels[tr], ds.test_images[te], ds.test_labels[te],
                       ds.classes, f"sample ({len(tr)} train / {len(te)} test)", ds.mean, ds.std)

    return subset


@pytest.fixture
def fake_files() -> SimpleNamespace:
    return SimpleNamespace(make=make_fake_cifar, write_batches=write_batches, write_archive=write_archive,
                           write_image_folder=write_image_folder, dump_py2_pickle=dump_py2_pickle,
                           py2_pickle_bytes=py2_pickle_bytes, official_files=official_files,
                           make100=make_fake_cifar100, cifar100_files=cifar100_files,
                           write_cifar100_folder=write_cifar100_folder,
                           write_cifar100_archive=write_cifar100_archive)


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) if the test blocks for 20 s, e.g. opening a FIFO."""
    import signal

    def expire(*_):
        raise TimeoutError("blocked reading a special file")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def stop_at():
    """``stop_at(n)``: a Reporter that simulates Ctrl-C at global step ``n`` (KeyboardInterrupt from on_step)."""
    from cifarzoo.train import Reporter

    class StopAt(Reporter):
        def __init__(self, step: int):
            self.step = step

        def on_step(self, epoch, step, steps, global_step):
            if global_step == self.step:
                raise KeyboardInterrupt

    return StopAt


@pytest.fixture
def images():
    """50 random uint8 NHWC images (every pixel distinct enough that a wrong index shows): the loader's
    and the augmentations' tests."""
    return np.random.default_rng(1).integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8)


@pytest.fixture
def labels():
    """Labels of :func:`images`: 5 of each of 10 classes."""
    return np.arange(50, dtype=np.int64) % 10
