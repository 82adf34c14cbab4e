"""Helpers every layer may use: optional imports, atomic file writes, file digests, argument checks,
the CPU's instruction-set level.

This module sits directly above :mod:`acmix_deploy.errors` and imports nothing else of the package,
so that folds, checkpoints, artifacts, exporters and runtimes can all build on it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import importlib
import os
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator, TypeVar

import torch

from .errors import ConfigError, MissingDependencyError, OutputError

__all__ = ["CPU_ISAS", "CpuInfo", "atomic_write", "check_device", "cpu_isa_level", "default_dtype", "detect_cpu",
           "normalize_imgsz",
           "random_inputs", "require", "resolve_cpu_isa", "scoped_value", "sha256_file"]


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
        raise ConfigError(f"{{device}} must be cpu or cuda, got {device!r}", params=["device"])
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("{device} cuda was asked for, but torch sees no CUDA GPU on this machine", params=["device"])


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


# Instruction-set levels that change which graph is fastest on a CPU, best first.  ONNX Runtime's MLAS picks its
# float kernels by them (onnxruntime/core/mlas/lib/platform.cpp): AVX-512F (with the OS saving its state) gives
# 16-float NCHWc blocks, AVX2 + FMA 8-float blocks; "generic" is everything else (SSE-only x86, ARM, ...).
CPU_ISAS = ("avx512", "avx2", "generic")
# /proc/cpuinfo flags worth recording with a measurement (vector width, FMA, dot-product and matrix units).
_RECORDED_FLAGS = ("sse4_2", "avx", "fma", "avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                   "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU a graph is exported or measured on: its name, ISA level (:data:`CPU_ISAS`), flags, threads."""

    model: str
    isa: str
    flags: tuple[str, ...]
    threads: int
    machine: str  # platform.machine(): x86_64, aarch64, ...
    vendor: str = "unknown"  # /proc/cpuinfo vendor_id: GenuineIntel, AuthenticAMD, ...

    def as_dict(self) -> dict:
        return {**asdict(self), "flags": list(self.flags)}


def cpu_isa_level(flags, machine: str = "x86_64") -> str:
    """The :data:`CPU_ISAS` level of a CPU with these /proc/cpuinfo ``flags``."""
    flags = set(flags)
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "generic"
    if "avx512f" in flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "generic"


def _proc_cpuinfo() -> tuple[str | None, list[str] | None, str | None]:
    model = flags = vendor = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "vendor_id" and vendor is None:
                    vendor = value.strip()
                elif key in ("flags", "Features") and flags is None:  # x86 / ARM spelling
                    flags = value.split()
                if model is not None and flags is not None and vendor is not None:
                    break
    except OSError:
        pass
    return model, flags, vendor


def detect_cpu(threads: int | None = None) -> CpuInfo:
    """The CPU this process runs on.

    Linux: the model name and flags of /proc/cpuinfo (the flags the kernel reports are those the OS
    supports, AVX-512 state saving included).  Elsewhere: torch's own dispatch level
    (``torch.backends.cpu.get_cpu_capability()``: ``AVX512``, ``AVX2``, ...) and no flags.
    ``threads`` defaults to torch's intra-op thread count.
    """
    machine = platform.machine() or "unknown"
    model, flags, vendor = _proc_cpuinfo()
    if flags is not None:
        isa = cpu_isa_level(flags, machine)
        recorded = tuple(f for f in _RECORDED_FLAGS if f in set(flags))
    else:
        capability = torch.backends.cpu.get_cpu_capability().upper()
        isa = {"AVX512": "avx512", "AVX2": "avx2"}.get(capability, "generic")
        recorded = ()
    return CpuInfo(model=model or platform.processor() or machine, isa=isa, flags=recorded,
                   threads=int(threads or torch.get_num_threads()), machine=machine, vendor=vendor or "unknown")


def resolve_cpu_isa(cpu_isa: str) -> str:
    """``"auto"`` -> this machine's level (:func:`detect_cpu`); a level of :data:`CPU_ISAS` stays; else ConfigError."""
    if cpu_isa == "auto":
        return detect_cpu().isa
    if cpu_isa not in CPU_ISAS:
        raise ConfigError(f"cpu_isa must be auto or one of {', '.join(CPU_ISAS)}, got {cpu_isa!r}")
    return cpu_isa


_T = TypeVar("_T")


@contextlib.contextmanager
def scoped_value(var: contextvars.ContextVar[_T], value: _T) -> Iterator[None]:
    """Set a context variable for the duration of a ``with`` block, then restore what it was."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """``torch.set_default_dtype(dtype)`` for the duration of a ``with`` block (process-wide), then restore it.

    For running users' code in float64: the official ACmix builds its positional grid with ``torch.linspace``
    in the default dtype, so a float64 copy of it only runs when the default is float64 too.
    """
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)
