"""Data layer: one function in (``load``), one in-memory form out (:class:`Dataset`).

``load(spec, labels="fine")`` reads any supported source, CIFAR-10 or CIFAR-100 (see
:mod:`cifarzoo.data.sources`);
:class:`DeviceLoader` keeps a split on the device and makes augmented, normalized
batches there (:func:`register_augmentation` adds an augmentation); :func:`normalize`
is the one transform shared by train, evaluate, predict and export.
"""
from cifarzoo.data.augment import register_augmentation
from cifarzoo.data.dataset import Dataset
from cifarzoo.data.sources import build_dataset, channel_stats, load, load_image_file

__all__ = ["Dataset", "DeviceLoader", "build_dataset", "channel_stats", "load", "load_image_file", "normalize",
           "register_augmentation"]


def __getattr__(name: str):
    # The loader imports torch (a second or two); `cifarzoo data info` does not need it.
    if name in ("DeviceLoader", "normalize"):
        from cifarzoo.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'cifarzoo.data' has no attribute {name!r}")
