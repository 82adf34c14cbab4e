"""Polygraphy-style comparator: the same inputs through several runners, per-output errors.

A model may return several tensors (a detector's heads): every output is compared, one
:class:`Comparison` row per runner, batch and output, so a mismatch in any one of them shows (and fails a
check on the worst row).  Outputs are matched by position, the order of
:func:`acmix_deploy.outputs.flatten_outputs` that every exporter and runner keeps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .analysis import OutputDiff, compare_outputs
from .errors import AcmixDeployError, ConfigError, EquivalenceError
from .outputs import SINGLE_OUTPUT_NAME
from .pipeline import prepare_deploy
from .runtime import Runner, TorchRunner
from .runtime.loader import BACKENDS, EXPORTED, open_runner
from .util import random_inputs

__all__ = ["Comparison", "FileComparison", "compare_files", "compare_runners", "random_inputs", "worst_rows"]


@dataclass
class Comparison:
    runner: str
    batch: int
    diff: OutputDiff
    output: str = SINGLE_OUTPUT_NAME  # which output of the model this row compares


def _names(runner: Runner, count: int) -> list[str] | None:
    names = getattr(runner, "output_names", None)
    return list(names) if names and len(names) == count else None


def compare_runners(reference: Runner, candidates: list[Runner], inputs: list[np.ndarray]) -> list[Comparison]:
    """Errors of every candidate against ``reference`` (see :func:`acmix_deploy.analysis.compare_outputs`).

    One row per input batch, candidate and output.  A candidate that returns another number of outputs
    than the reference, or an output of another shape, raises :class:`EquivalenceError`.  Rows are named by
    the candidate's output names (an exported file's, which ``--output-names`` may have set), else the
    reference's.
    """
    rows = []
    for x in inputs:
        ref = _run(reference, x)
        for runner in candidates:
            got = _run(runner, x)
            if len(got) != len(ref):
                raise EquivalenceError(
                    f"{runner.name} returns {len(got)} output(s) where {reference.name} returns {len(ref)}; "
                    "they are not the same model (or not exported from it)")
            names = _names(runner, len(ref)) or _names(reference, len(ref)) or (
                [SINGLE_OUTPUT_NAME] if len(ref) == 1 else [f"output{i}" for i in range(len(ref))])
            for name, a, b in zip(names, ref, got):
                a, b = np.asarray(a), np.asarray(b)
                if a.shape != b.shape:
                    raise EquivalenceError(f"{runner.name}: output {name} has shape {b.shape} where "
                                           f"{reference.name} gives {a.shape} (batch {x.shape[0]})")
                diff = compare_outputs(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(b)))
                rows.append(Comparison(runner.name, x.shape[0], diff, name))
    return rows


@dataclass
class FileComparison:
    reference: str  # the reference runner's name
    input_size: tuple[int, ...]  # (C, H, W) of the inputs
    rows: list[Comparison]


def compare_files(ckpt: str | os.PathLike, models: list[str | os.PathLike] | tuple = (), arch: str | None = None,
                  imgsz: int | tuple[int, int] | None = None, batches: tuple[int, ...] = (1, 3), seed: int = 0,
                  model_def: str | None = None, model_args: str | dict | None = None,
                  onnx_backends: tuple[str, ...] = ("onnxruntime",)) -> FileComparison:
    """``acmix-deploy compare``: the checkpoint's training form (else its deploy form) is the reference; its
    deploy form (when folded here) and every exported file in ``models`` are compared against it on random
    inputs, one batch per entry of ``batches``.

    Exported files are opened by :func:`acmix_deploy.runtime.loader.open_runner` (its suffix table, exported
    formats only), each on its own device; rows name them ``runner (file name)``.  ``onnx_backends``: the
    backends every ``.onnx`` file runs in (``("onnxruntime", "openvino")`` compares both on one file).
    """
    batches = tuple(batches)
    if not batches or any(b < 1 for b in batches):
        raise ConfigError(f"batch sizes must be positive, got {list(batches)}")
    prep = prepare_deploy(Path(ckpt), arch, imgsz, check=False, model_def=model_def, model_args=model_args)
    if prep.training is not None:
        reference = TorchRunner(prep.training, name="torch:training", input_size=prep.input_size)
        candidates: list[Runner] = [TorchRunner(prep.deploy, name="torch:deploy", input_size=prep.input_size)]
    else:
        reference = TorchRunner(prep.deploy, name="torch:deploy", input_size=prep.input_size)
        candidates = []
    onnx_backends = tuple(dict.fromkeys(onnx_backends))
    wrong = [b for b in onnx_backends if ".onnx" not in BACKENDS.get(b, ())]
    if not onnx_backends or wrong:
        raise ConfigError(f"{{onnx_backends}} takes backends that run .onnx files "
                          f"({', '.join(b for b in EXPORTED if '.onnx' in BACKENDS[b])}), got {list(onnx_backends)}",
                          params=["onnx_backends"])
    for path in models:
        path = Path(path)
        is_onnx = path.suffix.lower() == ".onnx"
        for backend in onnx_backends if is_onnx else (None,):
            runner = open_runner(path, backend=backend, allowed=EXPORTED, input_size=prep.input_size)
            runner.name = f"{runner.name} ({path.name})"
            candidates.append(runner)
    if not candidates:
        raise AcmixDeployError("nothing to compare: give a training checkpoint or exported models")
    rows = compare_runners(reference, candidates, random_inputs(prep.input_size, batches, seed))
    return FileComparison(reference.name, tuple(prep.input_size), rows)


def worst_rows(rows: list[Comparison]) -> list[Comparison]:
    """The row with the largest relative error per runner and batch (all outputs folded into one)."""
    worst: dict[tuple[str, int], Comparison] = {}
    for r in rows:
        key = (r.runner, r.batch)
        if key not in worst or not r.diff.rel <= worst[key].diff.rel:
            worst[key] = r
    return list(worst.values())


def _run(runner: Runner, x: np.ndarray) -> list[np.ndarray]:
    """Every output of ``runner`` on ``x``, with a backend's own failure (a device mismatch, a kernel that
    refuses the shape) turned into one clear error."""
    try:
        return runner.infer_outputs(x)
    except AcmixDeployError:
        raise
    except Exception as exc:  # ONNX Runtime, AOTInductor and TensorRT raise their own types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AcmixDeployError(f"{runner.name} failed on a batch of shape {tuple(x.shape)}: {first}") from None
