"""PyTorch eager runner."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..artifacts.onnx import INPUT_NAME
from ..outputs import flatten_outputs, output_names
from .base import BATCH_AXIS, Runner, TensorSpec


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A float tensor as float32 (float16/bfloat16 outputs included), other dtypes (indices, masks) as they are."""
    return (t.float() if t.is_floating_point() else t).cpu().numpy()


class TorchRunner(Runner):
    """Runs an ``nn.Module`` in eval mode under ``torch.inference_mode``.

    What the model returns (a tensor, a nested tuple/list, a dict) is flattened with
    :func:`acmix_deploy.outputs.flatten_outputs`, the order the ONNX export uses, and named by that
    module's rule.  ``input_size`` (C, H, W) fixes the sample shape (then the output specs come from a run
    on zeros when first asked for; None in it leaves that axis open); without it the input is
    ``(N, ?, ?, ?)`` and the outputs are known after the first run.
    """

    backend = "torch"

    def __init__(self, model: nn.Module, name: str = "torch", device: str = "cpu",
                 input_size: tuple[int | None, ...] | None = None):
        self.model = model.eval().to(device)
        self._device = torch.device(device)
        self._names: list[str] | None = None
        item = tuple(input_size) if input_size is not None else (None, None, None)
        super().__init__(name, device, [TensorSpec(INPUT_NAME, (BATCH_AXIS, *item), np.float32)])

    @property
    def output_names(self) -> list[str] | None:
        return super().output_names or self._names

    @torch.inference_mode()
    def _infer_impl(self, x: np.ndarray) -> list[np.ndarray]:
        out = self.model(torch.from_numpy(np.ascontiguousarray(x)).to(self._device))
        if self._names is None:
            self._names = output_names(out)
        return [to_numpy(t) for t in flatten_outputs(out)]

    def _prepare_impl(self, x: np.ndarray):
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(self._device)
        model = self.model

        def run():
            with torch.inference_mode():
                return model(xt)

        return run

    def _run_output_names(self, count: int) -> list[str]:
        return self._names if self._names is not None and len(self._names) == count else super()._run_output_names(count)
