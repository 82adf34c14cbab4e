"""Steps shared by the CLI commands and by Python users: load, fold, check, export."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from .analysis import OutputDiff, check_equivalence
from .checkpoint import LoadedCheckpoint, read_checkpoint, require_finite
from .errors import ConfigError, EquivalenceError
from .reparam import reparameterize
from .util import normalize_imgsz

__all__ = ["Prepared", "prepare_deploy", "default_input_size", "check_output_path", "check_writable"]


def check_output_path(out: Path, src: Path) -> None:
    """Refuse an output that is the input, lies in a missing directory, or is a directory."""
    if out.resolve() == src.resolve():
        raise ConfigError(f"output {out} is the input file; choose another path with -o")
    if not out.parent.exists():
        raise ConfigError(f"output directory {out.parent} does not exist")
    if out.is_dir():
        raise ConfigError(f"output {out} is a directory; give a file name")
    check_writable(out.parent)


def check_writable(folder: Path) -> None:
    """Refuse a folder that cannot take a new file, before any long fold or export (exit 2, not a traceback after it).

    Tried by creating (and removing) a temporary file there, which is what the
    atomic write will do: permission bits alone do not tell (root, read-only mounts).
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=".acmix-write-check.", dir=folder)
    except OSError as exc:
        raise ConfigError(f"output directory {folder} is not writable ({exc.strerror}); "
                          "choose another with -o") from None
    os.close(fd)
    os.unlink(probe)


def default_input_size(model: nn.Module, imgsz=None) -> tuple[int, int, int]:
    """``(channels, height, width)``: the model's recorded input size, with ``imgsz`` (int or (h, w)) replacing h, w."""
    c, h, w = model.default_cfg["input_size"]
    pair = normalize_imgsz(imgsz)
    if pair is not None:
        h, w = pair
    return (c, h, w)


@dataclass
class Prepared:
    loaded: LoadedCheckpoint
    training: nn.Module | None  # None when the file already held the deploy form
    deploy: nn.Module
    input_size: tuple[int, int, int]
    fold_seconds: float
    diff: OutputDiff | None  # training vs deploy, when checked
    leftovers: list = field(default_factory=list)  # reparam.Leftover: what could have been folded and was not


def prepare_deploy(
    path: str | os.PathLike,
    arch: str | None = None,
    imgsz: int | None = None,
    check: bool = True,
    tol: float = 1e-5,
    batch: int = 2,
    seed: int = 0,
    model_def: str | None = None,
    model_args: str | dict | None = None,
) -> Prepared:
    """Load a checkpoint and return its deploy form, folding (and checking) a training form.

    ``model_def``/``model_args`` build a user's own network (see :func:`acmix_deploy.read_checkpoint`).
    Raises :class:`EquivalenceError` when the check's relative error exceeds ``tol``; what could not be
    folded is listed in ``Prepared.leftovers``.
    """
    loaded = read_checkpoint(Path(path), arch, model_def, model_args)
    require_finite(loaded, path)
    input_size = default_input_size(loaded.model, imgsz)
    if loaded.deploy:
        return Prepared(loaded, None, loaded.model, input_size, 0.0, None)
    t0 = time.perf_counter()
    deploy, report = reparameterize(loaded.model)
    fold_seconds = time.perf_counter() - t0
    diff = None
    if check:
        diff = check_equivalence(loaded.model, deploy, input_size, batch=batch, seed=seed, tol=tol,
                                 fold=lambda m: reparameterize(m)[0])
        if not diff.within(tol):
            raise EquivalenceError(f"the folded model differs from the training form: {diff.summary(tol)}")
    return Prepared(loaded, loaded.model, deploy, input_size, fold_seconds, diff, report.leftovers)
