"""Model registry: ``@register_model`` and ``create_model(name, **kwargs)``, in the style of timm.

Every model built by :func:`create_model` carries ``arch_name`` and
``arch_args`` (the keyword arguments it was built with), so that a checkpoint
can record how to rebuild it, and ``default_cfg`` (input size, normalisation).

A model belongs to a :class:`ModelFamily`, which knows how the family's state
dicts look: which constructor arguments their tensor shapes give
(``infer_args``) and whether they hold the deploy form (``is_deploy``).  The
checkpoint reader asks the family (:func:`infer_model_args`,
:func:`is_deploy_state_dict`) instead of knowing key names itself.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from ..errors import ConfigError, UnknownArchitectureError

__all__ = ["ModelFamily", "default_cfg", "register_model", "create_model", "list_models", "is_model",
           "model_entrypoint", "model_family", "infer_model_args", "is_deploy_state_dict"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_cfg(in_chans: int, height: int, width: int | None = None) -> dict:
    """A model's ``default_cfg``: its input size, and ImageNet's normalisation for RGB input only.

    A model with another channel count (the demo's 1-channel digits) has no known normalisation, so none is
    recorded (exports then write no ``mean``/``std`` metadata, int8 calibration images are only scaled).
    """
    cfg: dict = {"input_size": (in_chans, height, height if width is None else width)}
    if in_chans == 3:
        cfg.update(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return cfg


StateDict = Mapping[str, torch.Tensor]


def _no_args(state_dict: StateDict) -> dict[str, Any]:
    return {}


def _never_deploy(state_dict: StateDict) -> bool:
    return False


@dataclass(frozen=True)
class ModelFamily:
    """What the checkpoint reader needs to know about one family's state dicts.

    ``infer_args(state_dict)``: constructor arguments read from tensor shapes (``num_classes`` from the
    classifier, ``in_chans`` from the stem, ...); arguments a model of the family does not take are dropped
    by :func:`infer_model_args`.  ``is_deploy(state_dict)``: True when the state dict holds the folded
    (deploy) form, so the model is built with ``deploy=True`` before loading it.
    """

    name: str
    infer_args: Callable[[StateDict], dict[str, Any]] = _no_args
    is_deploy: Callable[[StateDict], bool] = _never_deploy


# Models registered without a family: nothing is inferred, a bare state dict is taken as the training form.
GENERIC = ModelFamily("generic")

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_FAMILY_OF: dict[str, ModelFamily] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, family: ModelFamily = GENERIC):
    """Register a model constructor under its function name: ``@register_model`` or
    ``@register_model(family=FAMILY)``."""

    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        _FAMILY_OF[name] = family
        return fn

    return register if fn is None else register(fn)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style pattern."""
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def is_model(name: str) -> bool:
    return name in _REGISTRY


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}.{hint} Known architectures: {', '.join(list_models())}"
        ) from None


def create_model(name: str, deploy: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered model in training form, or directly in deploy form with ``deploy=True``.

    The deploy form is built without instantiating the training-form modules,
    so a deploy checkpoint loads on its own.
    """
    fn = model_entrypoint(name)
    params = inspect.signature(fn).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        accepted = [p for p in params if p != "deploy"]
        raise ConfigError(
            f"{name} does not take argument(s) {', '.join(unknown)}; it accepts: {', '.join(accepted)}"
        )
    model = fn(deploy=deploy, **kwargs)
    model.arch_name = name
    model.arch_args = dict(kwargs)
    return model


def model_family(name: str) -> ModelFamily:
    """The family of a registered model (raises :class:`UnknownArchitectureError` for an unknown name)."""
    model_entrypoint(name)
    return _FAMILY_OF[name]


def infer_model_args(name: str, state_dict: StateDict) -> dict[str, Any]:
    """The constructor arguments of ``name`` that its family reads from ``state_dict``'s tensor shapes."""
    params = inspect.signature(model_entrypoint(name)).parameters
    return {k: v for k, v in model_family(name).infer_args(state_dict).items() if k in params and k != "deploy"}


def is_deploy_state_dict(name: str, state_dict: StateDict) -> bool:
    """True when ``state_dict`` holds the deploy form of a model of ``name``'s family."""
    return bool(model_family(name).is_deploy(state_dict))
