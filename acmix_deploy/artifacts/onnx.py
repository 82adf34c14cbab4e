"""What an ONNX file written by acmix-deploy looks like: its tensor names and its metadata.

The graph takes one input, :data:`INPUT_NAME` (``images``, float32 NCHW, batch axis dynamic unless exported
static).  Its outputs are named by :mod:`acmix_deploy.outputs` (a single tensor is :data:`OUTPUT_NAME`,
``logits``).  ``metadata_props`` carry string entries under the ``acmix_deploy.`` prefix; values that are not
plain strings are JSON (:data:`JSON_KEYS`).
"""

from __future__ import annotations

import collections
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AcmixDeployError
from ..outputs import SINGLE_OUTPUT_NAME
from ..util import require
from .spatial import SpatialRule

__all__ = ["INPUT_NAME", "JSON_KEYS", "METADATA_PREFIX", "OUTPUT_NAME", "SINGLE_OUTPUT_NAME", "OnnxSummary",
           "TensorSummary", "decode_metadata", "describe_onnx",
           "encode_metadata", "metadata_key", "read_onnx_metadata", "spatial_rule"]

INPUT_NAME = "images"
OUTPUT_NAME = SINGLE_OUTPUT_NAME  # the output of a single-output model
METADATA_PREFIX = "acmix_deploy."
# Keys whose values are JSON (the rest are plain strings).
JSON_KEYS = frozenset({"input_shape", "output_names", "export_cpu", "valid_hw"})

# The keys the exporter itself writes (callers add their own, e.g. arch, source, source_sha256).
INPUT_NAME_KEY = METADATA_PREFIX + "input_name"
INPUT_SHAPE_KEY = METADATA_PREFIX + "input_shape"  # JSON ["batch" | N, C, H, W]
OUTPUT_NAME_KEY = METADATA_PREFIX + "output_name"  # single-output models only
OUTPUT_NAMES_KEY = METADATA_PREFIX + "output_names"  # JSON list, every output in order
PRECISION_KEY = METADATA_PREFIX + "precision"
# Graphs with dynamic height and width: "true", and the sizes they take (JSON of artifacts.spatial.SpatialRule:
# {"multiple": [mh, mw], "min": [h, w], "rule": "<in words>"}).
DYNAMIC_HW_KEY = METADATA_PREFIX + "dynamic_hw"
VALID_HW_KEY = METADATA_PREFIX + "valid_hw"
CONV_PATH_GROUPS_KEY = METADATA_PREFIX + "conv_path_groups"  # "compact" or "merged into N-channel groups"
CPU_ISA_KEY = METADATA_PREFIX + "cpu_isa"  # the CPU level a graph for ONNX Runtime's CPU kernels was shaped for
SOFTMAX_FLOOR_KEY = METADATA_PREFIX + "softmax_floor"  # "row max - 30" or "none" (graphs for a CPU)
EXPORT_CPU_KEY = METADATA_PREFIX + "export_cpu"  # JSON: the exporting machine (model, isa, flags, threads, machine)


def metadata_key(name: str) -> str:
    """``acmix_deploy.<name>``, the ``metadata_props`` key of one entry."""
    return METADATA_PREFIX + name


def encode_metadata(entries: dict[str, Any]) -> dict[str, str]:
    """Prefixed string entries: strings stay as they are, every other value is written as JSON."""
    return {metadata_key(k): v if isinstance(v, str) else json.dumps(v) for k, v in entries.items()}


def decode_metadata(props: dict[str, str]) -> dict[str, Any]:
    """The ``acmix_deploy.*`` entries of ``props`` without the prefix; :data:`JSON_KEYS` decoded.

    A JSON key whose value is not valid JSON is an error: such a file was not written by acmix-deploy.
    """
    out: dict[str, Any] = {}
    for key, value in props.items():
        if not key.startswith(METADATA_PREFIX):
            continue
        name = key[len(METADATA_PREFIX):]
        if name in JSON_KEYS:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise AcmixDeployError(f"ONNX metadata {key} is not JSON ({value[:60]!r}); re-export the model "
                                       "with acmix-deploy") from None
        out[name] = value
    return out


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The acmix-deploy metadata of an ONNX file (see :func:`decode_metadata`), read without the weights."""
    onnx = require("onnx", "onnx")
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError and others for bad files
        raise AcmixDeployError(f"cannot read ONNX model {path}: {exc}") from None
    return decode_metadata({p.key: p.value for p in proto.metadata_props})


def spatial_rule(meta: dict[str, Any]):
    """The :class:`~acmix_deploy.artifacts.spatial.SpatialRule` of decoded metadata, or None for a graph with a
    fixed height and width."""
    value = meta.get("valid_hw")
    return None if value is None else SpatialRule.from_json(value)


# ------------------------------------------------------------------------------------------- describing a file


@dataclass(frozen=True)
class TensorSummary:
    """A graph input or output: name, element type (``float32``) and shape, symbolic axes by name."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]  # an int per fixed axis; the axis' name (``batch``) or ``?`` per free one


@dataclass
class OnnxSummary:
    """What :func:`describe_onnx` reads from an ONNX file, without running it."""

    path: Path
    size_bytes: int
    ir_version: int
    opsets: dict[str, int]  # operator-set domain ("" is the default, ai.onnx) -> version
    producer: str  # e.g. "acmix-deploy 0.1.0" (what export_onnx writes)
    inputs: list[TensorSummary]
    outputs: list[TensorSummary]
    nodes: int  # of the main graph
    op_histogram: dict[str, int]  # operator -> count in the main graph, most frequent first
    initializers: int
    parameters: int  # elements of all initializers
    external_data: bool  # weights kept in files beside the graph
    metadata: dict[str, Any] = field(default_factory=dict)  # the acmix_deploy.* entries, decoded
    other_metadata: dict[str, str] = field(default_factory=dict)  # every other metadata_props entry

    @property
    def opset(self) -> int | None:
        return self.opsets.get("", self.opsets.get("ai.onnx"))


def _dtype_name(onnx, elem_type: int) -> str:
    names = {"FLOAT": "float32", "DOUBLE": "float64", "FLOAT16": "float16", "BFLOAT16": "bfloat16"}
    try:
        name = onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"type {elem_type}"
    return names.get(name, name.lower())


def _tensor_summary(onnx, value_info) -> TensorSummary:
    tensor = value_info.type.tensor_type
    dims: list[int | str] = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return TensorSummary(value_info.name, _dtype_name(onnx, tensor.elem_type), tuple(dims))


def describe_onnx(path: str | os.PathLike) -> OnnxSummary:
    """Inputs and outputs (symbolic axes by name), opsets, producer, metadata and operator counts of an ONNX file.

    The weights are not loaded (an external-data file need not be present); the graph is not checked or run.
    Graph inputs that are initializers (older exporters list the weights as inputs) are not inputs here.
    """
    onnx = require("onnx", "onnx")
    path = Path(path)
    if not path.is_file():
        raise AcmixDeployError(f"ONNX model {path} does not exist or is not a file")
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError and others for bad files
        raise AcmixDeployError(f"cannot read ONNX model {path}: {exc}") from None
    graph = proto.graph
    weights = {init.name for init in graph.initializer}
    props = {p.key: p.value for p in proto.metadata_props}
    counts = collections.Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in graph.node)
    parameters = 0
    for init in graph.initializer:
        size = 1
        for d in init.dims:
            size *= int(d)
        parameters += size
    return OnnxSummary(
        path=path,
        size_bytes=path.stat().st_size,
        ir_version=int(proto.ir_version),
        opsets={o.domain: int(o.version) for o in proto.opset_import},
        producer=" ".join(x for x in (proto.producer_name, proto.producer_version) if x),
        inputs=[_tensor_summary(onnx, v) for v in graph.input if v.name not in weights],
        outputs=[_tensor_summary(onnx, v) for v in graph.output],
        nodes=len(graph.node),
        op_histogram=dict(counts.most_common()),
        initializers=len(graph.initializer),
        parameters=parameters,
        external_data=any(init.data_location == onnx.TensorProto.EXTERNAL for init in graph.initializer),
        metadata=decode_metadata(props),
        other_metadata={k: v for k, v in props.items() if not k.startswith(METADATA_PREFIX)},
    )
