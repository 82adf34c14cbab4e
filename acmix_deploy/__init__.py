"""acmix-deploy: fold, export, profile and serve ACmix / X-volution vision models.

Public API (timm-style)::

    import acmix_deploy as ad
    model = ad.create_model("acmix_resnet50")
    deploy = ad.reparameterize_model(model.eval())
    ad.save_checkpoint(deploy, "deploy.pth")
    model = ad.load_checkpoint("deploy.pth")
"""

from __future__ import annotations

__version__ = "0.1.0"

from .analysis import check_equivalence, compare_outputs, count_macs, count_parameters
from .checkpoint import LoadedCheckpoint, load_checkpoint, read_checkpoint, save_checkpoint
from .errors import (
    AcmixDeployError,
    CheckpointError,
    ConfigError,
    EquivalenceError,
    InputShapeError,
    UnknownArchitectureError,
)
from .models import create_model, list_models, register_model
from .modules import ACmix, ACmixDeploy
from .reparam import foldable_leftovers, is_deploy, reparameterize_model

__all__ = [
    "__version__",
    "ACmix",
    "ACmixDeploy",
    "AcmixDeployError",
    "CheckpointError",
    "ConfigError",
    "EquivalenceError",
    "InputShapeError",
    "LoadedCheckpoint",
    "UnknownArchitectureError",
    "check_equivalence",
    "compare_outputs",
    "count_macs",
    "count_parameters",
    "create_model",
    "foldable_leftovers",
    "is_deploy",
    "list_models",
    "load_checkpoint",
    "read_checkpoint",
    "register_model",
    "reparameterize_model",
    "save_checkpoint",
]
