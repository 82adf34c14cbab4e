"""Inference runners with one interface, shared by validation, profiling and serving.

A runner takes a float32 NumPy batch ``(N, C, H, W)`` and returns the model's
output as a NumPy array.  Heavy backends are imported lazily, with a clear
message when missing.
"""

from __future__ import annotations

from .aoti import AotiRunner
from .base import Runner
from .onnxruntime import OrtRunner
from .torch import TorchRunner

__all__ = ["AotiRunner", "Runner", "OrtRunner", "TorchRunner"]
