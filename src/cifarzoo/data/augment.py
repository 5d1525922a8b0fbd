"""The augmentations a training loader can apply, by name: a registry, so a new one is a function
and a registration, with no edit to the loader.

A registered augmentation is a function of the normalized batch and its per-image parameters::

    import cifarzoo as cz

    def draw_gain(generator, n, image_size):  # (n, 1): one parameter per position in the epoch
        return 0.8 + 0.4 * torch.rand(n, 1, generator=generator)

    @cz.register_augmentation("gain", draw=draw_gain)
    def gain(x, params):  # x: (B, 3, H, W) normalized, params: (B, 1) on x's device
        return x * params[:, :, None, None].to(x.dtype)

after which ``augment="crop,flip,gain"`` (the setting, the CLI's ``--augment``) turns it on.

Determinism. :class:`~cifarzoo.data.loader.DeviceLoader` calls ``draw`` once per epoch, on the
CPU, with a ``torch.Generator`` of the augmentation's own, seeded from (seed, epoch, name) alone,
and indexes its rows by position in the epoch like every other parameter. So an augmentation's
parameters are the same on any device, rank or restart (a resumed run skips batches, it draws
nothing again), and registering or turning on a new augmentation never changes the numbers of the
others: no stream is shared with it. The built-in four (crop, flip, altflip, cutout) keep the one
(seed, epoch) stream they have always drawn from, in a fixed order, so runs made before the
registry existed are reproduced bit for bit; the loader applies them itself (crop and flip are
fused into the batch's gather, cutout is applied after normalization with ``cutout_size``).
Registered augmentations run after the built-ins, in registration order.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from cifarzoo.errors import CifarzooError, DataError

# (x: (B, 3, H, W) normalized batch in the loader's dtype and layout, params: (B, k) or None) -> batch
ApplyFn = Callable[[Any, Any], Any]
# (generator: torch.Generator on the CPU, n: positions in the epoch, (H, W)) -> (n, k) tensor
DrawFn = Callable[[Any, int, tuple[int, int]], Any]


@dataclass(frozen=True)
class Augmentation:
    name: str
    apply: ApplyFn | None  # None: a built-in the loader applies itself
    draw: DrawFn | None = None  # None: the augmentation takes no random parameters (params is None)
    excludes: tuple[str, ...] = ()  # augmentations it cannot be combined with
    reason: str = ""  # why, said when a user combines them


_REGISTRY: dict[str, Augmentation] = {}

# The registered names, in registration order: a live view, so it includes augmentations
# registered after import (the built-in four first).
AUGMENTATIONS = _REGISTRY.keys()


def register_augmentation(name: str, *, draw: DrawFn | None = None, excludes: Sequence[str] = (),
                          reason: str = "") -> Callable[[ApplyFn], ApplyFn]:
    """Decorator: make ``fn(x, params) -> x`` the augmentation ``name`` (see the module docstring).

    ``draw(generator, n, (H, W))`` returns the (n, k) parameters of the n positions of an epoch
    (any dtype; ``params`` is its (B, k) rows of the batch, on the batch's device); without
    ``draw`` the function gets ``params=None``. ``excludes`` names registered augmentations it
    cannot be combined with (``reason`` says why).
    """
    # A word of the comma list ``augment``, as parse_augment lower-cases and strips it.
    if not (isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9_-]*", name)) or name == "none":
        raise CifarzooError(f"augmentation name {name!r} must be one lower-case word other than 'none'")
    if name in _REGISTRY:
        raise CifarzooError(f"augmentation {name!r} is registered twice; known: {', '.join(AUGMENTATIONS)}")
    unknown = [e for e in excludes if e not in _REGISTRY]
    if unknown:
        raise CifarzooError(f"augmentation {name!r} excludes unknown augmentation(s) {', '.join(unknown)}")

    def deco(fn: ApplyFn) -> ApplyFn:
        _REGISTRY[name] = Augmentation(name, fn, draw, tuple(excludes), reason)
        return fn

    return deco


def registered_among(names: frozenset[str]) -> tuple[Augmentation, ...]:
    """The registered (not built-in) augmentations among ``names``, in registration order: the order they run."""
    return tuple(a for a in _REGISTRY.values() if a.name in names and a.apply is not None)


def parse_augment(augment: str | Sequence[str] | None) -> frozenset[str]:
    """``"crop,flip"`` -> {"crop", "flip"}; ``"none"``, ``""`` or None -> empty set (DataError if unknown)."""
    if augment is None:
        return frozenset()
    parts = augment.split(",") if isinstance(augment, str) else list(augment)
    names = {p.strip().lower() for p in parts if p.strip()} - {"none"}
    unknown = sorted(names - set(AUGMENTATIONS))
    if unknown:
        raise DataError(f"unknown augmentation {', '.join(_did_you_mean(u) for u in unknown)}; "
                        f"use a comma list of {', '.join(AUGMENTATIONS)}, or none")
    for name in (n for n in AUGMENTATIONS if n in names):  # registration order, so the message is stable
        for other in _REGISTRY[name].excludes:
            if other in names:
                why = _REGISTRY[name].reason
                raise DataError(f"augmentations {other} and {name} exclude each other" + (f": {why}" if why else ""))
    return frozenset(names)


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, list(AUGMENTATIONS), n=1, cutoff=0.6)
    return f"{name} (did you mean {close[0]}?)" if close else name


# The built-ins, applied by the loader itself from the shared (seed, epoch) stream (see the docstring).
for _builtin in (Augmentation("crop", None), Augmentation("flip", None),
                 Augmentation("altflip", None, excludes=("flip",),
                              reason="choose random (flip) or alternating (altflip) flipping"),
                 Augmentation("cutout", None)):
    _REGISTRY[_builtin.name] = _builtin
