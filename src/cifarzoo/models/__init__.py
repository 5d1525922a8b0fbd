"""The model zoo. Importing this package registers every architecture."""
from cifarzoo.models.registry import (ModelEntry, ModelNotImportable, create, from_config, get_entry, list_models,
                                      model_key, register_model, resolve, scale_width, short_name)

# Importing a family module runs its @register_model decorators.
from cifarzoo.models import fastnet, inception, resnet, vgg, xception  # noqa: E402,F401
from cifarzoo.models import as_written  # noqa: E402,F401  (the study's networks, hidden from list_models)

__all__ = ["ModelEntry", "ModelNotImportable", "create", "from_config", "get_entry", "list_models", "model_key",
           "register_model", "resolve", "scale_width", "short_name"]
