"""The model zoo. Importing this package registers every architecture."""
from cifarzoo.models.registry import create, get_entry, list_models, register_model, resolve, scale_width

# Importing a family module runs its @register_model decorators.
from cifarzoo.models import fastnet, inception, resnet, vgg, xception  # noqa: E402,F401
from cifarzoo.models import as_written  # noqa: E402,F401  (the study's networks, hidden from list_models)

__all__ = ["create", "get_entry", "list_models", "register_model", "resolve", "scale_width"]
