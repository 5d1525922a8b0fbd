"""Batches made on the device from a dataset that lives there, and the one normalization.

:class:`DeviceLoader` copies a whole split to the device once, as uint8 NHWC
(50,000 CIFAR images are 150 MB), and builds every batch there with tensor ops over
the whole batch: gather by a shuffled index, random crop from a reflect-padded image
(``crop_pad`` pixels, 4 by default), horizontal flip, optional cutout, normalization.
This is how the fast CIFAR trainers (airbench, hlb-CIFAR10) avoid a DataLoader's worker
processes and per-image Python, which on a fast GPU cost more than the model.

Randomness. All random numbers of an epoch (the permutation and every image's crop
offset, flip bit and cutout centre) are drawn at once on a CPU ``torch.Generator``
seeded from ``(seed, epoch)`` only, then moved to the device in one copy. So an
epoch's batches are the same on any device, any rank and after a restart, and
:meth:`DeviceLoader.iter_from` can resume mid-epoch by just skipping batches. The
parameters are drawn per *position* in the epoch (not per image) and always in the
same order, so turning cutout on does not change which crops and flips are used.
Augmentations registered with :func:`cifarzoo.data.augment.register_augmentation` each draw
from a stream of their own (see that module), so adding one changes none of these numbers.

Alternating flip (``altflip``, the derandomized flip of airbench, Jordan 2024).
Random flipping gives an image the same orientation in two consecutive epochs half
the time, so over a short run many images are seen mostly one way round. Instead,
every image gets one random bit ``b`` (exactly half the images get 1), drawn from a
generator seeded by ``seed`` alone, and in epoch ``e`` it is flipped iff
``b XOR (e odd)``: on even epochs a random half is flipped, on odd epochs exactly the
other half, so every image is seen both ways in every pair of epochs. The bit belongs
to the image, not to its position in the epoch, and depends on nothing but the seed,
so a resumed run sees the same flips.

Pre-normalized copy (``prenormalize=True``). Instead of the uint8 split, the loader
keeps the whole split normalized once in ``dtype`` (fp16/bf16: 300 MB for CIFAR-10's
training set) and batches are gathered from it, so no batch pays for normalization.
The values are the same bits as the per-batch path (the normalization is per pixel
and rounds once to ``dtype`` either way); airbench keeps its data this way.

Distributed. With ``world_size`` ranks every rank draws the same permutation; each
global batch of ``batch_size`` images is cut into ``world_size`` contiguous chunks
and rank r takes chunk r. Across ranks each image is seen exactly once per epoch.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Iterator, Sequence

import numpy as np
import torch

from cifarzoo.data.augment import parse_augment, registered_among
from cifarzoo.data.dataset import Dataset
from cifarzoo.errors import CifarzooError, DataError

PAD = 4  # default pixels of reflect padding for the random crop (the standard CIFAR recipe; airbench: 2)

# Columns of the per-epoch plan tensor, one row per position in the epoch.
_IDX, _DY, _DX, _FLIP, _CY, _CX = range(6)


def normalize(
    images: torch.Tensor | np.ndarray,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """The one input transform: uint8 NHWC ``(B, H, W, 3)`` -> float NCHW ``(B, 3, H, W)``.

    Computes ``(x - mean) / std`` per channel, with ``mean``/``std`` in [0, 255] units
    (the training set's statistics, :attr:`Dataset.mean`/``std``), in float32, then
    casts to ``dtype``. Training, evaluation and ``predict`` all call this function (an
    exported graph repeats the same two float32 ops), so the constants cannot drift apart.

    ``images`` may be a numpy array or a tensor on any device (the result stays on
    that device); uint8 or float values in [0, 255]. The result is laid out NCHW
    contiguous, or channels_last when asked (free: the input already is NHWC).
    """
    x = _from_numpy(images) if isinstance(images, np.ndarray) else images
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"normalize expects (B, H, W, 3) NHWC images, got shape {tuple(x.shape)}")
    mean_t, std_t = _stats_tensors(mean, std, x.device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    # (B, 3, H, W) float32 in the requested layout; copy=True so a float input is never
    # modified by the in-place ops below. Computed in float32 even for a bf16/fp16
    # result, so every dtype rounds the same exact value once.
    y = x.permute(0, 3, 1, 2).to(torch.float32, memory_format=fmt, copy=True)
    y.sub_(mean_t.view(1, 3, 1, 1)).div_(std_t.view(1, 3, 1, 1))
    return y.to(dtype)


def _from_numpy(a: np.ndarray) -> torch.Tensor:
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy())  # torch warns on read-only arrays


def _stats_tensors(mean, std, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor):
        return (mean.to(device=device, dtype=torch.float32), std.to(device=device, dtype=torch.float32))
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if torch.compiler.is_compiling():
        # Under torch.compile/export tracing the tensors made here are fake: caching them
        # would poison every later eager call in the process.
        return (torch.tensor(mean, dtype=torch.float32, device=device),
                torch.tensor(std, dtype=torch.float32, device=device))
    return _cached_stats(mean, std, device)


@functools.lru_cache(maxsize=32)
def _cached_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
    # Made once per (stats, device): building them from Python floats on every call
    # would be a blocking host-to-device copy per batch on a GPU.
    return (torch.tensor(mean, dtype=torch.float32, device=device),
            torch.tensor(std, dtype=torch.float32, device=device))


def _epoch_seed(seed: int, epoch: int) -> int:
    # SeedSequence mixes the pair well: (seed, epoch) and (seed, epoch+1) give
    # unrelated streams, and (1, 0) differs from (0, 1).
    hi, lo = np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint32).tolist()
    return ((hi << 32) | lo) & ((1 << 63) - 1)


def _augment_seed(seed: int, epoch: int, name: str) -> int:
    # A registered augmentation's own stream: a spawned child of (seed, epoch) keyed by its name, so
    # it is unrelated to the built-ins' stream and to every other augmentation's.
    key = (2, *name.encode())
    hi, lo = np.random.SeedSequence([seed, epoch], spawn_key=key).generate_state(2, np.uint32).tolist()
    return ((hi << 32) | lo) & ((1 << 63) - 1)


def _flip_mask_seed(seed: int) -> int:
    # A stream of its own (a spawned child of the seed), unrelated to every (seed, epoch) stream.
    hi, lo = np.random.SeedSequence(seed, spawn_key=(1,)).generate_state(2, np.uint32).tolist()
    return ((hi << 32) | lo) & ((1 << 63) - 1)


def alternating_flip_mask(n: int, seed: int) -> torch.Tensor:
    """Each image's flip bit on even epochs: int64 (n,), exactly n // 2 ones, from ``seed`` only."""
    g = torch.Generator().manual_seed(_flip_mask_seed(seed))
    return (torch.randperm(n, generator=g) < n // 2).to(torch.int64)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Map indices in [-(n-1), 2(n-1)] into [0, n-1] as numpy's ``mode="reflect"`` pad does."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def crop_flip(images: torch.Tensor, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
              flip: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Gather a batch of randomly cropped, maybe flipped images in one indexing op.

    images: (N, H, W, C) on the device, any dtype; idx, dy, dx, flip: int64 (B,).
    Output pixel (i, j) of image b is padded image ``idx[b]`` at (dy+i, dx+j) in a
    ``pad``-pixel reflect-padded frame, with j reversed when ``flip[b]``; dy, dx lie in
    0..2*pad. The padding is never materialized: the reflected source rows and columns
    are computed as indices, so there is no padded copy of the dataset or the batch.
    Returns (B, H, W, C) in ``images``' dtype.
    """
    _, h, w, _ = images.shape
    rows = _reflect(torch.arange(h, device=images.device) + (dy - pad)[:, None], h)  # (B, H)
    cols = torch.arange(w, device=images.device) + (dx - pad)[:, None]  # (B, W)
    cols = _reflect(torch.where(flip[:, None].bool(), cols.flip(1), cols), w)
    return images[idx[:, None, None], rows[:, :, None], cols[:, None, :]]


def cutout_(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a ``size``x``size`` square centred at (cy, cx) in each normalized image, in place.

    x: (B, C, H, W); cy, cx: int64 (B,) in 0..H-1 / 0..W-1. The square is
    rows ``cy - size//2 .. cy - size//2 + size - 1``, clipped at the border (DeVries &
    Taylor 2017). Zero after normalization means the dataset's mean colour.
    """
    _, _, h, w = x.shape
    r = torch.arange(h, device=x.device) - (cy - size // 2)[:, None]  # (B, H)
    c = torch.arange(w, device=x.device) - (cx - size // 2)[:, None]  # (B, W)
    inside = ((r >= 0) & (r < size))[:, :, None] & ((c >= 0) & (c < size))[:, None, :]  # (B, H, W)
    return x.masked_fill_(inside[:, None], 0)


class DeviceLoader:
    """Iterate over (x, y) batches made on ``device`` from a split kept there as uint8.

    Yields x: ``dtype`` (B, 3, 32, 32) normalized by :func:`normalize`, and y: int64 (B,),
    both on ``device``. ``batch_size`` is the *global* batch; each of ``world_size``
    ranks gets ``batch_size // world_size`` images of it.

    ``train=True`` turns on augmentation (``augment``: comma list of crop, flip or
    altflip, cutout, any augmentation registered with
    :func:`~cifarzoo.data.augment.register_augmentation`, or "none"; a crop is taken from a
    ``crop_pad``-pixel reflect-padded frame, a shift of at most ``crop_pad`` pixels each way), and by default shuffling
    and dropping the last incomplete global batch. ``train=False`` never augments and by default keeps the data order
    and every image. Call :meth:`set_epoch` before each epoch, as with
    ``DistributedSampler``: the epoch's order and augmentation depend only on
    ``(seed, epoch)``. ``prenormalize`` keeps the split normalized in ``dtype`` on the
    device instead of as uint8 (see the module docstring).
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        train: bool = False,
        augment: str = "crop,flip",
        cutout_size: int = 12,
        crop_pad: int = PAD,
        seed: int = 0,
        shuffle: bool | None = None,
        drop_last: bool | None = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        num_classes: int | None = None,
        prenormalize: bool = False,
    ):
        images_np, labels_np = _check_inputs(images, labels, batch_size=batch_size, rank=rank,
                                             world_size=world_size, seed=seed, crop_pad=crop_pad)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.train = train
        self.augment = parse_augment(augment) if train else frozenset()
        self.cutout_size = cutout_size
        self.crop_pad = crop_pad
        self.seed = seed
        self.shuffle = train if shuffle is None else shuffle
        self.drop_last = train if drop_last is None else drop_last
        self.dtype = dtype
        self.channels_last = channels_last
        self.rank = rank
        self.world_size = world_size
        self.num_classes = int(labels_np.max()) + 1 if num_classes is None and len(labels_np) else num_classes
        self.epoch = 0

        self.prenormalize = prenormalize
        self.images, self.labels, self.mean, self.std = _on_device(
            images_np, labels_np, mean, std, self.device, dtype if prenormalize else None)
        self._flip_mask = (alternating_flip_mask(len(images_np), seed)
                           if "altflip" in self.augment else None)  # (N,) int64 on the CPU
        self._registered = registered_among(self.augment)

        n = len(images_np)
        self.num_batches = n // batch_size if self.drop_last else math.ceil(n / batch_size)
        if self.num_batches == 0 and n > 0:
            raise DataError(f"{n} images make no complete batch of {batch_size}; lower the batch size")
        self._positions, self._bounds = _rank_positions(n, self.num_batches, batch_size, rank, world_size)
        self.num_samples = self._bounds[-1]
        self._plan_key: tuple[int, int] | None = None
        self._plan_host: torch.Tensor | None = None
        self._plan: torch.Tensor | None = None
        self._params: dict[str, torch.Tensor] = {}  # registered augmentations' parameters, on the device

    # ------------------------------------------------------------------ epoch plan

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order and augmentation the next iteration uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        return self.num_batches

    def _host_plan(self, epoch: int) -> torch.Tensor:
        """(num_samples, 6) int64 on the CPU: image index, dy, dx, flip, cutout cy, cx."""
        n, (_, h, w, _) = len(self.images), self.images.shape
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        plan = torch.zeros(n, 6, dtype=torch.int64)
        plan[:, _IDX] = order
        pad = self.crop_pad
        plan[:, _DY:_DX + 1] = pad  # centred crop = identity
        if self.augment:
            # Always draw every parameter, in this order, so the draws do not depend on
            # which augmentations are enabled.
            crop = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
            flip = torch.randint(0, 2, (n,), generator=g)
            centre = torch.stack([torch.randint(0, h, (n,), generator=g),
                                  torch.randint(0, w, (n,), generator=g)], 1)
            if "crop" in self.augment:
                plan[:, _DY:_DX + 1] = crop
            if "flip" in self.augment:
                plan[:, _FLIP] = flip
            elif "altflip" in self.augment:
                plan[:, _FLIP] = self._flip_mask[order] ^ (epoch % 2)
            plan[:, _CY:_CX + 1] = centre
        return plan[self._positions]

    def _host_params(self, epoch: int) -> dict[str, torch.Tensor]:
        """Each registered augmentation's (num_samples, k) parameters for ``epoch``, from its own stream."""
        n, (_, h, w, _) = len(self.images), self.images.shape
        params = {}
        for aug in self._registered:
            if aug.draw is None:
                continue
            g = torch.Generator().manual_seed(_augment_seed(self.seed, epoch, aug.name))
            drawn = torch.as_tensor(aug.draw(g, n, (h, w)))
            if drawn.ndim != 2 or drawn.shape[0] != n:
                raise CifarzooError(f"augmentation {aug.name!r}: draw returned shape {tuple(drawn.shape)}, "
                                    f"expected ({n}, k): k parameters for each of the epoch's {n} positions")
            params[aug.name] = drawn[self._positions]
        return params

    def _device_plan(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        key = (self.seed, self.epoch)
        if self._plan_key != key:
            host = self._host_plan(self.epoch)
            self._params = {k: v.to(self.device) for k, v in self._host_params(self.epoch).items()}
            if self.device.type == "cuda":
                # Pinned + non_blocking: the once-per-epoch copy does not stall the host. No CPU
                # stand-in (pin_memory needs a CUDA device): run by every fit stage of the GPU script.
                host = host.pin_memory()
                self._plan = host.to(self.device, non_blocking=True)
            else:
                self._plan = host.to(self.device)
            self._plan_host, self._plan_key = host, key  # keep the pinned source alive
        return self._plan, self._params

    def epoch_indices(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's image indices for ``epoch`` (default: the current one), in yield order.

        int64 (num_samples,) on the CPU. Used by tests and to check distributed splits.
        """
        return self._host_plan(self.epoch if epoch is None else epoch)[:, _IDX].clone()

    def epoch_params(self, epoch: int | None = None) -> dict[str, torch.Tensor]:
        """This rank's augmentation parameters, aligned with :meth:`epoch_indices`.

        int64 (num_samples,) CPU tensors: crop_y, crop_x (crop offset in the padded
        frame, 0..2*crop_pad; crop_pad = no shift), flip (0/1), cutout_y, cutout_x (square centre);
        and under its name each registered augmentation's (num_samples, k) parameters, if it draws any.
        """
        epoch = self.epoch if epoch is None else epoch
        plan = self._host_plan(epoch)
        names = ("index", "crop_y", "crop_x", "flip", "cutout_y", "cutout_x")
        return {**{k: plan[:, i].clone() for i, k in enumerate(names)}, **self._host_params(epoch)}

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Like ``iter(self)`` but starting at batch ``start_batch`` of the current epoch.

        Costs nothing for the skipped batches: the plan is a function of (seed, epoch).
        """
        if not 0 <= start_batch <= self.num_batches:
            raise DataError(f"cannot start at batch {start_batch}: an epoch has {self.num_batches} batches")
        return self._batches(start_batch)

    def _batches(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan, params = self._device_plan()
        in_order = not self.shuffle and self.world_size == 1 and not self.augment
        for k in range(start_batch, self.num_batches):
            a, b = self._bounds[k], self._bounds[k + 1]
            if in_order:
                # Evaluation: the batch is a contiguous slice, no gather needed.
                x, y = self.images[a:b], self.labels[a:b]
            else:
                p = plan[a:b]
                idx = p[:, _IDX]
                if self.augment & {"crop", "flip", "altflip"}:
                    x = crop_flip(self.images, idx, p[:, _DY], p[:, _DX], p[:, _FLIP], self.crop_pad)
                else:
                    x = self.images[idx]
                y = self.labels[idx]
            if self.prenormalize:
                fmt = torch.channels_last if self.channels_last else torch.contiguous_format
                x = x.permute(0, 3, 1, 2).contiguous(memory_format=fmt)  # (B, 3, H, W), already normalized
            else:
                x = normalize(x, self.mean, self.std, dtype=self.dtype, channels_last=self.channels_last)
            if "cutout" in self.augment:
                x = cutout_(x, p[:, _CY], p[:, _CX], self.cutout_size)
            for aug in self._registered:
                x = aug.apply(x, params[aug.name][a:b] if aug.name in params else None)
            yield x, y


def _on_device(images: np.ndarray, labels: np.ndarray, mean: Sequence[float], std: Sequence[float],
               device: torch.device, prenormalized: torch.dtype | None) -> tuple[torch.Tensor, ...]:
    """One host-to-device copy of the whole split, which every batch is made from: images (N, H, W, 3)
    uint8, or normalized once in ``prenormalized`` dtype; labels (N,) int64; mean, std (3,) float32
    in [0, 255] units."""
    x = _from_numpy(images).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    mean_t = torch.tensor(list(mean), dtype=torch.float32, device=device)
    std_t = torch.tensor(list(std), dtype=torch.float32, device=device)
    if prenormalized is not None:
        # In chunks, so the float32 temporary stays small.
        x = torch.cat([normalize(chunk, mean_t, std_t, dtype=prenormalized).permute(0, 2, 3, 1)
                       for chunk in x.split(4096)]).contiguous()
    return x, y, mean_t, std_t


def _check_inputs(images, labels, *, batch_size: int, rank: int, world_size: int, seed: int,
                  crop_pad: int) -> tuple[np.ndarray, np.ndarray]:
    """The split as numpy arrays, after checking what DeviceLoader is given (DataError otherwise)."""
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")
    if batch_size % world_size:
        raise DataError(f"global batch size {batch_size} is not divisible by world size {world_size}")
    if seed < 0:
        raise DataError(f"seed must be non-negative, got {seed}")
    images_np = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    labels_np = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if images_np.dtype != np.uint8 or images_np.ndim != 4 or images_np.shape[-1] != 3:
        raise DataError(f"DeviceLoader needs uint8 (N, H, W, 3) images, got {images_np.shape} {images_np.dtype}")
    if labels_np.shape != (len(images_np),):
        raise DataError(f"labels have shape {labels_np.shape}, expected ({len(images_np)},)")
    if not (isinstance(crop_pad, int) and crop_pad >= 0):
        raise DataError(f"crop padding must be an integer number of pixels >= 0, got {crop_pad!r}")
    if min(images_np.shape[1:3]) <= crop_pad:
        raise DataError(f"images of {images_np.shape[1]}x{images_np.shape[2]} are too small "
                        f"for a {crop_pad}-pixel crop")

    return images_np, labels_np


def _rank_positions(n: int, num_batches: int, batch_size: int, rank: int,
                    world_size: int) -> tuple[torch.Tensor, list[int]]:
    """This rank's positions in the epoch order, and where each of its batches starts: global
    batch k covers positions [k*B, (k+1)*B), split into world_size chunks. The bounds are Python
    ints, so slicing the plan never syncs with the device."""
    positions, bounds = [], [0]
    for k in range(num_batches):
        start, stop = k * batch_size, min((k + 1) * batch_size, n)
        chunk = np.array_split(np.arange(start, stop), world_size)[rank]
        positions.append(chunk)
        bounds.append(bounds[-1] + len(chunk))
    return torch.from_numpy(np.concatenate(positions) if positions else np.zeros(0, np.int64)), bounds


def input_normalization(ds: Dataset, mode: str) -> tuple[Dataset, tuple, tuple]:
    """(the dataset with the mean/std that evaluation, checkpoints and predict use, then the training
    loader's mean and std), in [0, 255] units, for TrainConfig.normalize ``mode``.

    "study" is the original study's mismatch, kept to replay it: training images /225, while
    evaluation (and everything reading the run later) divides by 255, as its test set did.
    """
    if mode == "mean-std":
        return ds, ds.mean, ds.std
    zero, unit = (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)
    ds = dataclasses.replace(ds, mean=zero, std=unit)
    return ds, zero, (225.0, 225.0, 225.0) if mode == "study" else unit
