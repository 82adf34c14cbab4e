"""Export targets, driven by one table (:data:`FORMATS`) shared by the CLI, the docs and the checks."""

from __future__ import annotations

from dataclasses import dataclass

from .aoti import AotiExport, export_aoti
from .driver import ExportOptions, ExportResult, export_model
from .onnx import OnnxExport, export_onnx, op_histogram, unsupported_ops

__all__ = ["AotiExport", "ExportFormat", "ExportOptions", "ExportResult", "FORMATS", "OnnxExport", "export_aoti",
           "export_model", "export_onnx", "op_histogram", "unsupported_ops"]


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str
    needs: str  # what must be installed / present
    extra: str  # the pip extra that installs it ("" when the base install suffices)
    description: str
    flag: str = ""  # a CLI shorthand for --format NAME


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            "onnx", ".onnx", "onnx, onnxruntime, onnxslim", "onnx",
            "ONNX graph of the deploy form (dynamic batch), simplified, validated with ONNX Runtime",
        ),
        ExportFormat(
            "aoti", ".pt2", "torch >= 2.6 and a C++ compiler (CUDA for --device cuda)", "",
            "AOTInductor package: the deploy form compiled ahead of time, validated against torch",
        ),
        ExportFormat(
            "engine", ".engine", "tensorrt >= 10 and a CUDA GPU (the engine is tied to both)", "trt",
            "TensorRT plan built from the validated ONNX graph (kept beside it), JSON sidecar, validated "
            "against torch", flag="--trt",
        ),
        ExportFormat(
            "triton", "/", "onnx, onnxruntime, onnxslim (--engine onnx); TensorRT engines + sidecars (--engine trt)",
            "onnx",
            "Triton model repository REPO/NAME/{config.pbtxt,1/model.onnx|model.plan}, dynamic batching configured",
        ),
    )
}
