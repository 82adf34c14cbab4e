"""OpenVINO runner: an ONNX file (or OpenVINO IR ``.xml``) compiled for the CPU, in float32.

OpenVINO's CPU plugin chooses its inference precision from the CPU: bfloat16 where the CPU has AMX or
AVX-512 BF16, float32 elsewhere.  bfloat16 keeps 8 bits of mantissa: on ACmix-ResNet-50 its logits differ
from the float32 model by ~4e-3 relative (docs/deploy_attention.md), well beyond this package's export
tolerance (1e-4).  The runner therefore asks for float32 (``INFERENCE_PRECISION_HINT``) unless told
otherwise, so that it computes the function the file holds; ``precision=None`` keeps OpenVINO's default.

OpenVINO reads an ONNX file's metadata into the model's ``framework`` run-time info; a graph exported with
dynamic height and width records there the sizes it takes (``acmix_deploy.valid_hw``), which the runner
enforces as ONNX Runtime's does (:attr:`Runner.spatial_rule`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ..artifacts.onnx import decode_metadata, spatial_rule
from ..errors import AcmixDeployError, ConfigError
from ..util import require
from .base import BATCH_AXIS, Runner, TensorSpec
from .per_size import PerSizeCache

__all__ = ["OpenVinoRunner"]

PRECISIONS = ("f32", "bf16", "f16")


def _spec(port) -> TensorSpec:
    """A compiled model's input or output as a spec: a static axis its size, a dynamic one open (the first,
    the batch axis, named)."""
    dims = tuple(d.get_length() if d.is_static else BATCH_AXIS if i == 0 else None
                 for i, d in enumerate(port.get_partial_shape()))
    return TensorSpec(port.get_any_name(), dims, port.get_element_type().to_dtype())


def _framework_metadata(model) -> dict[str, str]:
    """The source file's metadata (ONNX ``metadata_props``) as OpenVINO keeps it; empty when there is none."""
    if not model.has_rt_info(["framework"]):
        return {}
    return {str(k): v.astype(str) for k, v in model.get_rt_info(["framework"]).astype(dict).items()}


class OpenVinoRunner(Runner):
    """One model compiled by OpenVINO for the CPU (``LATENCY`` hint, ``threads`` inference threads).

    ``specialize`` (a graph exported with dynamic height and width): keep up to that many more compiled
    models, each reshaped to the height and width of one input size (batch still dynamic); OpenVINO then
    folds the graph's size arithmetic into constants (``acmix_resnet_tiny`` at 32x32: 0.99x the graph
    exported at that size, the general one 1.11x).  ``background`` chooses how they are built
    (:mod:`.per_size`).
    """

    backend = "openvino"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, precision: str | None = "f32",
                 specialize: int = 0, background: bool = False):
        ov = require("openvino", "openvino")
        path = Path(path)
        if not path.is_file():
            raise AcmixDeployError(f"model {path} does not exist")
        if precision is not None and precision not in PRECISIONS:
            raise ConfigError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)} or None, got {precision!r}")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be positive, got {threads}")
        if specialize < 0:
            raise ConfigError(f"specialize must be 0 or more compiled models, got {specialize}")
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        core = ov.Core()
        try:
            model = core.read_model(str(path))
            compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AcmixDeployError(f"OpenVINO cannot load {path}: {first}") from None
        self.path = path
        self._core, self._config = core, config
        self.compiled = compiled
        # One infer request per calling thread: a request holds its input and output buffers, so a shared one
        # handed one caller's outputs to another (the server's workers call from several threads).
        self._requests = threading.local()
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type: f32, bf16, f16
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        inputs = [_spec(p) for p in compiled.inputs]
        batch = inputs[0].shape[0] if inputs and inputs[0].shape else None
        rule = spatial_rule(decode_metadata(_framework_metadata(model)))
        super().__init__("openvino:CPU", "cpu", inputs, [_spec(p) for p in compiled.outputs],
                         (batch, batch) if isinstance(batch, int) else (1, None), spatial_rule=rule)
        if rule is not None and specialize and len(inputs[0].shape) == 4:
            self.per_size = PerSizeCache(self._compile_for, specialize, background, path.name)

    def _compile_for(self, hw: tuple[int, int]):
        """The model reshaped to ``hw`` (batch and channels as the file has them) and compiled, with its requests."""
        ov = require("openvino", "openvino")
        model = self._core.read_model(str(self.path))
        batch, channels = self.input_specs[0].shape[:2]
        model.reshape({model.inputs[0]: ov.PartialShape([batch if isinstance(batch, int) else -1, channels, *hw])})
        return self._core.compile_model(model, "CPU", self._config), threading.local()

    @property
    def request(self):
        """This thread's infer request (made on its first call)."""
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        return request

    def _request_for(self, x: np.ndarray):
        """This thread's infer request on the model compiled for ``x``'s size, if there is (or now is) one."""
        entry = self.per_size_handle(x)
        if entry is None:
            return self.request
        compiled, requests = entry
        request = getattr(requests, "request", None)
        if request is None:
            request = requests.request = compiled.create_infer_request()
        return request

    def _infer_impl(self, x: np.ndarray) -> list[np.ndarray]:
        request = self._request_for(x)
        request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        # Copies: the request's output buffers are reused by this thread's next call.
        return [np.array(request.get_output_tensor(i).data) for i in range(len(self.output_specs))]

    def _prepare_impl(self, x: np.ndarray):
        request, feed = self._request_for(x), {0: np.ascontiguousarray(x, dtype=np.float32)}  # compiled before timing
        return lambda: request.infer(feed)
