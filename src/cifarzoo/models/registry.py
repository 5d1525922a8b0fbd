"""A registry of model builders keyed by the builder's own name (as timm's ``@register_model``).

Every builder has one signature::

    def resnet50(*, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> nn.Module

and returns a device- and dtype-neutral module whose forward maps a normalized
``(B, 3, 32, 32)`` float batch to ``(B, num_classes)`` logits (no softmax). A model
with auxiliary heads returns ``(logits, aux1, aux2, ...)`` in training mode only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from torch import nn

from cifarzoo.errors import CifarzooError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    paper: str  # short citation, e.g. "He et al. 2016, Deep Residual Learning (CVPR)"
    family: str  # module the builder lives in: "vgg", "resnet", ...
    aliases: tuple[str, ...] = ()  # other names ``create``/``resolve`` accept, e.g. ("googlenet",)
    # A network kept with its bugs to replay the original study (models/as_written.py): its
    # outputs may not be logits (``model.outputs``), and it is left out of ``list_models()``.
    as_written: bool = False


_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}


def register_model(paper: str, aliases: tuple[str, ...] = (), as_written: bool = False):
    """Decorator: register ``fn`` under ``fn.__name__`` (and any aliases); ``as_written``: see ModelEntry."""

    aliases = tuple(a.strip().lower() for a in aliases)

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name != name.lower():  # resolve() lower-cases what the user types
            raise CifarzooError(f"model builder {name!r} must have a lower-case name")
        if len({name, *aliases}) != 1 + len(aliases):
            raise CifarzooError(f"model {name!r} lists a repeated name among its aliases {aliases}")
        for key in (name, *aliases):
            if key in _REGISTRY or key in _ALIASES:
                raise CifarzooError(
                    f"model name {key!r} is registered twice; known models: {', '.join(list_models())}"
                )
        _REGISTRY[name] = ModelEntry(name, fn, paper, fn.__module__.rsplit(".", 1)[-1], aliases,
                                     as_written)
        for alias in aliases:
            _ALIASES[alias] = name
        return fn

    return deco


def list_models(*, as_written: bool = False) -> list[str]:
    """Registered model names (aliases not included), sorted; the study's as-written networks only if asked."""
    return sorted(n for n, e in _REGISTRY.items() if as_written or not e.as_written)


def resolve(name: str) -> str:
    """Canonical model name for ``name`` or an alias; unknown names raise with the known list."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        known = ", ".join(list_models(as_written=True))
        aliases = ", ".join(f"{a}={t}" for a, t in sorted(_ALIASES.items()))
        raise CifarzooError(
            f"unknown model {name!r}; known models: {known}" + (f" (aliases: {aliases})" if aliases else "")
        )
    return key


def get_entry(name: str) -> ModelEntry:
    return _REGISTRY[resolve(name)]


def create(name: str, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> nn.Module:
    """Build a registered model: ``create("resnet50", num_classes=10)``."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise CifarzooError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not (isinstance(width_mult, (int, float)) and 0 < width_mult <= 8):
        raise CifarzooError(f"width_mult must be a number in (0, 8], got {width_mult!r}")
    entry = get_entry(name)
    try:
        return entry.builder(num_classes=num_classes, width_mult=float(width_mult), **kwargs)
    except TypeError as exc:
        if "keyword argument" in str(exc):  # unexpected, or given twice (num_classes in kwargs)
            raise CifarzooError(f"model {entry.name!r} does not take that option: {exc}") from None
        raise


def scale_width(channels: int, width_mult: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width_mult``, rounded to a multiple of ``divisor``, at least ``divisor``."""
    return max(divisor, int(math.floor(channels * width_mult / divisor + 0.5)) * divisor)
