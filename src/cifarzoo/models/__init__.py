"""The model zoo. Importing this package registers every architecture."""
from cifarzoo.models.registry import create, get_entry, list_models, register_model, resolve, scale_width

__all__ = ["create", "get_entry", "list_models", "register_model", "resolve", "scale_width"]
