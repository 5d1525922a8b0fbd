"""Data-parallel training under torchrun (gloo, CPU, 2 real processes), on one node and on two.

The multi-process tests start real ranks with ``python -m torch.distributed.run``
(what ``torchrun`` is), on a small fake dataset (260 train / 100 test images) and
resnet18 at width 0.125, each under a hard timeout that kills the whole process
group. tests/dist_worker.py is the test-only program the ranks run when a test has to
look inside them (model hashes, loader indices).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarzoo.errors import CifarzooError
from cifarzoo.train import distributed as D
from cifarzoo.train import launch

WORKER = Path(__file__).with_name("dist_worker.py")
LAUNCH_TIMEOUT = 240  # seconds; a launch here takes about 20-30 s on 2 busy cores


def run_tree(argv, *, cwd, timeout=LAUNCH_TIMEOUT) -> tuple[int, str, float]:
    """Run ``argv`` in its own process group; kill the whole group (torchrun and ranks) on timeout.

    Returns (exit status, stdout + stderr, seconds).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    p = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        pytest.fail(f"{' '.join(map(str, argv))} did not finish in {timeout}s; output:\n{out[-4000:]}")
    return p.returncode, out, time.perf_counter() - t0


def torchrun(*args, cwd, nproc=2, **kw):
    return run_tree([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                     *args], cwd=cwd, **kw)


def cli(*args, cwd, **kw):
    return run_tree([sys.executable, "-m", "cifarzoo", *args], cwd=cwd, **kw)


@pytest.fixture
def one_thread():
    """In-process training on one thread: on 2 shared cores, 2 OpenMP threads spin (5x the CPU time)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    """A fake CIFAR-10 in the official format: 26 train / 10 test images per class."""
    from conftest import make_fake_cifar, write_batches

    root = tmp_path_factory.mktemp("fake")
    return write_batches(root / "cifar-10-batches-py", make_fake_cifar(train_per_class=26, test_per_class=10))


@pytest.fixture(scope="module")
def ddp(fake_data, tmp_path_factory):
    """One 2-rank launch of dist_worker.py ``train`` mode; its result.json and folder."""
    out = tmp_path_factory.mktemp("ddp")
    rc, text, _ = torchrun(WORKER, "train", fake_data, out, cwd=out)
    assert rc == 0, text[-4000:]
    return json.loads((out / "result.json").read_text()), out


# --------------------------------------------------------------------------- two real ranks
def test_two_ranks_write_one_run_folder_and_hold_identical_weights(ddp):
    from cifarzoo.train.checkpoint import load_checkpoint

    result, out = ddp
    assert result["world_size"] == 2
    folders = list((out / "runs").iterdir())
    assert len(folders) == 1, folders  # rank 0 named it; rank 1 did not make its own "-2"
    assert result["run_dirs"][0] == result["run_dirs"][1] == str(folders[0])
    # Parameters and buffers (BN running statistics included) are bit-identical on both
    # ranks, and equal to what rank 0 saved.
    a, b = result["digests"]
    assert a == b
    ckpt = load_checkpoint(folders[0])
    assert ckpt["finished"] and ckpt["epoch"] == 2
    import dist_worker

    assert dist_worker.digest(_StateDict(ckpt["state_dict"])) == a
    summary = json.loads((folders[0] / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["train_images"] == 260
    assert json.loads((folders[0] / "config.json").read_text())["world_size"] == 2


class _StateDict(torch.nn.Module):
    """Wraps a saved state_dict so dist_worker.digest hashes it as it hashes a live model."""

    def __init__(self, sd):
        super().__init__()
        self._sd = sd

    def state_dict(self, *a, **k):
        return self._sd


def test_ranks_together_see_every_training_image_once_per_epoch(ddp):
    result, _ = ddp
    n, batch = 260, 64
    trained = n // batch * batch  # the last incomplete global batch is dropped
    for epoch in (0, 1):
        r0, r1 = (result["indices"][r][epoch] for r in range(2))
        assert len(r0) == len(r1) == trained // 2
        assert not set(r0) & set(r1) and len(set(r0)) == len(r0)
        assert len(set(r0) | set(r1)) == trained and set(r0) | set(r1) <= set(range(n))
    assert result["indices"][0][0] != result["indices"][0][1]  # a new order every epoch


def test_two_ranks_match_one_process_without_batchnorm(ddp):
    """Same global batch (64) and seed: 2 ranks of 32 images == 1 process of 64.

    The network has no BatchNorm, the case SyncBatchNorm reduces to (and the only one
    on CPU, where torch has no SyncBatchNorm; see test_sync_bn_on_cpu_is_a_clear_error).
    The loader gives the two ranks exactly the two halves of each global batch, with the
    same crops, flips and cutouts, and DDP averages the two half-batch gradients, which
    is the full batch's mean gradient. What is left is float32 rounding: the summation
    order of the gradient differs (two partial sums added by all-reduce), about 1e-7
    relative per step. Measured over 2 epochs (8 steps): below 1e-6 relative on the
    losses. The tolerance, 1e-4, is 100x that, and far below any real difference (a
    wrong lr or a rank training on half the data moves the losses by percents).
    """
    result, _ = ddp
    ddp_rows, single_rows = result["plain_ddp_metrics"], result["plain_single_metrics"]
    assert len(ddp_rows) == len(single_rows) == 2
    for a, b in zip(ddp_rows, single_rows):
        for key in ("train_loss", "eval_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (key, a, b)
        assert a["train_acc"] == pytest.approx(b["train_acc"], abs=1 / 256 + 1e-9)  # one image at most
        assert a["eval_acc"] == pytest.approx(b["eval_acc"], abs=1 / 100 + 1e-9)
        assert a["lr"] == b["lr"]  # the global batch's schedule, not a per-rank one


def test_two_ranks_with_unsynced_batchnorm_stay_close_to_one_process(ddp, fake_data, tmp_path, one_thread):
    """resnet18 with plain BatchNorm: each rank normalizes over its own 32 images, not 64.

    So the curves are not the same, only close: measured 0.1-0.3% on the training loss
    and 0.4-0.6% on the test loss over 2 epochs. 2.5% allows for thread-count rounding
    while still catching a rank that trains on the wrong data or at the wrong lr.
    """
    import dist_worker

    from cifarzoo.data import load
    from cifarzoo.train import fit

    result, _ = ddp
    single = fit(dist_worker.config("resnet18", str(fake_data)), dataset=load(str(fake_data)),
                 out_dir=tmp_path / "single").metrics
    for a, b in zip(result["resnet_metrics"], single):
        for key in ("train_loss", "eval_loss"):
            assert a[key] == pytest.approx(b[key], rel=0.025), (key, a, b)


def test_a_failing_rank_ends_the_whole_launch(fake_data, tmp_path):
    # Rank 1 raises at its third step; rank 0 is then waiting in the next collective.
    # Its connection to rank 1 closes, and torchrun stops it: no hang, non-zero status,
    # and torchrun's summary names rank 1's error as the root cause.
    rc, text, seconds = torchrun(WORKER, "fail", fake_data, tmp_path, cwd=tmp_path, timeout=180)
    assert rc != 0
    assert "deliberate failure on rank 1 at step 3" in text
    root = text[text.index("Root Cause"):]
    assert "rank      : 1" in root and "deliberate failure on rank 1" in root
    assert seconds < 120, seconds  # measured about 20 s, mostly start-up


def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(fake_data, tmp_path, monkeypatch):
    # Rank 1 alone gets Ctrl-C in step 5. Acting alone it would run the interrupted save's collectives
    # while rank 0 is in step 6's gradient all-reduce; instead both stop after step 6, where they next
    # agree (every 2 steps here), and rank 0 saves that state. A hang would end at the 60 s timeout.
    from cifarzoo.train.checkpoint import load_checkpoint

    monkeypatch.setenv("CIFARZOO_DIST_TIMEOUT", "60")
    rc, text, seconds = torchrun(WORKER, "ctrl-c", fake_data, tmp_path, cwd=tmp_path, timeout=180)
    assert rc != 0, text[-4000:]
    assert "rank 0: KeyboardInterrupt raised by fit" in text and "rank 1: KeyboardInterrupt raised by fit" in text
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["finished"] is False and ckpt["epoch"] == 1 and ckpt["partial"]["step"] == 2, text[-4000:]
    assert "timeout" not in text.lower() and seconds < 120, seconds


# --------------------------------------------------------------------------- the CLI
def test_cli_nproc_per_node_trains_one_run_on_two_ranks(fake_data, tmp_path):
    rc, text, _ = cli("train", "resnet18", "--data", fake_data, "--width-mult", "0.125", "--epochs", "1",
                      "--batch-size", "64", "--device", "cpu", "--seed", "2", "--allow-stall",
                      "--nproc-per-node", "2", cwd=tmp_path)
    assert rc == 0, text[-4000:]
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1, folders
    summary = json.loads((folders[0] / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "finished"
    config = json.loads((folders[0] / "config.json").read_text())
    assert config["world_size"] == 2 and config["config"]["batch_size"] == 64  # the global batch
    assert config["config"]["seed"] == 2 and config["config"]["allow_stall"] is True  # options forwarded
    assert text.count("epoch   1/1") == 1 and text.count("test accuracy") == 1  # rank 0 alone prints


def test_cli_resumes_an_interrupted_run_on_two_ranks(fake_data, tmp_path, one_thread):
    import dist_worker

    from cifarzoo.data import load
    from cifarzoo.train import Reporter, fit
    from cifarzoo.train.checkpoint import load_checkpoint

    class StopAt(Reporter):
        def on_step(self, epoch, step, steps, global_step):
            if global_step == 6:  # mid-epoch 2 (4 steps per epoch)
                raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(dist_worker.config("resnet18", str(fake_data)), dataset=load(str(fake_data)), out_dir=run,
            reporter=StopAt())
    before = load_checkpoint(run)
    assert before["epoch"] == 1 and before["partial"]["step"] == 2
    rc, text, _ = cli("train", "--resume", run, "--nproc-per-node", "2", cwd=tmp_path)
    assert rc == 0, text[-4000:]
    after = load_checkpoint(run)
    assert after["finished"] and after["epoch"] == 2
    assert after["metrics"][0] == before["metrics"][0]  # epoch 1 kept as it was
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    assert len(list(tmp_path.glob("runs/*"))) == 0  # no second folder


def test_two_nodes_with_torchrun_c10d_write_one_run_that_matches_one_process(fake_data, tmp_path, one_thread):
    """Two "machines" (two torchrun launches, --nnodes 2, one process each) meet at a c10d
    rendezvous on 127.0.0.1, and train one run as docs/guide.md's two-machine command does.

    Global rank 0 names and writes the one run folder; the other node writes nothing and
    prints nothing. resnet18's BatchNorm is not synced, so the losses match one process
    with the same global batch (64) within the unsynced-BatchNorm tolerance above (2.5%).
    """
    from cifarzoo.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    train = ["train", "resnet18", "--data", str(fake_data), "--width-mult", "0.125", "--epochs", "2",
             "--batch-size", "64", "--lr", "0.05", "--warmup-epochs", "0.5", "--device", "cpu",
             "--precision", "fp32", "--compile", "off", "--seed", "3", "--allow-stall"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}  # gloo on loopback too
    nodes = []
    for rank in (0, 1):
        cwd = tmp_path / f"node{rank}"
        cwd.mkdir()
        argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--node-rank", str(rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                "--rdzv-id", "two-nodes", "--local-addr", "127.0.0.1", "-m", "cifarzoo", *train]
        nodes.append((cwd, subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True, start_new_session=True)))
    texts = []
    for cwd, p in nodes:
        try:
            texts.append(p.communicate(timeout=LAUNCH_TIMEOUT)[0])
        except subprocess.TimeoutExpired:
            for _, q in nodes:
                os.killpg(q.pid, signal.SIGKILL)
            pytest.fail(f"a torchrun node did not finish in {LAUNCH_TIMEOUT}s:\n{p.communicate()[0][-4000:]}")
    assert [p.returncode for _, p in nodes] == [0, 0], "\n".join(t[-3000:] for t in texts)
    written = [d for cwd, _ in nodes if (cwd / "runs").exists() for d in (cwd / "runs").iterdir()]
    assert len(written) == 1 and written[0].parent.parent.name == "node0", written
    run = written[0]
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    assert "test accuracy" in texts[0] and "test accuracy" not in texts[1]  # node 0's rank 0 alone prints

    assert main([*train, "--out", str(tmp_path / "single"), "--quiet"]) == 0
    single = _metrics(tmp_path / "single")
    two = _metrics(run)
    assert len(two) == len(single) == 2
    for a, b in zip(two, single):
        for key in ("train_loss", "eval_loss"):
            assert a[key] == pytest.approx(b[key], rel=0.025), (key, a, b)
        assert a["lr"] == b["lr"]


def _metrics(run_dir: Path) -> list[dict]:
    from cifarzoo.train.rundir import read_metrics

    return read_metrics(run_dir / "metrics.csv")


def test_cli_rejects_a_batch_the_ranks_cannot_split(fake_data, tmp_path, capsys):
    from cifarzoo.cli import main

    rc = main(["train", "resnet18", "--data", str(fake_data), "--batch-size", "65", "--device", "cpu",
               "--nproc-per-node", "2", "--out", str(tmp_path / "x")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--batch-size 65 is the global batch and must be divisible by the 2 processes" in err
    assert "--batch-size 64 or 66" in err
    assert not (tmp_path / "x").exists()  # nothing was launched


def test_sync_bn_on_cpu_is_a_clear_error(fake_data, tmp_path, capsys, monkeypatch):
    # torch's SyncBatchNorm has no CPU kernels (aten::batch_norm_stats is CUDA-only).
    from cifarzoo.cli import main
    from cifarzoo.data import load
    from cifarzoo.train import fit
    import dist_worker

    rc = main(["train", "resnet18", "--data", str(fake_data), "--batch-size", "64", "--device", "cpu",
               "--sync-bn", "--nproc-per-node", "2", "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "--sync-bn needs CUDA" in capsys.readouterr().err
    # fit itself says so too, before any collective, when it finds itself in a 2-rank group.
    monkeypatch.setattr(D, "current", lambda: D.DistInfo(rank=0, world_size=2))
    with pytest.raises(CifarzooError, match="SyncBatchNorm has no CPU kernels"):
        fit(dist_worker.config("resnet18", str(fake_data), sync_bn=True), dataset=load(str(fake_data)),
            out_dir=tmp_path / "y")
    with pytest.raises(CifarzooError, match="--batch-size 63 is the global batch"):
        fit(dist_worker.config("resnet18", str(fake_data), batch_size=63), dataset=load(str(fake_data)),
            out_dir=tmp_path / "z")


def test_torch_sync_batchnorm_still_refuses_cpu():
    """The fact check_world relies on; if a torch release adds CPU kernels, this fails and --sync-bn can allow CPU."""
    with pytest.raises((NotImplementedError, RuntimeError), match="batch_norm_stats"):
        torch.batch_norm_stats(torch.randn(4, 2, 3, 3), 1e-5)


def test_worker_arguments_round_trip():
    from cifarzoo.cli import build_parser

    argv = ["train", "resnet18", "--data", "sample", "--epochs", "3", "--lr", "0.1", "--no-channels-last",
            "--allow-stall", "--sync-bn", "--out", "runs/x", "--quiet", "--nproc-per-node", "4"]
    parser = build_parser()
    args = parser.parse_args(argv)
    forwarded = launch.unparse_args(args._train_parser, args, drop=("nproc_per_node",))
    assert "--nproc-per-node" not in forwarded
    again = parser.parse_args(["train", *forwarded])
    skip = {"nproc_per_node", "_run", "_train_parser"}
    assert {k: v for k, v in vars(again).items() if k not in skip} == \
        {k: v for k, v in vars(args).items() if k not in skip}
    assert again.nproc_per_node is None


def test_torchrun_command_is_pytorchs_launcher():
    cmd = launch.torchrun_command(["train", "resnet18", "--epochs", "2"], 4)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc-per-node=4" in cmd
    assert cmd[-5:] == ["cifarzoo", "train", "resnet18", "--epochs", "2"] and cmd[-6] == "-m"


def test_torchrun_env_without_a_process_group_is_an_error(monkeypatch):
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    assert D.launched_by_torchrun()
    with pytest.raises(CifarzooError, match="no process group is initialized"):
        D.current()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert D.current() == D.DistInfo()


def test_check_nproc():
    with pytest.raises(CifarzooError, match="positive integer"):
        launch.check_nproc(0, "cpu")
    assert launch.check_nproc(3, "cpu") == "cpu"
    if not torch.cuda.is_available():
        assert launch.check_nproc(2, "auto") == "cpu"
        with pytest.raises(CifarzooError, match="no CUDA GPU"):
            launch.check_nproc(1, "cuda")


def test_loader_halves_are_the_single_process_batches():
    """In process: with W ranks, rank r's batch k is chunk r of the 1-process batch k, augmentation included."""
    from cifarzoo.data import DeviceLoader

    images = np.random.default_rng(0).integers(0, 256, (70, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(70) % 10
    kw = dict(batch_size=12, mean=(120,) * 3, std=(60,) * 3, train=True, augment="crop,flip,cutout", seed=4)
    single = DeviceLoader(images, labels, **kw)
    for world in (2, 3, 4):
        ranks = [DeviceLoader(images, labels, rank=r, world_size=world, **kw) for r in range(world)]
        for epoch in (0, 1):
            want = single.epoch_params(epoch)
            got = [ld.epoch_params(epoch) for ld in ranks]
            per = 12 // world
            for k in range(len(single)):
                for name, col in want.items():
                    stitched = torch.cat([g[name][k * per:(k + 1) * per] for g in got])
                    assert torch.equal(stitched, col[k * 12:(k + 1) * 12]), (world, epoch, k, name)
            union = torch.cat([g["index"] for g in got])
            assert len(union) == len(set(union.tolist())) == 70 // 12 * 12
