"""Polygraphy-style comparator: the same inputs through several runners, per-output errors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .analysis import OutputDiff, compare_outputs
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
        ref = torch.from_numpy(reference.infer(x))
        for runner in candidates:
            rows.append(Comparison(runner.name, x.shape[0], compare_outputs(ref, torch.from_numpy(runner.infer(x)))))
    return rows
