"""What an export is asked for and what it returns, and the check it is given.

:class:`ExportOptions` holds every parameter of every format (the format table,
:mod:`acmix_deploy.exporters.formats`, says which applies to which); :class:`ExportResult` is what a
builder returns.  :class:`Verify` is the check an export runs on each artifact before it is written: the
exporters build and write, the layer above them (:mod:`acmix_deploy.verify`) runs the artifact and compares
it with torch, so exporters never import runners.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

__all__ = ["ExportOptions", "ExportResult", "Log", "Verify", "default_output"]

Log = Callable[[str], None]


class Verify(Protocol):
    """Run the artifact at ``path`` (``kind``: ``onnx``, ``aoti`` or ``engine``) and the torch ``model`` on
    ``inputs`` and return one comparison row per input batch and output (objects with ``runner``, ``batch``,
    ``output`` and ``diff``, an :class:`~acmix_deploy.analysis.OutputDiff`).  ``device`` is where the torch
    model (and an AOTInductor package) runs; ``sidecar`` is a TensorRT engine's, before it is in place.
    :func:`acmix_deploy.verify.verify_artifact` is the implementation."""

    def __call__(self, kind: str, path: Path, model: Any, inputs: list, device: str = "cpu",
                 sidecar: Any = None) -> list: ...


@dataclass
class ExportOptions:
    fmt: str = "onnx"
    output: Path | None = None
    arch: str | None = None
    model_def: str | None = None  # a user's model: FILE.py:FACTORY or package.module:FACTORY
    model_args: str | dict | None = None  # its factory's keyword arguments (JSON object or dict)
    imgsz: int | tuple[int, int] | None = None  # a square, or (height, width)
    batch: int = 1
    dynamic: bool = True
    dynamic_hw: bool = False  # height and width dynamic too (ONNX, engine); validated at a second size
    opset: int = 17
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None  # [aoti 256, engine max(32, opt_batch)]
    # TensorRT optimization profile as whole shapes, trtexec's NxCxHxW (str) or 4 ints; with dynamic_hw the
    # height and width range (min and max needed).  Not given: the batch profile at --imgsz.
    min_shape: str | tuple[int, ...] | None = None
    opt_shape: str | tuple[int, ...] | None = None
    max_shape: str | tuple[int, ...] | None = None
    device: str = "cpu"
    simplify: bool = True
    fp16: bool = False
    int8: bool = False
    calib: str | None = None
    calib_limit: int = 256
    tol: float | None = None  # [1e-4; fp16 2e-2; int8 1.0]
    min_top1: float | None = None  # [fp16 0.99; int8 0.9]
    seed: int = 0
    workspace_gb: float | None = None
    timing_cache: Path | None = None
    opt_level: int = 3
    trt_typing: str = "strong"
    output_names: list[str] | None = None  # one name per output tensor [acmix_deploy.outputs' rule]
    # The CPU level an ONNX graph for ONNX Runtime on the CPU is shaped for (util.CPU_ISAS; auto: this machine's;
    # none: the plain graph, e.g. for OpenVINO).
    cpu_isa: str = "auto"
    # Triton model repositories (--format triton); ``output`` is then the repository folder.
    engine: str = "onnx"  # onnx: a checkpoint (exported) or a .onnx file; trt: engine file(s) + sidecars
    instances: int = 1
    model_name: str | None = None  # [the source file's stem]
    max_queue_delay_us: int = 1000
    force: bool = False  # replace an existing model directory

    def __post_init__(self) -> None:
        # paths may be given as str or any os.PathLike, as everywhere else in the API; "" means not given
        for name in ("output", "timing_cache"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value) if str(value) else None)

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "int8" if self.int8 else "fp32"


@dataclass
class ExportResult:
    fmt: str
    path: Path
    artifact: Any  # OnnxExport, AotiExport or EngineBuild
    rows: list  # compare.Comparison rows of the validation
    title: str
    options: ExportOptions
    arch: str
    input_size: tuple[int, int, int]
    onnx: Any = None  # the OnnxExport an engine was built from


def default_output(ckpt: Path, opts: ExportOptions, suffix: str) -> Path:
    """Where an export of ``ckpt`` goes when ``opts.output`` is not given: the checkpoint's name with the
    format's ``suffix``, tagged ``.fp16`` / ``.int8`` for reduced precision."""
    tag = {"fp16": ".fp16", "int8": ".int8"}.get(opts.precision, "")
    return ckpt.with_suffix(tag + suffix)
