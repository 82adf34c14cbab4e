"""The identity of the device a report was measured on."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import os
import platform
import socket

import torch

from .._version import __version__
from ..kernels.window_attention_triton import attention_backend, triton_available
from ..util import detect_cpu

__all__ = ["device_fingerprint", "cpu_model"]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_affinity() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def device_fingerprint(device: str = "cpu", threads: int | None = None) -> dict:
    """CPU, GPU (when ``device`` is cuda), library versions, hashed hostname, time."""
    cpu = detect_cpu(threads)
    fp = {
        "device": device,
        "cpu": cpu_model(),
        "cpu_isa": cpu.isa,  # the level graphs are shaped for (acmix_deploy.util.CPU_ISAS)
        "isa_flags": list(cpu.flags),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": _cpu_affinity(),
        "threads": threads or torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "tensorrt": _version("tensorrt") or _version("tensorrt-cu12") or _version("tensorrt-cu13"),
        "acmix_deploy": __version__,
        "hostname_sha256": hashlib.sha256(socket.gethostname().encode()).hexdigest()[:16],
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device == "cuda" and torch.cuda.is_available():
        idx = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        fp.update({
            "gpu": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "gpu_memory_gb": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            # The window-attention implementation ACmix deploy blocks run on CUDA tensors in eager inference:
            # the Triton kernel only when it is chosen and importable (otherwise the blocked core runs).
            "acmix_attention": "triton" if attention_backend() == "triton" and triton_available()[0] else "halo",
            "tf32_convolutions": torch.backends.cudnn.allow_tf32,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        })
        try:
            import subprocess

            fp["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10,
            ).stdout.strip().splitlines()[idx]
        except (OSError, IndexError, subprocess.SubprocessError):
            fp["driver"] = None
    return fp
