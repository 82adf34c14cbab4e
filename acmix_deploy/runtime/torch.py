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


class TorchCallRunner(Runner):
    """What the runners that call a torch callable share (:class:`TorchRunner`, the AOTInductor runner).

    The subclass sets ``model`` (called on one input tensor), ``_device`` and ``_names`` (the output names
    where known before a run, else None); the returned structure is flattened with
    :func:`acmix_deploy.outputs.flatten_outputs` and floating outputs come back as float32.
    """

    model: object
    _device: torch.device
    _names: list[str] | None = None

    @property
    def output_names(self) -> list[str] | None:
        return super().output_names or self._names

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self._device)

    def _seen_output(self, out) -> None:
        """Called with each run's raw output (a hook for runners that learn their output names from it)."""

    @torch.inference_mode()
    def _infer_impl(self, x: np.ndarray) -> list[np.ndarray]:
        out = self.model(self._tensor(x))
        self._seen_output(out)
        return [to_numpy(t) for t in flatten_outputs(out)]

    def _prepare_impl(self, x: np.ndarray):
        xt = self._tensor(x)
        model = self.model

        def run():
            with torch.inference_mode():
                return model(xt)

        return run

    def _run_output_names(self, count: int) -> list[str]:
        return self._names if self._names is not None and len(self._names) == count else super()._run_output_names(count)


class TorchRunner(TorchCallRunner):
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

    def _seen_output(self, out) -> None:
        if self._names is None:
            self._names = output_names(out)
