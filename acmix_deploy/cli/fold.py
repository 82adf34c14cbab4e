"""``reparam``: fold a training checkpoint (registry model, your own model, or a trusted pickle) into deploy form."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import AcmixDeployError
from ._common import IMGSZ_HELP, _fail, _human, _imgsz, _print_table, _safe, _safe_imgsz, console, err_console


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
    from ..analysis import check_equivalence, count_macs, count_parameters
    from ..checkpoint import read_checkpoint, require_finite, save_checkpoint
    from ..pipeline import check_output_path, default_input_size
    from ..util import sha256_file
    from ..reparam import reparameterize
    from ..user_model import save_user_checkpoint

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


def _reparam_pickle(ckpt, out, code_path, size_arg, check, batch, tol, seed, allow_partial) -> None:
    """``reparam --trust-pickle``: fold every module of a pickled container and write it back, entries kept."""
    from ..pipeline import check_output_path
    from ..user_model import fold_pickled, load_pickled, pickled_meta, save_pickled

    try:
        check_output_path(out, ckpt)
        with console.status(f"unpickling {_safe(ckpt)} (trusted)"):
            obj = load_pickled(ckpt, [str(p) for p in code_path])
        with console.status("folding every module in the file"):
            folded, folds = fold_pickled(obj, size_arg, check=check, batch=batch, seed=seed, tol=tol)
    except AcmixDeployError as exc:
        _fail(exc)
    table = Table(title=f"{_safe(ckpt.name)}: modules folded")
    for col in ("entry", "dtype", "adopted", "BN via graph", "left", "worst output", "relative error"):
        table.add_column(col, justify="left" if col in ("entry", "dtype", "worst output") else "right")
    failed, notes = [], []
    for f in folds:
        _render_report(f.report, f" in {f.key}")
        rel = "" if f.diff is None else f"{f.diff.rel:.3g}"
        if f.diff is not None and f.diff.rel_float64 is not None:
            rel += f" (float64: {f.diff.rel_float64:.3g})"
        table.add_row(_safe(f.key), f.dtype, str(len(f.report.adopted)), str(len(f.report.pairs)),
                      str(len(f.report.leftovers)), escape(f.diff.output or "") if f.diff else "", rel)
        if f.diff is not None and not f.diff.within(tol):
            failed.append(f"{f.key}: {f.diff.summary()}")
        elif f.diff is not None and f.diff.rel_float64 is not None:
            notes.append(f"[yellow]note:[/] {_safe(f.key)}: the float32 relative error {f.diff.rel:.3g} is above "
                          f"--tol {tol:g}, but the fold redone in float64 agrees to {f.diff.rel_float64:.3g} and the "
                          "float32 deploy form is as close to the float64 result as the training form itself "
                          f"({f.diff.rounding_float32[1]:.3g} vs {f.diff.rounding_float32[0]:.3g}): the gap is the "
                          "network's own float32 rounding, not the fold")
    _print_table(table)
    for note in notes:
        console.print(note, highlight=False)
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
