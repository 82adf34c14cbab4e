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
    from ..compare import compare_runners, random_inputs
    from ..pipeline import prepare_deploy
    from ..runtime import AotiRunner, OrtRunner, TorchRunner

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
                from ..runtime.tensorrt import TrtRunner

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
