"""cifarzoo: train, evaluate and compare classic CNNs on CIFAR-10, correctly and fast."""

__version__ = "0.1.0"

from cifarzoo.errors import CifarzooError  # noqa: E402

__all__ = ["CifarzooError", "__version__"]
