"""Every --data source yields the same Dataset; bad input fails by name, leaving nothing behind."""
from __future__ import annotations

import hashlib
import os
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarzoo.data import Dataset, channel_stats, load, load_image_file, sources
from cifarzoo.errors import DataError


def tree(root: Path) -> set[str]:
    """Every file and folder under ``root``, relative: to prove nothing was left behind."""
    return {str(p.relative_to(root)) for p in Path(root).rglob("*")}


def assert_same_as_fake(ds: Dataset, fake) -> None:
    assert ds.classes == fake.classes
    np.testing.assert_array_equal(ds.train_images, fake.train_images)
    np.testing.assert_array_equal(ds.train_labels, fake.train_labels)
    np.testing.assert_array_equal(ds.test_images, fake.test_images)
    np.testing.assert_array_equal(ds.test_labels, fake.test_labels)
    assert ds.train_images.dtype == np.uint8 and ds.train_images.flags.c_contiguous
    assert ds.train_labels.dtype == np.int64


# --------------------------------------------------------------------------- good sources


def test_archive_is_read_in_place(fake_archive, fake_cifar, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    ds = load(str(fake_archive))
    assert_same_as_fake(ds, fake_cifar)
    assert ds.source == f"archive {fake_archive}"
    assert tree(tmp_path) == before  # nothing unpacked anywhere


def test_batches_folder_itself_its_parent_and_a_folder_with_the_archive(fake_batches_dir, fake_cifar,
                                                                        fake_files, tmp_path):
    assert_same_as_fake(load(fake_batches_dir), fake_cifar)
    assert_same_as_fake(load(fake_batches_dir.parent), fake_cifar)
    other = tmp_path / "dl"
    other.mkdir()
    fake_files.write_archive(other / "cifar-10-python.tar.gz", fake_cifar)
    ds = load(other)
    assert_same_as_fake(ds, fake_cifar)
    assert ds.source.startswith("archive ")


def test_archive_under_another_name_is_recognized(fake_archive, fake_cifar, tmp_path):
    renamed = tmp_path / "cifar.bin"
    fake_archive.rename(renamed)
    assert_same_as_fake(load(renamed), fake_cifar)


def test_image_folder_reads_pixels_exactly_with_sorted_class_names(tmp_path, fake_files):
    fake = fake_files.make(classes=("zebra", "apple", "mango"), train_per_class=4, test_per_class=2)
    root = fake_files.write_image_folder(tmp_path / "imgs", fake)
    ds = load(root)
    assert ds.classes == ("apple", "mango", "zebra")  # sorted folder names
    assert ds.source == f"image folder {root}"
    for split in ("train", "test"):
        images, labels = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
        f_images, f_labels = getattr(fake, f"{split}_images"), getattr(fake, f"{split}_labels")
        for new_label, name in enumerate(ds.classes):
            old_label = fake.classes.index(name)
            # files are NNNN.png in within-class order, so order is kept too
            np.testing.assert_array_equal(images[labels == new_label], f_images[f_labels == old_label])


def test_image_folder_resizes_odd_images_with_one_warning_and_accepts_jpg(tmp_path, fake_files):
    fake = fake_files.make(train_per_class=2, test_per_class=1, classes=("a", "b"))
    root = fake_files.write_image_folder(tmp_path / "imgs", fake)
    Image.new("RGB", (64, 48), (200, 10, 10)).save(root / "train" / "a" / "big.JPG")
    Image.new("L", (16, 16), 128).save(root / "test" / "b" / "small.jpeg")
    Image.new("RGBA", (32, 32), (0, 0, 255, 255)).save(root / "train" / "b" / "alpha.png")  # same size: no resize
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    (root / "train" / "a" / ".DS_Store").write_bytes(b"\0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load(root)
    messages = [str(w.message) for w in caught]
    assert any("resized 2 of 9 images to 32x32" in m for m in messages), messages
    assert any("skipped 1 files" in m and "notes.txt" in m for m in messages), messages
    assert len(ds.train_labels) == 6 and len(ds.test_labels) == 3
    red = ds.train_images[ds.train_labels == 0][-1]  # big.JPG sorts after 0000.png, 0001.png
    assert red.shape == (32, 32, 3) and abs(int(red[..., 0].mean()) - 200) < 4
    grey = ds.test_images[ds.test_labels == 1][-1]  # small.jpeg sorts after 0000.png
    assert np.all(np.abs(grey.astype(int) - 128) <= 2)


def test_load_image_file_any_size_and_mode(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (640, 480), (10, 200, 30)).save(photo)
    x = load_image_file(photo)
    assert x.shape == (32, 32, 3) and x.dtype == np.uint8
    assert np.all(np.abs(x.astype(int) - [10, 200, 30]) <= 3)
    grey = tmp_path / "g.png"
    Image.new("L", (100, 100), 77).save(grey)
    assert np.all(load_image_file(grey) == 77)
    transparent = tmp_path / "t.png"
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(transparent)
    assert np.all(load_image_file(transparent) == 255)  # composited onto white
    exact = tmp_path / "e.png"
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(exact)
    np.testing.assert_array_equal(load_image_file(exact), pixels)


def test_load_image_file_unreadable_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=f"^{bad}: cannot read this image"):
        load_image_file(bad)
    with pytest.raises(DataError, match="missing.png"):
        load_image_file(tmp_path / "missing.png")


def test_bundled_sample_is_balanced_real_cifar_and_fast():
    start = time.process_time()
    ds = load("sample")
    cpu_seconds = time.process_time() - start
    assert cpu_seconds < 2.0, f"decoding the sample took {cpu_seconds:.2f} s of CPU"
    assert ds.classes == ("airplane", "automobile", "bird", "cat", "deer",
                          "dog", "frog", "horse", "ship", "truck")
    assert ds.train_images.shape == (5000, 32, 32, 3) and ds.test_images.shape == (1000, 32, 32, 3)
    assert np.bincount(ds.train_labels).tolist() == [500] * 10
    assert np.bincount(ds.test_labels).tolist() == [100] * 10
    # Real CIFAR-10 statistics (full set: mean ~(125.3, 123.0, 113.9), std ~(63.0, 62.1, 66.7)).
    np.testing.assert_allclose(ds.mean, (124.771, 122.577, 113.071), atol=1e-3)
    np.testing.assert_allclose(ds.std, (62.058, 61.485, 66.122), atol=1e-3)
    # Stored in shuffled order: any prefix is roughly balanced (training subsets rely on it).
    assert np.bincount(ds.train_labels[:500], minlength=10).min() >= 30
    assert sources.SAMPLE_PATH.stat().st_size < 3_000_000


def test_channel_stats_match_float64_numpy(fake_cifar):
    x = fake_cifar.train_images
    mean, std = channel_stats(x, chunk=7)  # odd chunk size: chunking must not matter
    ref = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(0), rtol=1e-12)
    assert all(type(v) is float for v in (*mean, *std))


def test_dataset_stats_are_of_the_training_images_only(fake_cifar, fake_archive):
    ds = load(fake_archive)
    assert ds.mean == channel_stats(fake_cifar.train_images)[0]
    assert ds.mean != channel_stats(fake_cifar.test_images)[0]


# --------------------------------------------------------------------------- default + download


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty $CIFARZOO_DATA; downloads point at a local copy of the fake archive."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CIFARZOO_DATA", str(root))
    return root


def _serve(monkeypatch, archive: Path, md5: str | None = None) -> None:
    monkeypatch.setattr(sources, "DOWNLOAD_URL", archive.resolve().as_uri())
    monkeypatch.setattr(sources, "DOWNLOAD_MD5", md5 or hashlib.md5(archive.read_bytes()).hexdigest())


def test_default_downloads_verifies_and_then_reuses(cache, fake_cifar, fake_files, tmp_path, monkeypatch):
    served = fake_files.write_archive(tmp_path / "served.tar.gz", fake_cifar)
    _serve(monkeypatch, served)
    ds = load(None, progress=False)
    assert_same_as_fake(ds, fake_cifar)
    assert tree(cache) == {"cifar-10-python.tar.gz"}  # no temp file left
    assert (cache / "cifar-10-python.tar.gz").read_bytes() == served.read_bytes()
    # Second time: read from the cache, no network (the URL now leads nowhere).
    monkeypatch.setattr(sources, "DOWNLOAD_URL", (tmp_path / "gone.tar.gz").as_uri())
    assert_same_as_fake(load("default"), fake_cifar)


def test_default_uses_an_unpacked_folder_without_downloading(cache, fake_cifar, fake_files, monkeypatch):
    fake_files.write_batches(cache / "cifar-10-batches-py", fake_cifar)
    monkeypatch.setattr(sources, "DOWNLOAD_URL", "http://127.0.0.1:1/never")
    assert_same_as_fake(load(None), fake_cifar)


def test_default_root_falls_back_to_home_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("CIFARZOO_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert sources.default_root() == tmp_path / ".cache" / "cifarzoo"


def test_md5_mismatch_keeps_nothing(cache, fake_archive, monkeypatch):
    _serve(monkeypatch, fake_archive, md5="0" * 32)
    with pytest.raises(DataError, match=r"md5 [0-9a-f]{32}, expected 0{32}; the corrupt download was deleted"):
        load(None, progress=False)
    assert tree(cache) == set()


def test_offline_names_both_ways_out_and_keeps_nothing(cache, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: connection refused, like offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(sources, "DOWNLOAD_URL", f"http://127.0.0.1:{port}/cifar-10-python.tar.gz")
    with pytest.raises(DataError) as err:
        load(None, progress=False)
    message = str(err.value)
    assert "could not download CIFAR-10" in message
    assert "--data PATH" in message and "--data sample" in message
    assert "\n" not in message
    assert tree(cache) == set()


def test_interrupted_download_leaves_no_partial_file(cache, fake_archive, monkeypatch):
    _serve(monkeypatch, fake_archive)

    class Dropping:
        headers = {"Content-Length": "1000000"}

        def __init__(self):
            self.calls = 0

        def read(self, n):
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt  # Ctrl-C in the middle of the transfer
            return b"x" * 1000

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda url, timeout: Dropping())
    with pytest.raises(KeyboardInterrupt):
        load(None, progress=False)
    assert tree(cache) == set()


# --------------------------------------------------------------------------- bad input


def _fails(spec, match: str, watched: Path, **kwargs) -> DataError:
    """Load ``spec`` (with ``kwargs``); it must raise a DataError matching ``match`` and change
    nothing under ``watched``."""
    before = tree(watched)
    with pytest.raises(DataError, match=match) as err:
        load(spec, **kwargs)
    assert tree(watched) == before
    assert "\n" not in str(err.value)
    return err.value


def test_truncated_archive(fake_archive, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = fake_archive.read_bytes()
    fake_archive.write_bytes(data[: len(data) // 2])
    _fails(fake_archive, f"^{fake_archive}: cannot read the archive, it is truncated or corrupt", tmp_path)


def test_corrupt_archive(fake_archive, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = bytearray(fake_archive.read_bytes())
    data[100:400] = os.urandom(300)  # gzip CRC / deflate stream broken
    fake_archive.write_bytes(bytes(data))
    _fails(fake_archive, f"^{fake_archive}: cannot read the archive", tmp_path)


def test_archive_missing_a_batch(tmp_path, fake_cifar, fake_files):
    path = fake_files.write_archive(tmp_path / "cifar-10-python.tar.gz", fake_cifar, skip=("test_batch",))
    _fails(path, f"^{path}: archive lacks test_batch", tmp_path)


def test_folder_missing_a_batch(tmp_path, fake_cifar, fake_files):
    folder = fake_files.write_batches(tmp_path / "cifar-10-batches-py", fake_cifar, skip=("data_batch_3",))
    _fails(folder, f"^{folder}: missing data_batch_3", tmp_path)


def _batch(fake_files, changes: dict) -> dict:
    """The fake data_batch_2 with some keys replaced (keys given as str, stored as Py2 bytes)."""
    batch = dict(fake_files.official_files(fake_files.make())["data_batch_2"])
    batch.update({k.encode(): v for k, v in changes.items()})
    return batch


@pytest.mark.parametrize("change, match", [
    (dict(data=np.zeros((12, 3000), np.uint8)), r"'data' is shape \(12, 3000\) uint8, expected an \(N, 3072\) uint8"),
    (dict(data=np.zeros((12, 3072), np.float32)), r"'data' is shape \(12, 3072\) float32"),
    (dict(data=[1, 2, 3]), r"'data' is list"),
    (dict(labels=[0] * 11 + [10]), r"labels must lie in 0\.\.9 \(10 classes\), found 10"),
    (dict(labels=[0] * 11 + [-1]), r"labels must lie in 0\.\.9 \(10 classes\), found -1"),
    (dict(labels=[0] * 5), r"'labels' has shape \(5,\)"),
])
def test_malformed_batch_is_named(tmp_path, fake_cifar, fake_files, change, match):
    folder = fake_files.write_batches(tmp_path / "cifar-10-batches-py", fake_cifar,
                                      overrides={"data_batch_2": _batch(fake_files, change)})
    _fails(folder, f"^{folder / 'data_batch_2'}: {match}", tmp_path)
    archive = fake_files.write_archive(tmp_path / "a.tar.gz", fake_cifar,
                                       overrides={"data_batch_2": _batch(fake_files, change)})
    _fails(archive, f"^{archive}:cifar-10-batches-py/data_batch_2: {match}", tmp_path)


def test_meta_without_label_names(tmp_path, fake_cifar, fake_files):
    folder = fake_files.write_batches(tmp_path / "b", fake_cifar, overrides={"batches.meta": {b"num_vis": 3072}})
    _fails(folder, f"^{folder / 'batches.meta'}: 'label_names' missing", tmp_path)


def test_truncated_batch_file(tmp_path, fake_cifar, fake_files):
    folder = fake_files.write_batches(tmp_path / "b", fake_cifar)
    data = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(data[:-500])
    _fails(folder, f"^{folder / 'test_batch'}: not a readable CIFAR pickle", tmp_path)


def test_unreadable_image(fake_image_folder, tmp_path):
    bad = fake_image_folder / "train" / "cat" / "0001.png"
    bad.write_bytes(b"garbage")
    _fails(fake_image_folder, f"^{bad}: cannot read this image", tmp_path)


def test_empty_class_folder(fake_image_folder, tmp_path):
    empty = fake_image_folder / "train" / "zebra"
    empty.mkdir()
    _fails(fake_image_folder, f"^{empty}: class folder holds no .png/.jpg/.jpeg images", tmp_path)


def test_test_class_that_train_lacks(fake_image_folder, tmp_path):
    extra = fake_image_folder / "test" / "unicorn"
    extra.mkdir()
    Image.new("RGB", (32, 32)).save(extra / "0.png")
    _fails(fake_image_folder, f"^{extra}: class folder 'unicorn' has no counterpart in", tmp_path)


def test_image_folder_without_test(fake_image_folder, tmp_path):
    import shutil

    shutil.rmtree(fake_image_folder / "test")
    _fails(fake_image_folder, f"^{fake_image_folder / 'test'}: missing", tmp_path)


@pytest.mark.parametrize("make", ["missing", "text file", "empty folder"])
def test_unrecognized_spec_lists_the_accepted_forms(tmp_path, make):
    target = tmp_path / "thing"
    if make == "text file":
        target.write_text("hello")
    elif make == "empty folder":
        target.mkdir()
    err = _fails(str(target), f"^--data {target}: ", tmp_path)
    for form in ("'sample'", "cifar-10-python.tar.gz", "cifar-10-batches-py/", "train/<class>/"):
        assert form in str(err)


# --------------------------------------------------------------------------- size limits before reading


def test_archive_member_declaring_gigabytes_is_refused_before_it_is_read(tmp_path):
    import tarfile

    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 3 << 30  # the header says 3 GiB; the data is not even there
        tar.addfile(info)
    _fails(archive, rf"^{archive}:cifar-10-batches-py/data_batch_1: refused: it is 3,221,225,472 bytes, "
                    r"more than a CIFAR dataset's files can be \(at most 199,680,000 bytes", tmp_path)


def test_archive_members_that_together_exceed_a_dataset_are_refused(tmp_path, fake_cifar, fake_files, monkeypatch):
    # Each member fits, all of them do not: lower the bound instead of writing 200 MB.
    archive = fake_files.write_archive(tmp_path / "cifar-10-python.tar.gz", fake_cifar)
    monkeypatch.setattr(sources, "MAX_BATCH_BYTES", 100_000)
    _fails(archive, rf"^{archive}:cifar-10-batches-py/data_batch_\d: refused: with it the dataset's files "
                    r"come to \d{3},\d{3} bytes", tmp_path)


def test_batch_file_larger_than_a_dataset_is_refused_without_reading(tmp_path, fake_cifar, fake_files):
    folder = fake_files.write_batches(tmp_path / "cifar-10-batches-py", fake_cifar)
    with open(folder / "data_batch_5", "r+b") as f:
        f.truncate(3 << 30)  # sparse: no disk space used; reading it would take 3 GiB
    _fails(folder, rf"^{folder / 'data_batch_5'}: refused: it is 3,221,225,472 bytes", tmp_path)


def test_more_images_than_cifar_has_in_all_is_refused(tmp_path, fake_cifar, fake_files, monkeypatch):
    monkeypatch.setattr(sources, "MAX_IMAGES", 70)  # the fake has 60 train + 20 test
    folder = fake_files.write_batches(tmp_path / "cifar-10-batches-py", fake_cifar)
    _fails(folder, rf"^{folder}/test_batch: refused: the files up to this one hold 80 images, "
                   r"more than CIFAR-10 has \(70 in all\)", tmp_path)


# --------------------------------------------------------------------------- CIFAR-100


def assert_same_as_fake100(ds: Dataset, fake, labels: str = "fine") -> None:
    coarse = labels == "coarse"
    assert ds.classes == (fake.coarse_classes if coarse else fake.classes)
    assert ds.num_classes == (20 if coarse else 100) and ds.labelling == labels
    np.testing.assert_array_equal(ds.train_images, fake.train_images)
    np.testing.assert_array_equal(ds.test_images, fake.test_images)
    np.testing.assert_array_equal(ds.train_labels, fake.train_coarse if coarse else fake.train_labels)
    np.testing.assert_array_equal(ds.test_labels, fake.test_coarse if coarse else fake.test_labels)


@pytest.mark.parametrize("labels", ["fine", "coarse"])
def test_cifar100_archive_with_fine_or_coarse_labels(cifar100_archive, fake_cifar100, tmp_path, labels):
    before = tree(tmp_path)
    ds = load(cifar100_archive, labels=labels)
    assert_same_as_fake100(ds, fake_cifar100, labels)
    assert ds.source == f"archive {cifar100_archive}"
    assert tree(tmp_path) == before  # read in place
    assert ds.classes[:3] == (("aquatic_mammals", "fish", "flowers") if labels == "coarse"
                              else ("apple", "aquarium_fish", "baby"))


def test_cifar100_folder_its_parent_and_a_folder_with_the_archive(cifar100_folder, fake_cifar100, fake_files,
                                                                  tmp_path):
    assert_same_as_fake100(load(cifar100_folder), fake_cifar100)
    assert_same_as_fake100(load(cifar100_folder.parent, labels="coarse"), fake_cifar100, "coarse")
    other = tmp_path / "dl"
    other.mkdir()
    fake_files.write_cifar100_archive(other / "cifar-100-python.tar.gz", fake_cifar100)
    assert_same_as_fake100(load(other), fake_cifar100)


def test_coarse_labels_of_a_source_with_one_labelling_are_refused(fake_archive, fake_image_folder, tmp_path):
    _fails(fake_archive, rf"^--labels coarse: {fake_archive} has one set of labels; only CIFAR-100", tmp_path,
           labels="coarse")
    with pytest.raises(DataError, match=r"^--labels coarse: image folder .* has one set of labels"):
        load(fake_image_folder, labels="coarse")
    with pytest.raises(DataError, match=r"^--labels coarse: the sample \(CIFAR-10\) has one set"):
        load("sample", labels="coarse")
    with pytest.raises(DataError, match=r"^--labels medium: expected one of fine, coarse"):
        load(fake_archive, labels="medium")
    assert load(fake_archive).labelling is None


def _batch100(fake_files, changes: dict) -> dict:
    batch = dict(fake_files.cifar100_files(fake_files.make100())["train"])
    batch.update({k.encode(): v for k, v in changes.items()})
    batch = {k: v for k, v in batch.items() if v is not None}
    return batch


@pytest.mark.parametrize("labels, change, match", [
    ("fine", dict(fine_labels=[100] * 200), r"labels must lie in 0\.\.99 \(100 classes\), found 100"),
    ("coarse", dict(coarse_labels=[20] * 200), r"labels must lie in 0\.\.19 \(20 classes\), found 20"),
    ("coarse", dict(coarse_labels=None), r"missing key 'coarse_labels'"),
    ("fine", dict(fine_labels=[0] * 7), r"'fine_labels' has shape \(7,\)"),
])
def test_malformed_cifar100_batch_is_named(tmp_path, fake_files, labels, change, match):
    fake = fake_files.make100()
    archive = fake_files.write_cifar100_archive(tmp_path / "c.tar.gz", fake,
                                                overrides={"train": _batch100(fake_files, change)})
    with pytest.raises(DataError, match=rf"^{archive}:cifar-100-python/train: {match}"):
        load(archive, labels=labels)
    folder = fake_files.write_cifar100_folder(tmp_path / "cifar-100-python", fake,
                                              overrides={"train": _batch100(fake_files, change)})
    before = tree(tmp_path)
    with pytest.raises(DataError, match=rf"^{folder / 'train'}: {match}"):
        load(folder, labels=labels)
    assert tree(tmp_path) == before


def test_cifar100_meta_without_coarse_names_and_missing_files(tmp_path, fake_files):
    fake = fake_files.make100()
    folder = fake_files.write_cifar100_folder(tmp_path / "cifar-100-python", fake,
                                              overrides={"meta": {b"fine_label_names": [b"a"] * 100}})
    _fails(folder, rf"^{folder / 'meta'}: 'coarse_label_names' missing", tmp_path, labels="coarse")
    (folder / "test").unlink()
    _fails(folder, rf"^{folder}: missing test \(a cifar-100-python folder holds train, test, meta\)", tmp_path)
    archive = fake_files.write_cifar100_archive(tmp_path / "c.tar.gz", fake, skip=("meta",))
    _fails(archive, rf"^{archive}: archive lacks meta \(expected cifar-100-python/\{{train,test,meta\}}\)",
           tmp_path)


def test_crafted_cifar100_train_file_is_refused_by_name(tmp_path, fake_files):
    payload = b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR."
    archive = fake_files.write_cifar100_archive(tmp_path / "c.tar.gz", fake_files.make100(),
                                                overrides={"train": payload})
    _fails(archive, rf"^{archive}:cifar-100-python/train: refused to unpickle: it asks for os.system", tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cifar100_default_downloads_beside_cifar10_and_reuses(cache, fake_cifar100, fake_cifar, fake_files,
                                                              tmp_path, monkeypatch):
    served = fake_files.write_cifar100_archive(tmp_path / "served100.tar.gz", fake_cifar100)
    monkeypatch.setattr(sources, "CIFAR100_URL", served.resolve().as_uri())
    monkeypatch.setattr(sources, "CIFAR100_MD5", hashlib.md5(served.read_bytes()).hexdigest())
    fake_files.write_batches(cache / "cifar-10-batches-py", fake_cifar)  # CIFAR-10 is there already
    assert_same_as_fake100(load("cifar100", labels="coarse", progress=False), fake_cifar100, "coarse")
    assert tree(cache) - {f"cifar-10-batches-py/{n}" for n in sources.CIFAR10.files} \
        == {"cifar-10-batches-py", "cifar-100-python.tar.gz"}
    monkeypatch.setattr(sources, "CIFAR100_URL", (tmp_path / "gone").as_uri())
    assert_same_as_fake100(load("cifar100"), fake_cifar100)  # from the cache
    assert_same_as_fake(load("cifar10"), fake_cifar)  # and CIFAR-10 is still CIFAR-10
    assert_same_as_fake(load(None), fake_cifar)


def test_cifar10_default_is_not_satisfied_by_cifar100(cache, fake_cifar100, fake_files, monkeypatch):
    cache.mkdir()
    fake_files.write_cifar100_archive(cache / "cifar-100-python.tar.gz", fake_cifar100)
    monkeypatch.setattr(sources, "DOWNLOAD_URL", (cache / "nowhere.tar.gz").as_uri())
    with pytest.raises(DataError, match="could not download CIFAR-10 from"):
        load(None, progress=False)
    assert tree(cache) == {"cifar-100-python.tar.gz"}


def test_cifar100_offline_names_its_archive_and_keeps_nothing(cache, monkeypatch):
    assert sources.CIFAR100_URL == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    assert sources.CIFAR100_MD5 == "eb9058c3a382ffc7106e4002c42a8d85"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(sources, "CIFAR100_URL", f"http://127.0.0.1:{port}/cifar-100-python.tar.gz")
    with pytest.raises(DataError) as err:
        load("cifar100", progress=False)
    message = str(err.value)
    assert message.startswith(f"could not download CIFAR-100 from http://127.0.0.1:{port}/")
    assert "cifar-100-python.tar.gz" in message and "--data PATH" in message and "--data sample" in message
    assert "\n" not in message
    assert tree(cache) == set()


# --------------------------------------------------------------------------- images read rightly


def _grey16() -> np.ndarray:
    """A 16-bit ramp over the whole 0..65535 range, (32, 32) uint16."""
    return np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)


def _as_8bit(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.round(values / 257.0).astype(np.uint8)[..., None], 3, axis=-1)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16bit_greyscale_is_scaled_to_8_bits(tmp_path, mode):
    values = _grey16()
    if mode == "I;16":  # as a 16-bit PNG reads back
        im, path = Image.fromarray(values), tmp_path / "g16.png"
    elif mode == "I;16B":
        im, path = Image.frombytes("I;16B", (32, 32), values.astype(">u2").tobytes()), tmp_path / "g16b.tif"
    else:
        im, path = Image.fromarray(values.astype(np.int32)), tmp_path / "g32.tif"
    im.save(path)
    with Image.open(path) as check:
        assert check.mode == mode
    x = load_image_file(path)
    np.testing.assert_array_equal(x, _as_8bit(values))  # not solid white
    assert x.min() == 0 and x.max() == 255


def test_16bit_pngs_in_an_image_folder(tmp_path, fake_files):
    root = fake_files.write_image_folder(tmp_path / "imgs", fake_files.make(train_per_class=1, test_per_class=1,
                                                                             classes=("a", "b")))
    Image.fromarray(_grey16()).save(root / "train" / "b" / "zz16.png")
    ds = load(root)
    np.testing.assert_array_equal(ds.train_images[-1], _as_8bit(_grey16()))


def test_32bit_values_beyond_16_bits_are_refused_by_name(tmp_path):
    path = tmp_path / "wide.tif"
    Image.fromarray(np.full((32, 32), 70000, np.int32)).save(path)
    with pytest.raises(DataError, match=rf"^{path}: cannot read this image \(ValueError: I pixel values span "
                                        r"70000\.\.70000, outside the 16-bit range"):
        load_image_file(path)


def _halves() -> np.ndarray:
    """Left half red, right half blue: a 180-degree turn swaps them."""
    x = np.zeros((32, 32, 3), np.uint8)
    x[:, :16, 0] = 255
    x[:, 16:, 2] = 255
    return x


def _with_orientation(path: Path, pixels: np.ndarray, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif)
    return path


@pytest.mark.parametrize("size", [32, 64])
def test_exif_orientation_applies_to_every_size(tmp_path, size):
    pixels = np.repeat(np.repeat(_halves(), size // 32, axis=0), size // 32, axis=1)
    turned = load_image_file(_with_orientation(tmp_path / "r.png", pixels, 3))  # 3: rotate 180
    upright = load_image_file(_with_orientation(tmp_path / "u.png", pixels, 1))
    away_from_the_edge = np.r_[0:12, 20:32]  # Lanczos blurs the middle columns when resizing
    np.testing.assert_array_equal(turned[:, away_from_the_edge], _halves()[::-1, ::-1][:, away_from_the_edge])
    np.testing.assert_array_equal(upright[:, away_from_the_edge], _halves()[:, away_from_the_edge])


def test_exif_orientation_in_an_image_folder(tmp_path, fake_files):
    root = fake_files.write_image_folder(tmp_path / "imgs", fake_files.make(train_per_class=1, test_per_class=1,
                                                                             classes=("a", "b")))
    _with_orientation(root / "test" / "a" / "zz.png", _halves(), 6)  # 6: rotate 90 clockwise
    ds = load(root)
    np.testing.assert_array_equal(ds.test_images[ds.test_labels == 0][-1], np.rot90(_halves(), -1))


def test_predict_reads_images_through_the_same_function(tmp_path, monkeypatch):
    """predict_files decodes with data's load_image_file: 16-bit and EXIF fixes reach it."""
    from cifarzoo import predict

    seen = []

    class Recorder:
        classes = ["x", "y"]

        def predict_logits(self, images):
            seen.append(images.copy())
            return np.zeros((len(images), 2), np.float32)

    monkeypatch.setattr(predict, "load_classifier", lambda source, device="auto": Recorder())
    grey = tmp_path / "g16.png"
    Image.fromarray(_grey16()).save(grey)
    turned = _with_orientation(tmp_path / "r.png", _halves(), 3)
    results = predict.predict_files("model", [grey, turned], top_k=1, device="cpu")
    assert all(r.ok for r in results)
    np.testing.assert_array_equal(seen[0][0], _as_8bit(_grey16()))
    np.testing.assert_array_equal(seen[0][1], _halves()[::-1, ::-1])


# --------------------------------------------------------------------------- memory and time bombs


def _tar_with(path: Path, infos) -> Path:
    """A .tar.gz of headers only (``addfile`` without data): what a crafted archive declares."""
    import tarfile

    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for info in infos:
            tar.addfile(info)
    return path


@pytest.mark.parametrize("kind", ["GNUTYPE_LONGNAME", "GNUTYPE_LONGLINK", "XHDTYPE", "XGLTYPE"])
@pytest.mark.parametrize("name", ["cifar-10-python.tar.gz", "renamed.bin"])
def test_extended_tar_header_declaring_a_gigabyte_is_refused_before_it_is_read(tmp_path, kind, name):
    import tarfile

    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = getattr(tarfile, kind), 1 << 30  # tarfile would read all of it at once
    archive = _tar_with(tmp_path / name, [info])
    _fails(archive, rf"^{archive}: refused: a member's extended header declares 1,073,741,824 bytes, more "
                    r"than a CIFAR archive's headers hold \(at most 8,192\)$", tmp_path)


def test_sparse_tar_member_is_refused(tmp_path):
    import tarfile

    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    info.type = tarfile.GNUTYPE_SPARSE
    archive = _tar_with(tmp_path / "cifar-10-python.tar.gz", [info])
    _fails(archive, rf"^{archive}: refused: it holds a sparse member", tmp_path)


def test_archive_of_many_empty_members_is_refused_at_the_bound(tmp_path, monkeypatch):
    import tarfile

    archive = _tar_with(tmp_path / "cifar-10-python.tar.gz",
                        [tarfile.TarInfo(f"cifar-10-batches-py/x{i}") for i in range(sources.MAX_ARCHIVE_MEMBERS + 1)])
    kept = []
    real_next = tarfile.TarFile.next

    def next_(tar):  # how many headers tarfile holds at once
        kept.append(len(tar.members))
        return real_next(tar)

    monkeypatch.setattr(tarfile.TarFile, "next", next_)
    _fails(archive, rf"^{archive}: refused: it holds more than 100 members; an official CIFAR archive holds 9$",
           tmp_path)
    assert max(kept) <= 1


def test_image_over_the_pixel_bound_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    from PIL import ImageFile

    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 50), np.uint16)).save(path)
    monkeypatch.setattr(sources, "MAX_IMAGE_PIXELS", 1999)

    def no_decoding(self):
        raise AssertionError("decoded an image over the bound")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(DataError, match=rf"^{path}: refused: 50x40 is 2,000 pixels, more than an input of a "
                                        r"32x32 classifier may be \(at most 1,999\)$"):
        load_image_file(path)


def test_16bit_conversion_needs_no_wide_copy_of_the_image():
    import tracemalloc

    values = np.tile(_grey16(), (40, 40))  # 1280 x 1280 = 1.6 Mpx
    im = Image.fromarray(values)
    tracemalloc.start()
    try:
        out = np.asarray(sources._to_8bit(im))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(out, _as_8bit(values)[..., 0])
    assert peak < 8 * values.size  # one int64 copy alone would be 8 bytes a pixel


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return path


def test_fifo_given_as_an_image_is_refused_not_waited_on(fifo, no_hang):
    with pytest.raises(DataError, match=rf"^{fifo}: refused: it is a FIFO; only regular files are read$"):
        load_image_file(fifo)


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_special_files_given_as_data_are_refused(fifo, no_hang, tmp_path, special):
    path = fifo if special == "fifo" else Path(special)
    if not path.exists():
        pytest.skip(f"{special} does not exist here")
    kind = "a FIFO" if special == "fifo" else "a character device"
    _fails(path, rf"^{path}: refused: it is {kind}; only regular files are read$", tmp_path)
    with pytest.raises(DataError, match=rf"^{path}: refused: it is {kind}"):
        sources.load_archive(path)


def _meta_with(names) -> dict:
    return {"batches.meta": {b"label_names": [n.encode() for n in names]}}


@pytest.mark.parametrize("names, match", [
    (["x" * 101] + [f"c{i}" for i in range(9)], r"refused: a class name of 101 characters \(x{40}\.\.\.\), "
                                                r"longer than 100$"),
    ([f"c{i}" for i in range(1001)], r"refused: 1,001 classes, more than 1,000$"),
    (["cat", "dog", "cat"] + [f"c{i}" for i in range(7)], r"refused: class name 'cat' appears twice$"),
])
def test_class_names_are_bounded_and_unique_on_load(tmp_path, fake_cifar, fake_files, names, match):
    folder = fake_files.write_batches(tmp_path / "cifar-10-batches-py", fake_cifar, overrides=_meta_with(names))
    _fails(folder, rf"^{folder}/batches.meta: {match}", tmp_path)


def test_class_names_at_the_bounds_load(tmp_path, fake_files):
    names = ("y" * 100,) + tuple(f"c{i}" for i in range(999))
    ds = sources.build_dataset(np.zeros((1, 32, 32, 3), np.uint8), [0], np.zeros((1, 32, 32, 3), np.uint8), [999],
                               names, "test")
    assert ds.classes == names
