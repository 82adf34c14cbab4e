"""Inference runners with one interface (:class:`Runner`), shared by validation, comparison, profiling
and serving.

Every runner exposes ``name``, ``backend``, ``device``, ``input_specs`` / ``output_specs``
(:class:`TensorSpec`: name, shape with the batch axis first and dynamic axes as a name or None, dtype),
``batch_range`` and ``infer_outputs(x)`` on a float32 NumPy batch ``(N, C, H, W)``, returning every
output of the model as a NumPy array (in the order of :func:`acmix_deploy.outputs.flatten_outputs`);
``infer(x)`` returns the one output of a single-output model (it refuses a model with several).
:func:`open_runner` opens a file by its suffix (the one table, :data:`loader.FILE_TYPES`).  Heavy backends
are imported lazily, with a clear message when missing.
"""

from __future__ import annotations

from .aoti import AotiRunner
from .base import BATCH_AXIS, Runner, TensorSpec
from .loader import BACKENDS, EXPORTED, backend_for, open_runner
from .onnxruntime import OrtRunner
from .openvino import OpenVinoRunner
from .tensorrt import TrtRunner
from .torch import TorchRunner

__all__ = ["AotiRunner", "BACKENDS", "BATCH_AXIS", "EXPORTED", "OpenVinoRunner", "OrtRunner", "Runner", "TensorSpec",
           "TorchRunner", "TrtRunner", "backend_for", "open_runner"]
