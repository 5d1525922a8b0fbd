"""Test-only worker for tests/test_distributed.py, started by ``torch.distributed.run``.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_worker.py MODE DATA OUT

It calls ``fit`` as the CLI does (inside ``distributed.process_group()``) and lets
the test look inside the ranks, which the CLI never shows:

``train``  1. resnet18 (BatchNorm, not synced) with no ``out_dir``, runs_root OUT/runs;
           every rank hashes its in-memory model (parameters and buffers) and lists
           the training-set indices its loader gave it in epochs 0 and 1.
           2. ``dist_test_plain`` (a network without BatchNorm) on all ranks, then the
           process group is closed and rank 0 trains it again as one process.
           Rank 0 writes OUT/result.json with all of it.
``fail``   rank 1 raises RuntimeError at its third step; the others carry on into the
           next collective.
``ctrl-c``  rank 1 alone gets a SIGINT (Ctrl-C) during global step 5 (epoch 2, step 1 of 4);
           the ranks agree on stopping every 2 steps (STOP_EVERY), into OUT/run.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn


def build_plain(num_classes: int, width_mult: float) -> nn.Module:
    w = max(4, int(32 * width_mult))
    return nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * w * 8 * 8, num_classes))


def register_plain() -> None:
    from cifarzoo.models import registry

    if "dist_test_plain" in registry.list_models():
        return

    @registry.register_model(paper="test only: no normalization layers")
    def dist_test_plain(*, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> nn.Module:
        return build_plain(num_classes, width_mult)


def config(model: str, data: str, **kw):
    from cifarzoo.train import TrainConfig

    base = dict(model=model, width_mult=0.125, epochs=2, batch_size=64, lr=0.05, device="cpu", precision="fp32",
                compile="off", seed=3, data=data, warmup_epochs=0.5, allow_stall=True)
    base.update(kw)
    return TrainConfig(**base)


def digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Capture:
    """Keeps the first model ``models.from_config`` builds and the training loader ``fit`` makes."""

    def __init__(self):
        import cifarzoo.data.loader as loader_mod
        import cifarzoo.models as models_mod

        self.models, self.loaders = [], []
        real_from_config, RealLoader = models_mod.from_config, loader_mod.DeviceLoader
        cap = self

        def from_config(*a, **k):
            m = real_from_config(*a, **k)
            cap.models.append(m)
            return m

        class Loader(RealLoader):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                if self.train:
                    cap.loaders.append(self)

        models_mod.from_config, loader_mod.DeviceLoader = from_config, Loader

    def clear(self):
        self.models.clear()
        self.loaders.clear()


def gather(obj):
    import torch.distributed as dist

    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def main(mode: str, data: str, out: str) -> None:
    import torch.distributed as dist

    from cifarzoo.data import load
    from cifarzoo.train import Reporter, fit
    from cifarzoo.train import distributed as D

    torch.set_num_threads(1)
    out_dir = Path(out)
    ds = load(data)
    cap = Capture()
    with D.process_group() as info:
        if mode == "fail":
            class FailOnRank1(Reporter):
                def on_step(self, epoch, step, steps, global_step):
                    if info.rank == 1 and global_step == 3:
                        raise RuntimeError("deliberate failure on rank 1 at step 3")

            fit(config("resnet18", data), dataset=ds, runs_root=out_dir / "runs", reporter=FailOnRank1())
            return
        if mode == "ctrl-c":
            import signal

            D.STOP_EVERY = 2

            class CtrlCOnRank1(Reporter):
                def on_step(self, epoch, step, steps, global_step):
                    if info.rank == 1 and global_step == 5:
                        signal.raise_signal(signal.SIGINT)

            try:
                fit(config("resnet18", data), dataset=ds, out_dir=out_dir / "run", reporter=CtrlCOnRank1())
            except KeyboardInterrupt:
                print(f"rank {info.rank}: KeyboardInterrupt raised by fit", flush=True)
                raise
            return

        result = {"world_size": info.world_size}
        r = fit(config("resnet18", data), dataset=ds, runs_root=out_dir / "runs")
        model, loader = cap.models[0], cap.loaders[0]
        result["run_dirs"] = gather(str(r.run_dir))
        result["digests"] = gather(digest(model))
        result["indices"] = gather([loader.epoch_indices(e).tolist() for e in (0, 1)])
        result["resnet_metrics"] = r.metrics

        register_plain()
        plain = config("dist_test_plain", data, width_mult=1.0, lr=0.02, augment="crop,flip,cutout")
        r = fit(plain, dataset=ds, out_dir=out_dir / "plain-ddp")
        result["plain_ddp_metrics"] = r.metrics
        if info.enabled:
            dist.barrier()
            dist.destroy_process_group()
            os.environ["WORLD_SIZE"] = "1"  # what follows is one process, on rank 0
    if info.is_main:
        r = fit(plain, dataset=ds, out_dir=out_dir / "plain-single")
        result["plain_single_metrics"] = r.metrics
        (out_dir / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:4])
