"""Model zoo: ``create_model(name, **overrides)`` and ``list_models()``."""

from . import zoo as _zoo  # noqa: F401  (registers every model)
from .mae import MaskedAutoencoderViT
from .registry import create_model, get_entry, list_models, register_model

__all__ = ["MaskedAutoencoderViT", "create_model", "get_entry", "list_models", "register_model"]
