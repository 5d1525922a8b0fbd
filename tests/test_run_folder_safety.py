"""Nothing lost: a run folder is never overwritten without --force, and has one writer at a time."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from cifarzoo.cli import main
from cifarzoo.data import Dataset
from cifarzoo.errors import CifarzooError
from cifarzoo.train import TrainConfig, fit
from cifarzoo.train.rundir import LOCK_FILE, RunDir

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


@pytest.fixture(scope="module")
def tiny(sample_subset) -> Dataset:
    return sample_subset(10, 5)


def config(**kw) -> TrainConfig:
    base = dict(model="resnet18", width_mult=0.125, epochs=1, batch_size=20, device="cpu", precision="fp32",
                compile="off", allow_stall=True, eval_batch_size=50)
    return TrainConfig(**{**base, **kw})


def test_a_finished_run_is_not_overwritten_without_force(tiny, tmp_path):
    out = tmp_path / "run"
    first = fit(config(seed=1), dataset=tiny, out_dir=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(CifarzooError, match=f"{out} already holds a run.*--resume.*--force"):
        fit(config(seed=2), dataset=tiny, out_dir=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    second = fit(config(seed=2), dataset=tiny, out_dir=out, force=True)
    assert json.loads((out / "summary.json").read_text())["seed"] == 2
    assert second.summary["seed"] == 2 and first.summary["seed"] == 1
    assert not (out / LOCK_FILE).exists()  # released at the end


def test_an_interrupted_run_is_not_overwritten_either(tiny, tmp_path, stop_at):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(config(epochs=2), dataset=tiny, out_dir=out, reporter=stop_at(2))
    assert not (out / LOCK_FILE).exists()  # released on Ctrl-C too
    with pytest.raises(CifarzooError, match="already holds a run"):
        fit(config(epochs=2), dataset=tiny, out_dir=out)
    assert fit(resume=out, dataset=tiny).summary["status"] == "finished"


def test_a_second_writer_is_refused_naming_the_first(tiny, tmp_path):
    out = tmp_path / "run"
    lock = RunDir(out).claim(fresh=True)  # another training run owns the folder
    try:
        with pytest.raises(CifarzooError, match=rf"{out} is being written by another training run \(pid {os.getpid()}"):
            fit(config(), dataset=tiny, out_dir=out, force=True)
        with pytest.raises(CifarzooError, match="being written by another training run"):
            RunDir(out).claim(fresh=False)  # e.g. --resume of the run being trained
    finally:
        lock.release()
    assert fit(config(), dataset=tiny, out_dir=out).summary["status"] == "finished"


def test_the_lock_of_a_killed_process_is_no_obstacle(tmp_path):
    out = tmp_path / "run"
    code = ("import sys, time; from cifarzoo.train.rundir import RunDir; "
            f"lock = RunDir({str(out)!r}).claim(fresh=True); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": SRC})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CifarzooError, match=f"pid {holder.pid}"):
            RunDir(out).claim(fresh=True)
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK_FILE).exists()  # left behind by the killed process
    RunDir(out).claim(fresh=True).release()  # the kernel dropped its lock


def test_cli_refuses_an_existing_run_and_overwrites_with_force(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    fit(config(), dataset=tiny, out_dir=out)
    args = ["train", "resnet18", "--data", "sample", "--subset", "100", "--width-mult", "0.125", "--epochs", "1",
            "--batch-size", "50", "--device", "cpu", "--eval-batch-size", "500", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{out} already holds a run" in err
    assert main(args + ["--force", "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["data"]["train_images"] == 100


@pytest.mark.parametrize("where", ["file", "under-file", "read-only"])
def test_cli_out_that_cannot_be_a_folder_is_one_line(tmp_path, capsys, monkeypatch, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = {"file": blocker, "under-file": blocker / "run", "read-only": tmp_path / "ro" / "run"}[where]
    if where == "read-only":
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        if os.geteuid() == 0:  # root writes anywhere: make the folder refuse as a read-only one would
            from pathlib import Path

            real_mkdir = Path.mkdir

            def mkdir(self, *a, **kw):
                if self == out:
                    raise PermissionError(13, "Permission denied", str(self))
                return real_mkdir(self, *a, **kw)

            monkeypatch.setattr(Path, "mkdir", mkdir)
    rc = main(["train", "resnet18", "--data", "sample", "--subset", "100", "--width-mult", "0.125", "--epochs", "1",
               "--batch-size", "50", "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and str(out) in err, err
    assert blocker.read_text() == "x"


def test_ctrl_c_before_the_first_checkpoint_promises_nothing(tmp_path, capsys, monkeypatch):
    import cifarzoo.train.loop as loop

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "set_up", interrupted)
    out = tmp_path / "run"
    rc = main(["train", "resnet18", "--data", "sample", "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 130 and "nothing to resume" in err and "--resume" not in err
    assert not (out / LOCK_FILE).exists()


def test_resume_refuses_settings_it_would_ignore(tiny, tmp_path, capsys, stop_at):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(config(epochs=2), dataset=tiny, out_dir=out, reporter=stop_at(2))
    before = (out / "checkpoint.pt").read_bytes()
    for extra in (["--epochs", "5"], ["--lr", "0.5", "--data", "sample"], ["--out", str(tmp_path / "x")],
                  ["--force"]):
        assert main(["train", "--resume", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--resume continues" in err
        assert all(flag in err for flag in extra if flag.startswith("--")), err
    assert (out / "checkpoint.pt").read_bytes() == before


# --------------------------------------------------------------------------- the lock file is never followed
def _plant(where, kind: str, victim):
    """``where`` made a symbolic link to ``victim`` ("link") or a FIFO ("fifo")."""
    if kind == "link":
        os.symlink(victim, where)
    else:
        os.mkfifo(where)


@pytest.mark.parametrize("kind", ["link", "fifo"])
@pytest.mark.parametrize("command", ["train --out", "train --resume", "benchmark --out"])
def test_a_lock_that_is_a_link_or_fifo_is_refused_and_left_alone(tiny, tmp_path, capsys, command, kind, stop_at):
    victim = tmp_path / "precious.txt"
    victim.write_text("precious\n")
    folder = tmp_path / "folder"
    if command == "train --resume":
        with pytest.raises(KeyboardInterrupt):
            fit(config(epochs=2), dataset=tiny, out_dir=folder, reporter=stop_at(2))
    else:
        folder.mkdir()
    _plant(folder / LOCK_FILE, kind, victim)
    args = {"train --out": ["train", "resnet18", "--data", "sample", "--subset", "100", "--width-mult", "0.125",
                            "--epochs", "1", "--batch-size", "50", "--device", "cpu", "--out", str(folder)],
            "train --resume": ["train", "--resume", str(folder)],
            "benchmark --out": ["benchmark", "--models", "resnet18", "--data", "sample", "--epochs", "1",
                                "--device", "cpu", "--out", str(folder)]}[command]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    what = {"link": "a symbolic link", "fifo": "a FIFO"}[kind]
    assert err.count("\n") == 0 and f"{folder / LOCK_FILE} is {what}, not a regular file" in err, err
    assert victim.read_text() == "precious\n"  # neither truncated nor written
    assert os.path.islink(folder / LOCK_FILE) if kind == "link" else stat.S_ISFIFO(os.lstat(folder / LOCK_FILE).st_mode)


def test_a_stale_lock_is_replaced_never_written_into(tiny, tmp_path):
    """A .lock left behind may be a hard link to another file: it is unlinked, and a new one made."""
    victim = tmp_path / "precious.txt"
    victim.write_text("precious\n")
    out = tmp_path / "run"
    out.mkdir()
    os.link(victim, out / LOCK_FILE)
    lock = RunDir(out).claim(fresh=True)
    try:
        assert victim.read_text() == "precious\n"
        assert (out / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")
        assert not os.path.samefile(victim, out / LOCK_FILE)
    finally:
        lock.release()
    assert not (out / LOCK_FILE).exists() and victim.read_text() == "precious\n"


def test_release_removes_only_its_own_lock_file(tmp_path):
    out = tmp_path / "run"
    lock = RunDir(out).claim(fresh=True)
    (out / LOCK_FILE).unlink()
    os.symlink(tmp_path / "elsewhere", out / LOCK_FILE)  # put there while the run held the folder
    lock.release()
    assert os.path.islink(out / LOCK_FILE)


def test_a_run_folder_that_is_a_link_is_refused(tiny, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "run").symlink_to(elsewhere)
    with pytest.raises(CifarzooError, match=r"run is a symbolic link, not a folder"):
        fit(config(), dataset=tiny, out_dir=tmp_path / "run")
    assert list(elsewhere.iterdir()) == []
