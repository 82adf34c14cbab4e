"""Open any model file this package produces as a runner, with the tensor spec a server needs.

Dispatch is by suffix:

=================  ===========================================================
``.onnx``          :class:`OrtRunner` (names and shapes read from the session)
``.pt2``           :class:`AotiRunner` (AOTInductor package)
``.engine/.plan``  :class:`TrtRunner` (TensorRT itself imported on use; names and batch range from
                   the ``X.engine.json`` sidecar written next to the engine)
``.pth/.pt``       :class:`TorchRunner` over the deploy form (a training
                   checkpoint is folded first, with a check)
=================  ===========================================================

Every runner is warmed up with one batch of zeros at the smallest batch it
accepts; the output shapes (without the batch axis) and data types are read
from that run, so a model that cannot run fails here, at load time, instead of
on the first request.  A model may have several outputs (a detector's heads):
:attr:`LoadedModel.outputs` lists them all, in the model's order, named as the
file records them (:mod:`acmix_deploy.outputs` gives the rule).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import torch

from ..artifacts.onnx import INPUT_NAME
from ..artifacts.tensorrt import read_sidecar
from ..errors import AcmixDeployError, ConfigError
from ..models import create_model
from ..outputs import SINGLE_OUTPUT_NAME
from ..pipeline import default_input_size, prepare_deploy
from ..util import normalize_imgsz
from .aoti import AotiRunner
from .base import run_outputs
from .onnxruntime import OrtRunner
from .tensorrt import TrtRunner
from .torch import TorchRunner

__all__ = ["BACKENDS", "LoadedModel", "TensorSpec", "backend_for", "open_runner"]

# backend name -> the suffixes it opens
BACKENDS: dict[str, tuple[str, ...]] = {
    "onnxruntime": (".onnx",),
    "aoti": (".pt2",),
    "tensorrt": (".engine", ".plan"),
    "torch": (".pth", ".pt"),
}

# Triton's ``platform`` names (model metadata) for each backend.
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan", "aoti": "torch_aoti", "torch": "pytorch"}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor as the KServe v2 protocol describes it: the shape excludes the batch axis."""

    name: str
    datatype: str  # v2 protocol name: "FP32"
    shape: tuple[int, ...]  # without the batch axis; -1 for a dynamic axis


# NumPy dtype -> KServe v2 datatype (Triton's config spells them TYPE_<name>, FP32 -> TYPE_FP32).
V2_DATATYPES = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "int64": "INT64", "int32": "INT32",
                "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "bool": "BOOL"}


def v2_datatype(dtype) -> str:
    """The v2 protocol name of a NumPy dtype; one it cannot carry is a clear error."""
    name = np.dtype(dtype).name
    if name not in V2_DATATYPES:
        raise AcmixDeployError(f"an output of dtype {name} cannot be described to Triton or the v2 protocol; "
                               f"return one of {', '.join(V2_DATATYPES)}")
    return V2_DATATYPES[name]


@dataclass(init=False)
class LoadedModel:
    """A runner and the tensors it takes and returns.

    ``outputs`` lists every output; ``output`` is the one output of a single-output model (as before several
    outputs were supported) and refuses a model with several, so code that handles one cannot pick the
    first by accident.  ``LoadedModel(..., output=spec)`` is accepted for ``outputs=[spec]``.
    """

    runner: object  # a Runner: .name, .infer_outputs(np.float32 NCHW) -> list[np.ndarray] (.infer: one output)
    backend: str
    platform: str
    path: Path
    input: TensorSpec
    outputs: list[TensorSpec] = field(default_factory=list)
    min_batch: int = 1  # the smallest batch the runner accepts
    max_batch: int | None = None  # the largest (None: no limit of the runner's own)

    def __init__(self, runner: object, backend: str, platform: str, path: Path, input: TensorSpec,
                 outputs: list[TensorSpec] | None = None, min_batch: int = 1, max_batch: int | None = None,
                 output: TensorSpec | None = None):
        if (outputs is None) == (output is None):
            raise ConfigError("give LoadedModel either outputs (a list of TensorSpec) or output (one), not both")
        self.runner, self.backend, self.platform, self.path, self.input = runner, backend, platform, Path(path), input
        self.outputs = list(outputs) if outputs is not None else [output]  # type: ignore[list-item]
        if not self.outputs:
            raise ConfigError("a model needs at least one output")
        self.min_batch, self.max_batch = min_batch, max_batch

    @property
    def output(self) -> TensorSpec:
        if len(self.outputs) != 1:
            names = ", ".join(o.name for o in self.outputs)
            raise AcmixDeployError(f"{self.path.name} has {len(self.outputs)} outputs ({names}); use .outputs, "
                                   "and the runner's infer_outputs(x), to handle all of them")
        return self.outputs[0]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.input.shape)  # type: ignore[return-value]


def backend_for(path: Path, backend: str | None = None) -> str:
    """The backend that runs ``path`` (by its suffix, :data:`BACKENDS`), or ``backend`` checked against it."""
    suffix = path.suffix.lower()
    by_suffix = next((b for b, suffixes in BACKENDS.items() if suffix in suffixes), None)
    if backend is None:
        if by_suffix is None:
            known = ", ".join(s for ss in BACKENDS.values() for s in ss)
            raise ConfigError(f"cannot tell how to run {path.name}: the suffix must be one of {known}")
        return by_suffix
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    if suffix not in BACKENDS[backend]:
        raise ConfigError(f"backend {backend} runs {'/'.join(BACKENDS[backend])} files, not {path.name}")
    return backend


def _dim(d) -> int:
    return d if isinstance(d, int) and d > 0 else -1


def open_runner(
    path: str | os.PathLike,
    backend: str | None = None,
    device: str = "cpu",
    arch: str | None = None,
    imgsz: int | tuple[int, int] | None = None,
    threads: int | None = None,
    model_def: str | None = None,
    model_args: str | dict | None = None,
) -> LoadedModel:
    """Open ``path`` with the runner of its format; see the module docstring.

    ``imgsz`` (an int for a square, or ``(height, width)``) sets the input size of checkpoints and of
    AOTInductor packages that record none; exported files keep the size they were exported with.
    """
    imgsz = normalize_imgsz(imgsz)  # a bad value is refused before any file is read
    path = Path(path)
    if not path.exists():
        raise AcmixDeployError(f"model {path} does not exist")
    if path.is_dir():
        raise AcmixDeployError(f"model {path} is a directory; give a model file (.onnx, .pt2, .engine, .pth)")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be positive, got {threads}")
    backend = backend_for(path, backend)
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu or cuda, got {device!r}")
    min_batch, max_batch = 1, None

    if backend == "onnxruntime":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else None
        runner = OrtRunner(path, providers=providers, threads=threads)
        inp = runner.session.get_inputs()[0]
        if len(inp.shape) != 4:
            raise AcmixDeployError(f"{path.name}: input {inp.name} has shape {inp.shape}; an NCHW image batch is expected")
        if isinstance(inp.shape[0], int) and inp.shape[0] > 0:  # exported with --static
            min_batch = max_batch = inp.shape[0]
        input_name, names = inp.name, list(runner.output_names)
        chw = tuple(_dim(d) for d in inp.shape[1:])
        if -1 in chw:
            raise AcmixDeployError(f"{path.name}: input {inp.name} has dynamic C/H/W {inp.shape}; a fixed image size is needed")
    elif backend == "tensorrt":
        sidecar = read_sidecar(path)  # read once: the runner gets it, not the path to read again
        # TensorRT without a usable CUDA device crashes the process on deserialization: refuse first.
        if not torch.cuda.is_available():
            raise AcmixDeployError(f"cannot run TensorRT engine {path.name}: no CUDA GPU is visible on this machine")
        if device != "cuda":
            device = "cuda"  # an engine only runs on the GPU it was built for
        runner = TrtRunner(path, device=device, sidecar=sidecar)
        # The runner executes optimization profile 0: advertise its range, not the union of all profiles.
        profile = sidecar.profiles[0]
        min_batch, max_batch = profile["min"][0], profile["max"][0]
        chw = tuple(profile["opt"][1:])
        input_name, names = sidecar.input_name, sidecar.all_output_names
    else:
        input_name, names = INPUT_NAME, None  # None: the naming rule on what the model returns (see below)
        if backend == "aoti":
            runner = AotiRunner(path, device)
            names = runner.output_names
            if runner.input_shape is not None:  # packages written by acmix-deploy record their input
                chw = tuple(runner.input_shape[1:])
                min_batch, max_batch = runner.min_batch, runner.max_batch
            elif arch is None:
                raise ConfigError(f"{path.name} records no input size; give --arch (and --imgsz)")
            else:
                chw = default_input_size(create_model(arch, deploy=True), imgsz)
        else:
            prep = prepare_deploy(path, arch, imgsz, model_def=model_def, model_args=model_args)
            chw = prep.input_size
            runner = TorchRunner(prep.deploy, name=f"torch:deploy:{device}", device=device)

    try:
        probes = run_outputs(runner, np.zeros((min_batch, *chw), dtype=np.float32))
    except AcmixDeployError:
        raise
    except Exception as exc:  # a model that cannot run its own input shape
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AcmixDeployError(f"{path.name} fails on a {min_batch}x{'x'.join(map(str, chw))} input: {first}") from None
    if names is None:
        # Torch runners (checkpoints) and AOTInductor packages that record no names: the runner's names from
        # the naming rule when it has them, else the rule's names for a plain list of this many tensors.
        names = getattr(runner, "output_names", None) or (
            [SINGLE_OUTPUT_NAME] if len(probes) == 1 else [f"output{i}" for i in range(len(probes))])
    if len(names) != len(probes):
        raise AcmixDeployError(f"{path.name} records {len(names)} output name(s) ({', '.join(names)}) but returns "
                               f"{len(probes)} output(s); re-export it")
    outputs = []
    for name, probe in zip(names, probes):
        probe = np.asarray(probe)
        if probe.ndim < 1 or probe.shape[0] != min_batch:
            raise AcmixDeployError(f"{path.name}: output {name} has shape {probe.shape}, with no batch axis of "
                                   f"size {min_batch}")
        outputs.append(TensorSpec(name, v2_datatype(probe.dtype), tuple(int(d) for d in probe.shape[1:])))
    return LoadedModel(
        runner=runner, backend=backend, platform=PLATFORMS[backend], path=path,
        input=TensorSpec(input_name, "FP32", tuple(int(d) for d in chw)),
        outputs=outputs, min_batch=min_batch, max_batch=max_batch,
    )
