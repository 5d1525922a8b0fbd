"""Writing files: nothing is written through or over a symbolic link or special file, and a
full disk is one line naming the file, with the file there before left intact."""
from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from cifarzoo.cli import main
from cifarzoo.errors import CifarzooError
from cifarzoo.io import atomic_write_bytes, save_figure, write_json
from cifarzoo.train import TrainConfig, fit
from cifarzoo.train.rundir import RunDir

KINDS = {"link": "a symbolic link", "fifo": "a FIFO", "socket": "a socket", "device": "a character device"}


def plant(path: Path, kind: str, victim: Path) -> None:
    """Put ``kind`` at ``path``: a symbolic link to ``victim``, a FIFO, a socket or a device node."""
    if kind == "link":
        path.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(path))
        except OSError as exc:  # e.g. a path longer than a socket address allows
            pytest.skip(f"cannot make a socket here ({exc})")
        finally:
            sock.close()
    else:
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the null device's numbers
        except (PermissionError, OSError) as exc:
            pytest.skip(f"cannot make a device node here ({exc})")


def unchanged(path: Path, kind: str, victim: Path) -> bool:
    mode = os.lstat(path).st_mode
    same_kind = {"link": stat.S_ISLNK, "fifo": stat.S_ISFIFO, "socket": stat.S_ISSOCK, "device": stat.S_ISCHR}[kind]
    return same_kind(mode) and victim.read_text() == "precious\n"


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "precious.txt"
    path.write_text("precious\n")
    return path


@pytest.mark.parametrize("kind", list(KINDS))
def test_no_writer_replaces_or_follows_a_special_file(tmp_path, victim, kind):
    from matplotlib.figure import Figure

    target = tmp_path / "out.png"
    plant(target, kind, victim)
    writers = [lambda: atomic_write_bytes(target, b"x"), lambda: write_json(target, {"a": 1}),
               lambda: save_figure(Figure(figsize=(1, 1)), target)]
    for write in writers:
        with pytest.raises(CifarzooError, match=f"{target} is {KINDS[kind]}, not a regular file"):
            write()
        assert unchanged(target, kind, victim)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.png")] == []  # no temp file left


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_cli_out_over_a_special_file_is_one_line(tmp_path, victim, capsys, kind):
    target = tmp_path / "grid.png"
    plant(target, kind, victim)
    assert main(["data", "show", "--data", "sample", "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{target} is {KINDS[kind]}" in err, err
    assert unchanged(target, kind, victim)


def test_a_file_put_in_place_during_the_write_is_not_replaced(tmp_path):
    target = tmp_path / "x.json"

    def write(f):
        f.write(b"{}")
        os.mkfifo(target)  # appears while the bytes are being written

    with pytest.raises(CifarzooError, match="is a FIFO"):
        atomic_write_bytes(target, write)
    assert stat.S_ISFIFO(os.lstat(target).st_mode)


def test_evaluate_and_export_refuse_a_linked_out(tmp_path, capsys, sample_subset):
    tiny = sample_subset(10)
    config = TrainConfig(model="resnet18", width_mult=0.125, epochs=1, batch_size=20, device="cpu",
                         precision="fp32", compile="off", allow_stall=True, data="sample", eval_batch_size=500)
    run = fit(config, dataset=tiny, out_dir=tmp_path / "run").run_dir
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere)
    assert main(["evaluate", str(run), "--out", str(tmp_path / "link")]) == 2
    assert "link is a symbolic link, not a folder" in capsys.readouterr().err
    pytest.importorskip("onnx")
    (tmp_path / "model.onnx").symlink_to(elsewhere / "model.onnx")
    assert main(["export", str(run), "--out", str(tmp_path / "model.onnx")]) == 2
    assert "model.onnx is a symbolic link, not a regular file" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


# --------------------------------------------------------------------------- a full disk


def interrupted_run(bundled_sample, folder: Path, stop_at) -> Path:
    """A run folder with a mid-run checkpoint (2 epochs of 5 steps, stopped after step 2)."""
    config = TrainConfig(model="resnet18", width_mult=0.125, epochs=2, batch_size=20, subset=100, device="cpu",
                         precision="fp32", compile="off", allow_stall=True, data="sample", eval_batch_size=500)
    with pytest.raises(KeyboardInterrupt):
        fit(config, dataset=bundled_sample, out_dir=folder, reporter=stop_at(2))
    return folder


def resume_on_a_full_disk(run: Path, capsys, name: str) -> None:
    before = (run / "checkpoint.pt").read_bytes()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{run / name}: no space left on the device" in err, err
    if name == "checkpoint.pt":
        assert (run / "checkpoint.pt").read_bytes() == before  # the previous checkpoint is intact
    assert RunDir(run).state() == "resume"
    assert [p.name for p in run.iterdir() if p.name.startswith(".") and p.name != ".lock"] == []


@pytest.mark.parametrize("name", ["checkpoint.pt", "metrics.csv"])
def test_a_full_disk_is_one_line_and_keeps_the_checkpoint(bundled_sample, tmp_path, capsys, monkeypatch, name,
                                                          stop_at):
    """torch.save fails with a RuntimeError whose context is the ENOSPC; other writers with the OSError."""
    import torch

    run = interrupted_run(bundled_sample, tmp_path / "run", stop_at)
    if name == "checkpoint.pt":
        def full(obj, f):
            f.write(b"PK")
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

        monkeypatch.setattr(torch, "save", full)
    else:
        real = os.fsync

        def fsync(fd):
            if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
                raise OSError(errno.ENOSPC, "No space left on device")
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    resume_on_a_full_disk(run, capsys, name)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (mounting needs root, or is not allowed: then skipped)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_real_full_disk_is_one_line_and_keeps_the_checkpoint(bundled_sample, tmp_path, small_disk, capsys, stop_at):
    run = shutil.copytree(interrupted_run(bundled_sample, tmp_path / "run", stop_at), small_disk / "run")
    free = os.statvfs(small_disk)
    with open(small_disk / "filler", "wb") as f:  # leave 64 KB: metrics.csv fits, the checkpoint does not
        f.write(b"\0" * (free.f_bavail * free.f_frsize - 64 * 1024))
    resume_on_a_full_disk(Path(run), capsys, "checkpoint.pt")
