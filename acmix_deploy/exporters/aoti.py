"""AOTInductor export: the deploy form compiled ahead of time into a ``.pt2`` package.

``torch.export`` captures the graph with a symbolic batch axis (``1 <= N <=
max_batch``); ``torch._inductor.aoti_compile_and_package`` compiles it into a
shared library inside the package (needs a C++ compiler on CPU, CUDA on GPU).
The package loads back with ``torch._inductor.aoti_load_package`` in any
process with the same torch version, without the model's Python code.  It
returns the model's output structure (a tensor, nested tuples, a dict); the
names of the flattened outputs (:mod:`acmix_deploy.outputs`) are recorded in
the package's metadata as ``acmix_deploy.output_names`` (a JSON list).
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..artifacts.aoti import aoti_metadata
from ..errors import ConfigError, ExportError
from ..outputs import output_names as name_outputs
from ..util import atomic_write, check_device

__all__ = ["AOTI_DYNAMIC_HW_PARAMS", "AOTI_DYNAMIC_HW_REASON", "AotiExport", "export_aoti"]

# Measured with torch 2.9: torch.export captures ACmix's deploy form with symbolic height and width (the
# halo tables then follow the SymInt sizes, exact when the program is replayed in torch), but it guards
# every symbolic intermediate size to be >= 2 (its 0/1 specialisation: ACmix-ResNet-tiny's last map of 1x1
# at the smallest valid size is refused), and the AOTInductor-compiled package of acmix_resnet_tiny aborted
# the process (c10::Error, "index out of bounds" in a generated kernel of the halo gather) at run time.
# Re-measured with torch 2.13.0 (benchmarks/aoti_dynamic_hw_probe.py): the capture traced at 64x64 is exact
# at other sizes (1.8e-7), a map of one tile at the traced size is still specialised (so sizes with a
# one-tile map are refused), and AOTInductor's compilation stops on an internal assertion ("vr must not
# be None for symbol ...").
AOTI_DYNAMIC_HW_REASON = (
    "AOTInductor packages keep a fixed height and width: with symbolic sizes torch.export refuses the "
    "smallest valid sizes (it specialises maps of one tile) and AOTInductor could not build a working "
    "package from the captured program (torch 2.9: a bounds check failed in its generated halo-gather "
    "kernel; torch 2.13: an internal assertion while compiling); export one package per input size "
    "({imgsz}), or an ONNX graph ({fmt='onnx'}) with {dynamic_hw}")
AOTI_DYNAMIC_HW_PARAMS = ("imgsz", "fmt='onnx'", "dynamic_hw")  # the parameters AOTI_DYNAMIC_HW_REASON names


@dataclass
class AotiExport:
    path: Path
    seconds: float
    size_bytes: int
    device: str
    dynamic_batch: bool
    max_batch: int
    input_shape: tuple[int, ...]
    output_names: list[str] | None = None  # every output, in the order the runner returns them


def _shape_caches(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Plain module attributes that hold a ``torch.Size``: the input shapes some heads cache between calls."""
    return [(m, k) for m in model.modules() for k, v in vars(m).items() if isinstance(v, torch.Size)]


def export_aoti(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int, int],
    batch: int = 1,
    dynamic: bool = True,
    max_batch: int = 256,
    device: str = "cpu",
    validate: Callable[[Path], None] | None = None,
    metadata: dict[str, str] | None = None,
    output_names: list[str] | None = None,
    dynamic_hw: bool = False,
) -> AotiExport:
    """Compile ``model`` to an AOTInductor package at ``path`` (validated before the rename).

    The package's metadata (``AOTICompiledModel.get_metadata()``) records the
    input size under ``acmix_deploy.input_size`` ("C,H,W") and the output names under
    ``acmix_deploy.output_names`` (``output_names``, or the naming rule's), plus ``metadata``.
    ``dynamic_hw=True`` is refused (:data:`AOTI_DYNAMIC_HW_REASON`).
    """
    if dynamic_hw:
        raise ConfigError(AOTI_DYNAMIC_HW_REASON, params=AOTI_DYNAMIC_HW_PARAMS)
    if not hasattr(torch._inductor, "aoti_compile_and_package"):
        raise ExportError(f"torch {torch.__version__} has no AOTInductor packaging; it needs torch >= 2.6")
    check_device(device)
    if dynamic and not 1 <= batch <= max_batch:
        raise ConfigError(f"the example {{batch}} {batch} must lie in 1..{max_batch} ({{max_batch}})",
                          params=["batch", "max_batch"])
    path = Path(path)
    t0 = time.perf_counter()
    model = model.eval().to(device)
    # The example batch must not be 1 for a dynamic axis: torch.export specialises size-1 dimensions.
    example = max(batch, 2) if dynamic else batch
    x = torch.randn(example, *input_size, device=device)
    with torch.no_grad():
        names = name_outputs(model(x), output_names)  # input-size errors surface here with their own message
    # Positional, so a forward whose argument is not called ``x`` is captured too.
    shapes = ({0: torch.export.Dim("batch", min=1, max=max_batch)},) if dynamic else None

    def capture(m: nn.Module):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(m, (x,), dynamic_shapes=shapes)

    try:
        program = capture(model)
    except Exception as exc:  # torch.export raises many internal types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        program = None
        caches = _shape_caches(model) if dynamic else []
        if caches:
            # YOLO-style heads keep the last input's shape (``self.shape = x.shape``) and compare it on the next
            # call; after any earlier run (ours above, a fold check) that comparison pins the batch axis to the
            # cached value.  The capture is retried on a copy whose shape caches are empty again, as after
            # construction; the package is still compared with the model before it is written.
            fresh = copy.deepcopy(model)
            for module, key in _shape_caches(fresh):
                setattr(module, key, None)
            try:
                program = capture(fresh)
            except Exception:
                program = None
        if program is None:
            hint = ""
            if dynamic and "batch" in str(exc):
                cached = ", ".join(f"{type(m).__name__}.{k}" for m, k in caches)
                hint = (f"; the model fixes the batch axis (its forward branches on or stores an input shape"
                        f"{', e.g. ' + cached if cached else ''}): export a fixed batch with {{dynamic=False}} "
                        "and {batch} N")
            raise ExportError(f"torch.export could not capture the model: {first}{hint}",
                              params=["dynamic=False", "batch"] if hint else ()) from None

    stamp = aoti_metadata(input_size, 1 if dynamic else batch, max_batch if dynamic else batch, device, names,
                          metadata)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch._inductor.aoti_compile_and_package(
                    program, package_path=tmp, inductor_configs={"aot_inductor.metadata": stamp})
            except Exception as exc:  # a missing C++ compiler or CUDA toolkit surfaces as many types
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ExportError(f"AOTInductor could not compile the model for {device}: {first}") from None
        if validate is not None:
            validate(Path(tmp))

    atomic_write(path, write, suffix=".pt2")
    return AotiExport(path, time.perf_counter() - t0, path.stat().st_size, device, dynamic, max_batch,
                      (batch, *input_size), names)
