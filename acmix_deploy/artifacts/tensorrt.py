"""What a TensorRT engine written by acmix-deploy comes with: its JSON sidecar, and the environment it names.

An engine ``X.engine`` (or ``X.plan``) has a sidecar ``X.engine.json`` (:class:`EngineSidecar`): the TensorRT
version, GPU name and compute capability it was built for, its precision, input and output names and
shapes, optimization profiles (``{min, opt, max}`` NCHW shapes; the batch axis first) and the sha256 of the
plan and of its source ONNX graph.  :func:`read_sidecar` is the one reader (every consumer, the runtime and
the Triton repository writer, goes through it), :func:`write_sidecar` the one writer.  An engine only runs
on the GPU model and TensorRT version it was built with; :func:`check_sidecar` compares a sidecar with this
machine (:func:`current_gpu`, :func:`require_tensorrt`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import AcmixDeployError, MissingDependencyError
from ..util import atomic_write

__all__ = ["SIDECAR_FORMAT", "SIDECAR_VERSION", "EngineSidecar", "GpuInfo", "check_sidecar", "current_gpu",
           "read_sidecar", "require_tensorrt", "sidecar_path", "trt_logger", "write_sidecar"]

SIDECAR_FORMAT = "acmix-deploy.tensorrt-engine"
SIDECAR_VERSION = 1


# ----------------------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"


def current_gpu(device_index: int = 0) -> GpuInfo | None:
    """The CUDA GPU torch sees, or None on a machine without one."""
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device_index)
    return GpuInfo(torch.cuda.get_device_name(device_index), f"{major}.{minor}")


def require_tensorrt(need_gpu: bool = True):
    """Import ``tensorrt`` after checking what it needs, or raise one clear error.

    The GPU is checked first: without a CUDA device, TensorRT's runtime logs a
    CUDA error and deserialising an engine then crashes the process.
    """
    if importlib.util.find_spec("tensorrt") is None:
        raise MissingDependencyError(
            'TensorRT is not installed; install it on a machine with an NVIDIA GPU with: pip install "acmix-deploy[trt]"'
        )
    if need_gpu and current_gpu() is None:
        raise MissingDependencyError(
            "TensorRT needs a CUDA GPU, and torch sees none on this machine (export ONNX or AOTInductor here, "
            "and build the engine on the GPU machine that will run it)"
        )
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:  # a stub package or a broken CUDA install raises all sorts
        raise MissingDependencyError(
            f'TensorRT cannot be imported ({exc}); reinstall it with: pip install "acmix-deploy[trt]"'
        ) from None
    if not hasattr(trt, "Builder"):
        raise MissingDependencyError(
            "the installed 'tensorrt' package has no builder (a lean/dispatch runtime or a stub); "
            'install the full one with: pip install "acmix-deploy[trt]"'
        )
    return trt


_LOGGERS: dict[int, Any] = {}


def trt_logger(trt):
    """One logger per TensorRT module: TensorRT keeps a single global logger and warns about a second."""
    if id(trt) not in _LOGGERS:
        _LOGGERS[id(trt)] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[id(trt)]



# --------------------------------------------------------------------------------------------- sidecar



@dataclass
class EngineSidecar:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str  # fp32 | fp16 | int8
    typing: str  # strong | weak
    input_name: str
    output_name: str  # the first output (the only one of single-output models, as sidecars before output_names)
    input_size: list[int]  # C, H, W
    profiles: list[dict[str, list[int]]]  # [{"min": [N,C,H,W], "opt": [...], "max": [...]}]
    onnx_sha256: str
    build_seconds: float
    output_shape: list[int] | None = None  # full shape of the first output, batch axis first (-1 when dynamic)
    output_names: list[str] | None = None  # every output, in the model's order (absent in older sidecars)
    output_shapes: list[list[int]] | None = None  # the full shape of each of output_names
    workspace_bytes: int | None = None
    builder_optimization_level: int | None = None
    engine_sha256: str = ""
    package_version: str = ""
    created: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    # Engines with dynamic height and width: the sizes the graph takes (artifacts.spatial.SpatialRule's JSON);
    # the ranges themselves are the profiles'.
    valid_hw: dict[str, Any] | None = None
    format: str = SIDECAR_FORMAT
    format_version: int = SIDECAR_VERSION

    @property
    def all_output_names(self) -> list[str]:
        """Every output's name: ``output_names``, or ``[output_name]`` for a sidecar written before it existed."""
        return list(self.output_names) if self.output_names else [self.output_name]

    @property
    def max_batch(self) -> int:
        return max(p["max"][0] for p in self.profiles)

    @property
    def min_batch(self) -> int:
        return min(p["min"][0] for p in self.profiles)

    @property
    def dynamic_hw(self) -> bool:
        """Whether a profile spans several heights or widths."""
        return any(p["min"][2:] != p["max"][2:] for p in self.profiles)


def sidecar_path(engine: str | os.PathLike) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def write_sidecar(engine: str | os.PathLike, sidecar: EngineSidecar) -> Path:
    text = json.dumps(asdict(sidecar), indent=2, sort_keys=True) + "\n"
    return atomic_write(sidecar_path(engine), lambda tmp: Path(tmp).write_text(text))


def read_sidecar(engine: str | os.PathLike) -> EngineSidecar:
    """Read and check the sidecar of ``engine``; a missing, unreadable or foreign one is a clear error.

    Checked: the format marker and version, every field without a default, ``output_names`` (a list of
    unique non-empty strings when present) and ``profiles`` (a non-empty list of ``{min, opt, max}`` NCHW
    shapes of positive ints).
    """
    path = sidecar_path(engine)
    if not path.is_file():
        raise AcmixDeployError(
            f"engine {engine} has no sidecar {path.name}: it records the GPU and TensorRT version the engine was "
            "built for; rebuild the engine (export, {fmt} engine)", params=["fmt"]
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AcmixDeployError(f"cannot read engine sidecar {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise AcmixDeployError(f"{path} is not an acmix-deploy engine sidecar (its 'format' is not "
                               f"{SIDECAR_FORMAT!r}); rebuild the engine (export, {{fmt}} engine)", params=["fmt"])
    if not isinstance(data.get("format_version", 0), int) or data.get("format_version", 0) > SIDECAR_VERSION:
        raise AcmixDeployError(
            f"{path} has sidecar format {data.get('format_version')}, newer than this acmix-deploy understands "
            f"({SIDECAR_VERSION}); upgrade acmix-deploy"
        )
    known = EngineSidecar.__dataclass_fields__
    missing = [k for k, f in known.items() if k not in data and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise AcmixDeployError(f"engine sidecar {path} lacks {', '.join(missing)}")
    names = data.get("output_names")
    if names is not None and (not isinstance(names, list) or not names
                              or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names)):
        raise AcmixDeployError(f"{path}: 'output_names' must be a list of unique non-empty strings, got {names!r}")
    profiles = data["profiles"]
    try:
        ok = isinstance(profiles, list) and bool(profiles) and all(
            len(p[k]) == 4 and all(isinstance(d, int) and d > 0 for d in p[k]) for p in profiles for k in ("min", "opt", "max")
        )
    except (TypeError, KeyError):
        ok = False
    if not ok:
        raise AcmixDeployError(f"{path}: 'profiles' must be a list of {{min, opt, max}} NCHW shapes of positive ints")
    return EngineSidecar(**{k: v for k, v in data.items() if k in known})


def check_sidecar(sidecar: EngineSidecar, trt_version: str, gpu: GpuInfo, engine: str | os.PathLike = "engine") -> None:
    """Refuse an engine built for another GPU model or TensorRT version, naming both."""
    problems = []
    if sidecar.tensorrt_version != trt_version:
        problems.append(f"it was built with TensorRT {sidecar.tensorrt_version}, this machine has TensorRT {trt_version}")
    if sidecar.compute_capability != gpu.compute_capability or sidecar.gpu_name != gpu.name:
        problems.append(
            f"it was built for {sidecar.gpu_name} (compute capability {sidecar.compute_capability}), "
            f"this machine has {gpu.name} (compute capability {gpu.compute_capability})"
        )
    if problems:
        raise AcmixDeployError(
            f"refusing to load {engine}: " + "; ".join(problems)
            + ". TensorRT engines only run where they were built: rebuild it here (export, {fmt} engine)",
            params=["fmt"]
        )
