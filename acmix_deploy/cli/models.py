"""``list-models`` and ``info``: what the registry holds; what a checkpoint, ONNX model or engine contains."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import AcmixDeployError
from ._common import _fail, _print_table, _safe


def list_models_cmd(pattern: Optional[str] = typer.Argument(None, help="Shell-style filter, e.g. 'acmix_*'.")) -> None:
    """List the registered architectures."""
    from ..models import list_models, model_entrypoint

    table = Table("architecture", "description")
    for name in list_models(pattern):
        doc = ((model_entrypoint(name).__doc__ or "").strip().splitlines() or [""])[0]
        # Sphinx roles and literals read as plain text: ":func:`acmix_resnet_tiny`" -> "acmix_resnet_tiny"
        doc = re.sub(r":[a-z]+(?::[a-z]+)?:`~?([^`]*)`", r"\1", doc).replace("``", "")
        table.add_row(name, escape(doc))
    _print_table(table)


def info(
    path: Path = typer.Argument(..., help="Checkpoint (ours, a bare state dict, or a wrapped one), ONNX model (.onnx) "
                                "or TensorRT engine (.engine/.plan, read from its sidecar)."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture, for checkpoints that do not record it."),
) -> None:
    """Describe a checkpoint, an ONNX model or a TensorRT engine.

    A checkpoint: architecture, form, parameters, blocks and keys.  An ONNX model: inputs and outputs (symbolic
    axes by name), opset, producer, metadata and operators.  An engine: its sidecar (GPU, TensorRT version,
    precision, profiles), read without TensorRT.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".onnx":
            if arch is not None:
                raise AcmixDeployError("--arch applies to checkpoints; an ONNX model describes itself")
            _info_onnx(path)
        elif suffix == ".pt2":
            raise AcmixDeployError(f"{path.name} is an AOTInductor package; info describes checkpoints, ONNX models "
                                   "and TensorRT engines (compare and profile run .pt2 packages)")
        elif suffix in (".engine", ".plan"):
            if arch is not None:
                raise AcmixDeployError("--arch applies to checkpoints; an engine's sidecar describes it")
            _info_engine(path)
        else:
            _info_checkpoint(path, arch)
    except AcmixDeployError as exc:
        _fail(exc)


def _info_checkpoint(path: Path, arch: Optional[str]) -> None:
    from ..analysis import summarize_model
    from ..checkpoint import read_checkpoint

    loaded = read_checkpoint(path, arch)
    summary = summarize_model(loaded.model)
    table = Table(show_header=False, title=_safe(path))
    table.add_row("architecture", _safe(loaded.arch))
    table.add_row("arguments", _safe(", ".join(f"{k}={v}" for k, v in loaded.arch_args.items()) or "(defaults)"))
    table.add_row("form", "deploy (folded)" if loaded.deploy else "training")
    table.add_row("file format", loaded.source_format)
    table.add_row("parameters", f"{summary.parameters:,}")
    table.add_row("ACmix blocks", str(summary.blocks["ACmix"]))
    for kind, n in summary.blocks.items():
        if kind != "ACmix" and n:
            table.add_row(f"{kind} blocks", str(n))
    groups = ", ".join(f"{p}: {n}" for p, n in summary.tensor_groups.items())
    table.add_row("tensors", _safe(f"{summary.tensors} ({groups})"))
    if summary.input_size is not None:
        table.add_row("input size", "x".join(map(str, summary.input_size)))
    for key, value in loaded.meta.items():
        table.add_row(_safe(f"meta.{key}"), _safe(value))
    for note in loaded.notes:
        table.add_row("note", _safe(note))
    _print_table(table)


def _shape(tensor) -> str:
    return f"{tensor.dtype} [{', '.join(map(str, tensor.shape))}]"


def _info_onnx(path: Path) -> None:
    from ..artifacts.onnx import describe_onnx

    s = describe_onnx(path)
    table = Table(show_header=False, title=_safe(path))
    table.add_row("file", f"{s.size_bytes / 1e6:.1f} MB" + (", weights in external data files" if s.external_data else ""))
    table.add_row("producer", _safe(s.producer or "(not recorded)"))
    table.add_row("opset", ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in s.opsets.items()) + f" (IR version {s.ir_version})")
    for t in s.inputs:
        table.add_row(_safe(f"input {t.name}"), _safe(_shape(t)))
    for t in s.outputs:
        table.add_row(_safe(f"output {t.name}"), _safe(_shape(t)))
    table.add_row("parameters", f"{s.parameters:,} in {s.initializers} initializers")
    table.add_row("nodes", str(s.nodes))
    table.add_row("operators", _safe(", ".join(f"{op} {n}" for op, n in s.op_histogram.items())))
    for key, value in s.metadata.items():
        table.add_row(_safe(f"acmix_deploy.{key}"), _safe(value if isinstance(value, str) else json.dumps(value)))
    for key, value in s.other_metadata.items():
        table.add_row(_safe(f"metadata {key}"), _safe(value))
    _print_table(table)


def _info_engine(path: Path) -> None:
    from ..artifacts.tensorrt import read_sidecar, sidecar_path

    side = read_sidecar(path)
    table = Table(show_header=False, title=_safe(path))
    size = f"{path.stat().st_size / 1e6:.1f} MB" if path.is_file() else "missing (only the sidecar was found)"
    table.add_row("file", f"{size}; described by {_safe(sidecar_path(path).name)}")
    table.add_row("built for", _safe(f"{side.gpu_name} (compute capability {side.compute_capability}), "
                                     f"TensorRT {side.tensorrt_version}; it runs only there"))
    table.add_row("precision", _safe(f"{side.precision} ({side.typing} typing)"))
    table.add_row(_safe(f"input {side.input_name}"), _safe("[batch, " + ", ".join(map(str, side.input_size)) + "]"))
    shapes = side.output_shapes or ([side.output_shape] if side.output_shape else [])
    for i, name in enumerate(side.all_output_names):
        shape = ", ".join("batch" if j == 0 else str(d) for j, d in enumerate(shapes[i])) if i < len(shapes) else "?"
        table.add_row(_safe(f"output {name}"), _safe(f"[{shape}]"))
    for i, prof in enumerate(side.profiles):
        table.add_row(f"profile {i}", "batch " + " / ".join(str(prof[k][0]) for k in ("min", "opt", "max"))
                      + " (min / opt / max), input " + "x".join(map(str, prof["opt"][1:])))
    if side.workspace_bytes is not None:
        table.add_row("workspace limit", f"{side.workspace_bytes / 2**30:.2f} GiB")
    if side.builder_optimization_level is not None:
        table.add_row("optimization level", str(side.builder_optimization_level))
    table.add_row("build time", f"{side.build_seconds:.1f} s")
    table.add_row("ONNX source sha256", _safe(side.onnx_sha256))
    if side.engine_sha256:
        table.add_row("engine sha256", _safe(side.engine_sha256))
    if side.package_version or side.created:
        table.add_row("written by", _safe(" ".join(x for x in (f"acmix-deploy {side.package_version}"
                                                              if side.package_version else "", side.created) if x)))
    for key, value in side.source.items():
        table.add_row(_safe(f"source.{key}"), _safe(value))
    _print_table(table)
