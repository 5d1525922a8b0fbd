"""A registry of model builders keyed by the builder's own name (as timm's ``@register_model``).

Every builder has one signature::

    def resnet50(*, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> nn.Module

and returns a device- and dtype-neutral module whose forward maps a normalized
``(B, 3, 32, 32)`` float batch to ``(B, num_classes)`` logits (no softmax). A model
with auxiliary heads returns ``(logits, aux1, aux2, ...)`` in training mode only.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from cifarzoo.errors import CifarzooError


def plain_outputs(out) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """``(logits, auxiliary logits)`` of a network that returns logits only."""
    return out, ()


@dataclass(frozen=True)
class ModelEntry:
    """A model builder and what the trainer must know about its networks (the hooks).

    ``key`` is the name a run's config records: the registered name for the zoo's
    models, ``"package.module:name"`` for a model registered or given from outside the
    package (so another process can import it), ``"<instance N>:Class"`` for a module
    instance given to ``fit`` (rebuilt in this process only).
    """
    name: str
    builder: Callable[..., nn.Module]
    paper: str  # short citation, e.g. "He et al. 2016, Deep Residual Learning (CVPR)"
    family: str  # module the builder lives in: "vgg", "resnet", ...
    aliases: tuple[str, ...] = ()  # other names ``create``/``resolve`` accept, e.g. ("googlenet",)
    # A network kept with its bugs to replay the original study (models/as_written.py): its
    # outputs may not be logits (``model.outputs``), and it is left out of ``list_models()``.
    as_written: bool = False
    key: str = ""  # default: name
    # Hooks. init_from_data(model, images): data-dependent initialization before training, with
    # normalized training images (N, 3, 32, 32), or None on resume (fastnet's whitening, run when
    # the recipe's whiten_init is set).
    init_from_data: Callable[[nn.Module, "torch.Tensor | None"], None] | None = None
    # split_outputs(out) -> (logits, auxiliary logits): what a training-mode forward returns;
    # each auxiliary head adds aux_weight x its loss (Inception's).
    split_outputs: Callable[[Any], tuple] = plain_outputs
    # param_groups(model) -> {group name: parameters} for optimizer groups of their own
    # (fastnet's whitening bias: "whiten_bias"); BN shifts are found by type.
    param_groups: Callable[[nn.Module], dict[str, list]] | None = None
    takes_width: bool = True  # the builder takes width_mult (every registered one does)
    # Settings. recipe: what `cifarzoo train MODEL` uses unless told otherwise (the base of the
    # `standard` preset); presets: {preset name: this model's entry in it}, a dict of settings or a
    # recipe_kit.CoreBudget (an equal-compute preset's width, batch, lr and measured throughput).
    # Precedence: TrainConfig defaults < recipe < preset's "all" < this entry < overrides.
    recipe: Mapping[str, Any] = field(default_factory=dict)
    presets: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.key:
            object.__setattr__(self, "key", self.name)

    def build(self, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> nn.Module:
        if not isinstance(num_classes, int) or num_classes < 2:
            raise CifarzooError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not (isinstance(width_mult, (int, float)) and 0 < width_mult <= 8):
            raise CifarzooError(f"width_mult must be a number in (0, 8], got {width_mult!r}")
        if self.takes_width:
            kwargs["width_mult"] = float(width_mult)
        elif width_mult != 1.0:
            raise CifarzooError(f"model {self.key!r} does not take width_mult (its factory has no such "
                                f"parameter); leave it at 1.0")
        try:
            model = self.builder(num_classes=num_classes, **kwargs)
        except TypeError as exc:
            if "keyword argument" in str(exc):  # unexpected, or given twice (num_classes in kwargs)
                raise CifarzooError(f"model {self.key!r} does not take that option: {exc}") from None
            raise
        if not isinstance(model, nn.Module):
            raise CifarzooError(f"model {self.key!r}: its factory returned {type(model).__name__}, not an "
                                "nn.Module")
        return model


_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}


def register_model(paper: str | Callable | None = None, aliases: tuple[str, ...] = (), as_written: bool = False,
                   recipe: Mapping[str, Any] | None = None, presets: Mapping[str, Any] | None = None, **hooks):
    """Decorator: register a builder under its own name (and any aliases), as timm's ``@register_model``.

    The builder takes ``num_classes`` (and, for the zoo's own, ``width_mult``) and returns an
    ``nn.Module`` mapping normalized ``(B, 3, 32, 32)`` batches to ``(B, num_classes)`` logits.
    Use it bare (``@register_model``) or with a citation and the hooks of :class:`ModelEntry`
    (``init_from_data``, ``split_outputs``, ``param_groups``), and with its settings: ``recipe``
    (what ``cifarzoo train MODEL`` uses) and ``presets`` (its entry in each preset, by preset name),
    so a model, its recipe and its preset entries are one decorator in one file. A builder defined
    outside this package is recorded in a run's config by its import path, ``"package.module:name"``, so
    ``evaluate``, ``predict``, ``--resume`` and ``export`` rebuild it in a new process by
    importing it. ``as_written``: see ModelEntry.
    """
    if callable(paper):  # bare @register_model
        return register_model()(paper)
    aliases = tuple(a.strip().lower() for a in aliases)

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        ours = fn.__module__.startswith("cifarzoo.")
        if ours and name != name.lower():  # resolve() lower-cases what the user types
            raise CifarzooError(f"model builder {name!r} must have a lower-case name")
        name = name.lower()
        if len({name, *aliases}) != 1 + len(aliases):
            raise CifarzooError(f"model {name!r} lists a repeated name among its aliases {aliases}")
        key_here = name if ours else import_path(fn)
        if not ours and name in _REGISTRY and _REGISTRY[name].key == key_here:  # a notebook cell run again
            unregister(name)
        for key in (name, *aliases):
            if key in _REGISTRY or key in _ALIASES:
                raise CifarzooError(
                    f"model name {key!r} is registered twice; known models: {', '.join(list_models())}"
                )
        _REGISTRY[name] = ModelEntry(name, fn, paper or "", fn.__module__.rsplit(".", 1)[-1], aliases, as_written,
                                     key=key_here, takes_width=ours or _takes_width(fn),
                                     recipe=dict(recipe or {}), presets=dict(presets or {}), **hooks)
        for alias in aliases:
            _ALIASES[alias] = name
        return fn

    return deco


def unregister(name: str) -> None:
    """Forget a registered model and its aliases (a model registered again, tests)."""
    entry = _REGISTRY.pop(name)
    for alias in entry.aliases:
        _ALIASES.pop(alias, None)


def list_models(*, as_written: bool = False) -> list[str]:
    """Registered model names (aliases not included), sorted; the study's as-written networks only if asked."""
    return sorted(n for n, e in _REGISTRY.items() if as_written or not e.as_written)


def resolve(name: str) -> str:
    """The key a config records for ``name``: a registered name or alias (canonical name, or a model
    registered from outside the package: its import path), or ``"package.module:name"``; unknown names
    raise with the known list."""
    if isinstance(name, str) and ":" in name:
        return _outside_entry(name).key
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        known = ", ".join(list_models(as_written=True))
        aliases = ", ".join(f"{a}={t}" for a, t in sorted(_ALIASES.items()))
        raise CifarzooError(
            f"unknown model {name!r}; known models: {known}" + (f" (aliases: {aliases})" if aliases else "")
            + "; or give an importable factory as 'package.module:name'"
        )
    return _REGISTRY[key].key


def get_entry(name: str) -> ModelEntry:
    if ":" in name:
        return _outside_entry(name)
    key = name.strip().lower()
    resolve(key)
    return _REGISTRY[_ALIASES.get(key, key)]


def create(name: str, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> nn.Module:
    """Build a registered model: ``create("resnet50", num_classes=10)``."""
    return get_entry(name).build(num_classes, width_mult, **kwargs)


def from_config(config, num_classes: int) -> nn.Module:
    """The network ``config`` (a TrainConfig) describes: its model, width and builder options.

    The one place a model is built from a run's settings (training, the benchmark, doctor, the
    study's report); data-dependent initialization is the trainer's (``init_from_data``).
    """
    return get_entry(config.model).build(num_classes, config.width_mult, **config.model_kwargs)


# --------------------------------------------------------------------------- models from outside
class ModelNotImportable(CifarzooError):
    """A run's model cannot be rebuilt in this process (its code is not importable here)."""


_OUTSIDE: dict[str, ModelEntry] = {}  # key -> entry, for factories and instances given in this process


def model_key(model: Any) -> str:
    """The key of a model given to ``fit`` as a name, a factory (class or function) or a module instance.

    Factories and instances are remembered in this process; a factory is recorded by its import
    path, an instance (whose code a run folder cannot hold) as ``"<instance N>:Class"``.
    """
    if isinstance(model, str):
        return resolve(model)
    if isinstance(model, nn.Module):
        import copy

        import uuid

        # Unique across processes: another process's instance is never taken for this one.
        key = f"<instance {uuid.uuid4().hex[:8]}>:{type(model).__name__}"
        template = copy.deepcopy(model)  # as given now: each run trains a copy of it
        _OUTSIDE[key] = ModelEntry(key, lambda num_classes, **kw: copy.deepcopy(template), "", "instance",
                                   key=key, takes_width=False)
        return key
    if callable(model):
        registered = next((e for e in _REGISTRY.values() if e.builder is model), None)
        if registered is not None:
            return registered.key
        key = import_path(model)
        _OUTSIDE.setdefault(key, ModelEntry(key, model, "", "own", key=key, takes_width=_takes_width(model)))
        return key
    raise CifarzooError(f"model: expected a model name (see `cifarzoo models`), an nn.Module factory (a class or "
                        f"function taking num_classes) or an nn.Module; got {type(model).__name__}")


def import_path(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def short_name(key: str) -> str:
    """A model key without its module (``"pkg.nets:TinyNet"`` -> ``"TinyNet"``), for folder names and titles."""
    return key.rsplit(":", 1)[-1]


def _takes_width(fn: Callable) -> bool:
    import inspect

    try:
        return "width_mult" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins have no signature
        return False


def _outside_entry(key: str) -> ModelEntry:
    """The entry for ``"package.module:name"`` (imported now if need be) or an instance given in this process."""
    key = key.strip()
    if key in _OUTSIDE:
        return _OUTSIDE[key]
    registered = next((e for e in _REGISTRY.values() if e.key == key), None)
    if registered is not None:  # registered in this process (from a module or a notebook)
        return registered
    if key.startswith("<instance"):
        raise ModelNotImportable(
            f"model {key!r} was an nn.Module instance given to cifarzoo.fit() in another Python process; a run "
            "folder keeps its weights, not its code, so it cannot be rebuilt here: train with a factory (a class or "
            "function taking num_classes) defined in an importable module instead")
    module_name, _, qualname = key.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        raise ModelNotImportable(f"model {key!r}: cannot import module {module_name!r} ({exc}); a model given as a "
                                 "factory is rebuilt by importing it: put its module on PYTHONPATH") from None
    except AttributeError:
        where = (" (it was defined in the script or notebook that trained it, which another process cannot import: "
                 "define it in a module)") if module_name == "__main__" or "<locals>" in qualname else ""
        raise ModelNotImportable(f"model {key!r}: module {module_name!r} has no {qualname!r}{where}") from None
    registered = next((e for e in _REGISTRY.values() if e.builder is obj), None)
    if registered is not None:
        return registered
    if not callable(obj):
        raise CifarzooError(f"model {key!r} is a {type(obj).__name__}, not a class or function returning a model")
    return _OUTSIDE.setdefault(key, ModelEntry(key, obj, "", "own", key=key, takes_width=_takes_width(obj)))


def scale_width(channels: int, width_mult: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width_mult``, rounded to a multiple of ``divisor``, at least ``divisor``."""
    return max(divisor, int(math.floor(channels * width_mult / divisor + 0.5)) * divisor)
