"""TensorRT runner: one engine file and its sidecar, run on the CUDA GPU with torch-owned buffers.

The sidecar is checked before the plan is touched (see
:func:`acmix_deploy.artifacts.tensorrt.check_sidecar`): an engine built for
another GPU model or TensorRT version is refused with both named, instead of
failing inside TensorRT.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np

from ..artifacts.spatial import SpatialRule
from ..errors import AcmixDeployError, InputShapeError
from ..artifacts.tensorrt import (EngineSidecar, check_sidecar, current_gpu, read_sidecar, require_tensorrt,
                                  trt_logger)
from .base import BATCH_AXIS, Runner, TensorSpec

__all__ = ["TrtRunner"]


class TrtRunner(Runner):
    """Runs a serialized TensorRT engine (``.engine``/``.plan``) on ``cuda``.

    ``check=False`` skips the sidecar check (an engine validated right after
    its build, before its sidecar is in place).  The batch range is optimization profile 0's (the one
    this runner executes); an axis whose profile range is not a single size is dynamic in the input spec.
    Floating outputs are returned as float32 (their specs say so), others as they are.
    """

    backend = "tensorrt"
    batch_range_name = "the engine's optimization profile"

    def __init__(self, path: str | os.PathLike, device: str = "cuda", check: bool = True,
                 sidecar: EngineSidecar | None = None):
        import torch

        path = Path(path)
        if not path.is_file():
            raise AcmixDeployError(f"TensorRT engine {path} does not exist")
        if device not in ("cuda", "cuda:0"):
            raise AcmixDeployError(
                f"TensorRT engines run on the current CUDA device ('cuda'), not {device!r}; "
                "select another GPU with CUDA_VISIBLE_DEVICES")
        trt = require_tensorrt()
        gpu = current_gpu()
        self.sidecar = sidecar if sidecar is not None else (read_sidecar(path) if check else None)
        plan = path.read_bytes()
        if check and self.sidecar is not None:
            check_sidecar(self.sidecar, str(trt.__version__), gpu, path)
            if self.sidecar.engine_sha256 and hashlib.sha256(plan).hexdigest() != self.sidecar.engine_sha256:
                raise AcmixDeployError(
                    f"{path} is not the engine its sidecar {path.name}.json describes (sha256 differs); "
                    "rebuild it (export format 'engine')")
        self._runtime = trt.Runtime(trt_logger(trt))
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise AcmixDeployError(f"TensorRT could not deserialize {path} (see TensorRT's log above)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise AcmixDeployError(f"{path}: expected one input and at least one output, found {inputs} and {outputs}")
        self.path = path
        self.input_name = inputs[0]
        # The engine's I/O order need not be the model's: the sidecar's output_names (the ONNX graph's order) wins.
        recorded = getattr(self.sidecar, "all_output_names", None) if self.sidecar is not None else None
        if recorded and sorted(recorded) == sorted(outputs):
            outputs = list(recorded)
        self._torch_dtype = {
            getattr(trt, k): v for k, v in (("float32", torch.float32), ("float16", torch.float16),
                                            ("int32", torch.int32), ("int64", torch.int64), ("int8", torch.int8),
                                            ("bool", torch.bool), ("uint8", torch.uint8)) if hasattr(trt, k)
        }
        lo, _opt, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        lo, hi = [int(d) for d in lo], [int(d) for d in hi]
        self.profile_shapes = (tuple(lo), tuple(hi))
        # An engine with dynamic height and width: the sizes its graph takes, from the sidecar.
        valid = getattr(self.sidecar, "valid_hw", None) if self.sidecar is not None else None
        batch = lo[0] if lo[0] == hi[0] else BATCH_AXIS
        # An axis whose profile range is not one size is dynamic, named as the ONNX export names it.
        names = ("channels", "height", "width")
        input_spec = TensorSpec(self.input_name, (batch, *(a if a == b else names[i] if i < 3 else None
                                                           for i, (a, b) in enumerate(zip(lo[1:], hi[1:])))),
                                np.float32)
        output_specs = []
        for name in outputs:
            shape = [int(d) for d in self.engine.get_tensor_shape(name)]
            dims = [(batch if i == 0 else None) if d < 0 else d for i, d in enumerate(shape)]
            dtype = self._torch_dtype.get(self.engine.get_tensor_dtype(name), torch.float32)
            numpy_dtype = np.float32 if dtype.is_floating_point else torch.empty((), dtype=dtype).numpy().dtype
            output_specs.append(TensorSpec(name, tuple(dims), numpy_dtype))
        self._device = torch.device(device)
        self._torch = torch
        super().__init__(f"tensorrt:{gpu.name}", device, [input_spec], output_specs, (lo[0], hi[0]),
                         spatial_rule=SpatialRule.from_json(valid) if valid else None)
        # One execution context holds the bound shapes and addresses: calls from several threads
        # (a server with --workers > 1) take turns.
        self._lock = threading.Lock()

    def check_input(self, x: np.ndarray) -> None:
        """The base checks, and the height x width inside optimization profile 0's range."""
        super().check_input(x)
        (*_, h_lo, w_lo), (*_, h_hi, w_hi) = self.profile_shapes
        if not (h_lo <= x.shape[-2] <= h_hi and w_lo <= x.shape[-1] <= w_hi):
            raise InputShapeError(f"size {x.shape[-2]}x{x.shape[-1]} is outside the engine's optimization profile "
                                  f"{h_lo}x{w_lo}..{h_hi}x{w_hi}")

    def _prepare_impl(self, x: np.ndarray):
        """Copy ``x`` to the GPU, bind input and output buffers, and return ``run``.

        ``run()`` enqueues one execution on torch's current stream and returns
        the output tensors (on the GPU, one per output in ``output_names`` order)
        without waiting: the profiler times it with CUDA events, so the host-device
        copies stay outside the timing.
        """
        torch = self._torch
        in_dtype = self._torch_dtype.get(self.engine.get_tensor_dtype(self.input_name), torch.float32)
        inp = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self._device).to(in_dtype).contiguous()
        self.context.set_input_shape(self.input_name, tuple(inp.shape))
        outs = []
        output_names = [s.name for s in self.output_specs]
        for name in output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = self._torch_dtype.get(self.engine.get_tensor_dtype(name), torch.float32)
            outs.append(torch.empty(shape, dtype=dtype, device=self._device))
        context, input_name, device = self.context, self.input_name, self._device

        def run():
            # Rebind on every call: several prepared batches may share one execution context.
            context.set_input_shape(input_name, tuple(inp.shape))
            context.set_tensor_address(input_name, inp.data_ptr())
            for name, out in zip(output_names, outs):
                context.set_tensor_address(name, out.data_ptr())
            if not context.execute_async_v3(torch.cuda.current_stream(device).cuda_stream):
                raise AcmixDeployError("TensorRT failed to run the engine (see TensorRT's log above)")
            return outs

        return run

    def _infer_impl(self, x: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            outs = self._prepare_impl(x)()
            self._torch.cuda.current_stream(self._device).synchronize()
            return [(o.float() if o.is_floating_point() else o).cpu().numpy() for o in outs]
