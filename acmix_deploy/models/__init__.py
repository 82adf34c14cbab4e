"""Backbones and the model registry."""

from . import resnet  # noqa: F401  (registers the ResNet family)
from . import swin  # noqa: F401  (registers the Swin-ACmix family)
from .registry import (ModelFamily, create_model, infer_model_args, is_deploy_state_dict, is_model, list_models,
                       model_entrypoint, model_family, register_model)

__all__ = ["ModelFamily", "create_model", "infer_model_args", "is_deploy_state_dict", "is_model", "list_models",
           "model_entrypoint", "model_family", "register_model"]
