"""Polygraphy-style comparator: the same inputs through several runners, per-output errors.

A model may return several tensors (a detector's heads): every output is compared, one
:class:`Comparison` row per runner, batch and output, so a mismatch in any one of them shows (and fails a
check on the worst row).  Outputs are matched by position, the order of
:func:`acmix_deploy.outputs.flatten_outputs` that every exporter and runner keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .analysis import OutputDiff, compare_outputs
from .errors import AcmixDeployError, EquivalenceError
from .outputs import SINGLE_OUTPUT_NAME
from .runtime import Runner
from .runtime.base import run_outputs

__all__ = ["Comparison", "compare_runners", "random_inputs", "worst_rows"]


@dataclass
class Comparison:
    runner: str
    batch: int
    diff: OutputDiff
    output: str = SINGLE_OUTPUT_NAME  # which output of the model this row compares


def random_inputs(input_size: tuple[int, ...], batches: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, *input_size, generator=gen).numpy() for b in batches]


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


def worst_rows(rows: list[Comparison]) -> list[Comparison]:
    """The row with the largest relative error per runner and batch (all outputs folded into one)."""
    worst: dict[tuple[str, int], Comparison] = {}
    for r in rows:
        key = (r.runner, r.batch)
        if key not in worst or not r.diff.rel <= worst[key].diff.rel:
            worst[key] = r
    return list(worst.values())


def _run(runner: Runner, x: np.ndarray) -> list[np.ndarray]:
    """Every output of ``runner`` on ``x``, with a backend's own failure (a batch outside a static or profiled
    range, a device mismatch) turned into one clear error."""
    try:
        return run_outputs(runner, x)
    except AcmixDeployError:
        raise
    except Exception as exc:  # ONNX Runtime, AOTInductor and TensorRT raise their own types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AcmixDeployError(f"{runner.name} failed on a batch of shape {tuple(x.shape)}: {first}") from None
