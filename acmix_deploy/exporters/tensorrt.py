"""TensorRT engines built from our ONNX graphs with TensorRT's Python API.

Precision lives in the ONNX graph, not in builder flags.  TensorRT 11 removed
the FP16/INT8 builder flags and the INT8 calibrator: every network is strongly
typed, so a float16 engine is built from a float16 ONNX graph (``--fp16``,
attention kept in float32) and an int8 engine from a Q/DQ graph (``--int8``).
TensorRT 10 builds the same graphs as a ``STRONGLY_TYPED`` network, so both
versions give engines with the same per-layer precisions; on TensorRT 10 the
legacy route (a float32 graph with ``BuilderFlag.FP16``, softmax and its
reductions pinned to float32 by layer precision constraints) is available as
``typing="weak"``.  Float32 engines disable TF32 where the flag exists, so an
"fp32" engine computes in float32.

Every engine ``X.engine`` gets a JSON sidecar ``X.engine.json`` (TensorRT
version, GPU name and compute capability, precision, optimization profiles,
ONNX sha256, build time).  The sidecar is a separate file, not a header inside
the plan, so Triton and ``trtexec`` load the plan unchanged.  An engine only
runs on the GPU model and TensorRT version it was built with;
:func:`acmix_deploy.artifacts.tensorrt.check_sidecar` refuses any other pairing with both named.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .._version import __version__
from ..artifacts.tensorrt import (EngineSidecar, GpuInfo, current_gpu, require_tensorrt, sidecar_path, trt_logger,
                                  write_sidecar)
from ..errors import AcmixDeployError, ConfigError, ExportError, MissingDependencyError
from ..util import atomic_write, sha256_file

__all__ = ["BatchProfile", "EngineBuild", "ShapeProfile", "build_engine", "check_profile_sizes", "configure_builder",
           "default_timing_cache", "engine_profiles", "given_shapes", "parse_shape", "shape_profile", "trt_major"]

MIN_TRT_MAJOR = 10
# Operators pinned to float32 in weakly typed (TensorRT 10 flag) builds: the attention's softmax and the
# reductions around it lose accuracy in float16.
_FP32_LAYER_TYPES = ("SOFTMAX", "REDUCE", "NORMALIZATION")


@dataclass(frozen=True)
class BatchProfile:
    """One optimization profile over the batch axis (spatial size fixed)."""

    min: int
    opt: int
    max: int

    def shapes(self, input_size: tuple[int, int, int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return tuple((b, *input_size) for b in (self.min, self.opt, self.max))  # type: ignore[return-value]


def engine_profiles(
    batch: int, dynamic: bool, min_batch: int | None = None, opt_batch: int | None = None,
    max_batch: int | None = None,
) -> BatchProfile:
    """The batch range of an engine, validated with messages that name the options.

    Static: min = opt = max = ``batch``.  Dynamic: ``min_batch`` (default 1) <=
    ``opt_batch`` (default ``batch``) <= ``max_batch`` (default ``max(batch, 32)``).
    """
    for name, value in (("batch", batch), ("min_batch", min_batch), ("opt_batch", opt_batch),
                        ("max_batch", max_batch)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{{{name}}} must be a positive integer, got {value!r}", params=[name])
    if not dynamic:
        given = [n for n, v in (("min_batch", min_batch), ("opt_batch", opt_batch), ("max_batch", max_batch))
                 if v is not None and v != batch]
        if given:
            raise ConfigError(f"{{dynamic=False}} builds for exactly {{batch}} {batch}; drop "
                              f"{', '.join('{' + n + '}' for n in given)} or use {{dynamic=True}}",
                              params=["dynamic=False", "batch", *given, "dynamic=True"])
        return BatchProfile(batch, batch, batch)
    lo = 1 if min_batch is None else min_batch
    opt = batch if opt_batch is None else opt_batch
    hi = max(opt, 32) if max_batch is None else max_batch
    if not lo <= opt <= hi:
        raise ConfigError(
            f"impossible batch range: need {{min_batch}} ({lo}) <= {{opt_batch}} ({opt}) <= {{max_batch}} ({hi})",
            params=["min_batch", "opt_batch", "max_batch"])
    if not lo <= batch <= hi:
        raise ConfigError(f"{{batch}} {batch} (the validation batch) must lie in the profile's range {lo}..{hi}",
                          params=["batch"])
    return BatchProfile(lo, opt, hi)


@dataclass(frozen=True)
class ShapeProfile:
    """One optimization profile over whole NCHW shapes: the batch and, for a graph with dynamic height and
    width, the spatial size.  ``min``/``opt``/``max`` are the batches, as in :class:`BatchProfile`."""

    min_shape: tuple[int, int, int, int]
    opt_shape: tuple[int, int, int, int]
    max_shape: tuple[int, int, int, int]

    @property
    def min(self) -> int:
        return self.min_shape[0]

    @property
    def opt(self) -> int:
        return self.opt_shape[0]

    @property
    def max(self) -> int:
        return self.max_shape[0]

    @property
    def dynamic_hw(self) -> bool:
        return self.min_shape[2:] != self.max_shape[2:]

    def shapes(self, input_size: tuple[int, int, int] | None = None) -> tuple[tuple[int, ...], ...]:
        return self.min_shape, self.opt_shape, self.max_shape

    def covers(self, shape) -> bool:
        """Whether an NCHW input of ``shape`` lies inside the profile, axis by axis."""
        return len(shape) == 4 and all(lo <= n <= hi for lo, n, hi in zip(self.min_shape, shape, self.max_shape))

    @staticmethod
    def spell(shape) -> str:
        return "x".join(map(str, shape))


def parse_shape(value, param: str, input_name: str = "images") -> tuple[int, int, int, int]:
    """``NxCxHxW`` (trtexec's spelling, optionally ``images:NxCxHxW``), or a sequence of 4 ints; errors name
    parameter ``param`` (``min_shape``, ...)."""
    text, field = value, "{" + param + "}"
    if isinstance(value, str):
        name, sep, dims = value.strip().rpartition(":")
        if sep and name != input_name:
            raise ConfigError(f"{field} {value!r} names input {name!r}; the model's input is {input_name!r}",
                              params=[param])
        try:
            value = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            raise ConfigError(f"{field} must be NxCxHxW (integers, e.g. 1x3x224x224), got {text!r}",
                              params=[param]) from None
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in value)):
        raise ConfigError(f"{field} must be NxCxHxW, four positive integers (e.g. 1x3x224x224), got {text!r}",
                          params=[param])
    return tuple(value)  # type: ignore[return-value]


def _check_order(shapes: dict[str, tuple[int, ...]]) -> None:
    """``min <= opt <= max`` on every axis among ``shapes`` (keys ``min``, ``opt``, ``max``; some may be absent)."""
    for axis, label in enumerate(("batch", "channels", "height", "width")):
        values = [shapes[k][axis] for k in ("min", "opt", "max") if k in shapes]
        if values != sorted(values):
            raise ConfigError(f"impossible shape range: the {label} must satisfy min <= opt <= max, got "
                              + ", ".join(f"{{{k}_shape}} {ShapeProfile.spell(v)}" for k, v in shapes.items()),
                              params=[f"{k}_shape" for k in shapes])


def given_shapes(min_shape=None, opt_shape=None, max_shape=None, dynamic_hw: bool = False,
                 batches: tuple[int | None, int | None, int | None] = (None, None, None)) -> dict[str, tuple]:
    """``min_shape``/``opt_shape``/``max_shape`` parsed and checked as far as they can be before the model is read.

    Returns the shapes given (``{"min": (N, C, H, W), ...}``).  Checked: the spelling (:func:`parse_shape`),
    no batch given twice (``batches``: ``min_batch``/``opt_batch``/``max_batch`` as given, None where not;
    each must agree with its shape's batch), ``min_shape`` and ``max_shape`` both given with ``dynamic_hw``
    (TensorRT needs the spatial range), and ``min <= opt <= max`` among the shapes given.
    :func:`shape_profile` checks the rest once the model's channels and the export size are known.
    """
    shapes = {}
    for (key, value), batch in zip((("min", min_shape), ("opt", opt_shape), ("max", max_shape)), batches):
        if value is None:
            continue
        shape = parse_shape(value, f"{key}_shape")
        if batch is not None and batch != shape[0]:
            raise ConfigError(f"{{{key}_shape}} says batch {shape[0]} and {{{key}_batch}} says {batch}; "
                              "give the batch once", params=[f"{key}_shape", f"{key}_batch"])
        shapes[key] = shape
    if dynamic_hw and not ("min" in shapes and "max" in shapes):
        raise ConfigError("{dynamic_hw} engines need the spatial range: give {min_shape} and {max_shape} "
                          "(NxCxHxW, e.g. 1x3x128x128 and 8x3x640x640); {opt_shape} defaults to the export "
                          "size ({imgsz})", params=["dynamic_hw", "min_shape", "max_shape", "opt_shape", "imgsz"])
    _check_order(shapes)
    return shapes


def shape_profile(
    batches: BatchProfile, input_size: tuple[int, int, int], min_shape=None, opt_shape=None, max_shape=None,
    dynamic_hw: bool = False, batch_given: tuple[bool, bool, bool] = (False, False, False),
) -> ShapeProfile:
    """The engine's optimization profile from ``min_shape``/``opt_shape``/``max_shape`` and the batch profile.

    The shapes go through :func:`given_shapes` (``batch_given`` says which of the batch profile's values
    were set as options, so that a shape's batch must agree with them); shapes not given follow the batch
    profile at the export size (``input_size``).  Then, before any work: the model's channels, ``min <=
    opt <= max`` with those defaults, a fixed height and width without ``dynamic_hw``, and the export size
    (where the engine is validated) inside the range.  The valid-size rule of the model is checked later,
    by :func:`check_profile_sizes`, once the model is read.
    """
    c, h, w = input_size
    default = {"min": batches.min, "opt": batches.opt, "max": batches.max}
    shapes = given_shapes(min_shape, opt_shape, max_shape, dynamic_hw,
                          tuple(default[k] if was else None for k, was in zip(default, batch_given)))
    for key, shape in shapes.items():
        if shape[1] != c:
            raise ConfigError(f"{{{key}_shape}} {ShapeProfile.spell(shape)} has {shape[1]} channels; the model "
                              f"takes {c}", params=[f"{key}_shape"])
    shapes = {key: shapes.get(key, (default[key], c, h, w)) for key in default}
    _check_order(shapes)
    lo, opt, hi = shapes["min"], shapes["opt"], shapes["max"]
    profile = ShapeProfile(lo, opt, hi)
    if not dynamic_hw and any(s[2:] != (h, w) for s in (lo, opt, hi)):
        raise ConfigError(f"the shapes change the height or width (the graph is traced at {h}x{w}); add "
                          "{dynamic_hw} for an engine that takes several sizes", params=["dynamic_hw"])
    if not lo[2] <= h <= hi[2] or not lo[3] <= w <= hi[3]:
        raise ConfigError(f"the export size {h}x{w} ({{imgsz}}, where the engine is validated) lies outside the shape "
                          f"range {ShapeProfile.spell(lo)} .. {ShapeProfile.spell(hi)}", params=["imgsz"])
    return profile


def check_profile_sizes(profile: ShapeProfile, rule) -> None:
    """Refuse a profile whose corner sizes the model cannot take (``rule``: an ``artifacts.spatial.SpatialRule``)."""
    for key, shape in (("min", profile.min_shape), ("opt", profile.opt_shape), ("max", profile.max_shape)):
        if not rule.valid(*shape[2:]):
            raise ConfigError(f"{{{key}_shape}} {ShapeProfile.spell(shape)}: the model takes inputs whose "
                              f"{rule.describe()}", params=[f"{key}_shape"])


# ----------------------------------------------------------------------------------------- environment


def trt_major(trt) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        raise ExportError(f"cannot read TensorRT's version from {trt.__version__!r}") from None


def default_timing_cache(trt_version: str, gpu: GpuInfo) -> Path:
    """Per TensorRT version and compute capability, in the user's cache directory."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "acmix-deploy"
    return base / f"tensorrt-{trt_version}-sm{gpu.compute_capability.replace('.', '')}.timing-cache"


# ---------------------------------------------------------------------------------------------- build


@dataclass
class EngineBuild:
    path: Path
    sidecar: EngineSidecar
    seconds: float
    size_bytes: int
    timing_cache: Path | None


def _fp32_constraints(trt, network) -> int:
    """Pin softmax, reductions and normalisations to float32 in a weakly typed network; count them."""
    pinned = 0
    kinds = {getattr(trt.LayerType, k) for k in _FP32_LAYER_TYPES if hasattr(trt.LayerType, k)}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in kinds:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def configure_builder(
    trt, builder, onnx_bytes: bytes, input_name: str, input_size: tuple[int, int, int],
    profile: BatchProfile | ShapeProfile,
    precision: str, typing: str, workspace_bytes: int | None, opt_level: int, timing_cache_bytes: bytes,
):
    """Network, parser and builder config for one build (no GPU work yet).  Returns (network, config, parser)."""
    major = trt_major(trt)
    flags = 0
    if typing == "strong" and major < 11:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if major < 10 and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger(trt))
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError("TensorRT's ONNX parser rejected the graph: " + "; ".join(errors[:3]))
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = opt_level
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: no TF32 matmuls
    if typing == "weak":
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # the graph carries Q/DQ scales: no calibrator
        if precision != "fp32":
            _fp32_constraints(trt, network)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(input_name, *profile.shapes(input_size))
    config.add_optimization_profile(opt_profile)
    cache = config.create_timing_cache(timing_cache_bytes)
    if config.set_timing_cache(cache, False) is False and timing_cache_bytes:
        # A cache from another TensorRT version or GPU: build without it (it is rewritten afterwards).
        import warnings

        warnings.warn("the TensorRT timing cache does not match this TensorRT/GPU; building without it")
        config.set_timing_cache(config.create_timing_cache(b""), False)
    return network, config, parser


def build_engine(
    onnx_path: str | os.PathLike,
    path: str | os.PathLike,
    input_size: tuple[int, int, int],
    profile: BatchProfile | ShapeProfile,
    precision: str = "fp32",
    typing: str = "strong",
    workspace_gb: float | None = None,
    opt_level: int = 3,
    timing_cache: str | os.PathLike | None = None,
    input_name: str = "images",
    output_name: str = "logits",
    source: dict[str, Any] | None = None,
    validate: Callable[[Path, EngineSidecar], None] | None = None,
    trt=None,
    output_shape: list[int] | None = None,
    output_names: list[str] | None = None,
    output_shapes: list[list[int]] | None = None,
    valid_hw: dict | None = None,
) -> EngineBuild:
    """Build a TensorRT engine from ``onnx_path`` and write it with its sidecar, atomically.

    ``output_names`` / ``output_shapes`` describe every output of a model with several (full shapes,
    batch axis first); the sidecar records them, and ``output_name`` / ``output_shape`` (the first) for
    readers of the older single-output sidecar.

    ``precision`` says what the ONNX graph carries (``fp32``, ``fp16`` or ``int8``
    Q/DQ).  ``profile`` is a batch range at ``input_size`` or whole NCHW shapes (:class:`ShapeProfile`,
    height and width dynamic when its corners differ; ``valid_hw``, the graph's valid-size rule, is then
    recorded in the sidecar).  ``validate(tmp_engine, sidecar)`` runs on the finished plan before it
    is moved into place.  The timing cache is read before and written after the
    build, so later builds on the same GPU and TensorRT version reuse it.
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    if typing not in ("strong", "weak"):
        raise ConfigError(f"typing must be 'strong' or 'weak', got {typing!r}")
    if not 0 <= opt_level <= 5:
        raise ConfigError(f"{{opt_level}} must be 0..5, got {opt_level}", params=["opt_level"])
    if workspace_gb is not None and workspace_gb <= 0:
        raise ConfigError(f"{{workspace_gb}} must be positive (GiB), got {workspace_gb}", params=["workspace_gb"])
    if output_names is not None:
        output_names = list(output_names)
        if not output_names or len(set(output_names)) != len(output_names):
            raise ConfigError(f"output_names must be unique and non-empty, got {output_names}")
        if output_name not in ("logits", output_names[0]):
            raise ConfigError(f"output_name {output_name!r} is not the first of output_names {output_names}")
        output_name = output_names[0]
    if output_shapes is not None:
        if len(output_shapes) != len(output_names or [output_name]):
            raise ConfigError(f"{len(output_shapes)} output_shapes for {len(output_names or [output_name])} output(s)")
        output_shape = output_shape or list(output_shapes[0])
    trt = trt or require_tensorrt()
    major = trt_major(trt)
    if major < MIN_TRT_MAJOR:
        raise MissingDependencyError(
            f'TensorRT {trt.__version__} is too old; acmix-deploy needs TensorRT >= {MIN_TRT_MAJOR}: pip install "acmix-deploy[trt]"'
        )
    if typing == "weak" and major >= 11:
        raise ConfigError(
            f"TensorRT {trt.__version__} builds strongly typed networks only; precision comes from the ONNX graph "
            "({precision}), so weak typing ({typing}) does not apply", params=["precision", "typing"]
        )
    gpu = current_gpu()
    if gpu is None:
        raise MissingDependencyError("TensorRT needs a CUDA GPU, and torch sees none on this machine")
    onnx_path, path = Path(onnx_path), Path(path)
    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(str(trt.__version__), gpu)
    if cache_path.is_dir():
        raise ConfigError(f"{{timing_cache}} {cache_path} is a directory; give a file name", params=["timing_cache"])
    try:
        cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    except OSError as exc:
        raise ConfigError(f"cannot read the timing cache {cache_path}: {exc}") from None
    workspace = int(workspace_gb * (1 << 30)) if workspace_gb else None

    t0 = time.perf_counter()
    builder = trt.Builder(trt_logger(trt))
    network, config, _parser = configure_builder(
        trt, builder, onnx_path.read_bytes(), input_name, input_size, profile, precision, typing, workspace,
        opt_level, cache_bytes,
    )
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError("TensorRT could not build an engine from the graph (see TensorRT's log above)")
    build_seconds = time.perf_counter() - t0
    plan_bytes = bytes(plan)

    sidecar = EngineSidecar(
        tensorrt_version=str(trt.__version__), gpu_name=gpu.name, compute_capability=gpu.compute_capability,
        precision=precision, typing=typing, input_name=input_name, output_name=output_name,
        input_size=list(input_size), output_shape=list(output_shape) if output_shape else None,
        output_names=output_names or [output_name],
        output_shapes=[list(sh) for sh in output_shapes] if output_shapes else ([list(output_shape)] if output_shape else None),
        profiles=[dict(zip(("min", "opt", "max"), map(list, profile.shapes(input_size))))],
        onnx_sha256=sha256_file(onnx_path), build_seconds=round(build_seconds, 3), workspace_bytes=workspace,
        builder_optimization_level=opt_level, package_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), source=dict(source or {}),
        valid_hw=dict(valid_hw) if valid_hw else None,
    )
    sidecar.engine_sha256 = hashlib.sha256(plan_bytes).hexdigest()

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(plan_bytes)
        if validate is not None:
            validate(Path(tmp), sidecar)

    sidecar_path(path).unlink(missing_ok=True)  # never leave an old sidecar describing a new plan
    atomic_write(path, write, suffix=path.suffix or ".engine")
    write_sidecar(path, sidecar)
    serialized_cache = config.get_timing_cache()
    if serialized_cache is not None:
        data = bytes(serialized_cache.serialize())
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cache_path, lambda tmp: Path(tmp).write_bytes(data))
        except (OSError, AcmixDeployError) as exc:  # the engine is built: a cache we cannot keep is not fatal
            import warnings

            warnings.warn(f"could not save the TensorRT timing cache to {cache_path}: {exc}")
            cache_path = None
    return EngineBuild(path, sidecar, time.perf_counter() - t0, path.stat().st_size, cache_path)
