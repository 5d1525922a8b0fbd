"""Ctrl-C at any point after the first step keeps every completed step: a real SIGINT to a real
`cifarzoo train` process at each point of an epoch's end and of the run's end, each time continued
with the very command it prints, ends in the same weights and metrics as a run never interrupted."""
from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from cifarzoo.cli import main
from cifarzoo.train.checkpoint import load_checkpoint
from cifarzoo.train.rundir import RunDir

TESTS = Path(__file__).resolve().parent
SRC = str(TESTS.parent / "src")
STEPS = 4  # per epoch: 200 images, batch 50
# 4 epochs, evaluated after each; a checkpoint only after epoch 3 (so before the fix an
# interrupted epoch 1 or 2 left nothing to resume, as --checkpoint-every 0 does on a GPU)
TRAIN = ["resnet18", "--data", "sample", "--subset", "200", "--width-mult", "0.125", "--epochs", "4",
         "--batch-size", "50", "--device", "cpu", "--precision", "fp32", "--threads", "1", "--allow-stall",
         "--eval-every", "1", "--checkpoint-every", "3", "--eval-batch-size", "500", "--compile", "off"]
TIMES = ("epoch_seconds", "elapsed_seconds", "images_per_second")

# (where the SIGINT lands, the Nth time there in that process, (epochs, partial steps) then saved)
LEGS = [
    ("call:cifarzoo.train.loop:predict_logits", 1, (0, STEPS)),  # epoch 1's evaluation
    ("write:metrics.csv", 1, (1, None)),  # writing epoch 1's metrics.csv
    ("call:cifarzoo.progress:ConsoleReporter.on_epoch_end", 1, (2, None)),  # between epochs 2 and 3
    ("write:checkpoint.pt", 1, (3, None)),  # writing epoch 3's checkpoint
    ("call:cifarzoo.train.loop:predict_tta_logits", 1, (3, STEPS)),  # the final pass (epoch 4's evaluation)
    ("write:summary.json", 1, None),  # writing the final record: completed, then interrupted
]


def interrupted(point: str, n: int, command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TESTS / "sigint_at.py"), point, str(n), *command],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=300)


def printed_command(stderr: str, out: Path) -> list[str]:
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"interrupted; a resumable checkpoint is in {out}: "), stderr
    return shlex.split(line.split(": ", 1)[1])


def test_ctrl_c_at_every_point_keeps_every_completed_step(tmp_path, capsys):
    out = tmp_path / "run"
    command = ["cifarzoo", "train", *TRAIN, "--out", str(out)]
    for point, n, kept in LEGS:
        done = interrupted(point, n, command)
        assert done.returncode == 130, (point, done.stderr)
        if kept is None:  # held until the record was complete: nothing left to resume
            assert done.stderr.strip().splitlines()[-1] == (
                f"interrupted once the run had finished; its record in {out} is complete"), done.stderr
            break
        ckpt = load_checkpoint(out)
        assert (ckpt["epoch"], ckpt["partial"] and ckpt["partial"]["step"]) == kept, point
        assert len(RunDir(out).read_metrics()) == kept[0], point  # metrics.csv agrees
        command = printed_command(done.stderr, out)
        assert command == ["cifarzoo", "train", "--resume", str(out)]  # no --data: the run keeps its own
    assert RunDir(out).read_summary()["status"] == "finished"

    straight = tmp_path / "straight"
    assert main(["train", *TRAIN, "--out", str(straight), "--quiet"]) == 0
    capsys.readouterr()
    a, b = load_checkpoint(straight), load_checkpoint(out)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    rows_a, rows_b = RunDir(straight).read_metrics(), RunDir(out).read_metrics()
    assert len(rows_a) == len(rows_b) == 4
    for ra, rb in zip(rows_a, rows_b):
        same = {k for k in ra if k not in TIMES}
        assert {k: ra[k] for k in same} == {k: rb[k] for k in same}
        assert not math.isnan(rb["eval_acc"])
    sa, sb = RunDir(straight).read_summary(), RunDir(out).read_summary()
    for key in ("test_acc", "test_loss", "test_acc_tta", "test_loss_tta", "final_eval_acc"):
        assert sa[key] == sb[key], key
