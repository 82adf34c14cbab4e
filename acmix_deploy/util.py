"""Helpers every layer may use: optional imports, atomic file writes, file digests, argument checks.

This module sits directly above :mod:`acmix_deploy.errors` and imports nothing else of the package,
so that folds, checkpoints, artifacts, exporters and runtimes can all build on it.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

from .errors import ConfigError, MissingDependencyError, OutputError

__all__ = ["atomic_write", "check_device", "normalize_imgsz", "random_inputs", "require", "sha256_file"]


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise a one-line error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed ({exc}); install it with: pip install \"acmix-deploy[{extra}]\""
        ) from None


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp_path)``, then rename the temp file onto ``path``.

    The temp file lives in the destination directory (same filesystem, so the
    rename is atomic); on any failure it is removed and ``path`` is untouched.
    ``suffix`` ends the temp file's name, for writers that check it.  A destination that
    cannot take a file is an :class:`OutputError`; what ``write`` raises passes through.

    A symbolic link is followed, not replaced: the file written is the link's target (resolved
    first), so the link stays.  A target that is not a regular file (``/dev/stdout``, a pipe, a
    terminal) cannot be renamed onto: ``write`` then fills a temp file in the system's temp
    directory, whose bytes are copied into the target once it succeeded.  The returned path is
    the one given.
    """
    given = path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and not path.is_file() and not path.is_dir():  # a device, FIFO or socket
        return _write_through(given, path, write, suffix)
    if not path.parent.exists():
        raise OutputError(f"output directory {path.parent} does not exist")
    if path.is_dir():
        raise OutputError(f"output path {path} is a directory; give a file name")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write to output directory {path.parent}: {exc.strerror}; "
                          "choose a writable one with -o") from None
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600; give the file the permissions an ordinary create would (umask applied),
        # so that e.g. a container running as another user can read an exported model.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return given


def _write_through(given: Path, target: Path, write: Callable[[str], object], suffix: str) -> Path:
    """``atomic_write`` onto a non-regular file: write a temp file, then copy its bytes into ``target``."""
    fd, tmp = tempfile.mkstemp(prefix=".acmix-deploy.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        try:
            with open(tmp, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except OSError as exc:
            raise OutputError(f"cannot write to {given}: {exc.strerror}") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return given


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_device(device: str) -> None:
    """Refuse a device other than cpu/cuda, and cuda where torch sees no GPU."""
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA GPU on this machine")


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


def random_inputs(input_size: tuple[int, ...], batches: tuple[int, ...], seed: int = 0) -> list:
    """One float32 NumPy batch of standard-normal values per entry of ``batches`` (sample shape
    ``input_size``), the same for the same ``seed``: the inputs every equivalence check runs."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, *input_size, generator=gen).numpy() for b in batches]
