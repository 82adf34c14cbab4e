"""ONNX Runtime runner (CPU by default)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..artifacts.onnx import decode_metadata, spatial_rule
from ..errors import AcmixDeployError, ConfigError
from ..util import require
from .base import Runner, TensorSpec
from .per_size import PerSizeCache

# ONNX Runtime's type strings -> NumPy dtypes
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
               "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def _spec(arg, path: Path) -> TensorSpec:
    if arg.type not in _ORT_DTYPES:
        raise AcmixDeployError(f"{path.name}: tensor {arg.name} has type {arg.type}, which this package cannot run")
    # ONNX Runtime gives an int for a fixed axis, the symbolic name for a named one, None for an unnamed one.
    dims = tuple(d if isinstance(d, str) or d is None else (int(d) if int(d) >= 0 else None) for d in arg.shape)
    return TensorSpec(arg.name, dims, _ORT_DTYPES[arg.type])


class OrtRunner(Runner):
    """An ``onnxruntime.InferenceSession`` over one ONNX file.

    ``providers`` defaults to the CPU provider.  ``spinning=False`` turns off
    the intra-op threads' spin-wait (for benchmarks that interleave sessions).  ONNX Runtime silently falls
    back to the CPU when a requested GPU provider cannot start, so the
    providers actually in use are read back from the session (``providers``).
    Input and output specs are the graph's; a graph with a fixed batch axis (exported static) takes that
    batch only.

    ``specialize`` (graphs exported with dynamic height and width only): keep up to that many more
    sessions, each with the height and width of one input size fixed (ONNX Runtime's free dimension
    overrides).  In such a session ONNX Runtime folds the graph's size arithmetic (the attention's index
    tables, the size guard) into constants when it loads it, so it runs as fast as a graph exported at
    that size, batch still dynamic.  Each costs about the graph's weights in memory again (ACmix-ResNet-50:
    +105 MB on the CPU, built in 0.3 s).  ``background`` chooses how they are built (:mod:`.per_size`).
    With per-size sessions every session's intra-op threads stop spinning at the end of each run
    (``session.force_spinning_stop``), so that they do not take the cores of the next run's session.
    """

    backend = "onnxruntime"
    batch_range_name = "the ONNX model's batch range"

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None,
                 profile_prefix: str | None = None, spinning: bool = True, specialize: int = 0,
                 background: bool = False):
        self._ort = ort = require("onnxruntime", "onnx")
        path = Path(path)
        if not path.is_file():
            raise AcmixDeployError(f"ONNX model {path} does not exist")
        if specialize < 0:
            raise ConfigError(f"specialize must be 0 or more sessions, got {specialize}")
        self._threads, self._spinning, self._profile_prefix = threads, spinning, profile_prefix
        self._stop_spinning = False
        self._requested_providers = providers or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), self._options(), providers=self._requested_providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AcmixDeployError(f"ONNX Runtime cannot load {path}: {first}") from None
        self.path = path
        self.providers = self.session.get_providers()
        inputs = [_spec(a, path) for a in self.session.get_inputs()]
        outputs = [_spec(a, path) for a in self.session.get_outputs()]
        if len(inputs) != 1 or len(inputs[0].shape) < 1:
            raise AcmixDeployError(f"{path.name} takes {len(inputs)} inputs; one batched input is expected")
        self.input_name = inputs[0].name
        batch = inputs[0].shape[0]
        batch_range = (batch, batch) if isinstance(batch, int) and batch > 0 else (1, None)
        gpu = self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        # A graph with dynamic height and width records the sizes it takes; others fix them in the input shape.
        rule = spatial_rule(decode_metadata(self.session.get_modelmeta().custom_metadata_map))
        super().__init__(f"onnxruntime:{self.providers[0].replace('ExecutionProvider', '')}",
                         "cuda" if gpu else "cpu", inputs, outputs, batch_range, spatial_rule=rule)
        # Per-size sessions: only for a graph whose height and width are named axes (dynamic_hw exports).
        hw_names = inputs[0].shape[2:] if len(inputs[0].shape) == 4 else ()
        named = rule is not None and len(hw_names) == 2 and all(isinstance(n, str) for n in hw_names)
        self._hw_names = tuple(hw_names) if named else None
        if named and specialize:
            self.per_size = PerSizeCache(self._specialized_session, specialize, background, path.name)
            if self._spinning:
                # Several sessions, each with its own intra-op threads: threads still spinning after their run would
                # take the cores of the next session's (tiny model, 2 threads, sizes alternating: 10.6 ms a run,
                # against 6.3 without spinning and 4.8 with spinning stopped at the end of each run).  Stop it
                # there, in the general session too (reloaded once).
                self._stop_spinning = True
                del self.session  # not two general sessions at once (device memory, with a GPU provider)
                try:
                    self.session = ort.InferenceSession(str(path), self._options(), providers=self._requested_providers)
                except Exception as exc:  # noqa: BLE001 - it loaded a moment ago: say so, not a traceback
                    raise AcmixDeployError(f"ONNX Runtime cannot reload {path} for per-size sessions: {exc}") from None

    def _options(self, hw: tuple[int, int] | None = None):
        ort = self._ort
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self._threads:
            opts.intra_op_num_threads = self._threads
            opts.inter_op_num_threads = 1
        if not self._spinning:
            # Idle intra-op threads otherwise spin-wait for work; with several sessions in one process on a
            # small CPU they take the cores of the session that is running.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        elif self._stop_spinning:
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        if self._profile_prefix and hw is None:
            opts.enable_profiling = True
            opts.profile_file_prefix = self._profile_prefix
        if hw is not None:
            for name, size in zip(self._hw_names, hw):
                opts.add_free_dimension_override_by_name(name, int(size))
        return opts

    def _specialized_session(self, hw: tuple[int, int]):
        return self._ort.InferenceSession(str(self.path), self._options(hw), providers=self._requested_providers)

    def session_for(self, x: np.ndarray):
        """The session that runs ``x``: its size's specialised one when there is (or now is) one, else the general one."""
        return self.per_size_handle(x) or self.session

    @property
    def input_shape(self) -> list:
        """The graph's input shape as ONNX Runtime reports it (ints and symbolic names)."""
        return list(self.session.get_inputs()[0].shape)

    def _infer_impl(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session_for(x).run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})

    def _prepare_impl(self, x: np.ndarray):
        feed = {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        session = self.session_for(x)
        return lambda: session.run(None, feed)
