"""Exports that prove their artifacts: the check the exporters are given, and the public entry points.

The exporters build and write; running an artifact is the runtime's job, and comparing it with torch is
this layer's.  :func:`verify_artifact` is that check (an :class:`~acmix_deploy.exporters.options.Verify`):
it opens the freshly written artifact with its runner and compares every output with the torch deploy form
(:func:`acmix_deploy.compare.compare_runners`).  :func:`export_model` and :func:`export_triton_repository`
are the exporters' functions with it passed in: what ``acmix-deploy export`` and Python users call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from .compare import Comparison, compare_runners
from .errors import ConfigError
from .exporters import ExportOptions, ExportResult
from .exporters import export_model as _export_model
from .exporters.options import Log
from .exporters.triton_repository import TritonRepoExport
from .exporters.triton_repository import export_triton_repository as _export_triton_repository
from .runtime import AotiRunner, OrtRunner, Runner, TorchRunner, TrtRunner

__all__ = ["export_model", "export_triton_repository", "verify_artifact"]


def _artifact_runner(kind: str, path: Path, device: str, sidecar: Any) -> Runner:
    """The runner of an artifact just built, before it has its final name (so by kind, not by suffix)."""
    if kind == "onnx":
        return OrtRunner(path)  # ONNX files are checked in ONNX Runtime on the CPU
    if kind == "aoti":
        return AotiRunner(path, device)
    if kind == "engine":
        # The sidecar is not in place yet (it is written with the engine, after this check): the one
        # the builder made is handed over, unchecked against the machine that just built the engine.
        return TrtRunner(path, check=False, sidecar=sidecar)
    raise ConfigError(f"no runner checks artifacts of kind {kind!r}; known: onnx, aoti, engine")


def verify_artifact(kind: str, path: str | os.PathLike, model: nn.Module, inputs: list[np.ndarray],
                    device: str = "cpu", sidecar: Any = None) -> list[Comparison]:
    """Run the artifact at ``path`` and the torch ``model`` (on ``device``) on every batch of ``inputs``;
    one :class:`~acmix_deploy.compare.Comparison` row per batch and output.  ``kind`` is ``onnx``,
    ``aoti`` or ``engine``; an artifact returning another number of outputs, or another shape, raises
    :class:`~acmix_deploy.errors.EquivalenceError`.  Judging the rows (tolerances) is the caller's."""
    path = Path(path)
    candidate = _artifact_runner(kind, path, device, sidecar)
    # The sample axes all inputs share are fixed; one that varies (a dynamic-H/W export's second size) is open.
    sample = tuple(d if all(x.shape[i + 1] == d for x in inputs) else None for i, d in enumerate(inputs[0].shape[1:]))
    reference = TorchRunner(model, name="torch:deploy", device=device, input_size=sample)
    return compare_runners(reference, [candidate], inputs)


def export_model(ckpt: str | os.PathLike, opts: ExportOptions, log: Log | None = None) -> ExportResult:
    """Export the model in ``ckpt`` as ``opts`` say, every artifact checked against torch before it is written
    (:func:`acmix_deploy.exporters.formats.export_model` with :func:`verify_artifact`)."""
    return _export_model(ckpt, opts, log, verify=verify_artifact)


def export_triton_repository(src: str | os.PathLike, repo: str | os.PathLike | None = None,
                             **kwargs: Any) -> TritonRepoExport:
    """:func:`acmix_deploy.exporters.triton_repository.export_triton_repository` (same parameters), an ONNX
    model exported from a checkpoint checked against torch with :func:`verify_artifact`."""
    return _export_triton_repository(src, repo, verify=verify_artifact, **kwargs)
