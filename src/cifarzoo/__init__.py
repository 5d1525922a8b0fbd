"""cifarzoo: train, evaluate and compare classic CNNs on CIFAR-10, correctly and fast.

The Python API (see :mod:`cifarzoo.api`)::

    import cifarzoo as cz
    run = cz.fit("resnet18", data="sample", epochs=3, width_mult=0.25, callbacks=[...])
    run.evaluate(), run.predict(images), run.plot()
    study = cz.benchmark(["resnet18", "vgg16"], preset="quick")

``import cifarzoo`` stays light: these names load their modules (and torch) on first use.
"""

import os as _os

# On a machine shared with other processes, OpenMP's default busy-waiting threads make
# CPU training up to 9x slower (measured: a resnet50 step 1.1 s vs 0.18 s with PASSIVE).
# Must be set before torch is imported; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from cifarzoo.errors import CifarzooError  # noqa: E402

_API = ("fit", "lr_find", "load_run", "load_data", "benchmark", "load_study", "tune", "Run", "Study")
_MODELS = ("register_model",)  # from cifarzoo.models
_TRACKING = ("TensorBoardLogger", "MLflowLogger")  # tensorboard / mlflow imported only when one is made
_CALLBACKS = ("Callback", "StopTraining", "EarlyStopping")  # cifarzoo.train.callbacks

__all__ = ["CifarzooError", "__version__", "register_augmentation", *_API, *_MODELS, *_CALLBACKS, *_TRACKING]


def __getattr__(name: str):
    if name in _API:
        from cifarzoo import api

        return getattr(api, name)
    if name == "register_augmentation":
        from cifarzoo.data.augment import register_augmentation

        return register_augmentation
    if name in _TRACKING:
        from cifarzoo import tracking

        return getattr(tracking, name)
    if name in _CALLBACKS:
        from cifarzoo.train import callbacks

        return getattr(callbacks, name)
    if name in _MODELS:
        from cifarzoo import models

        return getattr(models, name)
    raise AttributeError(f"module 'cifarzoo' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API) | set(_MODELS) | set(_CALLBACKS) | set(_TRACKING)
                  | {"register_augmentation"})
