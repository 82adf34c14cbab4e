"""``profile`` and ``report``: latency, throughput and memory per backend and batch; merged reports."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import AcmixDeployError
from ._common import _fail, _print_table, _safe, _safe_imgsz, console


def _render_profile(report: dict) -> None:
    dev = report["device"]
    where = dev.get("gpu") or f"{dev['cpu']}, {dev['threads']} thread{'' if dev['threads'] == 1 else 's'}"
    table = Table(title=f"{report['model'].get('arch') or report['model']['path']} on {where}")
    sizes = {tuple(r["imgsz"]) for r in report["results"] if r.get("imgsz")}
    layouts = any(r.get("conv_layout") for r in report["results"])
    cols = ("backend", "form", *(("conv layout",) if layouts else ()), *(("size",) if len(sizes) > 1 else ()), "batch", "mean ms", "std", "p50", "p90",
            "p99", "samples/s", "peak MB")
    for col in cols:
        table.add_column(col, justify="left" if col in ("backend", "form", "conv layout") else "right")
    for r in report["results"]:
        peak = "" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
        size = ("x".join(map(str, r["imgsz"])),) if len(sizes) > 1 else ()
        layout = (r.get("conv_layout") or "",) if layouts else ()
        table.add_row(r["backend"], r["form"], *layout, *size, str(r["batch"]), f"{r['mean_ms']:.2f}", f"{r['std_ms']:.2f}",
                      f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
                      f"{r['throughput_per_s']:.1f}", peak)
    _print_table(table)
    for row in report.get("compare_forms", []):
        layout = f", conv paths {row['conv_layout']}" if row.get("conv_layout") else ""
        console.print(f"[bold]training / deploy[/] ({row['backend']}{layout}, batch {row['batch']}, medians): "
                      f"{row['training_over_deploy']:.2f}x")
    for row in report.get("compare_conv_layouts", []):
        size = "x".join(map(str, row["imgsz"]))
        console.print(f"[bold]channels-first / channels-last[/] (torch {row['form']}, batch {row['batch']}, {size}, "
                      f"medians, interleaved): {row['channels_first_over_channels_last']:.2f}x")
    for label, ops in report.get("layers", {}).items():
        lt = Table(title=f"top operators: {label}")
        for col in ("operator", "calls/run", "ms/run", "%"):
            lt.add_column(col, justify="left" if col == "operator" else "right")
        for op in ops:
            lt.add_row(escape(op["name"]), str(op["calls"]), f"{op['ms_per_run']:.3f}", f"{op['percent']:.1f}")
        _print_table(lt)
    for note in report.get("notes", []):
        console.print(f"[dim]note: {note}[/]")


def profile(
    model: Path = typer.Argument(..., help="Checkpoint (training or deploy form), ONNX model, .pt2 package or TensorRT engine."),
    backend: list[str] = typer.Option(None, "--backend", "-b", help="torch, torch-compile, onnxruntime, openvino, aoti, tensorrt (repeatable; an .onnx file takes onnxruntime and openvino) (default: the file's: torch for checkpoints, onnxruntime for .onnx, openvino for .xml, aoti for .pt2, tensorrt for .engine)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    batch: list[int] = typer.Option([1], "--batch", help="Batch sizes (repeatable)."),
    imgsz: Optional[list[str]] = typer.Option(
        None, "--imgsz", help="Input size: N (square) or H W (default: the model's); or several sizes to sweep, "
        "each N or HxW, comma separated or repeated (--imgsz 224,640x384): a checkpoint, or a file exported "
        "with --dynamic-hw."),
    model_def: Optional[str] = typer.Option(None, "--model-def", help="Your own model: FILE.py:FACTORY or package.module:FACTORY (a moved definition, or a bare state dict)."),
    model_args: Optional[str] = typer.Option(None, "--model-args", help="Keyword arguments of the factory, as a JSON object."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed runs before timing."),
    iters: int = typer.Option(30, "--iters", help="Timed runs (ignored with --seconds)."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Time for this long instead of --iters."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch and ONNX Runtime."),
    specialize: int = typer.Option(4, "--specialize", min=0, help="A --dynamic-hw graph in onnxruntime or openvino: each size runs in a session fixed to it, as serve does (0: the general session, to time the dynamic graph itself)."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture (needed for bare state dicts)."),
    compare_forms: bool = typer.Option(False, "--compare-forms", help="Time training and deploy forms side by side."),
    conv_layout: Optional[list[str]] = typer.Option(
        None, "--conv-layout", help="torch on the CPU: run the deploy form's convolution paths on this memory layout: "
        "auto (the default rule, or ACMIX_DEPLOY_CONV_LAYOUT), channels_last or channels_first; repeat to time "
        "several interleaved, call by call (--conv-layout channels_first --conv-layout channels_last)."),
    layers: bool = typer.Option(False, "--layers", help="Show the top operators by time."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write the results as CSV."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write latency vs batch as PNG."),
) -> None:
    """Measure latency, throughput and peak memory per backend and batch size on this device."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..pipeline import check_output_path
    from ..profiling import ProfileSettings, profile_model, save_json

    single, sizes = _profile_sizes(imgsz)
    settings = ProfileSettings(
        backends=tuple(backend or ()), batches=tuple(batch), imgsz=single, sizes=sizes, warmup=warmup, iters=iters,
        seconds=seconds, threads=threads, device=device, compare_forms=compare_forms, layers=layers, arch=arch,
        model_def=model_def, model_args=model_args, specialize=specialize, conv_layouts=tuple(conv_layout or ()),
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


def _profile_sizes(values: Optional[list[str]]):
    """``--imgsz`` of profile: ``N`` or ``H W`` (one size, as elsewhere), or sizes ``N``/``HxW`` separated by
    commas or repeated (a sweep).  Returns ``(imgsz, sizes)``: one of them set."""
    if not values:
        return None, ()
    if all(v.strip().isdigit() for v in values) and len(values) <= 2:
        return _safe_imgsz([int(v) for v in values]), ()
    sizes = []
    for token in (t.strip() for v in values for t in v.split(",")):
        h, sep, w = token.lower().partition("x")
        if not h.isdigit() or (sep and not w.isdigit()) or int(h) < 1 or (sep and int(w) < 1):
            _fail(AcmixDeployError(f"--imgsz: {token!r} is not a size; give N or HxW, e.g. --imgsz 224,640x384"))
        sizes.append((int(h), int(w) if sep else int(h)))
    return None, tuple(dict.fromkeys(sizes))


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
    from ..util import atomic_write
    from ..profiling import markdown_table, plot_reports, save_csv

    if csv_out:
        _write_out(csv_out, lambda path: save_csv(reports, path))
    if plot_out:
        console.print(f"wrote {plot_reports(reports, plot_out)}")
    if markdown_out:
        text = markdown_table(reports)
        _write_out(markdown_out, lambda path: atomic_write(path, lambda tmp: Path(tmp).write_text(text)))


def report(
    reports: list[Path] = typer.Argument(..., help="Profile reports (JSON) to merge, e.g. one per device."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write one latency-vs-batch plot (PNG)."),
    markdown_out: Optional[Path] = typer.Option(None, "--markdown", help="Write one Markdown table."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write all rows as CSV."),
) -> None:
    """Merge saved profile reports into one table (and plot)."""
    from ..profiling import load_report, merged_rows

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
