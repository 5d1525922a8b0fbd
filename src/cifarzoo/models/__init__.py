"""The model zoo. Importing this package registers every architecture."""
import importlib as _importlib
import pkgutil as _pkgutil

from cifarzoo.models.registry import (ModelEntry, ModelNotImportable, create, from_config, get_entry, list_models,
                                      model_key, register_model, resolve, scale_width, short_name)

# Importing every module of this package runs its @register_model decorators (the study's networks,
# models/as_written.py, are hidden from list_models): a new family is one file, nothing to list here.
for _module in sorted(m.name for m in _pkgutil.iter_modules(__path__)):
    _importlib.import_module(f"{__name__}.{_module}")

__all__ = ["ModelEntry", "ModelNotImportable", "create", "from_config", "get_entry", "list_models", "model_key",
           "register_model", "resolve", "scale_width", "short_name"]
