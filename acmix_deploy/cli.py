"""The ``acmix-deploy`` command line: thin Typer commands over the library.

Exit codes: 0 success, 1 a check failed (outputs differ beyond tolerance),
2 bad input (missing or corrupt file, wrong architecture, bad argument).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import AcmixDeployError, EquivalenceError

def _split_imgsz(args: list[str]) -> list[str]:
    """Accept ``--imgsz H W`` (two values, as Ultralytics users write it) by rewriting it to two ``--imgsz``."""
    out, i = [], 0
    while i < len(args):
        if args[i] == "--imgsz" and i + 2 < len(args) \
                and args[i + 1].isdigit() and args[i + 2].isdigit():
            out += ["--imgsz", args[i + 1], "--imgsz", args[i + 2]]
            i += 3
            continue
        out.append(args[i])
        i += 1
    return out


class _Group(TyperGroup):
    def parse_args(self, ctx, args):
        return super().parse_args(ctx, _split_imgsz(list(args)))


app = typer.Typer(
    cls=_Group,
    name="acmix-deploy",
    help="Fold ACmix / X-volution models into deployable form, check them, and ship them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Not a terminal (a pipe, a log, CI): 160 columns unless COLUMNS says otherwise, so that tables are not squeezed.
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
err_console = Console(stderr=True)


_ANSI_SEQUENCE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _safe(text) -> str:
    """``text`` from a file or a path, fit for Rich: escape sequences and control characters removed, markup escaped.

    Checkpoint metadata, key names and paths are data: printed as Rich markup,
    ``[/bold]`` in them raised MarkupError, and ANSI escapes in a file's
    ``meta`` reached the terminal raw.  Removed characters are shown as ``?``.
    """
    return escape(_CONTROL.sub("?", _ANSI_SEQUENCE.sub("?", str(text))))


def _fail(exc: Exception, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {_safe(exc)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _print_table(table: Table) -> None:
    """Print ``table`` without ever cutting a number ("1234.…").

    Columns whose cells are single tokens (numbers, names, flags) never wrap; text columns wrap between words
    and fold long words.  When the tokens do not fit the console even so, the borders get lighter, and
    then the table is printed wider than the console (a narrow terminal wraps the lines; logs keep them).
    """
    from rich import box

    table.expand = False
    widths = []
    for column in table.columns:
        cells = [c.plain if hasattr(c, "plain") else str(c) for c in column._cells]
        column.overflow = "fold"
        if all(" " not in c for c in cells):
            column.no_wrap = True
            widths.append(max([len(str(column.header)), *map(len, cells)]))
        else:
            widths.append(min(12, max([len(w) for c in cells for w in c.split()] or [1])))

    def need() -> int:
        pad = table.padding[1] + table.padding[3] if len(table.padding) == 4 else 2 * table.padding[-1]
        borders = 0 if table.box is None else len(widths) + 1 - (0 if table.show_edge else 2)
        return sum(widths) + pad * len(widths) + borders

    if need() > console.width:
        table.box, table.show_edge = box.SIMPLE_HEAD, False
    width = need()
    if width <= console.width:
        console.print(table)
    else:
        Console(file=console.file, width=width, color_system=console.color_system,
                force_terminal=console.is_terminal).print(table)


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"acmix-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version."),
) -> None:
    """acmix-deploy: reparameterize, check and ship ACmix-style models."""


@app.command("list-models")
def list_models_cmd(pattern: Optional[str] = typer.Argument(None, help="Shell-style filter, e.g. 'acmix_*'.")) -> None:
    """List the registered architectures."""
    from .models import list_models, model_entrypoint

    table = Table("architecture", "description")
    for name in list_models(pattern):
        doc = ((model_entrypoint(name).__doc__ or "").strip().splitlines() or [""])[0]
        # Sphinx roles and literals read as plain text: ":func:`acmix_resnet_tiny`" -> "acmix_resnet_tiny"
        doc = re.sub(r":[a-z]+(?::[a-z]+)?:`~?([^`]*)`", r"\1", doc).replace("``", "")
        table.add_row(name, escape(doc))
    _print_table(table)


@app.command()
def info(
    ckpt: Path = typer.Argument(..., help="Checkpoint file (ours, a bare state dict, or a wrapped one)."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture, for files that do not record it."),
) -> None:
    """Describe a checkpoint: architecture, form, parameters, keys."""
    from .analysis import count_parameters
    from .checkpoint import read_checkpoint
    from .modules import (ACmix, ACmixDeploy, WindowAttentionACmix, WindowAttentionACmixDeploy, XVolution,
                          XVolutionDeploy)

    try:
        loaded = read_checkpoint(ckpt, arch)
    except AcmixDeployError as exc:
        _fail(exc)
    model = loaded.model
    sd = model.state_dict()
    prefixes: dict[str, int] = {}
    for k in sd:
        prefixes[k.split(".")[0]] = prefixes.get(k.split(".")[0], 0) + 1
    table = Table(show_header=False, title=_safe(ckpt))
    table.add_row("architecture", _safe(loaded.arch))
    table.add_row("arguments", _safe(", ".join(f"{k}={v}" for k, v in loaded.arch_args.items()) or "(defaults)"))
    table.add_row("form", "deploy (folded)" if loaded.deploy else "training")
    table.add_row("file format", loaded.source_format)
    table.add_row("parameters", f"{count_parameters(model):,}")
    acmix_types = (ACmix, ACmixDeploy, WindowAttentionACmix, WindowAttentionACmixDeploy)
    table.add_row("ACmix blocks", str(sum(isinstance(m, acmix_types) for m in model.modules())))
    n_xvolution = sum(isinstance(m, (XVolution, XVolutionDeploy)) for m in model.modules())
    if n_xvolution:
        table.add_row("X-volution blocks", str(n_xvolution))
    table.add_row("tensors", f"{len(sd)} ({', '.join(f'{p}: {n}' for p, n in prefixes.items())})")
    table.add_row("input size", "x".join(map(str, model.default_cfg["input_size"])))
    for key, value in loaded.meta.items():
        table.add_row(_safe(f"meta.{key}"), _safe(value))
    for note in loaded.notes:
        table.add_row("note", _safe(note))
    _print_table(table)


def _imgsz(values: Optional[list[int]]):
    """``--imgsz N`` (square) or ``--imgsz H W`` (given as two values) -> None, N or (H, W)."""
    if not values:
        return None
    if len(values) > 2:
        raise AcmixDeployError(f"--imgsz takes one size (N) or two (H W), got {len(values)}: {values}")
    return values[0] if len(values) == 1 else (values[0], values[1])


IMGSZ_HELP = "Input size: N (square) or H W (default: the model's)."


def _render_report(report, title: str) -> None:
    """What the reparameterization pass adopted, folded through the graph, and left."""
    for a in report.adopted:
        console.print(f"[green]adopted[/] {escape(a.describe())}", highlight=False, soft_wrap=True)
    for a in report.rejected:
        console.print(f"[yellow]left alone[/] {escape(a.describe())}", highlight=False, soft_wrap=True)
    if report.pairs:
        console.print(f"folded {len(report.pairs)} BatchNorm(s) found in the traced graph{escape(title)}",
                      highlight=False)
    for note in report.notes:
        console.print(f"[dim]note: {escape(note)}[/]", highlight=False, soft_wrap=True)
    for left in report.leftovers:
        console.print(f"[yellow]not folded:[/] {escape(left.describe())}", highlight=False, soft_wrap=True)


@app.command()
def reparam(
    ckpt: Path = typer.Argument(..., help="Training checkpoint or weights file to fold."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Registry architecture (bare state dicts)."),
    model_def: Optional[str] = typer.Option(None, "--model-def", help="Your own model: FILE.py:FACTORY or package.module:FACTORY."),
    model_args: Optional[str] = typer.Option(None, "--model-args", help="Keyword arguments of the factory, as a JSON object."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Unpickle a full model / training container (runs code from the file!)."),
    code_path: list[Path] = typer.Option([], "--code-path", help="Directory put on the import path for --trust-pickle (repeatable)."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Write the file even if something foldable is left."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="File to write (default: CKPT.deploy.pth; pickles keep their suffix)."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare every output of both forms before writing."),
    imgsz: Optional[list[int]] = typer.Option(None, "--imgsz", help=IMGSZ_HELP),
    batch: int = typer.Option(2, "--batch", min=1, help="Batch size of the check."),
    tol: float = typer.Option(1e-5, "--tol", help="Largest accepted relative error, max|a-b| / max|a| (float32)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random check input."),
) -> None:
    """Fold a training checkpoint (registry model, your own model, or a trusted pickle), check it, write it atomically."""
    from .analysis import check_equivalence, count_macs, count_parameters
    from .checkpoint import read_checkpoint, require_finite, save_checkpoint
    from .pipeline import check_output_path, default_input_size
    from .util import sha256_file
    from .reparam import reparameterize
    from .user_model import save_user_checkpoint

    out = output or ckpt.with_name(ckpt.stem + ".deploy" + ((ckpt.suffix or ".pt") if trust_pickle else ".pth"))
    if trust_pickle:
        _reparam_pickle(ckpt, out, code_path, _safe_imgsz(imgsz), check, batch, tol, seed, allow_partial)
        return
    if code_path:
        _fail(AcmixDeployError("--code-path only applies with --trust-pickle"))
    try:
        check_output_path(out, ckpt)
        size_arg = _imgsz(imgsz)
        with console.status(f"reading {_safe(ckpt)}"):
            loaded = read_checkpoint(ckpt, arch, model_def, model_args)
        for note in loaded.notes:
            console.print(f"[dim]note: {_safe(note)}[/]", highlight=False, soft_wrap=True)
        if loaded.deploy:
            console.print(f"{_safe(ckpt)} is already in deploy form ({_safe(loaded.arch)}); nothing to fold, "
                          "nothing written.", highlight=False)
            return
        require_finite(loaded, ckpt)  # NaN/Inf weights: name the tensors, not "relative error inf"
        model = loaded.model
        input_size = default_input_size(model, size_arg)
        t0 = time.perf_counter()
        with console.status("folding"):
            deploy, report = reparameterize(model)
        fold_s = time.perf_counter() - t0
        _render_report(report, "")
        diff = None
        if check:
            with console.status(f"checking every output of both forms at {'x'.join(map(str, input_size))}"):
                t1 = time.perf_counter()
                diff = check_equivalence(model, deploy, input_size, batch=batch, seed=seed, tol=tol,
                                          fold=lambda m: reparameterize(m)[0])
                check_s = time.perf_counter() - t1
        macs = (count_macs(model, input_size), count_macs(deploy, input_size))
    except AcmixDeployError as exc:
        _fail(exc)

    table = Table(title=f"{_safe(loaded.arch)}: training -> deploy", show_lines=False)
    table.add_column("")
    table.add_column("training", justify="right")
    table.add_column("deploy", justify="right")
    table.add_row("parameters", _human(count_parameters(model)), _human(count_parameters(deploy)))
    table.add_row(f"MACs @ {'x'.join(map(str, input_size))}", _human(macs[0]), _human(macs[1]))
    table.add_row("fold time", "", f"{fold_s * 1000:.0f} ms")
    if report.adopted or report.pairs:
        table.add_row("ACmix copies adopted", "", str(len(report.adopted)))
        table.add_row("BatchNorms folded via the graph", "", str(len(report.pairs)))
    if diff is not None:
        worst = f" ({escape(diff.output)})" if diff.output else ""
        table.add_row(f"max abs error (batch {batch}){worst}", "", f"{diff.max_abs:.3g}")
        table.add_row("relative error", "", f"{diff.rel:.3g} (tol {tol:g})")
        for name, rel in (diff.per_output or {}).items():
            table.add_row(f"  output {escape(name)}", "", f"{rel:.3g}")
        if diff.rel_float64 is not None:
            table.add_row("relative error, fold redone in float64", "", f"{diff.rel_float64:.3g} (tol {tol:g})")
        if diff.rounding_float32 is not None:
            table.add_row("float32 vs float64 reference", f"{diff.rounding_float32[0]:.3g}",
                          f"{diff.rounding_float32[1]:.3g}")
        if diff.first_divergence:
            table.add_row("first diverging module", "", _safe(diff.first_divergence))
        table.add_row("check time", "", f"{check_s:.2f} s")
    _print_table(table)
    if diff is not None and diff.rel_float64 is not None and diff.within(tol):
        console.print(
            f"[yellow]note:[/] the float32 relative error {diff.rel:.3g} is above --tol {tol:g}, but the fold redone in "
            f"float64 agrees to {diff.rel_float64:.3g} and the float32 deploy form is as close to the float64 result as "
            f"the training form itself ({diff.rounding_float32[1]:.3g} vs {diff.rounding_float32[0]:.3g}): the gap "
            "is the network's own float32 rounding (large activations, e.g. untrained BatchNorm statistics), not the "
            "fold", highlight=False)
    if diff is not None and not diff.within(tol):
        err_console.print(f"[bold red]check failed:[/] {_safe(diff.summary())} is above --tol {tol:g}; nothing written",
                          highlight=False)
        raise typer.Exit(1)
    if report.leftovers and not allow_partial:
        err_console.print(f"[bold red]not folded:[/] {len(report.leftovers)} foldable module(s) left (listed above); "
                          "nothing written. Pass --allow-partial to write it anyway.")
        raise typer.Exit(1)
    meta = {"source": ckpt.name, "source_sha256": sha256_file(ckpt)}
    if diff is not None:
        meta.update({"check_rel_error": diff.rel, "check_input": list(input_size)})
    if report.leftovers:
        meta["not_folded"] = [x.describe() for x in report.leftovers]
    try:
        if loaded.model_def is not None:
            save_user_checkpoint(deploy, out, loaded.model_def, report.plan, input_size, meta)
        else:
            save_checkpoint(deploy, out, meta=meta)
    except AcmixDeployError as exc:
        _fail(exc)
    console.print(f"wrote {_safe(out)} ({out.stat().st_size / 1e6:.1f} MB)", highlight=False)


def _safe_imgsz(values):
    try:
        return _imgsz(values)
    except AcmixDeployError as exc:
        _fail(exc)


def _reparam_pickle(ckpt, out, code_path, size_arg, check, batch, tol, seed, allow_partial) -> None:
    """``reparam --trust-pickle``: fold every module of a pickled container and write it back, entries kept."""
    from .pipeline import check_output_path
    from .user_model import fold_pickled, load_pickled, pickled_meta, save_pickled

    try:
        check_output_path(out, ckpt)
        with console.status(f"unpickling {_safe(ckpt)} (trusted)"):
            obj = load_pickled(ckpt, [str(p) for p in code_path])
        with console.status("folding every module in the file"):
            folded, folds = fold_pickled(obj, size_arg, check=check, batch=batch, seed=seed)
    except AcmixDeployError as exc:
        _fail(exc)
    table = Table(title=f"{_safe(ckpt.name)}: modules folded")
    for col in ("entry", "dtype", "adopted", "BN via graph", "left", "worst output", "relative error"):
        table.add_column(col, justify="left" if col in ("entry", "dtype", "worst output") else "right")
    failed = []
    for f in folds:
        _render_report(f.report, f" in {f.key}")
        rel = "" if f.diff is None else f"{f.diff.rel:.3g}"
        table.add_row(_safe(f.key), f.dtype, str(len(f.report.adopted)), str(len(f.report.pairs)),
                      str(len(f.report.leftovers)), escape(f.diff.output or "") if f.diff else "", rel)
        if f.diff is not None and not f.diff.rel <= tol:
            failed.append(f"{f.key}: relative error {f.diff.rel:.3g}")
    _print_table(table)
    if failed:
        err_console.print(f"[bold red]check failed:[/] {escape('; '.join(failed))} above --tol {tol:g}; nothing written")
        raise typer.Exit(1)
    left = sum(len(f.report.leftovers) for f in folds)
    if left and not allow_partial:
        err_console.print(f"[bold red]not folded:[/] {left} foldable module(s) left (listed above); nothing written. "
                          "Pass --allow-partial to write it anyway.")
        raise typer.Exit(1)
    if isinstance(folded, dict):
        folded["acmix_deploy"] = pickled_meta(ckpt)
    try:
        save_pickled(folded, out)
    except AcmixDeployError as exc:
        _fail(exc)
    kept = [k for k in obj if k not in {f.key for f in folds}] if isinstance(obj, dict) else []
    console.print(f"wrote {_safe(out)} ({out.stat().st_size / 1e6:.1f} MB); entries kept as they were: "
                  f"{_safe(', '.join(map(str, kept))) or '(none)'}", highlight=False, soft_wrap=True)


def _comparison_table(title: str, rows) -> Table:
    """One row per runner, batch and output; the output column appears for models with several outputs."""
    several = len({getattr(row, "output", "logits") for row in rows}) > 1
    table = Table(title=title)
    cols = ("runner", "batch") + (("output",) if several else ()) + ("max abs error", "relative error", "top-1 agreement")
    for col in cols:
        table.add_column(col, justify="left" if col in ("runner", "output") else "right")
    for row in rows:
        top1 = "" if row.diff.top1_agreement is None else f"{row.diff.top1_agreement:.1%}"
        which = (escape(row.output),) if several else ()
        table.add_row(row.runner, str(row.batch), *which, f"{row.diff.max_abs:.3g}", f"{row.diff.rel:.3g}", top1)
    return table


# ExportOptions field -> the flag of ``acmix-deploy export`` that sets it (for errors naming a parameter).
FLAGS = {
    "output": "--output", "arch": "--arch", "model_def": "--model-def", "model_args": "--model-args",
    "imgsz": "--imgsz", "batch": "--batch", "dynamic": "--static", "opset": "--opset", "min_batch": "--min-batch",
    "opt_batch": "--opt-batch", "max_batch": "--max-batch", "device": "--device", "simplify": "--no-simplify",
    "fp16": "--fp16", "int8": "--int8", "calib": "--calib", "calib_limit": "--calib-limit", "tol": "--tol",
    "min_top1": "--min-top1", "seed": "--seed", "workspace_gb": "--workspace", "timing_cache": "--timing-cache",
    "opt_level": "--opt-level", "trt_typing": "--trt-weak-typing", "output_names": "--output-names",
    "engine": "--engine", "instances": "--instances", "model_name": "--name",
    "max_queue_delay_us": "--max-queue-delay-us", "force": "--force",
}


@app.command()
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
    min_batch: Optional[int] = typer.Option(None, "--min-batch", help="TensorRT profile: smallest batch (default: 1)."),
    opt_batch: Optional[int] = typer.Option(None, "--opt-batch", help="TensorRT profile: batch tuned for (default: --batch)."),
    max_batch: Optional[int] = typer.Option(
        None, "--max-batch", help="Largest batch (default: aoti 256; engine max(32, --opt-batch); Triton's max_batch_size: "
        "8 for --engine onnx, the engines' profile for --engine trt)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (AOTInductor compiles for this device)."),
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
    from .exporters import ExportOptions, OptionNotApplicable, export_model

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
        dynamic=dynamic, opset=opset,
        min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, device=device, simplify=simplify, fp16=fp16,
        int8=int8, calib=calib, calib_limit=calib_limit, tol=tol, min_top1=min_top1, seed=seed,
        workspace_gb=workspace, timing_cache=timing_cache, opt_level=opt_level,
        trt_typing="weak" if weak_typing else "strong", output_names=names,
        engine=engine, instances=instances, model_name=model_name, max_queue_delay_us=queue_delay_us, force=force,
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
    except OptionNotApplicable as exc:
        from .exporters import validate_options

        try:  # the same refusal, spelled with this command's flags
            validate_options(exc.fmt, opts, flags=FLAGS)
        except OptionNotApplicable as spelled:
            exc = spelled
        _fail(exc)
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
        shape = "x".join(["N" if o.dynamic else str(o.batch), *map(str, res.input_size)])
        precision = {"fp16": "fp16 (attention fp32)", "int8": "int8 Q/DQ (attention fp32)"}.get(o.precision, "fp32")
        console.print(f"graph: {onnx_res.nodes} nodes, opset {onnx_res.opset}, {precision}, input {shape}; ops: {ops}")
    if res.fmt == "aoti":
        span = f"batch 1..{res.artifact.max_batch}" if o.dynamic else f"batch {o.batch}"
        console.print(f"AOTInductor package for {res.artifact.device}, {span}")
    if res.fmt == "engine":
        p = res.artifact.sidecar.profiles[0]
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


@app.command()
def formats() -> None:
    """List the export formats."""
    from .exporters import FORMATS

    table = Table("format", "flag", "suffix", "needs", "install", "what it is")
    for f in FORMATS.values():
        install = escape(f'pip install "acmix-deploy[{f.extra}]"') if f.extra else "(base install)"
        table.add_row(f.name, f"--format {f.name}" + (f" / {f.flag}" if f.flag else ""), f.suffix, f.needs, install,
                      f.description)
    _print_table(table)


@app.command()
def compare(
    ckpt: Path = typer.Argument(..., help="Checkpoint: the reference (its training form when it has one)."),
    models: list[Path] = typer.Argument(None, help="Exported models to compare (.onnx, .pt2, .engine)."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture (needed for bare state dicts)."),
    imgsz: Optional[list[int]] = typer.Option(None, "--imgsz", help=IMGSZ_HELP),
    model_def: Optional[str] = typer.Option(None, "--model-def", help="Your own model: FILE.py:FACTORY or package.module:FACTORY (a moved definition, or a bare state dict)."),
    model_args: Optional[str] = typer.Option(None, "--model-args", help="Keyword arguments of the factory, as a JSON object."),
    batch: list[int] = typer.Option([1, 3], "--batch", help="Batch sizes (repeat the option for several)."),
    tol: float = typer.Option(1e-4, "--tol", help="Largest accepted relative error (float32)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Run the same inputs through every form and backend and report the errors against the reference."""
    from .compare import compare_runners, random_inputs
    from .pipeline import prepare_deploy
    from .runtime import AotiRunner, OrtRunner, TorchRunner

    try:
        if any(b < 1 for b in batch):
            raise AcmixDeployError(f"--batch values must be positive, got {batch}")
        prep = prepare_deploy(ckpt, arch, _imgsz(imgsz), check=False, model_def=model_def, model_args=model_args)
        if prep.training is not None:
            reference = TorchRunner(prep.training, name="torch:training")
            candidates = [TorchRunner(prep.deploy, name="torch:deploy")]
        else:
            reference = TorchRunner(prep.deploy, name="torch:deploy")
            candidates = []
        for path in models or []:
            if path.suffix not in (".onnx", ".pt2", ".engine", ".plan"):
                raise AcmixDeployError(
                    f"{path}: give .onnx (ONNX Runtime), .pt2 (AOTInductor) or .engine/.plan (TensorRT) models")
            if path.suffix in (".engine", ".plan"):
                from .runtime.tensorrt import TrtRunner

                runner = TrtRunner(path)
            else:
                runner = OrtRunner(path) if path.suffix == ".onnx" else AotiRunner(path)
            runner.name = f"{runner.name} ({path.name})"
            candidates.append(runner)
        if not candidates:
            raise AcmixDeployError("nothing to compare: give a training checkpoint or exported models")
        rows = compare_runners(reference, candidates, random_inputs(prep.input_size, tuple(batch), seed))
    except AcmixDeployError as exc:
        _fail(exc)
    _print_table(_comparison_table(f"against {reference.name}, input {'x'.join(map(str, prep.input_size))}", rows))
    worst_row = max(rows, key=lambda r: r.diff.rel if r.diff.rel == r.diff.rel else float("inf"))  # NaN fails
    worst = worst_row.diff.rel
    if not worst <= tol:
        which = f" (output {escape(worst_row.output)}, {escape(worst_row.runner)})" if len({r.output for r in rows}) > 1 else ""
        err_console.print(f"[bold red]comparison failed:[/] relative error {worst:.3g}{which} above --tol {tol:g}")
        raise typer.Exit(1)


def _render_profile(report: dict) -> None:
    dev = report["device"]
    where = dev.get("gpu") or f"{dev['cpu']}, {dev['threads']} threads"
    table = Table(title=f"{report['model'].get('arch') or report['model']['path']} on {where}")
    cols = ("backend", "form", "batch", "mean ms", "std", "p50", "p90", "p99", "samples/s", "peak MB")
    for col in cols:
        table.add_column(col, justify="left" if col in ("backend", "form") else "right")
    for r in report["results"]:
        peak = "" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
        table.add_row(r["backend"], r["form"], str(r["batch"]), f"{r['mean_ms']:.2f}", f"{r['std_ms']:.2f}",
                      f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
                      f"{r['throughput_per_s']:.1f}", peak)
    _print_table(table)
    for row in report.get("compare_forms", []):
        console.print(f"[bold]training / deploy[/] ({row['backend']}, batch {row['batch']}, medians): "
                      f"{row['training_over_deploy']:.2f}x")
    for label, ops in report.get("layers", {}).items():
        lt = Table(title=f"top operators: {label}")
        for col in ("operator", "calls/run", "ms/run", "%"):
            lt.add_column(col, justify="left" if col == "operator" else "right")
        for op in ops:
            lt.add_row(escape(op["name"]), str(op["calls"]), f"{op['ms_per_run']:.3f}", f"{op['percent']:.1f}")
        _print_table(lt)
    for note in report.get("notes", []):
        console.print(f"[dim]note: {note}[/]")


@app.command()
def profile(
    model: Path = typer.Argument(..., help="Checkpoint (training or deploy form), ONNX model, .pt2 package or TensorRT engine."),
    backend: list[str] = typer.Option(None, "--backend", "-b", help="torch, torch-compile, onnxruntime, aoti, tensorrt (repeatable) (default: the file's: torch for checkpoints, onnxruntime for .onnx, aoti for .pt2, tensorrt for .engine)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    batch: list[int] = typer.Option([1], "--batch", help="Batch sizes (repeatable)."),
    imgsz: Optional[list[int]] = typer.Option(None, "--imgsz", help=IMGSZ_HELP),
    model_def: Optional[str] = typer.Option(None, "--model-def", help="Your own model: FILE.py:FACTORY or package.module:FACTORY (a moved definition, or a bare state dict)."),
    model_args: Optional[str] = typer.Option(None, "--model-args", help="Keyword arguments of the factory, as a JSON object."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed runs before timing."),
    iters: int = typer.Option(30, "--iters", help="Timed runs (ignored with --seconds)."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Time for this long instead of --iters."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch and ONNX Runtime."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture (needed for bare state dicts)."),
    compare_forms: bool = typer.Option(False, "--compare-forms", help="Time training and deploy forms side by side."),
    layers: bool = typer.Option(False, "--layers", help="Show the top operators by time."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write the results as CSV."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write latency vs batch as PNG."),
) -> None:
    """Measure latency, throughput and peak memory per backend and batch size on this device."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .pipeline import check_output_path
    from .profiling import ProfileSettings, profile_model, save_json

    settings = ProfileSettings(
        backends=tuple(backend or ()), batches=tuple(batch), imgsz=_safe_imgsz(imgsz), warmup=warmup, iters=iters,
        seconds=seconds, threads=threads, device=device, compare_forms=compare_forms, layers=layers, arch=arch,
        model_def=model_def, model_args=model_args,
    )
    try:
        settings.validate()
        _stdout_outputs(plot_out, json_out, csv_out)
        for out in (json_out, csv_out, plot_out):
            if out is not None and not _is_stdout(out):
                check_output_path(out, model)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("preparing", total=None)

            def progress(desc: str, done: int, total: int) -> None:
                bar.update(task, description=desc, completed=done, total=total)

            report = profile_model(model, settings, progress)
        _render_profile(report)
        if json_out:
            _write_out(json_out, lambda path: save_json(report, path))
        _write_merged([report], csv_out=csv_out, plot_out=plot_out)
    except AcmixDeployError as exc:
        _fail(exc)
    finally:
        console.file = None  # back to the standard output of the moment (rich's default)


def _is_stdout(path: Optional[Path]) -> bool:
    return path is not None and str(path) == "-"


def _stdout_outputs(plot_out: Optional[Path], *outs: Optional[Path]) -> None:
    """``-`` means standard output for the text views; the tables shown go to standard error then."""
    if _is_stdout(plot_out):
        raise AcmixDeployError("--plot writes a PNG file; '-' (standard output) is for --json, --csv and --markdown")
    if sum(_is_stdout(o) for o in outs) > 1:
        raise AcmixDeployError("only one of --json, --csv and --markdown can be '-' (standard output)")
    if any(_is_stdout(o) for o in outs):
        console.file = sys.stderr  # undone (console.file = None) when the command ends


def _write_out(path: Path, save) -> None:
    """``save(path)`` and say so; for ``-``, save to a temp file and copy its text to standard output."""
    if not _is_stdout(path):
        console.print(f"wrote {_safe(save(path))}", highlight=False)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stdout"
        save(out)
        sys.stdout.write(out.read_text())
        sys.stdout.flush()


def _write_merged(reports: list, csv_out: Optional[Path] = None, plot_out: Optional[Path] = None,
                  markdown_out: Optional[Path] = None) -> None:
    """Write the CSV / plot / Markdown views of one or more profile reports, each atomically."""
    from .util import atomic_write
    from .profiling import markdown_table, plot_reports, save_csv

    if csv_out:
        _write_out(csv_out, lambda path: save_csv(reports, path))
    if plot_out:
        console.print(f"wrote {plot_reports(reports, plot_out)}")
    if markdown_out:
        text = markdown_table(reports)
        _write_out(markdown_out, lambda path: atomic_write(path, lambda tmp: Path(tmp).write_text(text)))


@app.command()
def report(
    reports: list[Path] = typer.Argument(..., help="Profile reports (JSON) to merge, e.g. one per device."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write one latency-vs-batch plot (PNG)."),
    markdown_out: Optional[Path] = typer.Option(None, "--markdown", help="Write one Markdown table."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write all rows as CSV."),
) -> None:
    """Merge saved profile reports into one table (and plot)."""
    from .profiling import load_report, merged_rows

    try:
        loaded = [load_report(p) for p in reports]
        _stdout_outputs(plot_out, markdown_out, csv_out)
        for out in (plot_out, markdown_out, csv_out):
            if out is not None and not _is_stdout(out) and not out.parent.exists():
                raise AcmixDeployError(f"output directory {out.parent} does not exist")
        table = Table(title=f"{len(loaded)} report(s)")
        for col in ("device", "model", "backend", "form", "batch", "p50 ms", "p99 ms", "samples/s"):
            table.add_column(col, justify="right" if col in ("batch", "p50 ms", "p99 ms", "samples/s") else "left")
        for r in merged_rows(loaded):
            table.add_row(r["device"], str(r["arch"]), r["backend"], r.get("form") or "", str(r["batch"]),
                          f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['throughput_per_s']:.1f}")
        _print_table(table)
        _write_merged(loaded, csv_out=csv_out, plot_out=plot_out, markdown_out=markdown_out)
    except AcmixDeployError as exc:
        _fail(exc)
    finally:
        console.file = None  # back to the standard output of the moment (rich's default)


@app.command()
def demo(
    arch: str = typer.Option("acmix_resnet_tiny", "--arch", "-a", help="Model to train (see acmix_deploy.demo.DEMO_ARCHS)."),
    out_dir: Path = typer.Option(Path("acmix-demo"), "--out", "-o", help="Directory for the checkpoints."),
    epochs: int = typer.Option(12, "--epochs", min=1, help="Training epochs."),
    imgsz: int = typer.Option(16, "--imgsz", min=8, help="Digits are upsampled from 8x8 to this size."),
    k_att: int = typer.Option(3, "--k-att", help="Attention window of the ACmix blocks (ignored by other archs)."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
    aoti: bool = typer.Option(True, "--aoti/--no-aoti", help="Also compile the deploy form with AOTInductor (~1 min)."),
) -> None:
    """Train a small ACmix- (or X-volution-) ResNet on scikit-learn's digits, fold it, verify and time both forms."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .demo import DemoConfig, run_demo

    if threads:
        torch.set_num_threads(threads)
    cfg = DemoConfig(arch=arch, epochs=epochs, imgsz=imgsz, k_att=k_att, seed=seed, out_dir=out_dir,
                     export_aoti=aoti)
    try:
        cfg.validate()
    except AcmixDeployError as exc:
        _fail(exc)
    labels = {"train": "training (training form)", "fold": "folding + reloading", "export": "ONNX export",
              "aoti": "AOTInductor compile", "profile": "profiling both forms"}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        try:
            res = run_demo(cfg, progress)
        except EquivalenceError as exc:  # an exported form disagrees with torch: a failed check
            _fail(exc, code=1)
        except AcmixDeployError as exc:
            _fail(exc)

    table = Table(title=f"demo: {cfg.arch} on digits {imgsz}x{imgsz} ({res.n_train} train / {res.n_test} held out)")
    table.add_column("")
    table.add_column("training form", justify="right")
    table.add_column("deploy form", justify="right")
    table.add_row("held-out accuracy (torch)", f"{res.accuracy_train_form:.2%}", f"{res.accuracy_deploy_form:.2%}")
    table.add_row("parameters", _human(res.params[0]), _human(res.params[1]))
    table.add_row("MACs / image", _human(res.macs[0]), _human(res.macs[1]))
    for backend, b in sorted({(be, b) for be, _, b in res.latency_ms}):
        t_tr = res.latency_ms.get((backend, "training", b))
        t_dep = res.latency_ms[(backend, "deploy", b)]
        if t_tr is None:
            table.add_row(f"p50 latency, {backend}, batch {b}", "", f"{t_dep:.2f} ms")
            continue
        speed = f"{t_tr / t_dep:.2f}x faster" if t_dep <= t_tr else f"{t_dep / t_tr:.2f}x slower"
        table.add_row(f"p50 latency, {backend}, batch {b}", f"{t_tr:.2f} ms", f"{t_dep:.2f} ms ({speed})")
    _print_table(table)
    same = "identical" if res.predictions_identical else "[bold red]DIFFERENT[/]"
    console.print(
        f"held-out predictions, training vs deploy form: {same}; logits max abs diff "
        f"{res.logits_diff['max_abs']:.2g} (relative {res.logits_diff['rel']:.2g})"
    )
    if res.onnx_path is not None:
        same_onnx = "identical" if res.onnx_predictions_identical else "[bold red]DIFFERENT[/]"
        console.print(
            f"held-out predictions, ONNX Runtime vs torch deploy form: {same_onnx}; logits vs training form "
            f"max abs diff {res.onnx_logits_diff['max_abs']:.2g} (relative {res.onnx_logits_diff['rel']:.2g})"
        )
    if res.aoti_path is not None:
        same_aoti = "identical" if res.aoti_predictions_identical else "[bold red]DIFFERENT[/]"
        console.print(
            f"held-out predictions, AOTInductor vs torch deploy form: {same_aoti}; logits vs training form "
            f"max abs diff {res.aoti_logits_diff['max_abs']:.2g} (relative {res.aoti_logits_diff['rel']:.2g})"
        )
    for note in res.notes:
        console.print(f"[dim]note: {escape(note)}[/]")
    written = [res.train_checkpoint, res.deploy_checkpoint, res.onnx_path, res.aoti_path, res.profile_json,
               res.profile_plot]
    console.print(f"training took {res.train_seconds:.0f} s; wrote " + ", ".join(str(p) for p in written if p))
    if not res.predictions_identical or False in (res.onnx_predictions_identical, res.aoti_predictions_identical):
        raise typer.Exit(1)


@app.command()
def serve(
    model: Path = typer.Argument(..., help="Model: .onnx, .pt2, .engine/.plan, or a checkpoint."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in the URLs (default: the file's stem)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="TCP port (0: a free one)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="onnxruntime, aoti, tensorrt, torch (default: by suffix)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    max_batch: int = typer.Option(8, "--max-batch", help="Most rows merged into one batch (1: no batching)."),
    batch_timeout_ms: float = typer.Option(2.0, "--batch-timeout-ms", help="Longest wait to fill a batch."),
    workers: int = typer.Option(1, "--workers", help="Batches run at once (inference threads)."),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", help="Largest request body; larger ones get 413."),
    max_inflight_mb: float = typer.Option(512.0, "--max-inflight-mb", help="Request bodies held at once; above: 503."),
    max_decodes: int = typer.Option(2, "--max-decodes", help="Requests decompressed / parsed at once (threads)."),
    max_connections: int = typer.Option(256, "--max-connections", help="Open connections; further ones get 503."),
    read_timeout_s: float = typer.Option(10.0, "--read-timeout-s", help="Deadline for headers and each body chunk."),
    body_timeout_s: float = typer.Option(60.0, "--body-timeout-s", help="Deadline for a whole request body (408)."),
    keep_alive_s: float = typer.Option(5.0, "--keep-alive-s", help="Idle keep-alive connections closed after this."),
    graceful_timeout_s: float = typer.Option(30.0, "--graceful-timeout-s", help="SIGTERM: longest wait for requests in flight."),
    threads: Optional[int] = typer.Option(None, "--threads", help="ONNX Runtime intra-op threads per batch."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture (bare state dicts, .pt2)."),
    imgsz: Optional[list[int]] = typer.Option(None, "--imgsz", help="Input size of checkpoints and .pt2 packages: N or H W."),
    model_def: Optional[str] = typer.Option(None, "--model-def", help="Your own model: FILE.py:FACTORY or package.module:FACTORY (a moved definition, or a bare state dict)."),
    model_args: Optional[str] = typer.Option(None, "--model-args", help="Keyword arguments of the factory, as a JSON object."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve a model over HTTP with the KServe v2 / Triton inference protocol (dynamic batching, /metrics)."""
    from .serving.app import ServeSettings, serve as run_server

    settings = ServeSettings(name=name or model.name.split(".")[0], host=host, port=port, max_batch=max_batch,
                             batch_timeout_ms=batch_timeout_ms, workers=workers, max_body_mb=max_body_mb,
                             max_inflight_mb=max_inflight_mb, max_decodes=max_decodes, max_connections=max_connections,
                             read_timeout_s=read_timeout_s, body_timeout_s=body_timeout_s, keep_alive_s=keep_alive_s,
                             graceful_timeout_s=graceful_timeout_s)

    def announce(loaded, address) -> None:
        console.print(f"serving {_safe(loaded.path.name)} as {_safe(repr(settings.name))} ({loaded.runner.name}; input "
                      f"{loaded.input.name} -1x{'x'.join(map(str, loaded.input.shape))}) on "
                      f"http://{address[0]}:{address[1]}/v2/models/{settings.name}", highlight=False, soft_wrap=True)

    try:
        if not model.exists():
            raise AcmixDeployError(f"model {model} does not exist")
        run_server(model, settings, backend=backend, device=device, arch=arch, imgsz=_imgsz(imgsz), threads=threads,
                   log_level=log_level, on_ready=announce, model_def=model_def, model_args=model_args)
    except AcmixDeployError as exc:
        _fail(exc)


if __name__ == "__main__":  # pragma: no cover
    app()
