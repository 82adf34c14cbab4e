"""Steps shared by the CLI commands and by Python users: load, fold, check, export."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from .analysis import OutputDiff, check_equivalence
from .checkpoint import LoadedCheckpoint, read_checkpoint
from .errors import ConfigError, EquivalenceError
from .reparam import reparameterize_model

__all__ = ["Prepared", "prepare_deploy", "sha256_file", "default_input_size", "normalize_imgsz", "check_device", "check_output_path"]


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_device(device: str) -> None:
    """Refuse a device other than cpu/cuda, and cuda where torch sees no GPU."""
    import torch

    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA GPU on this machine")


def check_output_path(out: Path, src: Path) -> None:
    """Refuse an output that is the input, lies in a missing directory, or is a directory."""
    if out.resolve() == src.resolve():
        raise ConfigError(f"output {out} is the input file; choose another path with -o")
    if not out.parent.exists():
        raise ConfigError(f"output directory {out.parent} does not exist")
    if out.is_dir():
        raise ConfigError(f"output {out} is a directory; give a file name")


def normalize_imgsz(imgsz) -> tuple[int, int] | None:
    """``imgsz`` as ``(height, width)``: an int means a square, a pair is (height, width), None stays None."""
    if imgsz is None:
        return None
    if isinstance(imgsz, bool):
        raise ConfigError(f"imgsz must be an int or (height, width), got {imgsz!r}")
    if isinstance(imgsz, int):
        pair = (imgsz, imgsz)
    elif isinstance(imgsz, (tuple, list)) and len(imgsz) in (1, 2) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in imgsz):
        pair = (imgsz[0], imgsz[-1])
    else:
        raise ConfigError(f"imgsz must be an int or (height, width), got {imgsz!r}")
    if min(pair) < 1:
        raise ConfigError(f"imgsz must be positive, got {imgsz!r}")
    return pair


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


def prepare_deploy(
    path: str | os.PathLike,
    arch: str | None = None,
    imgsz: int | None = None,
    check: bool = True,
    tol: float = 1e-5,
    batch: int = 2,
    seed: int = 0,
) -> Prepared:
    """Load a checkpoint and return its deploy form, folding (and checking) a training form.

    Raises :class:`EquivalenceError` when the check's relative error exceeds ``tol``.
    """
    loaded = read_checkpoint(Path(path), arch)
    input_size = default_input_size(loaded.model, imgsz)
    if loaded.deploy:
        return Prepared(loaded, None, loaded.model, input_size, 0.0, None)
    t0 = time.perf_counter()
    deploy = reparameterize_model(loaded.model)
    fold_seconds = time.perf_counter() - t0
    diff = None
    if check:
        diff = check_equivalence(loaded.model, deploy, input_size, batch=batch, seed=seed)
        if not diff.rel <= tol:
            raise EquivalenceError(
                f"the folded model differs from the training form by {diff.rel:.3g} (relative), above {tol:g}"
            )
    return Prepared(loaded, loaded.model, deploy, input_size, fold_seconds, diff)
