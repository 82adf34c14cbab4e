"""Open any model file this package produces as a runner: one suffix table, one function.

:data:`FILE_TYPES` is the only place that says which backend runs which file:

=================  ===========================================================
``.onnx``          :class:`OrtRunner` (ONNX Runtime; specs read from the graph)
``.pt2``           :class:`AotiRunner` (AOTInductor package)
``.engine/.plan``  :class:`TrtRunner` (TensorRT itself imported on use; names and batch range from
                   the ``X.engine.json`` sidecar written next to the engine)
``.pth/.pt``       :class:`TorchRunner` over the deploy form (a training
                   checkpoint is folded first, with a check)
``.xml/.onnx``     :class:`OpenVinoRunner` (OpenVINO on the CPU, float32): OpenVINO IR files by suffix,
                   ONNX files when ``backend="openvino"`` is asked for (``.onnx`` alone means ONNX Runtime)
=================  ===========================================================

``compare``, ``profile`` and ``serve`` open files through :func:`open_runner`.  Every runner it returns is
warmed up with one batch of zeros at the smallest batch it accepts, and the output specs are completed from
that run, so a model that cannot run fails here, at load time, instead of on the first request.  A model
may have several outputs (a detector's heads): ``output_specs`` lists them all, in the model's order, named
as the file records them (:mod:`acmix_deploy.outputs` gives the rule).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..artifacts.tensorrt import read_sidecar
from ..errors import AcmixDeployError, ConfigError
from ..models import create_model
from ..pipeline import default_input_size, prepare_deploy
from ..util import normalize_imgsz
from .aoti import AotiRunner
from .base import Runner
from .onnxruntime import OrtRunner
from .openvino import OpenVinoRunner
from .tensorrt import TrtRunner
from .torch import TorchRunner

__all__ = ["BACKENDS", "EXPORTED", "FILE_TYPES", "FileType", "backend_for", "describe_suffixes", "open_runner"]


@dataclass(frozen=True)
class FileType:
    backend: str  # the runner's ``backend``
    suffixes: tuple[str, ...]
    what: str  # how the help texts and errors name it
    exported: bool  # an exported artifact (not a checkpoint)


FILE_TYPES: tuple[FileType, ...] = (
    FileType("onnxruntime", (".onnx",), "ONNX Runtime", True),
    FileType("aoti", (".pt2",), "AOTInductor", True),
    FileType("tensorrt", (".engine", ".plan"), "TensorRT", True),
    FileType("torch", (".pth", ".pt"), "a checkpoint, run in PyTorch", False),
    # after onnxruntime: a bare .onnx opens with ONNX Runtime, OpenVINO only when asked for
    FileType("openvino", (".xml", ".onnx"), "OpenVINO", True),
)
# backend name -> the suffixes it opens
BACKENDS: dict[str, tuple[str, ...]] = {t.backend: t.suffixes for t in FILE_TYPES}
# the backends that run exported files
EXPORTED: tuple[str, ...] = tuple(t.backend for t in FILE_TYPES if t.exported)


def describe_suffixes(backends: tuple[str, ...] | None = None) -> str:
    """``.onnx (ONNX Runtime), .pt2 (AOTInductor) or .engine/.plan (TensorRT)`` for ``backends``."""
    parts = [f"{'/'.join(t.suffixes)} ({t.what})" for t in FILE_TYPES if backends is None or t.backend in backends]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def backend_for(path: str | os.PathLike, backend: str | None = None, allowed: tuple[str, ...] | None = None) -> str:
    """The backend that runs ``path`` by its suffix (:data:`FILE_TYPES`), or ``backend`` checked against it.

    ``allowed`` narrows the table (``compare`` takes exported files only, :data:`EXPORTED`); a suffix
    outside it is a :class:`ConfigError` that lists what is accepted.
    """
    path = Path(path)
    allowed = tuple(allowed) if allowed is not None else tuple(BACKENDS)
    suffix = path.suffix.lower()
    by_suffix = next((b for b in allowed if suffix in BACKENDS[b]), None)
    if backend is None:
        if by_suffix is None:
            raise ConfigError(f"cannot tell how to run {path.name} by its suffix: give {describe_suffixes(allowed)}")
        return by_suffix
    if backend not in allowed:
        raise ConfigError(f"unknown backend {backend!r}; available: {', '.join(allowed)}")
    if suffix not in BACKENDS[backend]:
        raise ConfigError(f"backend {backend} runs {'/'.join(BACKENDS[backend])} files, not {path.name}")
    return backend


def open_runner(
    path: str | os.PathLike,
    backend: str | None = None,
    device: str | None = None,
    arch: str | None = None,
    imgsz: int | tuple[int, int] | None = None,
    threads: int | None = None,
    model_def: str | None = None,
    model_args: str | dict | None = None,
    allowed: tuple[str, ...] | None = None,
    input_size: tuple[int, int, int] | None = None,
    specialize: int = 0,
    background: bool = False,
) -> Runner:
    """Open ``path`` with the runner of its format (see the module docstring), warmed up.

    ``device`` (cpu or cuda) defaults to the file's own: the CPU for ONNX files and checkpoints, the
    device an AOTInductor package was compiled for, the GPU for TensorRT engines (which run nowhere else).
    ``imgsz`` (an int for a square, or ``(height, width)``) sets the input size of checkpoints and of
    AOTInductor packages that record none; exported files keep the size they were exported with.
    ``input_size`` (C, H, W) is the input of an AOTInductor package that records none when the caller knows
    it (``compare``, from the checkpoint).  ``threads`` sets ONNX Runtime's intra-op threads (OpenVINO's
    inference threads).  ``allowed`` narrows the suffix table.  ``specialize`` and ``background`` go to
    the ONNX Runtime and OpenVINO runners (per-size sessions or compiled models of a graph with dynamic
    height and width, :mod:`.per_size`).
    """
    imgsz = normalize_imgsz(imgsz)  # a bad value is refused before any file is read
    path = Path(path)
    if not path.exists():
        raise AcmixDeployError(f"model {path} does not exist")
    if path.is_dir():
        raise AcmixDeployError(f"model {path} is a directory; give a model file ({describe_suffixes(allowed)})")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be positive, got {threads}")
    backend = backend_for(path, backend, allowed)
    if device not in (None, "cpu", "cuda"):
        raise ConfigError(f"device must be cpu or cuda, got {device!r}")

    runner: Runner
    if backend == "onnxruntime":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else None
        runner = OrtRunner(path, providers=providers, threads=threads, specialize=specialize, background=background)
    elif backend == "openvino":
        if device == "cuda":
            raise ConfigError(f"the openvino backend runs {path.name} on the CPU; drop {{device}} cuda", params=["device"])
        runner = OpenVinoRunner(path, threads=threads, specialize=specialize, background=background)
    elif backend == "tensorrt":
        sidecar = read_sidecar(path)  # read once: the runner gets it, not the path to read again
        # TensorRT without a usable CUDA device crashes the process on deserialization: refuse first.
        if not torch.cuda.is_available():
            raise AcmixDeployError(f"cannot run TensorRT engine {path.name}: no CUDA GPU is visible on this machine")
        runner = TrtRunner(path, device="cuda", sidecar=sidecar)  # an engine runs on the GPU it was built for
    elif backend == "aoti":
        runner = AotiRunner(path, device, input_size=input_size)
        if not runner.records_input_size and input_size is None:
            # Packages written by acmix-deploy record their input size; for others it comes from arch/imgsz
            # (the package is loaded again with it: rare, and cheaper than building a model for every package).
            if arch is None:
                raise ConfigError(f"{path.name} records no input size; give {{arch}} (and {{imgsz}})",
                                  params=["arch", "imgsz"])
            runner = AotiRunner(path, device, input_size=default_input_size(create_model(arch, deploy=True), imgsz))
    else:
        prep = prepare_deploy(path, arch, imgsz, model_def=model_def, model_args=model_args)
        device = device or "cpu"
        runner = TorchRunner(prep.deploy, name=f"torch:deploy:{device}", device=device, input_size=prep.input_size)

    if backend in ("onnxruntime", "openvino"):  # graphs: their input is whatever the file declares
        spec = runner.input_spec
        if len(spec.shape) != 4:
            raise AcmixDeployError(f"{path.name}: input {spec.name} has shape {list(spec.shape)}; an NCHW image "
                                   "batch is expected")
        if not spec.is_static and not (runner.spatial_rule is not None and isinstance(spec.shape[1], int)):
            raise AcmixDeployError(f"{path.name}: input {spec.name} has dynamic C/H/W {list(spec.shape)}; a fixed "
                                   "image size is needed (or a graph exported with {dynamic_hw}, which records the "
                                   "sizes it takes)", params=["dynamic_hw"])
    n, item = runner.batch_range[0], runner.input_spec.shape[1:]
    try:
        runner.warm_up()
    except AcmixDeployError:
        raise
    except Exception as exc:  # a model that cannot run its own input shape
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AcmixDeployError(f"{path.name} fails on a {n}x{'x'.join(map(str, item))} input: {first}") from None
    return runner
