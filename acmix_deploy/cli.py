"""The ``acmix-deploy`` command line: thin Typer commands over the library.

Exit codes: 0 success, 1 a check failed (outputs differ beyond tolerance),
2 bad input (missing or corrupt file, wrong architecture, bad argument).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import AcmixDeployError, EquivalenceError

app = typer.Typer(
    name="acmix-deploy",
    help="Fold ACmix / X-volution models into deployable form, check them, and ship them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _fail(exc: Exception, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


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
        doc = (model_entrypoint(name).__doc__ or "").strip().splitlines()[0]
        table.add_row(name, doc)
    console.print(table)


@app.command()
def info(
    ckpt: Path = typer.Argument(..., help="Checkpoint file (ours, a bare state dict, or a wrapped one)."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture, for files that do not record it."),
) -> None:
    """Describe a checkpoint: architecture, form, parameters, keys."""
    from .analysis import count_parameters
    from .checkpoint import read_checkpoint
    from .modules import ACmix, ACmixDeploy, XVolution, XVolutionDeploy

    try:
        loaded = read_checkpoint(ckpt, arch)
    except AcmixDeployError as exc:
        _fail(exc)
    model = loaded.model
    sd = model.state_dict()
    prefixes: dict[str, int] = {}
    for k in sd:
        prefixes[k.split(".")[0]] = prefixes.get(k.split(".")[0], 0) + 1
    table = Table(show_header=False, title=str(ckpt))
    table.add_row("architecture", loaded.arch)
    table.add_row("arguments", ", ".join(f"{k}={v}" for k, v in loaded.arch_args.items()) or "(defaults)")
    table.add_row("form", "deploy (folded)" if loaded.deploy else "training")
    table.add_row("file format", loaded.source_format)
    table.add_row("parameters", f"{count_parameters(model):,}")
    table.add_row("ACmix blocks", str(sum(isinstance(m, (ACmix, ACmixDeploy)) for m in model.modules())))
    n_xvolution = sum(isinstance(m, (XVolution, XVolutionDeploy)) for m in model.modules())
    if n_xvolution:
        table.add_row("X-volution blocks", str(n_xvolution))
    table.add_row("tensors", f"{len(sd)} ({', '.join(f'{p}: {n}' for p, n in prefixes.items())})")
    table.add_row("input size", "x".join(map(str, model.default_cfg["input_size"])))
    for key, value in loaded.meta.items():
        table.add_row(f"meta.{key}", str(value))
    for note in loaded.notes:
        table.add_row("note", note)
    console.print(table)


@app.command()
def reparam(
    ckpt: Path = typer.Argument(..., help="Training checkpoint to fold."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture (needed for bare state dicts)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Deploy checkpoint to write [default: CKPT.deploy.pth]."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare outputs of both forms before writing."),
    imgsz: Optional[int] = typer.Option(None, "--imgsz", help="Input size of the check [default: the arch's]."),
    batch: int = typer.Option(2, "--batch", min=1, help="Batch size of the check."),
    tol: float = typer.Option(1e-5, "--tol", help="Largest accepted relative error, max|a-b| / max|a| (float32)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random check input."),
) -> None:
    """Fold a training checkpoint into its deploy form, check it, and write it atomically."""
    from .analysis import check_equivalence, count_macs, count_parameters
    from .checkpoint import read_checkpoint, save_checkpoint
    from .pipeline import sha256_file
    from .reparam import foldable_leftovers, reparameterize_model

    out = output or ckpt.with_name(ckpt.stem + ".deploy.pth")
    try:
        if out.resolve() == ckpt.resolve():
            raise AcmixDeployError(f"output {out} is the input checkpoint; choose another path with -o")
        if not out.parent.exists():
            raise AcmixDeployError(f"output directory {out.parent} does not exist")
        if imgsz is not None and imgsz < 1:
            raise AcmixDeployError(f"--imgsz must be positive, got {imgsz}")
        with console.status(f"reading {ckpt}"):
            loaded = read_checkpoint(ckpt, arch)
        for note in loaded.notes:
            console.print(f"[dim]note: {note}[/]")
        if loaded.deploy:
            console.print(f"{ckpt} is already in deploy form ({loaded.arch}); nothing to fold, nothing written.")
            return
        model = loaded.model
        t0 = time.perf_counter()
        deploy = reparameterize_model(model)
        fold_s = time.perf_counter() - t0
        left = foldable_leftovers(deploy)
        if left:
            console.print(f"[yellow]warning:[/] not folded: {', '.join(left[:5])}")
        c = model.default_cfg["input_size"][0]
        size = imgsz or model.default_cfg["input_size"][-1]
        input_size = (c, size, size)
        diff = None
        if check:
            with console.status("checking outputs of both forms"):
                t1 = time.perf_counter()
                diff = check_equivalence(model, deploy, input_size, batch=batch, seed=seed)
                check_s = time.perf_counter() - t1
        macs = (count_macs(model, input_size), count_macs(deploy, input_size))
    except AcmixDeployError as exc:
        _fail(exc)

    table = Table(title=f"{loaded.arch}: training -> deploy", show_lines=False)
    table.add_column("")
    table.add_column("training", justify="right")
    table.add_column("deploy", justify="right")
    table.add_row("parameters", _human(count_parameters(model)), _human(count_parameters(deploy)))
    table.add_row(f"MACs @ {'x'.join(map(str, input_size))}", _human(macs[0]), _human(macs[1]))
    table.add_row("fold time", "", f"{fold_s * 1000:.0f} ms")
    if diff is not None:
        table.add_row(f"max abs error (batch {batch})", "", f"{diff.max_abs:.3g}")
        table.add_row("relative error", "", f"{diff.rel:.3g} (tol {tol:g})")
        table.add_row("check time", "", f"{check_s:.2f} s")
    console.print(table)
    if diff is not None and not diff.rel <= tol:
        err_console.print(
            f"[bold red]check failed:[/] relative error {diff.rel:.3g} is above --tol {tol:g}; nothing written"
        )
        raise typer.Exit(1)
    meta = {"source": ckpt.name, "source_sha256": sha256_file(ckpt)}
    if diff is not None:
        meta.update({"check_rel_error": diff.rel, "check_input": list(input_size)})
    try:
        save_checkpoint(deploy, out, meta=meta)
    except AcmixDeployError as exc:
        _fail(exc)
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


def _check_output_path(out: Path, src: Path) -> None:
    if out.resolve() == src.resolve():
        raise AcmixDeployError(f"output {out} is the input file; choose another path with -o")
    if not out.parent.exists():
        raise AcmixDeployError(f"output directory {out.parent} does not exist")
    if out.is_dir():
        raise AcmixDeployError(f"output {out} is a directory; give a file name")


def _comparison_table(title: str, rows) -> Table:
    table = Table(title=title)
    for col in ("runner", "batch", "max abs error", "relative error", "top-1 agreement"):
        table.add_column(col, justify="left" if col == "runner" else "right")
    for row in rows:
        top1 = "" if row.diff.top1_agreement is None else f"{row.diff.top1_agreement:.1%}"
        table.add_row(row.runner, str(row.batch), f"{row.diff.max_abs:.3g}", f"{row.diff.rel:.3g}", top1)
    return table


@app.command()
def export(
    ckpt: Path = typer.Argument(..., help="Checkpoint (training form is folded first, with a check)."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="Target format (see 'acmix-deploy formats')."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output file [default: CKPT with the format's suffix]."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture (needed for bare state dicts)."),
    imgsz: Optional[int] = typer.Option(None, "--imgsz", help="Input height and width [default: the arch's]."),
    batch: int = typer.Option(1, "--batch", help="Batch size of the example input (the fixed batch with --static)."),
    dynamic: bool = typer.Option(True, "--dynamic/--static", help="Dynamic batch axis."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset."),
    max_batch: int = typer.Option(256, "--max-batch", help="Largest batch of a dynamic AOTInductor package."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (AOTInductor compiles for this device)."),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="Simplify the graph with onnxslim."),
    fp16: bool = typer.Option(False, "--fp16", help="ONNX in float16, attention (softmax, mask, logits) kept in float32."),
    int8: bool = typer.Option(False, "--int8", help="ONNX with int8 Q/DQ convolutions, calibrated on --calib."),
    calib: Optional[str] = typer.Option(None, "--calib", help="INT8 calibration data: 'digits', a .npy file or an image folder."),
    calib_limit: int = typer.Option(256, "--calib-limit", help="Most calibration images used."),
    tol: Optional[float] = typer.Option(None, "--tol", help="Largest accepted relative error vs torch [1e-4; fp16 2e-2; int8 1.0]."),
    min_top1: Optional[float] = typer.Option(None, "--min-top1", help="Smallest accepted top-1 agreement with torch [fp16 0.99; int8 0.9]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random validation inputs."),
) -> None:
    """Export a model (folded first if needed), validate it against torch, write it atomically."""
    from .compare import compare_runners, random_inputs
    from .exporters import FORMATS, export_aoti, export_onnx
    from .exporters.onnx import MAX_OPSET, MIN_OPSET
    from .pipeline import check_device, prepare_deploy, sha256_file
    from .runtime import AotiRunner, OrtRunner, TorchRunner

    try:
        if fmt not in FORMATS:
            raise AcmixDeployError(f"unknown format {fmt!r}; available: {', '.join(FORMATS)}")
        if (fp16 or int8) and fmt != "onnx":
            raise AcmixDeployError("--fp16/--int8 apply to --format onnx (precision is written into the ONNX graph)")
        if fp16 and int8:
            raise AcmixDeployError("choose one of --fp16 and --int8")
        if int8 and not calib:
            raise AcmixDeployError("--int8 needs calibration data: --calib digits, --calib data.npy or --calib images/")
        if tol is None:
            tol = 2e-2 if fp16 else 1.0 if int8 else 1e-4
        if min_top1 is None:
            min_top1 = 0.9 if int8 else 0.99
        if batch < 1:
            raise AcmixDeployError(f"--batch must be positive, got {batch}")
        if not MIN_OPSET <= opset <= MAX_OPSET:
            raise AcmixDeployError(f"--opset {opset} is not supported; use {MIN_OPSET}..{MAX_OPSET}")
        check_device(device)
        if dynamic and not 1 <= batch <= max_batch:
            raise AcmixDeployError(f"--batch {batch} must lie in 1..--max-batch ({max_batch})")
        spec = FORMATS[fmt]
        out = output or ckpt.with_suffix((".fp16" if fp16 else ".int8" if int8 else "") + spec.suffix)
        if not ckpt.exists():
            raise AcmixDeployError(f"checkpoint {ckpt} does not exist")
        _check_output_path(out, ckpt)
        with console.status(f"reading and folding {ckpt}"):
            prep = prepare_deploy(ckpt, arch, imgsz)
        if prep.diff is not None:
            console.print(f"folded the training form in {prep.fold_seconds * 1000:.0f} ms "
                          f"(relative error vs training form {prep.diff.rel:.2g})")
        reference = TorchRunner(prep.deploy, name="torch:deploy", device=device if fmt == "aoti" else "cpu")
        batches = (batch,) if not dynamic else tuple(sorted({batch, min(batch + 2, max_batch)}))
        inputs = random_inputs(prep.input_size, batches, seed)
        calibration = None
        if int8:
            from .exporters.calibration import load_calibration

            cfg = prep.deploy.default_cfg
            calibration = load_calibration(calib, prep.input_size, cfg.get("mean"), cfg.get("std"), calib_limit)
            # Validate a quantized model on real data (up to 64 images): random noise says little
            # about its accuracy, and top-1 agreement needs more than a few samples.
            inputs = [calibration[:64]]
        rows: list = []
        make_runner = OrtRunner if fmt == "onnx" else (lambda p: AotiRunner(p, device))
        title = f"{fmt} vs torch (deploy form)"

        def validate(tmp: Path) -> None:
            rows.extend(compare_runners(reference, [make_runner(tmp)], inputs))
            worst = max(r.diff.rel for r in rows)
            if not worst <= tol:
                console.print(_comparison_table(title, rows))
                raise EquivalenceError(f"the exported model's output differs by {worst:.3g} (relative), above --tol {tol:g}")
            agreement = min((r.diff.top1_agreement for r in rows if r.diff.top1_agreement is not None), default=1.0)
            if (fp16 or int8) and agreement < min_top1:
                console.print(_comparison_table(title, rows))
                raise EquivalenceError(f"top-1 agreement {agreement:.1%} is below --min-top1 {min_top1:.1%}")

        if fmt == "onnx":
            meta = {
                "arch": prep.loaded.arch, "arch_args": prep.loaded.arch_args, "source": ckpt.name,
                "source_sha256": sha256_file(ckpt), "package_version": __version__,
                "mean": list(prep.deploy.default_cfg.get("mean", ())), "std": list(prep.deploy.default_cfg.get("std", ())),
            }
            with console.status("exporting ONNX and validating it with ONNX Runtime"):
                res = export_onnx(prep.deploy, out, prep.input_size, batch=batch, dynamic=dynamic, opset=opset,
                                  simplify=simplify, metadata=meta, validate=validate, fp16=fp16,
                                  int8_calibration=calibration,
                                  calibration_cache=out.with_suffix(".calib.json") if int8 else None)
        else:
            with console.status(f"compiling with AOTInductor for {device} (minutes for large models)"):
                res = export_aoti(prep.deploy, out, prep.input_size, batch=batch, dynamic=dynamic,
                                  max_batch=max_batch, device=device, validate=validate)
    except EquivalenceError as exc:
        _fail(exc, code=1)
    except AcmixDeployError as exc:
        _fail(exc)
    console.print(_comparison_table(title, rows))
    if fmt == "onnx":
        ops = ", ".join(f"{op} {n}" for op, n in res.op_histogram.items())
        shape = "x".join(["N" if dynamic else str(batch), *map(str, prep.input_size)])
        precision = "fp16 (attention fp32)" if res.fp16 else "int8 Q/DQ (attention fp32)" if res.int8 else "fp32"
        console.print(f"graph: {res.nodes} nodes, opset {res.opset}, {precision}, input {shape}; ops: {ops}")
    else:
        span = f"batch 1..{res.max_batch}" if dynamic else f"batch {batch}"
        console.print(f"AOTInductor package for {res.device}, {span}")
    console.print(f"wrote {res.path} ({res.size_bytes / 1e6:.1f} MB) in {res.seconds:.1f} s")


@app.command()
def formats() -> None:
    """List the export formats."""
    from .exporters import FORMATS

    table = Table("format", "suffix", "needs", "install", "what it is")
    for f in FORMATS.values():
        install = escape(f'pip install "acmix-deploy[{f.extra}]"') if f.extra else "(base install)"
        table.add_row(f.name, f.suffix, f.needs, install, f.description)
    console.print(table)


@app.command()
def compare(
    ckpt: Path = typer.Argument(..., help="Checkpoint: the reference (its training form when it has one)."),
    models: list[Path] = typer.Argument(None, help="Exported models to compare (.onnx, .pt2)."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture (needed for bare state dicts)."),
    imgsz: Optional[int] = typer.Option(None, "--imgsz", help="Input height and width [default: the arch's]."),
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
        prep = prepare_deploy(ckpt, arch, imgsz, check=False)
        if prep.training is not None:
            reference = TorchRunner(prep.training, name="torch:training")
            candidates = [TorchRunner(prep.deploy, name="torch:deploy")]
        else:
            reference = TorchRunner(prep.deploy, name="torch:deploy")
            candidates = []
        for path in models or []:
            if path.suffix not in (".onnx", ".pt2"):
                raise AcmixDeployError(f"{path}: give .onnx (ONNX Runtime) or .pt2 (AOTInductor) models")
            runner = OrtRunner(path) if path.suffix == ".onnx" else AotiRunner(path)
            runner.name = f"{runner.name} ({path.name})"
            candidates.append(runner)
        if not candidates:
            raise AcmixDeployError("nothing to compare: give a training checkpoint or exported models")
        rows = compare_runners(reference, candidates, random_inputs(prep.input_size, tuple(batch), seed))
    except AcmixDeployError as exc:
        _fail(exc)
    console.print(_comparison_table(f"against {reference.name}, input {'x'.join(map(str, prep.input_size))}", rows))
    worst = max(r.diff.rel for r in rows)
    if not worst <= tol:
        err_console.print(f"[bold red]comparison failed:[/] relative error {worst:.3g} above --tol {tol:g}")
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
    console.print(table)
    for row in report.get("compare_forms", []):
        console.print(f"[bold]training / deploy[/] ({row['backend']}, batch {row['batch']}, medians): "
                      f"{row['training_over_deploy']:.2f}x")
    for label, ops in report.get("layers", {}).items():
        lt = Table(title=f"top operators: {label}")
        for col in ("operator", "calls/run", "ms/run", "%"):
            lt.add_column(col, justify="left" if col == "operator" else "right")
        for op in ops:
            lt.add_row(escape(op["name"]), str(op["calls"]), f"{op['ms_per_run']:.3f}", f"{op['percent']:.1f}")
        console.print(lt)
    for note in report.get("notes", []):
        console.print(f"[dim]note: {note}[/]")


@app.command()
def profile(
    model: Path = typer.Argument(..., help="Checkpoint (training or deploy form) or ONNX model."),
    backend: list[str] = typer.Option(["torch"], "--backend", "-b", help="torch, torch-compile, onnxruntime (repeatable)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    batch: list[int] = typer.Option([1], "--batch", help="Batch sizes (repeatable)."),
    imgsz: Optional[int] = typer.Option(None, "--imgsz", help="Input height and width [default: the arch's]."),
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

    from .profiling import ProfileSettings, profile_model, save_json

    settings = ProfileSettings(
        backends=tuple(backend), batches=tuple(batch), imgsz=imgsz, warmup=warmup, iters=iters, seconds=seconds,
        threads=threads, device=device, compare_forms=compare_forms, layers=layers, arch=arch,
    )
    try:
        settings.validate()
        for out in (json_out, csv_out, plot_out):
            if out is not None:
                _check_output_path(out, model)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("preparing", total=None)

            def progress(desc: str, done: int, total: int) -> None:
                bar.update(task, description=desc, completed=done, total=total)

            report = profile_model(model, settings, progress)
        _render_profile(report)
        if json_out:
            console.print(f"wrote {save_json(report, json_out)}")
        _write_merged([report], csv_out=csv_out, plot_out=plot_out)
    except AcmixDeployError as exc:
        _fail(exc)


def _write_merged(reports: list, csv_out: Optional[Path] = None, plot_out: Optional[Path] = None,
                  markdown_out: Optional[Path] = None) -> None:
    """Write the CSV / plot / Markdown views of one or more profile reports, each atomically."""
    from .checkpoint import atomic_write
    from .profiling import markdown_table, plot_reports, save_csv

    if csv_out:
        console.print(f"wrote {save_csv(reports, csv_out)}")
    if plot_out:
        console.print(f"wrote {plot_reports(reports, plot_out)}")
    if markdown_out:
        text = markdown_table(reports)
        console.print(f"wrote {atomic_write(markdown_out, lambda tmp: Path(tmp).write_text(text))}")


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
        for out in (plot_out, markdown_out, csv_out):
            if out is not None and not out.parent.exists():
                raise AcmixDeployError(f"output directory {out.parent} does not exist")
        table = Table(title=f"{len(loaded)} report(s)")
        for col in ("device", "model", "backend", "form", "batch", "p50 ms", "p99 ms", "samples/s"):
            table.add_column(col, justify="right" if col in ("batch", "p50 ms", "p99 ms", "samples/s") else "left")
        for r in merged_rows(loaded):
            table.add_row(r["device"], str(r["arch"]), r["backend"], r.get("form") or "", str(r["batch"]),
                          f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['throughput_per_s']:.1f}")
        console.print(table)
        _write_merged(loaded, csv_out=csv_out, plot_out=plot_out, markdown_out=markdown_out)
    except AcmixDeployError as exc:
        _fail(exc)


@app.command()
def demo(
    arch: str = typer.Option("acmix_resnet_tiny", "--arch", "-a", help="Model to train (see acmix_deploy.demo.DEMO_ARCHS)."),
    out_dir: Path = typer.Option(Path("acmix-demo"), "--out", "-o", help="Directory for the checkpoints."),
    epochs: int = typer.Option(12, "--epochs", min=1, help="Training epochs."),
    imgsz: int = typer.Option(16, "--imgsz", min=8, help="Digits are upsampled from 8x8 to this size."),
    k_att: int = typer.Option(3, "--k-att", help="Attention window of the ACmix blocks (ignored by other archs)."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads [default: torch's]."),
) -> None:
    """Train a small ACmix- (or X-volution-) ResNet on scikit-learn's digits, fold it, verify and time both forms."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .demo import DemoConfig, run_demo

    if threads:
        torch.set_num_threads(threads)
    cfg = DemoConfig(arch=arch, epochs=epochs, imgsz=imgsz, k_att=k_att, seed=seed, out_dir=out_dir)
    try:
        cfg.validate()
    except AcmixDeployError as exc:
        _fail(exc)
    labels = {"train": "training (training form)", "fold": "folding + reloading", "export": "ONNX export",
              "profile": "profiling both forms"}
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
    console.print(table)
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
    for note in res.notes:
        console.print(f"[dim]note: {escape(note)}[/]")
    written = [res.train_checkpoint, res.deploy_checkpoint, res.onnx_path, res.profile_json, res.profile_plot]
    console.print(f"training took {res.train_seconds:.0f} s; wrote " + ", ".join(str(p) for p in written if p))
    if not res.predictions_identical or res.onnx_predictions_identical is False:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
