"""Exceptions raised by acmix-deploy.

Every error a user can cause (a bad file, a wrong architecture, an input the
operator cannot take) is an :class:`AcmixDeployError` with a message that says
what is wrong and what to do; the CLI prints the message and exits with code 2
instead of showing a traceback.
"""

from __future__ import annotations


class AcmixDeployError(Exception):
    """Base class of all errors that carry a message meant for the user."""


class ConfigError(AcmixDeployError, ValueError):
    """Invalid hyper-parameters or arguments (channels, kernel sizes, ...)."""


class InputShapeError(AcmixDeployError, ValueError):
    """An input tensor the operator cannot take (size, channels, stride)."""


class CheckpointError(AcmixDeployError):
    """A checkpoint file that is missing, corrupt, foreign or inconsistent."""


class UnknownArchitectureError(AcmixDeployError, KeyError):
    """An architecture name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class EquivalenceError(AcmixDeployError):
    """A deploy model whose outputs differ from the training form beyond tolerance."""


class MissingDependencyError(AcmixDeployError, ImportError):
    """An optional dependency (onnx, onnxruntime, tensorrt, ...) that is not installed."""


class ExportError(AcmixDeployError):
    """An export that cannot produce a valid artifact."""


class OutputError(AcmixDeployError):
    """An output file that cannot be written (a missing or unwritable folder, a directory in its place)."""
