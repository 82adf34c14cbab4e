"""Backbones and the model registry."""

from . import resnet  # noqa: F401  (registers the ResNet family)
from . import swin  # noqa: F401  (registers the Swin-ACmix family)
from .registry import create_model, is_model, list_models, model_entrypoint, register_model

__all__ = ["create_model", "is_model", "list_models", "model_entrypoint", "register_model"]
