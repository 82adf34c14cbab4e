"""The single-file builders of the format table: fold the checkpoint, write the artifact, prove it.

Each builder (``builder(ckpt, opts, log, verify)``, called by
:func:`acmix_deploy.exporters.formats.export_model`) checks its options before any work starts (a wrong
option costs nothing), reports each step's time and output size through ``log``, and writes every file
atomically after it passed ``verify`` (:class:`~acmix_deploy.exporters.options.Verify`, given by the layer
above: the artifact run next to the torch deploy form), so a failed export leaves no broken file behind.
A TensorRT export writes two artifacts: the validated ONNX graph (``X.onnx``, kept, also when the engine
build then fails) and the engine ``X.engine`` with its sidecar.  A model that returns several tensors is
exported with all of them (named by :mod:`acmix_deploy.outputs`, or ``output_names``), and every output is
compared: a mismatch in any one fails.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..artifacts.onnx import INPUT_NAME
from ..errors import AcmixDeployError, ConfigError, EquivalenceError
from ..outputs import flatten_outputs
from ..pipeline import check_output_path, prepare_deploy
from ..util import check_device, normalize_imgsz, random_inputs, resolve_cpu_isa, sha256_file
from .aoti import AOTI_DYNAMIC_HW_PARAMS, AOTI_DYNAMIC_HW_REASON, export_aoti
from .calibration import load_calibration
from .onnx import check_graph_options, cpu_target, export_onnx
from .options import ExportOptions, ExportResult, Log, Verify
from .dynamic_hw import derive_spatial_rule
from .tensorrt import (build_engine, check_profile_sizes, engine_profiles, given_shapes, require_tensorrt,
                       shape_profile)

__all__ = ["build_aoti", "build_engine_file", "build_onnx", "cpu_target_for", "resolve_options"]


def resolve_options(ckpt: Path, opts: ExportOptions):
    """Check every option against the others and fill the format's defaults; returns (opts, profile).

    ``opts.output`` must be set (the format table's :func:`~acmix_deploy.exporters.formats.export_model` fills
    the default from the format's suffix).
    """
    # Which option applies to which format is validate_options' (the table's) decision; here: values.
    if opts.fp16 and opts.int8:
        raise ConfigError("choose one of {fp16} and {int8}", params=["fp16", "int8"])
    if opts.calib and not opts.int8:
        raise ConfigError("{calib} gives INT8 calibration data; add {int8}", params=["calib", "int8"])
    if opts.int8 and not opts.calib:
        raise ConfigError("{int8} needs calibration data: {calib} digits, data.npy or images/",
                          params=["int8", "calib"])
    if opts.batch < 1:
        raise ConfigError(f"{{batch}} must be positive, got {opts.batch}", params=["batch"])
    check_graph_options(opts.opset, opts.dynamic, opts.dynamic_hw)
    if opts.dynamic_hw and opts.fmt == "aoti":
        raise ConfigError(AOTI_DYNAMIC_HW_REASON, params=AOTI_DYNAMIC_HW_PARAMS)
    imgsz = normalize_imgsz(opts.imgsz)  # ConfigError for anything but a positive int or (height, width)
    output_names = None
    if opts.output_names is not None:
        given = opts.output_names.split(",") if isinstance(opts.output_names, str) else opts.output_names
        output_names = [str(n).strip() for n in given]
        if not output_names or not all(output_names) or len(set(output_names)) != len(output_names):
            raise ConfigError(f"{{output_names}} must be unique non-empty names, got {list(opts.output_names)}",
                              params=["output_names"])
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
        # Parsed and checked once, here; _prepare completes the profile once the model is read.
        shapes = given_shapes(opts.min_shape, opts.opt_shape, opts.max_shape, opts.dynamic_hw,
                              (opts.min_batch, opts.opt_batch, opts.max_batch))
        opts = replace(opts, **{f"{k}_shape": shapes.get(k) for k in ("min", "opt", "max")})
        profile = engine_profiles(opts.batch, opts.dynamic, *(shapes[k][0] if k in shapes else getattr(opts, f"{k}_batch")
                                                               for k in ("min", "opt", "max")))
        max_batch = profile.max
        if opts.device != "cpu" and opts.device != "cuda":
            raise ConfigError(f"{{device}} must be cpu or cuda, got {opts.device!r}", params=["device"])
        device = "cuda"  # an engine is built and run on the GPU
        if opts.output is not None and opts.output.suffix not in (".engine", ".plan"):
            raise ConfigError(f"a TensorRT engine is written to a .engine or .plan file, not {opts.output.name} "
                              "(the ONNX graph it is built from is kept beside it with the .onnx suffix)")
        if opts.workspace_gb is not None and opts.workspace_gb <= 0:
            raise ConfigError(f"{{workspace_gb}} must be positive (GiB), got {opts.workspace_gb}",
                              params=["workspace_gb"])
        if not 0 <= opts.opt_level <= 5:
            raise ConfigError(f"{{opt_level}} must be 0..5, got {opts.opt_level}", params=["opt_level"])
    else:
        max_batch = 256 if opts.max_batch is None else opts.max_batch
        if max_batch < 1:
            raise ConfigError(f"{{max_batch}} must be positive, got {max_batch}", params=["max_batch"])
        if opts.dynamic and not 1 <= opts.batch <= max_batch:
            raise ConfigError(f"{{batch}} {opts.batch} must lie in 1..{{max_batch}} ({max_batch})",
                              params=["batch", "max_batch"])
        device = opts.device
        check_device(device)
    if not ckpt.exists():
        raise AcmixDeployError(f"checkpoint {ckpt} does not exist")
    resolved = replace(opts, tol=tol, min_top1=min_top1, max_batch=max_batch, device=device, imgsz=imgsz,
                       output_names=output_names)
    if resolved.output is None:
        raise ConfigError("no output path: export through acmix_deploy.exporters.export_model, which gives the "
                          "format's default")
    check_output_path(resolved.output, ckpt)
    return resolved, profile


def cpu_target_for(opts: ExportOptions) -> str | None:
    """The ``cpu_isa`` the ONNX graph of this export is shaped for (:func:`.onnx.cpu_target`), or None.

    Only an ONNX file exported for the CPU; a TensorRT engine (and the ONNX file kept beside it) runs on the GPU.
    """
    return cpu_target(opts.device, opts.cpu_isa) if opts.fmt == "onnx" else None


@dataclass
class _Prepared:
    """What every single-file builder shares: resolved options, the deploy form, the check, the inputs."""

    ckpt: Path
    opts: ExportOptions
    profile: Any  # TensorRT optimization profile (engine only)
    prep: Any  # pipeline.Prepared
    device: str  # where the torch reference runs (and an AOTInductor package)
    verify: Verify
    inputs: list
    calibration: Any
    meta: dict
    say: Log
    rule: Any = None  # the SpatialRule of a dynamic_hw export, derived once here

    def validator(self, kind: str, title: str, rows: list):
        """``validate(tmp, [sidecar])`` for the exporter of ``kind``: the artifact against the torch deploy
        form on the export's inputs; the rows are added to ``rows`` and the worst one decides."""
        opts, reduced = self.opts, self.opts.fp16 or self.opts.int8

        def validate(tmp: Path, sidecar=None) -> None:
            rows.extend(self.verify(kind, tmp, self.prep.deploy, self.inputs, self.device, sidecar))
            # Every output of every batch is a row: the worst one decides (not max(): a NaN error must fail).
            worst_row = max(rows, key=lambda r: r.diff.rel if r.diff.rel == r.diff.rel else float("inf"))
            worst = worst_row.diff.rel
            agreement = min((r.diff.top1_agreement for r in rows if r.diff.top1_agreement is not None), default=1.0)
            several = len({r.output for r in rows}) > 1
            which = f"output {worst_row.output}" if several else "output"
            problem = None
            if not worst <= opts.tol:
                problem, param = (f"the exported model's {which} differs by {worst:.3g} (relative), above "
                                  f"{{tol}} {opts.tol:g}"), "tol"
            elif reduced and agreement < opts.min_top1:
                problem, param = (f"top-1 agreement {agreement:.1%} is below {{min_top1}} "
                                  f"{opts.min_top1:.1%}"), "min_top1"
            if problem:
                exc = EquivalenceError(f"{title}: {problem}; nothing written", params=[param])
                exc.rows, exc.title = list(rows), title  # for the caller's report
                raise exc
        return validate

    def onnx_step(self, path: Path, rows: list):
        opts = self.opts
        # TensorRT 10's weak typing takes a float32 graph and chooses float16 kernels itself (--fp16 is then a
        # builder flag); int8 always needs the Q/DQ graph (explicit quantization).
        fp16_graph = opts.fp16 and not (opts.fmt == "engine" and opts.trt_typing == "weak")

        def export(simplify: bool):
            return export_onnx(self.prep.deploy, path, self.prep.input_size, batch=opts.batch, dynamic=opts.dynamic,
                               opset=opts.opset, simplify=simplify, metadata=self.meta,
                               validate=self.validator("onnx", "onnx vs torch (deploy form)", rows), fp16=fp16_graph,
                               int8_calibration=self.calibration,
                               calibration_cache=path.with_suffix(".calib.json") if opts.int8 else None,
                               cpu_isa=cpu_target_for(opts), output_names=opts.output_names,
                               for_tensorrt=opts.fmt == "engine", dynamic_hw=opts.dynamic_hw, spatial_rule=self.rule)

        try:
            res = export(opts.simplify)
        except EquivalenceError as exc:
            # onnxslim has changed graphs' results (an unfolded official ACmix: its unfold / view chain); a float32
            # graph that fails its check simplified is exported again as traced, and kept if that one passes.
            if not opts.simplify or opts.fp16 or opts.int8:
                raise
            failed = [r.diff.rel for r in rows]
            del rows[:]
            try:
                res = export(False)
            except EquivalenceError:
                raise exc from None
            self.say(f"warning: the graph simplified by onnxslim differed from torch by {max(failed):.3g} (relative); "
                     "the graph as traced passes, and is written without simplification (as --no-simplify)")
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


def _prepare(ckpt: Path, opts: ExportOptions, say: Log, verify: Verify) -> _Prepared:
    """Resolve the options, fold (or read) the deploy form, and choose the inputs of the checks."""
    opts, profile = resolve_options(ckpt, opts)
    if opts.fmt == "engine":
        require_tensorrt()  # before the fold: a machine without TensorRT or a GPU stops here, at no cost
    t0 = time.perf_counter()
    prep = prepare_deploy(ckpt, opts.arch, opts.imgsz, model_def=opts.model_def, model_args=opts.model_args)
    if prep.diff is not None:
        say(f"folded the training form in {prep.fold_seconds * 1000:.0f} ms "
            f"(relative error vs training form {prep.diff.rel:.2g})")
    else:
        say(f"read the deploy form in {time.perf_counter() - t0:.1f} s")
    device = opts.device if opts.fmt in ("aoti", "engine") else "cpu"
    top = opts.max_batch if opts.dynamic else opts.batch
    batches = (opts.batch,) if not opts.dynamic else tuple(sorted({opts.batch, min(opts.batch + 2, top)}))
    inputs = random_inputs(prep.input_size, batches, opts.seed)
    calibration = None
    if opts.int8:
        cfg = prep.deploy.default_cfg
        calibration = load_calibration(opts.calib, prep.input_size, cfg.get("mean"), cfg.get("std"), opts.calib_limit)
        # A quantized model is judged on real data (up to 64 images): random noise says little about its
        # accuracy, and top-1 agreement needs more than a few samples.
        inputs = [calibration[: min(64, top)]]
    rule = None
    if opts.dynamic_hw:
        # The graph is proved at two more sizes: the smallest valid height (reflection reaches furthest into
        # the map there) with a wider width, batch 1 and 2; the smallest valid width with a taller height, batch 1.
        rule = derive_spatial_rule(prep.deploy, prep.input_size)
        (h1, w1), (h2, w2) = rule.examples(*prep.input_size[1:])
        c = prep.input_size[0]
        inputs += random_inputs((c, h1, w1), tuple(sorted({1, min(2, top)})), opts.seed + 1)
        inputs += random_inputs((c, h2, w2), (1,), opts.seed + 4)
    if opts.fmt == "engine" and (opts.dynamic_hw or any(v is not None for v in (opts.min_shape, opts.opt_shape,
                                                                                 opts.max_shape))):
        profile = shape_profile(profile, prep.input_size, opts.min_shape, opts.opt_shape, opts.max_shape,
                                opts.dynamic_hw)
        if rule is not None:
            check_profile_sizes(profile, rule)
    meta = {
        "arch": prep.loaded.arch, "arch_args": prep.loaded.arch_args, "source": ckpt.name,
        "source_sha256": sha256_file(ckpt), "package_version": __version__,
        # the normalisation the model expects, where it is known (RGB models: ImageNet's)
        **{k: list(prep.deploy.default_cfg[k]) for k in ("mean", "std") if k in prep.deploy.default_cfg},
    }
    return _Prepared(ckpt, opts, profile, prep, device, verify, inputs, calibration, meta, say, rule)


def _torch_outputs(ctx: _Prepared, x) -> list:
    """Every output of the torch deploy form on the NumPy batch ``x`` (on the export device)."""
    model = ctx.prep.deploy.eval().to(ctx.device)
    with torch.inference_mode():
        return list(flatten_outputs(model(torch.from_numpy(x).to(ctx.device))))


def build_onnx(ckpt: Path, opts: ExportOptions, say: Log, verify: Verify) -> ExportResult:
    """``--format onnx``: the validated ONNX graph of the deploy form."""
    ctx = _prepare(ckpt, opts, say, verify)
    rows: list = []
    artifact = ctx.onnx_step(ctx.opts.output, rows)
    return ctx.result(artifact, rows, "onnx vs torch (deploy form)")


def build_aoti(ckpt: Path, opts: ExportOptions, say: Log, verify: Verify) -> ExportResult:
    """``--format aoti``: an AOTInductor package, validated against torch on the export device."""
    ctx = _prepare(ckpt, opts, say, verify)
    opts, rows, title = ctx.opts, [], "aoti vs torch (deploy form)"

    artifact = export_aoti(ctx.prep.deploy, opts.output, ctx.prep.input_size, batch=opts.batch, dynamic=opts.dynamic,
                           max_batch=opts.max_batch, device=ctx.device, validate=ctx.validator("aoti", title, rows),
                           metadata={"arch": ctx.prep.loaded.arch, "source_sha256": ctx.meta["source_sha256"]},
                           output_names=opts.output_names, dynamic_hw=opts.dynamic_hw)
    say(f"AOTInductor: wrote {artifact.path} ({artifact.size_bytes / 1e6:.1f} MB) in {artifact.seconds:.1f} s")
    return ctx.result(artifact, rows, title)


def build_engine_file(ckpt: Path, opts: ExportOptions, say: Log, verify: Verify) -> ExportResult:
    """``--format engine``: the validated ONNX graph (kept beside it), then the TensorRT engine built from it."""
    ctx = _prepare(ckpt, opts, say, verify)
    opts, profile, out = ctx.opts, ctx.profile, ctx.opts.output
    onnx_rows: list = []
    onnx_res = ctx.onnx_step(out.with_suffix(".onnx"), onnx_rows)
    title = f"tensorrt ({opts.precision}) vs torch (deploy form)"
    rows: list = []
    batch_dim = -1 if profile.min != profile.max else profile.max
    shapes = [[batch_dim, *y.shape[1:]] for y in _torch_outputs(ctx, ctx.inputs[0][:1])]
    engine_ctx = ctx
    if getattr(profile, "dynamic_hw", False):
        # The engine is validated inside its profile: the inputs that lie in it, and its smallest shape
        # (batch and size) and largest size (smallest batch).  Output axes that follow the size are -1.
        c = ctx.prep.input_size[0]
        corners = [random_inputs((c, *profile.min_shape[2:]), (profile.min,), opts.seed + 2)[0],
                   random_inputs((c, *profile.max_shape[2:]), (profile.min,), opts.seed + 3)[0]]
        engine_ctx = replace(ctx, inputs=[x for x in ctx.inputs if profile.covers(x.shape)] + corners)
        small = _torch_outputs(ctx, corners[0])
        shapes = [[d if d == e else -1 for d, e in zip(sh, [batch_dim, *y.shape[1:]])] for sh, y in zip(shapes, small)]
    artifact = build_engine(
        onnx_res.path, out, ctx.prep.input_size, profile, precision=opts.precision, typing=opts.trt_typing,
        workspace_gb=opts.workspace_gb, opt_level=opts.opt_level, timing_cache=opts.timing_cache,
        input_name=INPUT_NAME, output_name=onnx_res.output_names[0], output_names=onnx_res.output_names,
        source={"checkpoint": ckpt.name, "sha256": ctx.meta["source_sha256"], "arch": ctx.prep.loaded.arch},
        validate=engine_ctx.validator("engine", title, rows), output_shape=shapes[0], output_shapes=shapes,
        valid_hw=onnx_res.spatial_rule.to_json() if onnx_res.spatial_rule is not None else None,
    )
    say(f"TensorRT {artifact.sidecar.tensorrt_version} on {artifact.sidecar.gpu_name}: wrote {artifact.path} "
        f"({artifact.size_bytes / 1e6:.1f} MB) and its sidecar in {artifact.seconds:.1f} s; timing cache "
        f"{artifact.timing_cache}")
    return ctx.result(artifact, onnx_rows + rows, title, onnx_res)
