"""What a model returns, as a flat list of named tensors.

Models return a tensor, a tuple or list of tensors (nested, as YOLO heads do:
``(y, [p3, p4, p5])``), or a dict of tensors.  Exporters, runtimes, comparisons
and the server all see the same flat list, in the order ``torch.onnx.export``
flattens it (depth first, dict values in key order), with one naming rule:

* a single tensor is called ``logits`` (:data:`SINGLE_OUTPUT_NAME`), as every
  artifact written before several outputs were supported;
* a dict gives its keys (a nested entry ``key`` gets ``key.0``, ``key.1``, ...);
* anything else is ``output0``, ``output1``, ... in flattened order.

``names`` (``--output-names``) overrides the rule and must give one unique name
per flattened tensor.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .errors import ConfigError

__all__ = ["SINGLE_OUTPUT_NAME", "flatten_outputs", "output_names", "named_outputs"]

SINGLE_OUTPUT_NAME = "logits"


def _leaves(out: Any, prefix: str | None, acc: list[tuple[str | None, torch.Tensor]]) -> None:
    if isinstance(out, torch.Tensor):
        acc.append((prefix, out))
    elif isinstance(out, dict):
        for key, value in out.items():
            if not isinstance(key, str):
                raise ConfigError(f"the model returns a dict with a non-string key {key!r}; output names must be strings")
            _leaves(value, key if prefix is None else f"{prefix}.{key}", acc)
    elif isinstance(out, (tuple, list)):
        for i, value in enumerate(out):
            _leaves(value, None if prefix is None else f"{prefix}.{i}", acc)
    elif out is None:
        return  # torch.onnx.export drops None outputs too
    else:
        raise ConfigError(
            f"the model returns a {type(out).__name__}; supported outputs are tensors, tuples/lists and dicts of tensors"
        )


def _flat(out: Any) -> list[tuple[str | None, torch.Tensor]]:
    acc: list[tuple[str | None, torch.Tensor]] = []
    _leaves(out, None, acc)
    if not acc:
        raise ConfigError("the model returns no tensor")
    return acc


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """The tensors of a model's output, flattened in ``torch.onnx.export`` order."""
    return [t for _, t in _flat(out)]


def output_names(out: Any, names: Sequence[str] | None = None) -> list[str]:
    """The name of every flattened output tensor (see the module docstring for the rule)."""
    flat = _flat(out)
    if names is not None:
        names = list(names)
        if len(names) != len(flat):
            raise ConfigError(f"output_names gives {len(names)} name(s), but the model returns {len(flat)} tensor(s)")
        if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"output_names must be unique non-empty strings, got {names}")
        return names
    if len(flat) == 1 and isinstance(out, torch.Tensor):
        return [SINGLE_OUTPUT_NAME]
    if isinstance(out, dict):
        return [name for name, _ in flat]  # type: ignore[misc]
    return [f"output{i}" for i in range(len(flat))]


def named_outputs(out: Any, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` for every flattened output, in order."""
    return dict(zip(output_names(out, names), flatten_outputs(out)))
