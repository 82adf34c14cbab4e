"""Export targets, driven by one table (:data:`FORMATS`) shared by the CLI, the docs and the checks."""

from __future__ import annotations

from dataclasses import dataclass

from .aoti import AotiExport, export_aoti
from .onnx import OnnxExport, export_onnx, op_histogram, unsupported_ops

__all__ = ["AotiExport", "ExportFormat", "FORMATS", "OnnxExport", "export_aoti", "export_onnx", "op_histogram",
           "unsupported_ops"]


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str
    needs: str  # what must be installed / present
    extra: str  # the pip extra that installs it ("" when the base install suffices)
    description: str


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
            "triton", "/", "onnx, onnxruntime, onnxslim (--engine onnx); TensorRT engines + sidecars (--engine trt)",
            "onnx",
            "Triton model repository REPO/NAME/{config.pbtxt,1/model.onnx|model.plan}, dynamic batching configured",
        ),
    )
}
