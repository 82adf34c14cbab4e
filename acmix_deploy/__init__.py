"""acmix-deploy: fold, export, profile and serve ACmix / X-volution vision models.

Public API (timm-style)::

    import acmix_deploy as ad
    model = ad.create_model("acmix_resnet50")
    deploy = ad.reparameterize_model(model.eval())
    ad.reparam_checkpoint("train.pth")  # a file: folded, checked against it, written as train.deploy.pth
    ad.save_checkpoint(deploy, "deploy.pth")
    model = ad.load_checkpoint("deploy.pth")
    ad.export_model("deploy.pth", ad.exporters.ExportOptions(fmt="onnx"))  # checked against torch, then written
    runner = ad.open_runner("deploy.onnx")  # .onnx, .pt2, .engine, .pth: one runner interface

The names below are imported on first use (PEP 562), so that ``import acmix_deploy`` and
``acmix-deploy --version`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from ._version import __version__  # the one version source (pyproject.toml reads acmix_deploy/_version.py)

# public name -> submodule that defines it
_LAZY = {
    "check_equivalence": "analysis",
    "compare_outputs": "analysis",
    "count_macs": "analysis",
    "count_parameters": "analysis",
    "LoadedCheckpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "read_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "AcmixDeployError": "errors",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "EquivalenceError": "errors",
    "InputShapeError": "errors",
    "UnknownArchitectureError": "errors",
    "create_model": "models",
    "list_models": "models",
    "ModelFamily": "models",
    "register_model": "models",
    "ACmix": "modules",
    "ACmixDeploy": "modules",
    "reparam_checkpoint": "pipeline",
    "foldable_leftovers": "reparam",
    "is_deploy": "reparam",
    "reparameterize": "reparam",
    "reparameterize_model": "reparam",
    "open_runner": "runtime",
    "export_model": "verify",
    "verify_artifact": "verify",
}

__all__ = ["__version__", *sorted(_LAZY)]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
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
    from .models import ModelFamily, create_model, list_models, register_model
    from .modules import ACmix, ACmixDeploy
    from .pipeline import reparam_checkpoint
    from .reparam import foldable_leftovers, is_deploy, reparameterize, reparameterize_model
    from .runtime import open_runner
    from .verify import export_model, verify_artifact


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f".{name}", __name__)  # a submodule: ad.fold, ad.profiling, ...
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
