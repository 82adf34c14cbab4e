"""The format table: each export format with its file suffix, its builder and the options it accepts.

:data:`FORMATS` is shared by the CLI, the docs and the checks.  Each :class:`ExportFormat` owns its file
suffix, its builder (``builder(ckpt, opts, log, verify) -> ExportResult``) and the :class:`ExportOptions`
fields it accepts.  :func:`validate_options` is the one place that decides which option applies to which
format: an option set away from its default for a format that does not accept it is refused (an
:class:`OptionNotApplicable`, naming the parameter), never silently ignored.  :func:`export_model` runs
one export from the table.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from .driver import build_aoti, build_engine_file, build_onnx
from .options import ExportOptions, ExportResult, Log, Verify, default_output
from .triton_repository import build_triton_repository

__all__ = ["COMMON_OPTIONS", "ExportFormat", "FORMATS", "OptionNotApplicable", "export_model", "validate_options"]

# Options every format accepts: where the model comes from, where the artifact goes, which device.
COMMON_OPTIONS = frozenset({"output", "arch", "model_def", "model_args", "imgsz", "device", "output_names"})
_ONNX_OPTIONS = frozenset({"batch", "dynamic", "dynamic_hw", "opset", "simplify", "max_batch", "fp16", "int8", "calib",
                           "calib_limit", "tol", "min_top1", "seed"})
_TRT_BUILDER_OPTIONS = frozenset({"min_batch", "opt_batch", "workspace_gb", "timing_cache", "opt_level", "trt_typing",
                                  "min_shape", "opt_shape", "max_shape"})
_AOTI_OPTIONS = frozenset({"batch", "dynamic", "dynamic_hw", "max_batch", "tol", "seed"})
_TRITON_OPTIONS = frozenset({"opset", "simplify", "max_batch", "engine", "instances", "model_name",
                             "max_queue_delay_us", "force", "cpu_isa"})


class OptionNotApplicable(ConfigError):
    """Options given to a format that does not accept them.

    ``options`` are the :class:`ExportOptions` field names (a boolean whose default is on, ``dynamic``, is given
    when turned off); ``params``, the fields the message spells, are those and the formats (``fmt='onnx'``).
    """

    def __init__(self, fmt: str, options: list[str], message: str, spelled: list[str] = ()):
        super().__init__(message, params=[*options, *spelled])
        self.fmt, self.options = fmt, list(options)


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str
    needs: str  # what must be installed / present
    extra: str  # the pip extra that installs it ("" when the base install suffices)
    description: str
    builder: Callable  # (ckpt, ExportOptions, log, verify) -> ExportResult
    options: frozenset[str]  # the ExportOptions fields it accepts besides COMMON_OPTIONS
    flag: str = ""  # a CLI shorthand for --format NAME

    @property
    def accepted(self) -> frozenset[str]:
        return COMMON_OPTIONS | self.options


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            "onnx", ".onnx", "onnx, onnxruntime, onnxslim", "onnx",
            "ONNX graph of the deploy form (dynamic batch), simplified, validated with ONNX Runtime",
            build_onnx, _ONNX_OPTIONS | {"cpu_isa"},
        ),
        ExportFormat(
            "aoti", ".pt2", "torch >= 2.6 and a C++ compiler (CUDA for --device cuda)", "",
            "AOTInductor package: the deploy form compiled ahead of time, validated against torch",
            build_aoti, _AOTI_OPTIONS,
        ),
        ExportFormat(
            "engine", ".engine", "tensorrt >= 10 and a CUDA GPU (the engine is tied to both)", "trt",
            "TensorRT plan built from the validated ONNX graph (kept beside it), JSON sidecar, validated "
            "against torch", build_engine_file, _ONNX_OPTIONS | _TRT_BUILDER_OPTIONS, flag="--trt",
        ),
        ExportFormat(
            "triton", "/", "onnx, onnxruntime, onnxslim (--engine onnx); TensorRT engines + sidecars (--engine trt)",
            "onnx",
            "Triton model repository REPO/NAME/{config.pbtxt,1/model.onnx|model.plan}, dynamic batching configured",
            build_triton_repository, _TRITON_OPTIONS,
        ),
    )
}


def validate_options(fmt: str, opts: ExportOptions) -> None:
    """Refuse every option of ``opts`` that differs from its default and that format ``fmt`` does not accept.

    The error (:class:`OptionNotApplicable`) names each parameter and the formats it does apply to; a front
    end spells the parameters its own way with :meth:`~acmix_deploy.errors.AcmixDeployError.spell`.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; available: {', '.join(FORMATS)}")
    accepted = FORMATS[fmt].accepted
    given = [f.name for f in fields(ExportOptions)
             if f.name != "fmt" and f.name not in accepted and getattr(opts, f.name) != f.default]
    if not given:
        return
    # Formats are written as the parameter with its value, {fmt='onnx'}: the CLI spells that --format onnx.
    formats = {name: [f"fmt={f.name!r}" for f in FORMATS.values() if name in f.accepted] for name in given}
    where = "; ".join(f"{{{name}}} applies to " + ", ".join("{" + f + "}" for f in formats[name]) for name in given)
    verb = "does" if len(given) == 1 else "do"
    raise OptionNotApplicable(fmt, given, f"{', '.join('{' + n + '}' for n in given)} {verb} not apply to "
                                          f"{{fmt={fmt!r}}} ({where})",
                              spelled=[f"fmt={fmt!r}", *(f for fs in formats.values() for f in fs)])


def export_model(ckpt: str | Path, opts: ExportOptions, log: Log | None = None,
                 verify: Verify | None = None) -> ExportResult:
    """Export the model in ``ckpt`` (folded first when it holds the training form) as ``opts`` say.

    The steps: check the options against the format table (:func:`validate_options`), then the format's
    builder prepares the deploy form, builds the artifact, runs ``verify`` on it and writes it.  ``verify``
    is required: it runs the artifact, which is the layer above the exporters' job;
    :func:`acmix_deploy.export_model` (:mod:`acmix_deploy.verify`) passes the check against torch.  Raises
    :class:`~acmix_deploy.errors.EquivalenceError` when the artifact's outputs differ from torch beyond
    ``opts.tol`` (or top-1 agreement falls below ``opts.min_top1`` for fp16/int8); other bad input raises
    :class:`~acmix_deploy.errors.AcmixDeployError`.  Nothing is written then.
    """
    validate_options(opts.fmt, opts)
    if verify is None:
        raise ConfigError("export_model needs verify, the check each artifact passes before it is written: call "
                          "acmix_deploy.export_model, which checks against torch")
    fmt = FORMATS[opts.fmt]
    if opts.output is None and fmt.suffix != "/":  # a Triton repository's default folder is its builder's
        opts = replace(opts, output=default_output(Path(ckpt), opts, fmt.suffix))
    return fmt.builder(Path(ckpt), opts, log or (lambda msg: None), verify)
