"""PyTorch eager runner."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


class TorchRunner:
    """Runs an ``nn.Module`` in eval mode under ``torch.inference_mode``."""

    def __init__(self, model: nn.Module, name: str = "torch", device: str = "cpu"):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.name = name

    @torch.inference_mode()
    def infer(self, x: np.ndarray) -> np.ndarray:
        out = self.model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        return out.float().cpu().numpy()
