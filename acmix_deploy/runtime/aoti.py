"""AOTInductor runner: a ``.pt2`` package compiled by :func:`acmix_deploy.exporters.aoti.export_aoti`.

The package returns the model's output structure (a tensor, nested tuples, a dict); it is flattened with
:func:`acmix_deploy.outputs.flatten_outputs`.  Its input size, batch range, device and output names come
from the package's ``acmix_deploy.*`` metadata (:mod:`acmix_deploy.artifacts.aoti`) when it records them;
the output shapes from a run on zeros when first asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..artifacts.aoti import read_aoti_metadata
from ..artifacts.onnx import INPUT_NAME
from ..errors import AcmixDeployError
from .base import BATCH_AXIS, TensorSpec
from .torch import TorchCallRunner


class AotiRunner(TorchCallRunner):
    backend = "aoti"
    batch_range_name = "the package's batch range"

    def __init__(self, path: str | os.PathLike, device: str | None = None,
                 input_size: tuple[int, int, int] | None = None):
        """``device`` defaults to the one the package was compiled for (recorded in it), else cpu;
        ``input_size`` (C, H, W) is used only when the package records none."""
        path = Path(path)
        if not path.is_file():
            raise AcmixDeployError(f"AOTInductor package {path} does not exist")
        try:
            self.model = torch._inductor.aoti_load_package(str(path))
        except Exception as exc:  # the loader raises RuntimeError and zipfile errors alike
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AcmixDeployError(f"cannot load AOTInductor package {path}: {first}") from None
        try:
            self.metadata = dict(self.model.get_metadata())
        except Exception:  # packages from other writers may carry none
            self.metadata = {}
        recorded = read_aoti_metadata(self.metadata, path.name)
        compiled_for = recorded.device
        device = device or compiled_for or "cpu"
        if compiled_for and device != compiled_for:
            raise AcmixDeployError(f"{path.name} was compiled for {compiled_for}; it cannot run on {device}")
        self.path = path
        self._device = torch.device(device)
        self.records_input_size = recorded.input_size is not None
        item = recorded.input_size or (tuple(input_size) if input_size is not None else (None, None, None))
        lo, hi = recorded.min_batch, recorded.max_batch
        self._names = recorded.output_names
        # The package was specialised for its batch range (checked by the base class before each run); outside
        # it, results would not be guaranteed.
        super().__init__(f"aoti:{device}", device,
                         [TensorSpec(INPUT_NAME, (lo if lo == hi else BATCH_AXIS, *item), np.float32)],
                         batch_range=(lo, hi))
