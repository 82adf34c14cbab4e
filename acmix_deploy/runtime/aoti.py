"""AOTInductor runner: a ``.pt2`` package compiled by :func:`acmix_deploy.exporters.aoti.export_aoti`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import AcmixDeployError


class AotiRunner:
    def __init__(self, path: str | os.PathLike, device: str = "cpu"):
        path = Path(path)
        if not path.is_file():
            raise AcmixDeployError(f"AOTInductor package {path} does not exist")
        try:
            self.model = torch._inductor.aoti_load_package(str(path))
        except Exception as exc:  # the loader raises RuntimeError and zipfile errors alike
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AcmixDeployError(f"cannot load AOTInductor package {path}: {first}") from None
        self.device = torch.device(device)
        self.name = f"aoti:{device}"
        try:
            self.metadata = dict(self.model.get_metadata())
        except Exception:  # packages from other writers may carry none
            self.metadata = {}
        size = self.metadata.get("acmix_deploy.input_size")
        # (-1, C, H, W) when the package records its input size, else None
        self.input_shape = [-1, *map(int, size.split(","))] if size else None

    @torch.inference_mode()
    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device)).float().cpu().numpy()
