"""Export targets, driven by one table (:data:`FORMATS`, :mod:`.formats`) shared by the CLI, the docs and
the checks.

:func:`export_model` here builds and writes; the check each artifact passes before it is written is given
to it (``verify``) by the layer above (:func:`acmix_deploy.export_model` passes the check against torch).
"""

from __future__ import annotations

from .aoti import AotiExport, export_aoti
from .formats import COMMON_OPTIONS, FORMATS, ExportFormat, OptionNotApplicable, export_model, validate_options
from .onnx import OnnxExport, export_onnx, op_histogram, unsupported_ops
from .options import ExportOptions, ExportResult, Verify

__all__ = ["AotiExport", "COMMON_OPTIONS", "ExportFormat", "ExportOptions", "ExportResult", "FORMATS", "OnnxExport",
           "OptionNotApplicable", "Verify", "export_aoti", "export_model", "export_onnx", "op_histogram",
           "unsupported_ops", "validate_options"]
