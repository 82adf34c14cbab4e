"""The runner interface."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import AcmixDeployError

__all__ = ["Runner", "check_single_output", "run_outputs", "single_output"]


@runtime_checkable
class Runner(Protocol):
    """``name`` says what runs (``torch:deploy``, ``onnxruntime:CPUExecutionProvider``, ...)."""

    name: str

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Run one batch (float32, NCHW) and return the output (single-output models only)."""
        ...

    def infer_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        """Run one batch and return every output, in the order of :func:`acmix_deploy.outputs.flatten_outputs`."""
        ...


def run_outputs(runner, x: np.ndarray) -> list[np.ndarray]:
    """``runner.infer_outputs(x)``, or ``[runner.infer(x)]`` for a runner written before several outputs existed
    (benchmark wrappers, test stand-ins): callers that handle any number of outputs go through here."""
    fn = getattr(runner, "infer_outputs", None)
    return list(fn(x)) if fn is not None else [runner.infer(x)]


def check_single_output(count: int, what: str, names: list[str] | None = None) -> None:
    """Refuse ``infer`` on a model with ``count`` != 1 outputs: returning the first silently would hand a
    detector's raw boxes to code that expects the whole result."""
    if count != 1:
        listed = f" ({', '.join(names)})" if names else ""
        raise AcmixDeployError(
            f"{what} has {count} outputs{listed}; infer() returns a single output: use infer_outputs(x), "
            "which returns all of them in order"
        )


def single_output(outputs: list[np.ndarray], what: str, names: list[str] | None = None) -> np.ndarray:
    """The one output of a single-output model (see :func:`check_single_output`)."""
    check_single_output(len(outputs), what, names)
    return outputs[0]
