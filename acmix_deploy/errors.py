"""Exceptions raised by acmix-deploy.

Every error a user can cause (a bad file, a wrong architecture, an input the
operator cannot take) is an :class:`AcmixDeployError` with a message that says
what is wrong and what to do; the CLI prints the message and exits with code 2
instead of showing a traceback.

A message that names a parameter of the caller (``imgsz``, ``tol``, ``device``) writes it as a field,
``{imgsz}``, and lists it in ``params``: ``str(exc)`` reads ``imgsz``, the Python spelling, and a front end
that spells its parameters otherwise (the CLI: ``--imgsz``) renders the same error with :meth:`~AcmixDeployError.spell`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping


class AcmixDeployError(Exception):
    """Base class of all errors that carry a message meant for the user.

    ``params`` are the parameter names the message refers to as ``{name}`` fields (only those fields are
    replaced, so other braces in a message stay as they are).
    """

    def __init__(self, *args, params: Iterable[str] = ()):
        self.params = tuple(params)
        self.template = str(args[0]) if args else ""
        if self.params and args:
            args = (self.spell(),) + args[1:]
        super().__init__(*args)

    def spell(self, names: Mapping[str, str] | Callable[[str], str] | None = None) -> str:
        """The message with each parameter written as ``names`` spells it (default: the parameter's own name)."""
        if not self.params:
            return str(self)
        lookup = names if callable(names) else (lambda p: (names or {}).get(p, p))
        text = self.template
        for param in self.params:
            text = text.replace("{" + param + "}", lookup(param))
        return text


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


class IncompleteFoldError(AcmixDeployError):
    """A fold that left foldable modules in place, refused unless the caller allows a partial fold."""


class MissingDependencyError(AcmixDeployError, ImportError):
    """An optional dependency (onnx, onnxruntime, tensorrt, ...) that is not installed."""


class ExportError(AcmixDeployError):
    """An export that cannot produce a valid artifact."""


class OutputError(AcmixDeployError):
    """An output file that cannot be written (a missing or unwritable folder, a directory in its place)."""
