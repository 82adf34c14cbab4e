"""``demo``: train a small model on scikit-learn's digits, fold, export, verify and time it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import AcmixDeployError, EquivalenceError
from ._common import _fail, _human, _print_table, console


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

    from ..demo import DemoConfig, run_demo

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
