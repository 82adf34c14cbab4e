"""The runner interface."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    """``name`` says what runs (``torch:deploy``, ``onnxruntime:CPUExecutionProvider``, ...)."""

    name: str

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one batch (float32, NCHW) and return the output."""
        ...
