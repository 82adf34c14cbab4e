"""ONNX Runtime runner (CPU by default)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..artifacts.onnx import decode_metadata, spatial_rule
from ..errors import AcmixDeployError, InputShapeError
from ..util import require
from .base import check_single_output


class OrtRunner:
    """An ``onnxruntime.InferenceSession`` over one ONNX file.

    ``providers`` defaults to the CPU provider.  ``spinning=False`` turns off
    the intra-op threads' spin-wait (for benchmarks that interleave sessions).  ONNX Runtime silently falls
    back to the CPU when a requested GPU provider cannot start, so the
    providers actually in use are read back from the session (``providers``).
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None,
                 profile_prefix: str | None = None, spinning: bool = True):
        ort = require("onnxruntime", "onnx")
        path = Path(path)
        if not path.is_file():
            raise AcmixDeployError(f"ONNX model {path} does not exist")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not spinning:
            # Idle intra-op threads otherwise spin-wait for work; with several sessions in one process on a
            # small CPU they take the cores of the session that is running.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AcmixDeployError(f"ONNX Runtime cannot load {path}: {first}") from None
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = self.session.get_inputs()[0].shape
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.name = f"onnxruntime:{self.providers[0].replace('ExecutionProvider', '')}"
        # A graph with dynamic height and width records the sizes it takes; others fix them in the input shape.
        self.spatial_rule = spatial_rule(decode_metadata(self.session.get_modelmeta().custom_metadata_map))
        self._path = path

    def infer_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        if self.spatial_rule is not None:
            if np.ndim(x) != 4:
                raise InputShapeError(f"{self._path.name} takes NCHW images, got an input of shape {np.shape(x)}")
            self.spatial_rule.check(*np.shape(x)[2:], what=self._path.name)
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})

    def infer(self, x: np.ndarray) -> np.ndarray:
        check_single_output(len(self.output_names), self.name, self.output_names)  # before running, not after
        return self.infer_outputs(x)[0]
