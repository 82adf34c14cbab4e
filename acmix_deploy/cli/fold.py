"""``reparam``: fold a training checkpoint (registry model, your own model, or a trusted pickle) into deploy form."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import AcmixDeployError, EquivalenceError, IncompleteFoldError
from ._common import IMGSZ_HELP, _fail, _human, _print_table, _safe, _safe_imgsz, console


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
    for line in getattr(report, "unrecognised", ()):
        console.print(f"[yellow]not recognised:[/] {escape(line)}", highlight=False, soft_wrap=True)


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
    from ..pipeline import reparam_checkpoint

    size_arg = _safe_imgsz(imgsz)
    try:
        with console.status("reading") as status:
            def on_stage(text: str) -> None:
                status.update(_safe(text))

            res = reparam_checkpoint(ckpt, output, arch=arch, model_def=model_def, model_args=model_args,
                                     imgsz=size_arg, check=check, batch=batch, tol=tol, seed=seed,
                                     allow_partial=allow_partial, trust_pickle=trust_pickle, code_paths=code_path,
                                     on_stage=on_stage)
    except (EquivalenceError, IncompleteFoldError) as exc:
        # Nothing was written; show what was measured, then why (exit 1: a check failed).
        if getattr(exc, "result", None) is not None:
            (_render_pickled if trust_pickle else _render_reparam)(exc.result)
        _fail(exc, code=1)
    except AcmixDeployError as exc:
        _fail(exc)
    if trust_pickle:
        _render_pickled(res)
        console.print(f"wrote {_safe(res.written)} ({res.written.stat().st_size / 1e6:.1f} MB); entries kept as they "
                      f"were: {_safe(', '.join(res.kept)) or '(none)'}", highlight=False, soft_wrap=True)
        return
    if res.already_deploy:
        _render_notes(res.loaded.notes)
        console.print(f"{_safe(ckpt)} is already in deploy form ({_safe(res.loaded.arch)}); nothing to fold, "
                      "nothing written.", highlight=False)
        return
    _render_reparam(res)
    console.print(f"wrote {_safe(res.written)} ({res.written.stat().st_size / 1e6:.1f} MB)", highlight=False)


def _render_notes(notes) -> None:
    for note in notes:
        console.print(f"[dim]note: {_safe(note)}[/]", highlight=False, soft_wrap=True)


def _render_reparam(res) -> None:
    """The notes, the fold report and the training -> deploy table of a :class:`~acmix_deploy.pipeline.ReparamResult`."""
    _render_notes(res.loaded.notes)
    _render_report(res.report, "")
    size = "x".join(map(str, res.input_size))
    table = Table(title=f"{_safe(res.loaded.arch)}: training -> deploy", show_lines=False)
    table.add_column("")
    table.add_column("training", justify="right")
    table.add_column("deploy", justify="right")
    table.add_row("parameters", _human(res.params[0]), _human(res.params[1]))
    table.add_row(f"MACs @ {size}", _human(res.macs[0]), _human(res.macs[1]))
    table.add_row("fold time", "", f"{res.fold_seconds * 1000:.0f} ms")
    report, diff, tol = res.report, res.diff, res.tol
    if report.adopted or report.pairs:
        table.add_row("ACmix copies adopted", "", str(len(report.adopted)))
        table.add_row("BatchNorms folded via the graph", "", str(len(report.pairs)))
    if diff is not None:
        worst = f" ({escape(diff.output)})" if diff.output else ""
        table.add_row(f"max abs error (batch {res.batch}){worst}", "", f"{diff.max_abs:.3g}")
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
        table.add_row("check time", "", f"{res.check_seconds:.2f} s")
    _print_table(table)
    if diff is not None and diff.rel_float64 is not None and diff.within(tol):
        console.print(
            f"[yellow]note:[/] the float32 relative error {diff.rel:.3g} is above --tol {tol:g}, but the fold redone in "
            f"float64 agrees to {diff.rel_float64:.3g} and the float32 deploy form is as close to the float64 result as "
            f"the training form itself ({diff.rounding_float32[1]:.3g} vs {diff.rounding_float32[0]:.3g}): the gap "
            "is the network's own float32 rounding (large activations, e.g. untrained BatchNorm statistics), not the "
            "fold", highlight=False)


def _render_pickled(res) -> None:
    """Each folded module of a :class:`~acmix_deploy.pipeline.PickledReparamResult`: its report, then one table."""
    table = Table(title=f"{_safe(res.source.name)}: modules folded")
    for col in ("entry", "dtype", "adopted", "BN via graph", "left", "worst output", "relative error"):
        table.add_column(col, justify="left" if col in ("entry", "dtype", "worst output") else "right")
    notes = []
    for f in res.folds:
        _render_report(f.report, f" in {f.key}")
        rel = "" if f.diff is None else f"{f.diff.rel:.3g}"
        if f.diff is not None and f.diff.rel_float64 is not None:
            rel += f" (float64: {f.diff.rel_float64:.3g})"
        table.add_row(_safe(f.key), f.dtype, str(len(f.report.adopted)), str(len(f.report.pairs)),
                      str(len(f.report.leftovers)), escape(f.diff.output or "") if f.diff else "", rel)
        if f.diff is not None and f.diff.rel_float64 is not None and f.diff.within(res.tol):
            notes.append(f"[yellow]note:[/] {_safe(f.key)}: the float32 relative error {f.diff.rel:.3g} is above "
                         f"--tol {res.tol:g}, but the fold redone in float64 agrees to {f.diff.rel_float64:.3g} and the "
                         "float32 deploy form is as close to the float64 result as the training form itself "
                         f"({f.diff.rounding_float32[1]:.3g} vs {f.diff.rounding_float32[0]:.3g}): the gap is the "
                         "network's own float32 rounding, not the fold")
    _print_table(table)
    for note in notes:
        console.print(note, highlight=False)
