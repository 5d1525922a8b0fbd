"""Training: one config, one loop, one run folder.

The package is also callable: ``cifarzoo.train("resnet18", ...)`` is :func:`cifarzoo.api.train`
(the notebook API's name would otherwise be shadowed by this package once imported).
"""
import sys as _sys
import types as _types

from cifarzoo.train.config import PRESETS, RECIPES, TrainConfig, make_config
from cifarzoo.train.loop import Reporter, RunResult, fit

__all__ = ["PRESETS", "RECIPES", "Reporter", "RunResult", "TrainConfig", "fit", "make_config"]


class _CallableModule(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        """``cifarzoo.train(model, ...)``: see :func:`cifarzoo.api.train`."""
        from cifarzoo.api import train

        return train(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
