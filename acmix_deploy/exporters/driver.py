"""One export run: validate the request, fold the checkpoint, write the artifact, prove it.

:func:`export_model` is what ``acmix-deploy export`` calls; Python users call
it the same way.  Every argument is checked before any work starts (a wrong
option costs nothing); each step reports its time and output size through
``log``; every file is written atomically after it passed its comparison
against the torch deploy form, so a failed export leaves no broken file behind.
A TensorRT export writes two artifacts: the validated ONNX graph
(``X.onnx``, kept, also when the engine build then fails) and the engine
``X.engine`` with its sidecar.  A model that returns several tensors is
exported with all of them (named by :mod:`acmix_deploy.outputs`, or
``output_names``), and every output is compared: a mismatch in any one fails.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import AcmixDeployError, ConfigError, EquivalenceError

__all__ = ["ExportOptions", "ExportResult", "build_aoti", "build_engine_file", "build_onnx", "export_model",
           "cpu_target_for", "output_path"]

Log = Callable[[str], None]


@dataclass
class ExportOptions:
    fmt: str = "onnx"
    output: Path | None = None
    arch: str | None = None
    model_def: str | None = None  # a user's model: FILE.py:FACTORY or package.module:FACTORY
    model_args: str | dict | None = None  # its factory's keyword arguments (JSON object or dict)
    imgsz: int | tuple[int, int] | None = None  # a square, or (height, width)
    batch: int = 1
    dynamic: bool = True
    dynamic_hw: bool = False  # height and width dynamic too (ONNX, engine); validated at a second size
    opset: int = 17
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None  # [aoti 256, engine max(32, opt_batch)]
    # TensorRT optimization profile as whole shapes, trtexec's NxCxHxW (str) or 4 ints; with dynamic_hw the
    # height and width range (min and max needed).  Not given: the batch profile at --imgsz.
    min_shape: str | tuple[int, ...] | None = None
    opt_shape: str | tuple[int, ...] | None = None
    max_shape: str | tuple[int, ...] | None = None
    device: str = "cpu"
    simplify: bool = True
    fp16: bool = False
    int8: bool = False
    calib: str | None = None
    calib_limit: int = 256
    tol: float | None = None  # [1e-4; fp16 2e-2; int8 1.0]
    min_top1: float | None = None  # [fp16 0.99; int8 0.9]
    seed: int = 0
    workspace_gb: float | None = None
    timing_cache: Path | None = None
    opt_level: int = 3
    trt_typing: str = "strong"
    output_names: list[str] | None = None  # one name per output tensor [acmix_deploy.outputs' rule]
    # The CPU level an ONNX graph for ONNX Runtime on the CPU is shaped for (util.CPU_ISAS; auto: this machine's;
    # none: the plain graph, e.g. for OpenVINO).
    cpu_isa: str = "auto"
    # Triton model repositories (--format triton); ``output`` is then the repository folder.
    engine: str = "onnx"  # onnx: a checkpoint (exported) or a .onnx file; trt: engine file(s) + sidecars
    instances: int = 1
    model_name: str | None = None  # [the source file's stem]
    max_queue_delay_us: int = 1000
    force: bool = False  # replace an existing model directory

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "int8" if self.int8 else "fp32"


@dataclass
class ExportResult:
    fmt: str
    path: Path
    artifact: Any  # OnnxExport, AotiExport or EngineBuild
    rows: list  # compare.Comparison rows of the validation
    title: str
    options: ExportOptions
    arch: str
    input_size: tuple[int, int, int]
    onnx: Any = None  # the OnnxExport an engine was built from


def output_path(ckpt: Path, opts: ExportOptions) -> Path:
    from . import FORMATS

    tag = {"fp16": ".fp16", "int8": ".int8"}.get(opts.precision, "")
    return opts.output or ckpt.with_suffix(tag + FORMATS[opts.fmt].suffix)


def resolve_options(ckpt: Path, opts: ExportOptions):
    """Check every option against the others and fill the format's defaults; returns (opts, profile)."""
    from . import FORMATS
    from ..pipeline import check_output_path
    from ..util import check_device, normalize_imgsz, resolve_cpu_isa
    from .onnx import MAX_OPSET, MIN_OPSET
    from .tensorrt import engine_profiles, parse_shape

    if opts.fmt not in FORMATS:
        raise ConfigError(f"unknown format {opts.fmt!r}; available: {', '.join(FORMATS)}")
    # Which option applies to which format is validate_options' (the table's) decision; here: values.
    if opts.fp16 and opts.int8:
        raise ConfigError("choose one of --fp16 and --int8")
    if opts.calib and not opts.int8:
        raise ConfigError("--calib gives INT8 calibration data; add --int8")
    if opts.int8 and not opts.calib:
        raise ConfigError("--int8 needs calibration data: --calib digits, --calib data.npy or --calib images/")
    if opts.batch < 1:
        raise ConfigError(f"--batch must be positive, got {opts.batch}")
    if opts.dynamic_hw and not opts.dynamic:
        raise ConfigError("--dynamic-hw makes batch, height and width dynamic; it cannot be combined with --static")
    if not MIN_OPSET <= opts.opset <= MAX_OPSET:
        raise ConfigError(f"--opset {opts.opset} is not supported; use {MIN_OPSET}..{MAX_OPSET}")
    imgsz = normalize_imgsz(opts.imgsz)  # ConfigError for anything but a positive int or (height, width)
    output_names = None
    if opts.output_names is not None:
        given = opts.output_names.split(",") if isinstance(opts.output_names, str) else opts.output_names
        output_names = [str(n).strip() for n in given]
        if not output_names or not all(output_names) or len(set(output_names)) != len(output_names):
            raise ConfigError(f"--output-names must be unique non-empty names, got {list(opts.output_names)}")
    if opts.trt_typing not in ("strong", "weak"):
        raise ConfigError(f"TensorRT typing must be strong or weak, got {opts.trt_typing!r}")
    if opts.cpu_isa not in ("auto", "none"):
        resolve_cpu_isa(opts.cpu_isa)  # ConfigError for an unknown level
        if opts.device != "cpu" or (opts.fmt == "triton" and opts.engine != "onnx"):
            raise ConfigError(f"cpu_isa {opts.cpu_isa!r} shapes an ONNX graph for ONNX Runtime on the CPU; "
                              "a graph for a GPU keeps the compact groups (leave cpu_isa at auto)")
    tol = opts.tol if opts.tol is not None else 2e-2 if opts.fp16 else 1.0 if opts.int8 else 1e-4
    min_top1 = opts.min_top1 if opts.min_top1 is not None else 0.9 if opts.int8 else 0.99
    profile = None
    if opts.fmt == "engine":
        shapes = {k: parse_shape(v, f"--{k}-shape") for k, v in
                  (("min", opts.min_shape), ("opt", opts.opt_shape), ("max", opts.max_shape)) if v is not None}
        for key, value in shapes.items():  # a shape's batch counts as that batch option (checked with the others)
            given = getattr(opts, f"{key}_batch")
            if given is not None and given != value[0]:
                raise ConfigError(f"--{key}-shape says batch {value[0]} and --{key}-batch says {given}; "
                                  "give the batch once")
        if opts.dynamic_hw and not ("min" in shapes and "max" in shapes):
            raise ConfigError("--dynamic-hw engines need the spatial range: give --min-shape and --max-shape "
                              "(NxCxHxW, e.g. --min-shape 1x3x128x128 --max-shape 8x3x640x640)")
        if len(shapes) >= 2:  # the order of what was given, before the model is read (the rest: _prepare)
            for axis, label in enumerate(("batch", "channels", "height", "width")):
                values = [shapes[k][axis] for k in ("min", "opt", "max") if k in shapes]
                if values != sorted(values):
                    raise ConfigError(f"impossible shape range: the {label} must satisfy min <= opt <= max, got "
                                      + ", ".join(f"--{k}-shape {'x'.join(map(str, v))}" for k, v in shapes.items()))
        profile = engine_profiles(opts.batch, opts.dynamic, *(shapes[k][0] if k in shapes else getattr(opts, f"{k}_batch")
                                                               for k in ("min", "opt", "max")))
        max_batch = profile.max
        if opts.device != "cpu" and opts.device != "cuda":
            raise ConfigError(f"--device must be cpu or cuda, got {opts.device!r}")
        device = "cuda"  # an engine is built and run on the GPU
        if opts.output is not None and opts.output.suffix not in (".engine", ".plan"):
            raise ConfigError(f"a TensorRT engine is written to a .engine or .plan file, not {opts.output.name} "
                              "(the ONNX graph it is built from is kept beside it with the .onnx suffix)")
        if opts.workspace_gb is not None and opts.workspace_gb <= 0:
            raise ConfigError(f"--workspace must be positive (GiB), got {opts.workspace_gb}")
        if not 0 <= opts.opt_level <= 5:
            raise ConfigError(f"--opt-level must be 0..5, got {opts.opt_level}")
    else:
        max_batch = 256 if opts.max_batch is None else opts.max_batch
        if max_batch < 1:
            raise ConfigError(f"--max-batch must be positive, got {max_batch}")
        if opts.dynamic and not 1 <= opts.batch <= max_batch:
            raise ConfigError(f"--batch {opts.batch} must lie in 1..--max-batch ({max_batch})")
        device = opts.device
        check_device(device)
    if not ckpt.exists():
        raise AcmixDeployError(f"checkpoint {ckpt} does not exist")
    resolved = replace(opts, tol=tol, min_top1=min_top1, max_batch=max_batch, device=device, imgsz=imgsz,
                       output_names=output_names)
    out = output_path(ckpt, resolved)
    check_output_path(out, ckpt)
    return replace(resolved, output=out), profile


def cpu_target_for(opts: ExportOptions) -> str | None:
    """The ``cpu_isa`` the ONNX graph of this export is shaped for (:func:`.onnx.cpu_target`), or None.

    Only an ONNX file exported for the CPU; a TensorRT engine (and the ONNX file kept beside it) runs on the GPU.
    """
    from .onnx import cpu_target

    return cpu_target(opts.device, opts.cpu_isa) if opts.fmt == "onnx" else None


def export_model(ckpt: str | Path, opts: ExportOptions, log: Log | None = None) -> ExportResult:
    """Export the model in ``ckpt`` (folded first when it holds the training form) as ``opts`` say.

    The steps: check the options against the format table (:func:`~acmix_deploy.exporters.validate_options`),
    then the format's builder prepares the deploy form, builds the artifact, validates it against torch
    and writes it.  Raises :class:`~acmix_deploy.errors.EquivalenceError` when the artifact's
    outputs differ from torch beyond ``opts.tol`` (or top-1 agreement falls
    below ``opts.min_top1`` for fp16/int8); other bad input raises
    :class:`~acmix_deploy.errors.AcmixDeployError`.  Nothing is written then.
    """
    from . import FORMATS, validate_options

    validate_options(opts.fmt, opts)
    return FORMATS[opts.fmt].builder(Path(ckpt), opts, log or (lambda msg: None))


@dataclass
class _Prepared:
    """What every single-file builder shares: resolved options, the deploy form, the torch reference, inputs."""

    ckpt: Path
    opts: ExportOptions
    profile: Any  # TensorRT optimization profile (engine only)
    prep: Any  # pipeline.Prepared
    device: str
    reference: Any
    inputs: list
    calibration: Any
    meta: dict
    say: Log

    def validator(self, make_runner, title: str, rows: list):
        from ..compare import compare_runners

        opts, reduced = self.opts, self.opts.fp16 or self.opts.int8

        def validate(tmp: Path, *extra) -> None:
            rows.extend(compare_runners(self.reference, [make_runner(tmp, *extra)], self.inputs))
            # Every output of every batch is a row: the worst one decides (not max(): a NaN error must fail).
            worst_row = max(rows, key=lambda r: r.diff.rel if r.diff.rel == r.diff.rel else float("inf"))
            worst = worst_row.diff.rel
            agreement = min((r.diff.top1_agreement for r in rows if r.diff.top1_agreement is not None), default=1.0)
            several = len({r.output for r in rows}) > 1
            which = f"output {worst_row.output}" if several else "output"
            problem = None
            if not worst <= opts.tol:
                problem = f"the exported model's {which} differs by {worst:.3g} (relative), above --tol {opts.tol:g}"
            elif reduced and agreement < opts.min_top1:
                problem = f"top-1 agreement {agreement:.1%} is below --min-top1 {opts.min_top1:.1%}"
            if problem:
                exc = EquivalenceError(f"{title}: {problem}; nothing written")
                exc.rows, exc.title = list(rows), title  # for the caller's report
                raise exc
        return validate

    def onnx_step(self, path: Path, rows: list):
        from ..runtime import OrtRunner
        from .onnx import export_onnx

        opts = self.opts
        # TensorRT 10's weak typing takes a float32 graph and chooses float16 kernels itself (--fp16 is then a
        # builder flag); int8 always needs the Q/DQ graph (explicit quantization).
        fp16_graph = opts.fp16 and not (opts.fmt == "engine" and opts.trt_typing == "weak")
        res = export_onnx(self.prep.deploy, path, self.prep.input_size, batch=opts.batch, dynamic=opts.dynamic,
                          opset=opts.opset, simplify=opts.simplify, metadata=self.meta,
                          validate=self.validator(OrtRunner, "onnx vs torch (deploy form)", rows), fp16=fp16_graph,
                          int8_calibration=self.calibration,
                          calibration_cache=path.with_suffix(".calib.json") if opts.int8 else None,
                          cpu_isa=cpu_target_for(opts), output_names=opts.output_names,
                          for_tensorrt=opts.fmt == "engine", dynamic_hw=opts.dynamic_hw)
        if len(res.output_names) > 1:
            self.say(f"ONNX outputs: {', '.join(res.output_names)}")
        if res.spatial_rule is not None:
            sizes = sorted({tuple(x.shape[2:]) for x in self.inputs})
            self.say(f"dynamic height and width: {res.spatial_rule.describe()}; validated at "
                     f"{', '.join(f'{h}x{w}' for h, w in sizes)}")
        self.say(f"ONNX: {res.nodes} nodes, {opts.precision}, validated with ONNX Runtime; wrote {res.path} "
                 f"({res.size_bytes / 1e6:.1f} MB) in {res.seconds:.1f} s")
        return res

    def result(self, artifact, rows: list, title: str, onnx_res=None) -> ExportResult:
        return ExportResult(self.opts.fmt, self.opts.output, artifact, rows, title, self.opts, self.prep.loaded.arch,
                            self.prep.input_size, onnx_res)


def _prepare(ckpt: Path, opts: ExportOptions, say: Log) -> _Prepared:
    """Resolve the options, fold (or read) the deploy form, and make the reference runner and the inputs."""
    from .. import __version__
    from ..compare import random_inputs
    from ..pipeline import prepare_deploy
    from ..util import sha256_file
    from ..runtime import TorchRunner

    opts, profile = resolve_options(ckpt, opts)
    if opts.fmt == "engine":
        from .tensorrt import require_tensorrt

        require_tensorrt()  # before the fold: a machine without TensorRT or a GPU stops here, at no cost
    t0 = time.perf_counter()
    prep = prepare_deploy(ckpt, opts.arch, opts.imgsz, model_def=opts.model_def, model_args=opts.model_args)
    if prep.diff is not None:
        say(f"folded the training form in {prep.fold_seconds * 1000:.0f} ms "
            f"(relative error vs training form {prep.diff.rel:.2g})")
    else:
        say(f"read the deploy form in {time.perf_counter() - t0:.1f} s")
    device = opts.device if opts.fmt in ("aoti", "engine") else "cpu"
    reference = TorchRunner(prep.deploy, name="torch:deploy", device=device)
    top = opts.max_batch if opts.dynamic else opts.batch
    batches = (opts.batch,) if not opts.dynamic else tuple(sorted({opts.batch, min(opts.batch + 2, top)}))
    inputs = random_inputs(prep.input_size, batches, opts.seed)
    calibration = None
    if opts.int8:
        from .calibration import load_calibration

        cfg = prep.deploy.default_cfg
        calibration = load_calibration(opts.calib, prep.input_size, cfg.get("mean"), cfg.get("std"), opts.calib_limit)
        # A quantized model is judged on real data (up to 64 images): random noise says little about its
        # accuracy, and top-1 agreement needs more than a few samples.
        inputs = [calibration[: min(64, top)]]
    rule = None
    if opts.dynamic_hw:
        from .dynamic_hw import derive_spatial_rule

        # The graph is proved at a second size too: the smallest valid height (reflection reaches furthest
        # into the map there) and a different width (non-square), batch 1 and 2.
        rule = derive_spatial_rule(prep.deploy, prep.input_size)
        other = (prep.input_size[0], *rule.example(*prep.input_size[1:]))
        inputs += random_inputs(other, tuple(sorted({1, min(2, top)})), opts.seed + 1)
    if opts.fmt == "engine" and (opts.dynamic_hw or any(v is not None for v in (opts.min_shape, opts.opt_shape,
                                                                                 opts.max_shape))):
        from .tensorrt import check_profile_sizes, shape_profile

        profile = shape_profile(profile, prep.input_size, opts.min_shape, opts.opt_shape, opts.max_shape,
                                opts.dynamic_hw)
        if rule is not None:
            check_profile_sizes(profile, rule)
    meta = {
        "arch": prep.loaded.arch, "arch_args": prep.loaded.arch_args, "source": ckpt.name,
        "source_sha256": sha256_file(ckpt), "package_version": __version__,
        "mean": list(prep.deploy.default_cfg.get("mean", ())), "std": list(prep.deploy.default_cfg.get("std", ())),
    }
    return _Prepared(ckpt, opts, profile, prep, device, reference, inputs, calibration, meta, say)


def build_onnx(ckpt: Path, opts: ExportOptions, say: Log) -> ExportResult:
    """``--format onnx``: the validated ONNX graph of the deploy form."""
    ctx = _prepare(ckpt, opts, say)
    rows: list = []
    artifact = ctx.onnx_step(ctx.opts.output, rows)
    return ctx.result(artifact, rows, "onnx vs torch (deploy form)")


def build_aoti(ckpt: Path, opts: ExportOptions, say: Log) -> ExportResult:
    """``--format aoti``: an AOTInductor package, validated against torch on the export device."""
    from ..runtime import AotiRunner
    from .aoti import export_aoti

    ctx = _prepare(ckpt, opts, say)
    opts, rows, title = ctx.opts, [], "aoti vs torch (deploy form)"
    artifact = export_aoti(ctx.prep.deploy, opts.output, ctx.prep.input_size, batch=opts.batch, dynamic=opts.dynamic,
                           max_batch=opts.max_batch, device=ctx.device,
                           validate=ctx.validator(lambda p: AotiRunner(p, ctx.device), title, rows),
                           metadata={"arch": ctx.prep.loaded.arch, "source_sha256": ctx.meta["source_sha256"]},
                           output_names=opts.output_names)
    say(f"AOTInductor: wrote {artifact.path} ({artifact.size_bytes / 1e6:.1f} MB) in {artifact.seconds:.1f} s")
    return ctx.result(artifact, rows, title)


def build_engine_file(ckpt: Path, opts: ExportOptions, say: Log) -> ExportResult:
    """``--format engine``: the validated ONNX graph (kept beside it), then the TensorRT engine built from it."""
    from ..runtime.tensorrt import TrtRunner
    from ..artifacts.onnx import INPUT_NAME
    from .tensorrt import build_engine

    ctx = _prepare(ckpt, opts, say)
    opts, profile, out = ctx.opts, ctx.profile, ctx.opts.output
    onnx_rows: list = []
    onnx_res = ctx.onnx_step(out.with_suffix(".onnx"), onnx_rows)
    title = f"tensorrt ({opts.precision}) vs torch (deploy form)"
    rows: list = []
    batch_dim = -1 if profile.min != profile.max else profile.max
    shapes = [[batch_dim, *y.shape[1:]] for y in ctx.reference.infer_outputs(ctx.inputs[0][:1])]
    engine_ctx = ctx
    if getattr(profile, "dynamic_hw", False):
        from dataclasses import replace as replace_field

        from ..compare import random_inputs

        # The engine is validated inside its profile: the inputs that lie in it, and its smallest shape
        # (batch and size) and largest size (smallest batch).  Output axes that follow the size are -1.
        c = ctx.prep.input_size[0]
        corners = [random_inputs((c, *profile.min_shape[2:]), (profile.min,), opts.seed + 2)[0],
                   random_inputs((c, *profile.max_shape[2:]), (profile.min,), opts.seed + 3)[0]]
        engine_ctx = replace_field(ctx, inputs=[x for x in ctx.inputs if profile.covers(x.shape)] + corners)
        small = ctx.reference.infer_outputs(corners[0])
        shapes = [[d if d == e else -1 for d, e in zip(sh, [batch_dim, *y.shape[1:]])] for sh, y in zip(shapes, small)]
    artifact = build_engine(
        onnx_res.path, out, ctx.prep.input_size, profile, precision=opts.precision, typing=opts.trt_typing,
        workspace_gb=opts.workspace_gb, opt_level=opts.opt_level, timing_cache=opts.timing_cache,
        input_name=INPUT_NAME, output_name=onnx_res.output_names[0], output_names=onnx_res.output_names,
        source={"checkpoint": ckpt.name, "sha256": ctx.meta["source_sha256"], "arch": ctx.prep.loaded.arch},
        validate=engine_ctx.validator(lambda p, sidecar: TrtRunner(p, check=False, sidecar=sidecar), title, rows),
        output_shape=shapes[0], output_shapes=shapes,
        valid_hw=onnx_res.spatial_rule.to_json() if onnx_res.spatial_rule is not None else None,
    )
    say(f"TensorRT {artifact.sidecar.tensorrt_version} on {artifact.sidecar.gpu_name}: wrote {artifact.path} "
        f"({artifact.size_bytes / 1e6:.1f} MB) and its sidecar in {artifact.seconds:.1f} s; timing cache "
        f"{artifact.timing_cache}")
    return ctx.result(artifact, onnx_rows + rows, title, onnx_res)
