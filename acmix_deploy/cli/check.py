"""``compare``: the same inputs through every form and backend, errors against the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..errors import AcmixDeployError
from ._common import IMGSZ_HELP, _comparison_table, _fail, _imgsz, _print_table, err_console


def compare(
    ckpt: Path = typer.Argument(..., help="Checkpoint: the reference (its training form when it has one)."),
    models: list[Path] = typer.Argument(None, help="Exported models to compare (.onnx, .pt2, .engine/.plan, .xml)."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture (needed for bare state dicts)."),
    imgsz: Optional[list[int]] = typer.Option(None, "--imgsz", help=IMGSZ_HELP),
    model_def: Optional[str] = typer.Option(None, "--model-def", help="Your own model: FILE.py:FACTORY or package.module:FACTORY (a moved definition, or a bare state dict)."),
    model_args: Optional[str] = typer.Option(None, "--model-args", help="Keyword arguments of the factory, as a JSON object."),
    batch: list[int] = typer.Option([1, 3], "--batch", help="Batch sizes (repeat the option for several)."),
    tol: float = typer.Option(1e-4, "--tol", help="Largest accepted relative error (float32)."),
    seed: int = typer.Option(0, "--seed"),
    onnx_backend: list[str] = typer.Option(["onnxruntime"], "--onnx-backend", help="Backends each .onnx file runs in: onnxruntime, openvino (repeat the option for both)."),
) -> None:
    """Run the same inputs through every form and backend and report the errors against the reference."""
    from ..compare import compare_files

    try:
        res = compare_files(ckpt, models or [], arch=arch, imgsz=_imgsz(imgsz), batches=tuple(batch), seed=seed,
                            model_def=model_def, model_args=model_args, onnx_backends=tuple(onnx_backend))
    except AcmixDeployError as exc:
        _fail(exc)
    rows = res.rows
    _print_table(_comparison_table(f"against {res.reference}, input {'x'.join(map(str, res.input_size))}", rows))
    worst_row = max(rows, key=lambda r: r.diff.rel if r.diff.rel == r.diff.rel else float("inf"))  # NaN fails
    worst = worst_row.diff.rel
    if not worst <= tol:
        which = f" (output {escape(worst_row.output)}, {escape(worst_row.runner)})" if len({r.output for r in rows}) > 1 else ""
        err_console.print(f"[bold red]comparison failed:[/] relative error {worst:.3g}{which} above --tol {tol:g}")
        raise typer.Exit(1)
