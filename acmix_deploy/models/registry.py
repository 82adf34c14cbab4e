"""Model registry: ``@register_model`` and ``create_model(name, **kwargs)``, in the style of timm.

Every model built by :func:`create_model` carries ``arch_name`` and
``arch_args`` (the keyword arguments it was built with), so that a checkpoint
can record how to rebuild it, and ``default_cfg`` (input size, normalisation).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch.nn as nn

from ..errors import ConfigError, UnknownArchitectureError

__all__ = ["register_model", "create_model", "list_models", "is_model", "model_entrypoint"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model constructor under its function name."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style pattern."""
    import fnmatch

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
