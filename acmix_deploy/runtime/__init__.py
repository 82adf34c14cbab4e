"""Inference runners with one interface, shared by validation, profiling and serving.

A runner takes a float32 NumPy batch ``(N, C, H, W)``: ``infer_outputs(x)``
returns every output of the model as a list of NumPy arrays (in the order of
:func:`acmix_deploy.outputs.flatten_outputs`), ``infer(x)`` the one output of a
single-output model (it refuses a model with several).  ``output_names`` gives
the names where the runner knows them.  Heavy backends are imported lazily,
with a clear message when missing.
"""

from __future__ import annotations

from .aoti import AotiRunner
from .base import Runner
from .onnxruntime import OrtRunner
from .openvino import OpenVinoRunner
from .torch import TorchRunner

__all__ = ["AotiRunner", "OpenVinoRunner", "Runner", "OrtRunner", "TorchRunner"]
