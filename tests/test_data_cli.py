"""`cifarzoo data info|show`, the shared --data flag, and the class grid."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from cifarzoo.cli import main
from cifarzoo.cli.common import add_data_argument
from cifarzoo.data.show import draw_class_grid
from cifarzoo.errors import CifarzooError


def test_info_table(fake_archive, fake_cifar, capsys):
    assert main(["data", "info", "--data", str(fake_archive)]) == 0
    out = capsys.readouterr().out
    assert f"archive {fake_archive}" in out
    assert "60 train, 20 test, 32x32x3 uint8, 10 classes" in out
    counts = np.bincount(fake_cifar.train_labels)
    assert any(line.split() == ["airplane", str(counts[0]), "2"] for line in out.splitlines())
    assert "mean" in out and "std" in out


def test_info_json_on_the_bundled_sample(capsys):
    assert main(["data", "info", "--data", "sample", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train_size"] == 5000 and info["test_size"] == 1000
    assert info["image_shape"] == [32, 32, 3]
    assert set(info["train_counts"].values()) == {500} and set(info["test_counts"].values()) == {100}
    assert info["classes"][0] == "airplane" and len(info["mean"]) == 3
    assert all(50 < s < 80 for s in info["std"])


def test_bad_data_is_one_line_and_status_2(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["data", "info", "--data", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cifarzoo data: error: --data {missing}: no such file or folder")
    assert err.count("\n") == 1


def test_warnings_become_one_line_each(fake_image_folder, capsys):
    Image.new("RGB", (64, 64)).save(fake_image_folder / "train" / "dog" / "big.png")
    assert main(["data", "info", "--data", str(fake_image_folder)]) == 0
    err = capsys.readouterr().err
    assert err == f"cifarzoo data: warning: {fake_image_folder}: resized 1 of 81 images to 32x32 " \
                  "(centre-cropped to square, Lanczos)\n"


def test_show_writes_a_png_atomically(fake_archive, tmp_path, capsys):
    out = tmp_path / "figs" / "grid.png"
    assert main(["data", "show", "--data", str(fake_archive), "--out", str(out), "--per-class", "3"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert sorted(p.name for p in out.parent.iterdir()) == ["grid.png"]  # no temp file left
    with Image.open(out) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert h > w  # 10 rows of 3 images: taller than wide


def test_grid_is_deterministic_per_seed(small_dataset, tmp_path):
    a = draw_class_grid(small_dataset, tmp_path / "a.png", per_class=2, seed=0)
    b = draw_class_grid(small_dataset, tmp_path / "b.png", per_class=2, seed=0)
    c = draw_class_grid(small_dataset, tmp_path / "c.png", per_class=2, seed=1)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_grid_with_fewer_images_than_asked(small_dataset, tmp_path):
    # The fake test split has 2 images per class; the third column stays empty.
    def right_band(split):
        out = draw_class_grid(small_dataset, tmp_path / f"{split}.png", per_class=3, split=split)
        px = np.asarray(Image.open(out).convert("L"))
        h, w = px.shape
        return px[int(0.15 * h):int(0.95 * h), int(0.8 * w):int(0.95 * w)]  # inside column 3

    assert (right_band("test") == 255).all()
    assert (right_band("train") < 200).any()


def test_grid_rejects_bad_arguments_without_writing(small_dataset, tmp_path):
    with pytest.raises(CifarzooError, match=r"--per-class must be in \[1, 100\]"):
        draw_class_grid(small_dataset, tmp_path / "g.png", per_class=0)
    with pytest.raises(CifarzooError, match=r"cannot write \.gif"):
        draw_class_grid(small_dataset, tmp_path / "g.gif")
    with pytest.raises(CifarzooError, match=r"--classes must be in \[1, 1000\], got 0"):
        draw_class_grid(small_dataset, tmp_path / "g.png", max_classes=0)
    assert list(tmp_path.iterdir()) == []


def test_add_data_argument_is_shared():
    p = argparse.ArgumentParser()
    add_data_argument(p)
    assert p.parse_args([]).data is None
    assert p.parse_args(["--data", "sample"]).data == "sample"
    assert "'sample'" in p.format_help() and "CIFARZOO_DATA" in p.format_help()
    q = argparse.ArgumentParser()
    add_data_argument(q, default_help="the run's own data")
    assert "Default: the run's own data" in " ".join(q.format_help().split())


def test_info_on_the_cifar100_archive_fine_and_coarse(cifar100_archive, capsys):
    assert main(["data", "info", "--data", str(cifar100_archive)]) == 0
    out = capsys.readouterr().out
    assert "200 train, 100 test, 32x32x3 uint8, 100 classes (fine labels)" in out
    assert any(line.split() == ["aquarium_fish", "2", "1"] for line in out.splitlines())
    assert main(["data", "info", "--data", str(cifar100_archive), "--labels", "coarse", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["classes"]) == 20 and info["labelling"] == "coarse"
    assert set(info["train_counts"].values()) == {10} and set(info["test_counts"].values()) == {5}


def test_coarse_labels_of_cifar10_is_one_line_and_status_2(fake_archive, capsys):
    assert main(["data", "info", "--data", str(fake_archive), "--labels", "coarse"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cifarzoo data: error: --labels coarse: {fake_archive} has one set of labels")
    assert err.count("\n") == 1


def test_show_on_cifar100_draws_a_sample_of_the_classes(cifar100_archive, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["data", "show", "--data", str(cifar100_archive), "--out", str(out), "--per-class", "2",
                 "--classes", "12"]) == 0
    with Image.open(out) as im:
        twelve = im.size[1]
    assert main(["data", "show", "--data", str(cifar100_archive), "--out", str(out), "--per-class", "2",
                 "--labels", "coarse"]) == 0  # 20 superclasses: all shown
    with Image.open(out) as im:
        twenty = im.size[1]
    assert 1.5 < twenty / twelve < 1.8  # rows, not 100 of them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-100-python.tar.gz", "grid.png"]


def test_class_names_with_terminal_escapes_are_printed_escaped(tmp_path, fake_files, capsys):
    red = "\x1b[31mred\x07"  # a colour change and a bell, as a folder name
    fake = fake_files.make(train_per_class=1, test_per_class=1, classes=(red, "blue"))
    root = fake_files.write_image_folder(tmp_path / "imgs", fake)
    assert main(["data", "info", "--data", str(root)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert any(line.split() == ["\\x1b[31mred\\x07", "1", "1"] for line in out.splitlines())
