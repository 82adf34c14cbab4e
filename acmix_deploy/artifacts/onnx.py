"""What an ONNX file written by acmix-deploy looks like: its tensor names and its metadata.

The graph takes one input, :data:`INPUT_NAME` (``images``, float32 NCHW, batch axis dynamic unless exported
static).  Its outputs are named by :mod:`acmix_deploy.outputs` (a single tensor is :data:`OUTPUT_NAME`,
``logits``).  ``metadata_props`` carry string entries under the ``acmix_deploy.`` prefix; values that are not
plain strings are JSON (:data:`JSON_KEYS`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import AcmixDeployError
from ..outputs import SINGLE_OUTPUT_NAME
from ..util import require

__all__ = ["INPUT_NAME", "JSON_KEYS", "METADATA_PREFIX", "OUTPUT_NAME", "SINGLE_OUTPUT_NAME", "decode_metadata",
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
    from .spatial import SpatialRule

    value = meta.get("valid_hw")
    return None if value is None else SpatialRule.from_json(value)
