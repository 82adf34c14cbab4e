"""Triton Inference Server model repositories: ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/1/model.*``.

Two kinds of model directory:

* ONNX (platform ``onnxruntime_onnx``): ``1/model.onnx``, exported from the
  deploy form with :func:`acmix_deploy.exporters.export_onnx` and validated
  against torch before anything is written; ``max_batch_size`` is the
  ``max_batch`` option (the graph's batch axis is dynamic), instances run on
  the CPU (``KIND_CPU``) or the GPU (``KIND_GPU``).
* TensorRT (platform ``tensorrt_plan``): the engine(s) copied to ``1/``,
  ``max_batch_size`` taken from the optimization profiles in the engines' JSON
  sidecars (the largest batch a profile accepts, capped by ``max_batch``),
  ``KIND_GPU``.  Engines only run on the GPU architecture they were built for,
  so several engines (one per compute capability) become
  ``model.sm<CC>.plan`` files selected by ``cc_model_filenames``.

A model with several outputs (a detector's heads) gets one ``output`` entry
per tensor, with its name, dims and data type, in the model's order
(:mod:`acmix_deploy.outputs`); no Python-backend code is written, the ONNX and
TensorRT backends serve every graph output as it is.

The config text is written by hand (Triton reads protobuf text format) and
checked in the tests by parsing it with Triton's own ``model_config.proto``
(shipped with ``tritonclient``).  The model directory is assembled in a
temporary directory inside ``REPO`` and renamed into place, so Triton never
sees a half-written model; an existing model directory is replaced only with
``force=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .._version import __version__
from ..artifacts.onnx import INPUT_NAME, read_onnx_metadata, spatial_rule
from ..artifacts.spatial import SpatialRule
from ..artifacts.tensorrt import EngineSidecar, read_sidecar
from ..errors import AcmixDeployError, ConfigError, EquivalenceError, ExportError
from ..pipeline import prepare_deploy
from ..util import normalize_imgsz, random_inputs, require, sha256_file
from .onnx import cpu_target, export_onnx
from .options import ExportResult, Verify

__all__ = ["TritonModelConfig", "TritonOutput", "TritonRepoExport", "check_model_name", "engine_model_config",
           "build_triton_repository", "export_triton_repository", "find_engines", "model_config_text", "write_model_dir", "write_onnx_file_repository",
           "write_engine_repository", "write_onnx_repository"]

PLAN_SUFFIXES = (".engine", ".plan")

# ONNX TensorProto element types -> Triton's data_type names.
_ONNX_TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32",
                      7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64"}


@dataclass(frozen=True)
class TritonOutput:
    """One ``output`` entry of a config: dims without the batch axis when max_batch_size > 0."""

    name: str
    dims: tuple[int, ...]
    data_type: str = "TYPE_FP32"


@dataclass
class TritonModelConfig:
    name: str
    platform: str  # onnxruntime_onnx | tensorrt_plan
    input_name: str
    output_name: str
    input_dims: tuple[int, ...]  # without the batch axis when max_batch_size > 0
    output_dims: tuple[int, ...]
    max_batch_size: int  # 0: no batch axis handled by Triton (dims are the full shapes)
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 1000
    instance_kind: str = "KIND_CPU"
    instance_count: int = 1
    cc_model_filenames: dict[str, str] = field(default_factory=dict)
    default_model_filename: str | None = None
    # Every output of a model with several; empty: the one output (output_name, output_dims, FP32).
    outputs: tuple[TritonOutput, ...] = ()
    # Model parameters (string values): for inputs with dynamic height and width, the shape ranges
    # (acmix_deploy.input_shapes) and the valid-size rule (acmix_deploy.valid_hw).
    parameters: dict[str, str] = field(default_factory=dict)

    @property
    def all_outputs(self) -> tuple[TritonOutput, ...]:
        return tuple(self.outputs) or (TritonOutput(self.output_name, tuple(self.output_dims)),)


@dataclass
class TritonRepoExport:
    repo: Path
    model_dir: Path
    config: TritonModelConfig
    config_text: str
    files: list[Path]
    seconds: float
    onnx: object | None = None  # the OnnxExport for ONNX repositories
    validation_rel_error: float | None = None  # ONNX vs torch, with the built-in check


def _dims(dims) -> str:
    return "[ " + ", ".join(str(int(d)) for d in dims) + " ]"


def check_model_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith(".") or '"' in name:
        raise ConfigError(f"model name must be a plain directory name, got {name!r}")


def model_config_text(cfg: TritonModelConfig) -> str:
    """``config.pbtxt`` (protobuf text format of ``inference.ModelConfig``)."""
    check_model_name(cfg.name)
    if cfg.max_batch_size < 0:
        raise ConfigError(f"max_batch_size must not be negative, got {cfg.max_batch_size}")
    if cfg.instance_kind not in ("KIND_CPU", "KIND_GPU"):
        raise ConfigError(f"instance kind must be KIND_CPU or KIND_GPU, got {cfg.instance_kind}")
    if cfg.instance_count < 1:
        raise ConfigError(f"instance count must be positive, got {cfg.instance_count}")
    lines = [f'name: "{cfg.name}"', f'platform: "{cfg.platform}"', f"max_batch_size: {cfg.max_batch_size}"]
    if cfg.default_model_filename:
        lines.append(f'default_model_filename: "{cfg.default_model_filename}"')
    outputs = cfg.all_outputs
    names = [o.name for o in outputs]
    if len(set(names)) != len(names) or not all(names) or any('"' in n for n in names):
        raise ConfigError(f"output names must be unique, non-empty and free of quotes, got {names}")
    bad_types = sorted({o.data_type for o in outputs} - set(_ONNX_TRITON_TYPES.values()))
    if bad_types:
        raise ConfigError(f"unsupported Triton data type(s) {', '.join(bad_types)}")
    for section, tensors in (("input", [TritonOutput(cfg.input_name, tuple(cfg.input_dims))]), ("output", outputs)):
        lines.append(f"{section} [")
        for i, t in enumerate(tensors):
            lines += ["  {", f'    name: "{t.name}"', f"    data_type: {t.data_type}", f"    dims: {_dims(t.dims)}",
                      "  }" + ("," if i < len(tensors) - 1 else "")]
        lines.append("]")
    if cfg.max_batch_size > 0:
        lines.append("dynamic_batching {")
        preferred = [b for b in cfg.preferred_batch_sizes if 1 <= b <= cfg.max_batch_size]
        if preferred:
            lines.append(f"  preferred_batch_size: {_dims(sorted(set(preferred)))}")
        lines += [f"  max_queue_delay_microseconds: {int(cfg.max_queue_delay_us)}", "}"]
    lines += ["instance_group [", "  {", f"    count: {cfg.instance_count}", f"    kind: {cfg.instance_kind}", "  }", "]"]
    for key, value in sorted(cfg.parameters.items()):
        if '"' in key + value or "\\" in key + value:
            raise ConfigError(f"config parameter {key!r} = {value!r}: quotes and backslashes are not written")
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    if cfg.cc_model_filenames:
        lines.append("cc_model_filenames [")
        entries = [f'  {{ key: "{cc}" value: "{fn}" }}' for cc, fn in sorted(cfg.cc_model_filenames.items())]
        lines.append(",\n".join(entries))
        lines.append("]")
    return "\n".join(lines) + "\n"


def write_model_dir(repo: str | os.PathLike, name: str, config_text: str | Callable[[], str],
                    fill_version_dir: Callable[[Path], list[Path]], force: bool = False) -> tuple[Path, list[Path]]:
    """Write ``REPO/NAME`` atomically: ``fill_version_dir(tmp/1)`` writes the model files, then one rename.

    ``config_text`` may be a callable, called after the model files exist (for
    a config that depends on the exported graph).
    ``REPO`` is created when missing (its parent must exist).  An existing
    ``REPO/NAME`` is refused unless ``force``; with ``force`` it is swapped out
    only after the new directory is complete.
    """
    repo = Path(repo)
    if not repo.parent.exists():
        raise ConfigError(f"parent directory {repo.parent} of the repository does not exist")
    if repo.exists() and not repo.is_dir():
        raise ConfigError(f"repository path {repo} exists and is not a directory")
    repo.mkdir(exist_ok=True)
    final = repo / name
    if final.exists() and not force:
        raise ConfigError(f"model directory {final} already exists; pass {{force}} to replace it", params=["force"])
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=repo))
    try:
        version_dir = tmp / "1"
        version_dir.mkdir()
        files = fill_version_dir(version_dir)
        (tmp / "config.pbtxt").write_text(config_text() if callable(config_text) else config_text)
        os.chmod(tmp, 0o755)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=repo))
            os.replace(final, old / name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, [final / "config.pbtxt", *(final / "1" / f.name for f in files)]


def write_onnx_repository(
    model, repo: str | os.PathLike, name: str, input_size: tuple[int, int, int], max_batch: int = 8,
    device: str = "cpu", instances: int = 1, max_queue_delay_us: int = 1000, opset: int = 17,
    simplify: bool = True, metadata: dict | None = None, validate: Callable[[Path], None] | None = None,
    force: bool = False, output_names: list[str] | None = None, cpu_isa: str = "auto", verify: Verify | None = None,
) -> TritonRepoExport:
    """Export ``model`` (deploy form) to ``REPO/NAME/1/model.onnx`` with a dynamic batch axis, plus its config.

    ``validate(tmp_onnx)`` runs on the exported file before it is moved into
    place (the same hook as :func:`export_onnx`); without it, ``verify`` (see
    :class:`~acmix_deploy.exporters.options.Verify`) compares the ONNX model with ``model`` in torch
    (relative error <= 1e-4 at batches 1 and 2, every output).  One of the two is required.
    ``output_names`` names the outputs of a model with several (see :func:`export_onnx`); the config
    lists every output of the exported graph.  CPU instances get the graph shaped for ``cpu_isa`` (``auto``:
    this machine's level; name the Triton machine's when it differs), GPU instances the compact one.
    """
    check_model_name(name)
    if max_batch < 1:
        raise ConfigError(f"{{max_batch}} must be positive for a dynamic-batch ONNX model, got {max_batch}",
                          params=["max_batch"])
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"{{device}} must be cpu or cuda, got {device!r}", params=["device"])
    t0 = time.perf_counter()
    checked: dict = {}
    if validate is None:
        if verify is None:
            raise ConfigError("write_onnx_repository needs validate or verify, the check the ONNX model passes "
                              "before it is written (acmix_deploy.verify.verify_artifact compares it with torch)")
        validate = _torch_check(verify, model, input_size, checked)
    holder: dict = {}

    def fill(version_dir: Path) -> list[Path]:
        onnx_path = version_dir / "model.onnx"
        holder["onnx"] = export_onnx(model, onnx_path, input_size, batch=1, dynamic=True, opset=opset,
                                     simplify=simplify, metadata=metadata, validate=validate,
                                     cpu_isa=cpu_target(device, cpu_isa), output_names=output_names)
        outputs = _onnx_outputs(onnx_path, batched=True)
        holder["cfg"] = cfg = TritonModelConfig(
            name=name, platform="onnxruntime_onnx", input_name=INPUT_NAME, output_name=outputs[0].name,
            input_dims=tuple(input_size), output_dims=outputs[0].dims, max_batch_size=max_batch,
            preferred_batch_sizes=(max_batch,), max_queue_delay_us=max_queue_delay_us,
            instance_kind="KIND_GPU" if device == "cuda" else "KIND_CPU", instance_count=instances,
            outputs=outputs if len(outputs) > 1 or outputs[0].data_type != "TYPE_FP32" else (),
        )
        holder["text"] = model_config_text(cfg)
        return [onnx_path]

    model_dir, files = write_model_dir(repo, name, lambda: holder["text"], fill, force=force)
    return TritonRepoExport(Path(repo), model_dir, holder["cfg"], holder["text"], files, time.perf_counter() - t0,
                            onnx=holder["onnx"], validation_rel_error=checked.get("rel"))


def write_onnx_file_repository(
    onnx_path: str | os.PathLike, repo: str | os.PathLike, name: str, max_batch: int = 8, device: str = "cpu",
    instances: int = 1, max_queue_delay_us: int = 1000, force: bool = False,
) -> TritonRepoExport:
    """A model directory around an ONNX file exported before (copied as ``1/model.onnx``).

    Names and shapes are read from the graph.  A dynamic batch axis gives
    ``max_batch_size = max_batch`` and dynamic batching; a fixed one gives
    ``max_batch_size: 0`` and full-shape dims (Triton then never batches).
    The file must load in ONNX Runtime and have one input; every output is listed.
    """
    check_model_name(name)
    if max_batch < 1:
        raise ConfigError(f"{{max_batch}} must be positive, got {max_batch}", params=["max_batch"])
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"{{device}} must be cpu or cuda, got {device!r}", params=["device"])
    onnx = require("onnx", "onnx")
    onnx_path = Path(onnx_path)
    t0 = time.perf_counter()
    _check_loads(onnx_path)
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or not graph.output:
        raise ConfigError(f"{onnx_path.name} has {len(inputs)} inputs and {len(graph.output)} outputs; "
                          "one input and at least one output are needed")

    in_shape = _shape(inputs[0])
    dynamic = in_shape[0] == -1
    parameters = {}
    rule = spatial_rule(read_onnx_metadata(onnx_path))
    if rule is not None:
        parameters["acmix_deploy.valid_hw"] = rule.describe()
    outputs = _graph_outputs(graph, batched=dynamic)
    if dynamic:
        unbatched = [o.name for o in graph.output if not _shape(o) or _shape(o)[0] != -1]
        if unbatched:
            raise ConfigError(f"{onnx_path.name}: output(s) {', '.join(unbatched)} have no dynamic batch axis while the "
                              "input has one; Triton batches every output along axis 0 (re-export the model)")
    cfg = TritonModelConfig(
        name=name, platform="onnxruntime_onnx", input_name=inputs[0].name, output_name=outputs[0].name,
        input_dims=tuple(in_shape[1:] if dynamic else in_shape), output_dims=outputs[0].dims,
        max_batch_size=max_batch if dynamic else 0, preferred_batch_sizes=(max_batch,),
        max_queue_delay_us=max_queue_delay_us, instance_kind="KIND_GPU" if device == "cuda" else "KIND_CPU",
        instance_count=instances, outputs=outputs if len(outputs) > 1 or outputs[0].data_type != "TYPE_FP32" else (),
        parameters=parameters,
    )
    text = model_config_text(cfg)

    def fill(version_dir: Path) -> list[Path]:
        shutil.copyfile(onnx_path, version_dir / "model.onnx")
        return [version_dir / "model.onnx"]

    model_dir, files = write_model_dir(repo, name, text, fill, force=force)
    return TritonRepoExport(Path(repo), model_dir, cfg, text, files, time.perf_counter() - t0)


def _shape(value_info) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def _graph_outputs(graph, batched: bool) -> tuple[TritonOutput, ...]:
    """Every graph output as a config entry (dims without the batch axis when ``batched``)."""
    outputs = []
    for o in graph.output:
        elem = o.type.tensor_type.elem_type
        if elem not in _ONNX_TRITON_TYPES:
            raise ConfigError(f"output {o.name} has ONNX element type {elem}, which Triton configs cannot describe")
        dims = _shape(o)
        outputs.append(TritonOutput(o.name, tuple(dims[1:] if batched else dims), _ONNX_TRITON_TYPES[elem]))
    return tuple(outputs)


def _onnx_outputs(path: Path, batched: bool = True) -> tuple[TritonOutput, ...]:
    onnx = require("onnx", "onnx")
    return _graph_outputs(onnx.load(str(path), load_external_data=False).graph, batched)


def _onnx_output_dims(path: Path) -> tuple[int, ...]:
    """The first output's dims without the batch axis (the only output of a single-output graph)."""
    return _onnx_outputs(path)[0].dims


def _check_loads(onnx_path: Path) -> None:
    """Refuse, with one clear line, a file ONNX Runtime cannot load (Triton's ONNX backend is ONNX Runtime)."""
    ort = require("onnxruntime", "onnx")
    if not onnx_path.is_file():
        raise AcmixDeployError(f"ONNX model {onnx_path} does not exist")
    try:
        ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AcmixDeployError(f"ONNX Runtime cannot load {onnx_path}: {first}") from None


def _torch_check(verify: Verify, model, input_size, record: dict, tol: float = 1e-4) -> Callable[[Path], None]:
    """``validate(tmp)``: the ONNX model against ``model`` in torch at batches 1 and 2 (every output)."""

    def check(tmp: Path) -> None:
        rows = verify("onnx", tmp, model, random_inputs(input_size, (1, 2), 0), "cpu")
        worst_row = max(rows, key=lambda r: r.diff.rel if r.diff.rel == r.diff.rel else float("inf"))
        worst = record["rel"] = worst_row.diff.rel
        if not worst <= tol:
            which = f" (output {worst_row.output})" if len({r.output for r in rows}) > 1 else ""
            raise EquivalenceError(f"the exported ONNX model differs from torch by {worst:.3g} (relative){which}, "
                                   f"above {tol:g}")

    return check


def export_triton_repository(
    src: str | os.PathLike, repo: str | os.PathLike | None = None, engine: str = "onnx", name: str | None = None,
    arch: str | None = None, imgsz: int | tuple[int, int] | None = None, max_batch: int | None = None,
    device: str = "cpu", instances: int = 1, max_queue_delay_us: int = 1000, opset: int = 17, simplify: bool = True,
    force: bool = False, output_names: list[str] | None = None, model_def: str | None = None,
    model_args: str | dict | None = None, cpu_isa: str = "auto", verify: Verify | None = None,
) -> TritonRepoExport:
    """``acmix-deploy export --format triton``: one model directory in ``repo`` from ``src``.

    ``engine="onnx"``: ``src`` is an ONNX file (used as it is) or a checkpoint (folded, exported and
    validated against torch); ``max_batch`` defaults to 8.  ``engine="trt"``: ``src`` is an engine
    or a folder of engines with their sidecars; ``max_batch`` defaults to the profiles'.
    ``repo`` defaults to ``model_repository`` beside ``src``, ``name`` to the file's stem.
    ``imgsz`` is an int (a square) or ``(height, width)``; ``output_names`` names the outputs of a
    checkpoint's model with several (an ONNX file or engines keep the names they have).  ``verify`` checks
    an ONNX model exported here against torch (required then; :func:`acmix_deploy.export_model` with
    ``fmt="triton"`` passes it).
    """
    src = Path(src)
    imgsz = normalize_imgsz(imgsz)
    if max_batch is not None and max_batch < 1:
        raise ConfigError(f"{{max_batch}} must be positive, got {max_batch}", params=["max_batch"])
    if engine not in ("onnx", "trt"):
        raise ConfigError(f"{{engine}} must be onnx or trt, got {engine!r}", params=["engine"])
    if instances < 1:
        raise ConfigError(f"{{instances}} must be positive, got {instances}", params=["instances"])
    if max_queue_delay_us < 0:
        raise ConfigError(f"{{max_queue_delay_us}} must not be negative, got {max_queue_delay_us}",
                          params=["max_queue_delay_us"])
    if not src.exists():
        raise AcmixDeployError(f"{src} does not exist")
    repo = Path(repo) if repo is not None else src.resolve().parent / "model_repository"
    name = name or (src.name if src.is_dir() else src.name.split(".")[0])
    check_model_name(name)
    common = dict(instances=instances, max_queue_delay_us=max_queue_delay_us, force=force)
    if output_names is not None and (engine == "trt" or src.suffix == ".onnx"):
        raise ConfigError("{output_names} names the outputs of a checkpoint being exported; an ONNX file or "
                          "engine keeps the names it was exported with", params=["output_names"])
    if engine == "trt":
        return write_engine_repository(src, repo, name, max_batch=max_batch, **common)
    onnx_max_batch = 8 if max_batch is None else max_batch
    if src.suffix == ".onnx":  # an ONNX file exported before: used as it is
        return write_onnx_file_repository(src, repo, name, max_batch=onnx_max_batch, device=device, **common)
    if device not in ("cpu", "cuda"):  # the GPU is the Triton machine's, not necessarily this one's
        raise ConfigError(f"{{device}} must be cpu or cuda, got {device!r}", params=["device"])
    if verify is None:
        raise ConfigError("exporting a checkpoint into a Triton repository needs verify, the check against torch "
                          "(call acmix_deploy.export_model with fmt='triton')")
    if (repo / name).exists() and not force:  # before the fold and export, which take a while
        raise AcmixDeployError(f"model directory {repo / name} already exists; pass {{force}} to replace it",
                               params=["force"])
    prep = prepare_deploy(src, arch, imgsz, model_def=model_def, model_args=model_args)
    meta = {"arch": prep.loaded.arch, "arch_args": prep.loaded.arch_args, "source": src.name,
            "source_sha256": sha256_file(src), "package_version": __version__}
    return write_onnx_repository(prep.deploy, repo, name, prep.input_size, max_batch=onnx_max_batch, device=device,
                                 opset=opset, simplify=simplify, metadata=meta, output_names=output_names,
                                 cpu_isa=cpu_isa, verify=verify, **common)


def build_triton_repository(src: Path, opts, say: Callable[[str], None], verify: Verify) -> ExportResult:
    """The ``triton`` row of the format table: :func:`export_triton_repository` driven by ``ExportOptions``.

    ``opts.output`` is the repository folder, ``opts.model_name`` the model's name; the result's ``artifact``
    is the :class:`TritonRepoExport`, ``path`` the model directory, ``rows`` empty (the repository's own
    check records ``validation_rel_error``).
    """
    names = opts.output_names
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    res = export_triton_repository(src, opts.output, engine=opts.engine, name=opts.model_name, arch=opts.arch,
                                   imgsz=opts.imgsz, max_batch=opts.max_batch, device=opts.device,
                                   instances=opts.instances, max_queue_delay_us=opts.max_queue_delay_us,
                                   opset=opts.opset, simplify=opts.simplify, force=opts.force, output_names=names,
                                   model_def=opts.model_def, model_args=opts.model_args, cpu_isa=opts.cpu_isa,
                                   verify=verify)
    say(f"wrote Triton model {res.config.name!r} in {res.repo} ({res.seconds:.1f} s)")
    dims = tuple(res.config.input_dims)
    return ExportResult("triton", res.model_dir, res, [], "triton repository", opts, opts.arch or "",
                        dims[-3:] if len(dims) >= 3 else dims, res.onnx)


def find_engines(path: str | os.PathLike) -> list[Path]:
    """``path`` itself (an engine file) or every ``*.engine`` / ``*.plan`` in a directory, sorted."""
    path = Path(path)
    if path.is_dir():
        engines = sorted(p for p in path.iterdir() if p.suffix in PLAN_SUFFIXES and p.is_file())
        if not engines:
            raise ConfigError(f"no .engine or .plan files in {path}")
        return engines
    if not path.is_file():
        raise ConfigError(f"engine {path} does not exist")
    if path.suffix not in PLAN_SUFFIXES:
        raise ConfigError(f"{path.name} is not a TensorRT engine (.engine or .plan)")
    return [path]


def _engine_outputs(engine: Path, meta: EngineSidecar) -> tuple[TritonOutput, ...]:
    """Every output of an engine, dims without batch: from the sidecar (``output_shapes``, or ``output_shape``
    of a single-output engine), else from the source ONNX found next to the engine."""
    names = meta.all_output_names

    def dims_of(shape, what: str) -> tuple[int, ...]:
        if not isinstance(shape, list) or len(shape) < 1 or not all(isinstance(d, int) for d in shape[1:]):
            raise ExportError(f"{engine.name}: sidecar {what} must be a list [N, ...] of ints, got {shape!r}")
        return tuple(shape[1:])

    shapes = meta.output_shapes
    if shapes is not None:  # the full shapes, batch axis first (any value there)
        if not isinstance(shapes, list) or len(shapes) != len(names):
            raise ExportError(f"{engine.name}: sidecar output_shapes must give one shape per output {names}, "
                              f"got {shapes!r}")
        return tuple(TritonOutput(n, dims_of(sh, "output_shapes")) for n, sh in zip(names, shapes))
    if meta.output_shape is not None and len(names) == 1:
        shape = meta.output_shape
        if not isinstance(shape, list) or len(shape) < 2:
            raise ExportError(f"{engine.name}: sidecar output_shape must be a list [N, ...] of ints, got {shape!r}")
        return (TritonOutput(names[0], dims_of(shape, "output_shape")),)
    digest = meta.onnx_sha256
    if digest:
        for candidate in sorted(engine.parent.glob("*.onnx")):
            if sha256_file(candidate) == digest:
                found = _onnx_outputs(candidate)
                if [o.name for o in found] != names:
                    raise ExportError(f"{engine.name}: its source {candidate.name} has outputs "
                                      f"{[o.name for o in found]}, its sidecar {names}")
                return found
    raise ExportError(
        f"cannot tell the output shape of {engine.name}: its sidecar has no 'output_shape', and no ONNX file with its "
        f"onnx_sha256 lies next to it; put the source ONNX model in {engine.parent}"
    )


def _engine_output_dims(engine: Path, meta: EngineSidecar) -> tuple[int, ...]:
    """The first output's dims without the batch axis (see :func:`_engine_outputs`)."""
    return _engine_outputs(engine, meta)[0].dims


def engine_model_config(engines: list[Path], name: str, max_batch: int | None = None, instances: int = 1,
                        max_queue_delay_us: int = 1000) -> tuple[TritonModelConfig, dict[Path, str]]:
    """The config for one or more engines (one per compute capability) and the file name each gets in ``1/``."""
    metas = {e: read_sidecar(e) for e in engines}
    first_engine, first = engines[0], metas[engines[0]]
    for e, m in metas.items():
        for key, mine, theirs in (("input_name", m.input_name, first.input_name),
                                  ("output_names", m.all_output_names, first.all_output_names)):
            if mine != theirs:
                raise ConfigError(f"{e.name} has {key} {mine!r} but {first_engine.name} has {theirs!r}; "
                                  "one model directory holds one model")
    profiles = [p for m in metas.values() for p in m.profiles]
    chw_min = [min(p["min"][i] for p in profiles) for i in range(1, 4)]
    chw_max = [max(p["max"][i] for p in profiles) for i in range(1, 4)]
    input_dims = tuple(lo if lo == hi else -1 for lo, hi in zip(chw_min, chw_max))
    # Triton sends any batch from 1 to max_batch_size: every engine must cover 1..its max.
    engine_max = []
    for e, m in metas.items():
        lo = m.min_batch
        if lo > 1:
            raise ConfigError(f"{e.name}: its optimization profiles start at batch {lo}; Triton needs batch 1 to work")
        engine_max.append(m.max_batch)
    max_batch_size = min(engine_max)
    if max_batch is not None:
        if max_batch < 1:
            raise ConfigError(f"{{max_batch}} must be positive, got {max_batch}", params=["max_batch"])
        max_batch_size = min(max_batch_size, max_batch)
    engine_outputs = {_engine_outputs(e, m) for e, m in metas.items()}
    if len(engine_outputs) != 1:
        shapes = sorted({tuple(o.dims for o in outs) for outs in engine_outputs})
        raise ConfigError(f"the engines disagree on the output shape: {shapes[0] if len(shapes) == 1 else shapes}")
    outputs = engine_outputs.pop()
    opt = sorted({p["opt"][0] for p in profiles if p["opt"][0] <= max_batch_size} | {max_batch_size})

    filenames: dict[Path, str] = {}
    cc_map: dict[str, str] = {}
    if len(engines) == 1:
        filenames[first_engine] = "model.plan"
    else:
        for e, m in metas.items():
            cc = str(m.compute_capability or "")
            if not cc or not all(part.isdigit() for part in cc.split(".")):
                raise ConfigError(f"{e.name}: its sidecar has no compute_capability like '8.6'; "
                                  "several engines are told apart by it")
            if cc in cc_map:
                other = next(x for x, fn in filenames.items() if fn == cc_map[cc])
                raise ConfigError(f"{e.name} and {other.name} are both built for compute capability {cc}; keep one")
            filenames[e] = cc_map[cc] = f"model.sm{cc.replace('.', '')}.plan"
    parameters = {}
    if any(m.dynamic_hw for m in metas.values()):
        spell = "x".join
        parameters["acmix_deploy.input_shapes"] = "; ".join(
            f"{e.name}: " + " / ".join(spell(map(str, p[k])) for k in ("min", "opt", "max"))
            for e, m in metas.items() for p in m.profiles)
        rules = {SpatialRule.from_json(m.valid_hw).describe() for m in metas.values() if m.valid_hw}
        if rules:
            parameters["acmix_deploy.valid_hw"] = "; ".join(sorted(rules))
    cfg = TritonModelConfig(
        name=name, platform="tensorrt_plan", input_name=first.input_name, output_name=outputs[0].name,
        input_dims=input_dims, output_dims=outputs[0].dims, max_batch_size=max_batch_size,
        preferred_batch_sizes=tuple(opt), max_queue_delay_us=max_queue_delay_us, instance_kind="KIND_GPU",
        instance_count=instances, cc_model_filenames=cc_map,
        outputs=outputs if len(outputs) > 1 or outputs[0].data_type != "TYPE_FP32" else (), parameters=parameters,
    )
    return cfg, filenames


def write_engine_repository(engines: str | os.PathLike | list, repo: str | os.PathLike, name: str,
                            max_batch: int | None = None, instances: int = 1, max_queue_delay_us: int = 1000,
                            force: bool = False) -> TritonRepoExport:
    """A ``tensorrt_plan`` model directory from engine file(s) (or a directory of them) and their sidecars."""
    check_model_name(name)
    t0 = time.perf_counter()
    paths = find_engines(engines) if not isinstance(engines, list) else [p for e in engines for p in find_engines(e)]
    cfg, filenames = engine_model_config(paths, name, max_batch, instances, max_queue_delay_us)
    text = model_config_text(cfg)

    def fill(version_dir: Path) -> list[Path]:
        out = []
        for src, fn in filenames.items():
            shutil.copyfile(src, version_dir / fn)
            out.append(version_dir / fn)
        (version_dir / "engines.json").write_text(json.dumps(
            {fn: _engine_record(src) for src, fn in filenames.items()}, indent=2))
        return out

    model_dir, files = write_model_dir(repo, name, text, fill, force=force)
    return TritonRepoExport(Path(repo), model_dir, cfg, text, files, time.perf_counter() - t0)


def _engine_record(engine: Path) -> dict:
    """What ``1/engines.json`` says about one plan: its sidecar, ``source`` the engine file it was copied from
    and ``built_from`` the sidecar's own ``source`` (the checkpoint the engine was built from)."""
    record = asdict(read_sidecar(engine))
    record["built_from"] = record.pop("source")
    return {**record, "source": engine.name}
