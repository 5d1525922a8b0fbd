"""Data layer: one function in (``load``), one in-memory form out (:class:`Dataset`)."""
from cifarzoo.data.dataset import Dataset

__all__ = ["Dataset"]
