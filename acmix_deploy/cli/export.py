"""``export`` and ``formats``: write a model in a deployment format, validated against torch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import AcmixDeployError, EquivalenceError
from ._common import IMGSZ_HELP, _comparison_table, _fail, _print_table, _safe, _safe_imgsz, console


def export(
    ckpt: Path = typer.Argument(..., help="Checkpoint (training form is folded first, with a check)."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="Target format (see 'acmix-deploy formats')."),
    trt: bool = typer.Option(False, "--trt", help="Shorthand for --format engine: a TensorRT engine (needs a GPU)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output file (default: CKPT with the format's suffix)."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture (needed for bare state dicts)."),
    imgsz: Optional[list[int]] = typer.Option(None, "--imgsz", help=IMGSZ_HELP),
    model_def: Optional[str] = typer.Option(None, "--model-def", help="Your own model: FILE.py:FACTORY or package.module:FACTORY (a moved definition, or a bare state dict)."),
    model_args: Optional[str] = typer.Option(None, "--model-args", help="Keyword arguments of the factory, as a JSON object."),
    batch: int = typer.Option(1, "--batch", help="Batch size of the example input (the fixed batch with --static)."),
    dynamic: bool = typer.Option(True, "--dynamic/--static", help="Dynamic batch axis."),
    dynamic_hw: bool = typer.Option(
        False, "--dynamic-hw", help="Height and width dynamic too (ONNX, TensorRT): one graph for every valid size "
        "(recorded in the metadata; see docs/dynamic_shapes.md); --imgsz is the size it is traced and tuned at."),
    min_batch: Optional[int] = typer.Option(None, "--min-batch", help="TensorRT profile: smallest batch (default: 1)."),
    opt_batch: Optional[int] = typer.Option(None, "--opt-batch", help="TensorRT profile: batch tuned for (default: --batch)."),
    max_batch: Optional[int] = typer.Option(
        None, "--max-batch", help="Largest batch (default: aoti 256; engine max(32, --opt-batch); Triton's max_batch_size: "
        "8 for --engine onnx, the engines' profile for --engine trt)."),
    min_shape: Optional[str] = typer.Option(None, "--min-shape", help="TensorRT profile as a whole shape NxCxHxW (trtexec's "
                                            "spelling): smallest batch and, with --dynamic-hw, smallest size."),
    opt_shape: Optional[str] = typer.Option(None, "--opt-shape", help="TensorRT profile: the shape tuned for (default: "
                                            "--opt-batch at --imgsz)."),
    max_shape: Optional[str] = typer.Option(None, "--max-shape", help="TensorRT profile: largest batch and size."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (AOTInductor compiles for this device)."),
    cpu_isa: str = typer.Option(
        "auto", "--cpu-isa", help="ONNX for ONNX Runtime on the CPU: the instruction set the graph is shaped for, "
        "auto (this machine's), avx512, avx2 or generic (ACmix's convolution path in 16-, 8-channel or compact groups, "
        "softmax floor), or none: the plain graph (for OpenVINO)."),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="Simplify the graph with onnxslim."),
    fp16: bool = typer.Option(False, "--fp16", help="Float16 graph, attention (softmax, mask, logits) kept in float32."),
    int8: bool = typer.Option(False, "--int8", help="Int8 Q/DQ convolutions, calibrated on --calib."),
    calib: Optional[str] = typer.Option(None, "--calib", help="INT8 calibration data: 'digits', a .npy file or an image folder."),
    calib_limit: int = typer.Option(256, "--calib-limit", help="Most calibration images used."),
    workspace: Optional[float] = typer.Option(None, "--workspace", help="TensorRT builder workspace limit in GiB (default: TensorRT's)."),
    opt_level: int = typer.Option(3, "--opt-level", help="TensorRT builder optimization level 0..5."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="TensorRT timing cache, reused across builds (default: in ~/.cache/acmix-deploy/)."),
    weak_typing: bool = typer.Option(False, "--trt-weak-typing", help="TensorRT 10 only: float32 graph + FP16/INT8 builder flags."),
    tol: Optional[float] = typer.Option(None, "--tol", help="Largest accepted relative error vs torch (default: 1e-4; fp16 2e-2; int8 1.0)."),
    min_top1: Optional[float] = typer.Option(None, "--min-top1", help="Smallest accepted top-1 agreement with torch (default: fp16 0.99; int8 0.9)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random validation inputs."),
    output_names: Optional[str] = typer.Option(
        None, "--output-names", help="Names of the model's output tensors, comma separated (a,b,c) (default: one output: "
        "logits; a dict: its keys; else output0, output1, ...)."),
    engine: str = typer.Option("onnx", "--engine", help="Triton: onnx (CKPT: a checkpoint, exported, or a .onnx file) "
                               "or trt (CKPT: an engine file or a folder of engines)."),
    instances: int = typer.Option(1, "--instances", help="Triton: model instances (instance_group count)."),
    model_name: Optional[str] = typer.Option(None, "--name", help="Triton: model name (default: the file's stem)."),
    queue_delay_us: int = typer.Option(1000, "--max-queue-delay-us", help="Triton: dynamic batching queue delay."),
    force: bool = typer.Option(False, "--force", help="Triton: replace an existing model directory."),
) -> None:
    """Export a model (folded first if needed), validate it against torch, write it atomically."""
    from ..exporters import ExportOptions
    from ..verify import export_model

    if trt:
        if fmt not in ("onnx", "engine"):
            _fail(AcmixDeployError(f"--trt is --format engine; it cannot be combined with --format {fmt}"))
        fmt = "engine"
    size_arg = _safe_imgsz(imgsz)
    names = None
    if output_names is not None:
        names = [n.strip() for n in output_names.split(",")]
        if not all(names) or len(set(names)) != len(names):
            _fail(AcmixDeployError(f"--output-names must be unique non-empty names separated by commas, "
                                   f"got {output_names!r}"))
    # Which option applies to which format is the format table's decision (exporters.validate_options).
    opts = ExportOptions(
        fmt=fmt, output=output, arch=arch, model_def=model_def, model_args=model_args, imgsz=size_arg, batch=batch,
        dynamic=dynamic, dynamic_hw=dynamic_hw, opset=opset,
        min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, min_shape=min_shape, opt_shape=opt_shape,
        max_shape=max_shape, device=device, simplify=simplify, fp16=fp16,
        int8=int8, calib=calib, calib_limit=calib_limit, tol=tol, min_top1=min_top1, seed=seed,
        workspace_gb=workspace, timing_cache=timing_cache, opt_level=opt_level,
        trt_typing="weak" if weak_typing else "strong", output_names=names,
        engine=engine, instances=instances, model_name=model_name, max_queue_delay_us=queue_delay_us, force=force,
        cpu_isa=cpu_isa,
    )
    doing = (f"writing a Triton model repository from {_safe(ckpt)}" if fmt == "triton"
             else f"exporting {_safe(ckpt)} to {_safe(fmt)}")
    try:
        with console.status(doing) as status:
            def log(msg: str) -> None:
                # The repository is summarised below, as its config.  The file written is said once, by the
                # last line below: the exporter's "...; wrote PATH ..." / "AOTInductor: wrote PATH ..." lose that part.
                text = re.sub(r"[;:] wrote .*$", "", msg, flags=re.S)
                if fmt != "triton" and " " in text:
                    console.print(escape(text), highlight=False)
                status.update(doing)

            res = export_model(ckpt, opts, log)
    except EquivalenceError as exc:
        if getattr(exc, "rows", None):
            _print_table(_comparison_table(exc.title, exc.rows))
        _fail(exc, code=1)
    except AcmixDeployError as exc:
        _fail(exc)
    if res.fmt == "triton":
        _print_triton(res.artifact)
        return
    _print_table(_comparison_table(res.title, res.rows))
    o = res.options
    if res.fmt in ("onnx", "engine"):
        onnx_res = res.onnx or res.artifact
        ops = ", ".join(f"{op} {n}" for op, n in onnx_res.op_histogram.items())
        hw = ("H", "W") if o.dynamic_hw else tuple(map(str, res.input_size[1:]))
        shape = "x".join(["N" if o.dynamic else str(o.batch), str(res.input_size[0]), *hw])
        precision = {"fp16": "fp16 (attention fp32)", "int8": "int8 Q/DQ (attention fp32)"}.get(o.precision, "fp32")
        console.print(f"graph: {onnx_res.nodes} nodes, opset {onnx_res.opset}, {precision}, input {shape}; ops: {ops}")
        if onnx_res.spatial_rule is not None:
            console.print(f"dynamic height and width: {onnx_res.spatial_rule.describe()} (traced and tuned at "
                          f"{res.input_size[1]}x{res.input_size[2]})")
        isa = onnx_res.metadata.get("acmix_deploy.cpu_isa")
        if isa is not None:
            groups = onnx_res.metadata.get("acmix_deploy.conv_path_groups")
            console.print(f"shaped for ONNX Runtime on {isa} CPUs" + (f" (ACmix conv path {groups})" if groups else ""))
    if res.fmt == "aoti":
        span = f"batch 1..{res.artifact.max_batch}" if o.dynamic else f"batch {o.batch}"
        console.print(f"AOTInductor package for {res.artifact.device}, {span}")
    if res.fmt == "engine":
        p = res.artifact.sidecar.profiles[0]
        if p["min"][2:] != p["max"][2:]:
            spell = "x".join
            console.print(f"TensorRT profile: {spell(map(str, p['min']))} / {spell(map(str, p['opt']))} / "
                          f"{spell(map(str, p['max']))} (min / opt / max)")
        else:
            console.print(f"TensorRT profile: batch {p['min'][0]} / {p['opt'][0]} / {p['max'][0]} (min / opt / max)")
    art = res.artifact
    console.print(f"wrote {_safe(art.path)} ({art.size_bytes / 1e6:.1f} MB) in {art.seconds:.1f} s")


def _print_triton(res) -> None:
    """``export --format triton``: the config written and the files (see acmix_deploy.exporters.triton_repository)."""
    console.print(res.config_text.rstrip(), highlight=False, markup=False)
    if res.validation_rel_error is not None:
        console.print(f"model.onnx vs torch (deploy form), batches 1 and 2: relative error {res.validation_rel_error:.3g}")
    files = ", ".join(str(f.relative_to(res.repo)) for f in res.files)
    console.print(f"wrote Triton model {res.config.name!r} ({res.config.platform}, max_batch_size "
                  f"{res.config.max_batch_size}) in {res.repo}: {files} ({res.seconds:.1f} s)")


def formats() -> None:
    """List the export formats."""
    from ..exporters import FORMATS

    table = Table("format", "flag", "suffix", "needs", "install", "what it is")
    for f in FORMATS.values():
        install = escape(f'pip install "acmix-deploy[{f.extra}]"') if f.extra else "(base install)"
        table.add_row(f.name, f"--format {f.name}" + (f" / {f.flag}" if f.flag else ""), f.suffix, f.needs, install,
                      f.description)
    _print_table(table)
