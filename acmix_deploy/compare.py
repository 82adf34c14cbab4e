"""Polygraphy-style comparator: the same inputs through several runners, per-output errors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .analysis import OutputDiff, compare_outputs
from .errors import AcmixDeployError
from .runtime import Runner

__all__ = ["Comparison", "compare_runners", "random_inputs"]


@dataclass
class Comparison:
    runner: str
    batch: int
    diff: OutputDiff


def random_inputs(input_size: tuple[int, ...], batches: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, *input_size, generator=gen).numpy() for b in batches]


def compare_runners(reference: Runner, candidates: list[Runner], inputs: list[np.ndarray]) -> list[Comparison]:
    """Errors of every candidate against ``reference`` (see :func:`acmix_deploy.analysis.compare_outputs`)."""
    rows = []
    for x in inputs:
        ref = torch.from_numpy(_run(reference, x))
        for runner in candidates:
            rows.append(Comparison(runner.name, x.shape[0], compare_outputs(ref, torch.from_numpy(_run(runner, x)))))
    return rows


def _run(runner: Runner, x: np.ndarray) -> np.ndarray:
    """``runner.infer(x)``, with a backend's own failure (a batch outside a static or profiled range, a
    device mismatch) turned into one clear error."""
    try:
        return runner.infer(x)
    except AcmixDeployError:
        raise
    except Exception as exc:  # ONNX Runtime, AOTInductor and TensorRT raise their own types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AcmixDeployError(f"{runner.name} failed on a batch of shape {tuple(x.shape)}: {first}") from None
