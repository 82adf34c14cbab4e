"""PyTorch eager runner."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..outputs import flatten_outputs, output_names
from .base import single_output


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A float tensor as float32 (float16/bfloat16 outputs included), other dtypes (indices, masks) as they are."""
    return (t.float() if t.is_floating_point() else t).cpu().numpy()


class TorchRunner:
    """Runs an ``nn.Module`` in eval mode under ``torch.inference_mode``.

    What the model returns (a tensor, a nested tuple/list, a dict) is flattened with
    :func:`acmix_deploy.outputs.flatten_outputs`, the order the ONNX export uses; ``output_names``
    (the names that rule gives) is known after the first run, None before.
    """

    def __init__(self, model: nn.Module, name: str = "torch", device: str = "cpu"):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.name = name
        self.output_names: list[str] | None = None

    @torch.inference_mode()
    def infer_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        out = self.model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        if self.output_names is None:
            self.output_names = output_names(out)
        return [to_numpy(t) for t in flatten_outputs(out)]

    def infer(self, x: np.ndarray) -> np.ndarray:
        return single_output(self.infer_outputs(x), self.name, self.output_names)
