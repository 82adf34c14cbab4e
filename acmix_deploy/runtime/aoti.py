"""AOTInductor runner: a ``.pt2`` package compiled by :func:`acmix_deploy.exporters.aoti.export_aoti`.

The package returns the model's output structure (a tensor, nested tuples, a dict); it is flattened with
:func:`acmix_deploy.outputs.flatten_outputs`, and the names come from the package's
``acmix_deploy.output_names`` metadata (JSON list) when it records them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..artifacts.aoti import read_aoti_metadata
from ..errors import AcmixDeployError, InputShapeError
from ..outputs import flatten_outputs
from .base import check_single_output, single_output
from .torch import to_numpy


class AotiRunner:
    def __init__(self, path: str | os.PathLike, device: str | None = None):
        """``device`` defaults to the one the package was compiled for (recorded in it), else cpu."""
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
        self.device = torch.device(device)
        self.name = f"aoti:{device}"
        # (-1, C, H, W) when the package records its input size, else None
        self.input_shape = [-1, *recorded.input_size] if recorded.input_size else None
        self.min_batch, self.max_batch = recorded.min_batch, recorded.max_batch
        self.output_names: list[str] | None = recorded.output_names

    @torch.inference_mode()
    def infer_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        # The package was specialised for its batch range; outside it, results are not guaranteed.
        if self.max_batch is not None and not self.min_batch <= x.shape[0] <= self.max_batch:
            raise InputShapeError(
                f"batch {x.shape[0]} is outside the package's batch range {self.min_batch}..{self.max_batch}")
        out = self.model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        return [to_numpy(t) for t in flatten_outputs(out)]

    def infer(self, x: np.ndarray) -> np.ndarray:
        if self.output_names is not None:
            check_single_output(len(self.output_names), self.name, self.output_names)  # before running
        return single_output(self.infer_outputs(x), self.name, self.output_names)
