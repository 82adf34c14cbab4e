"""ONNX export of deploy-form models.

The graph is traced from the deploy form (the attention core's index tables
enter as constants, the spatial size is fixed, the batch axis dynamic by
default), checked with ``onnx.checker``, simplified with onnxslim, stamped
with metadata, checked against TensorRT's ONNX operator support, and written
atomically.  A model may return several tensors (a tuple/list, nested, or a dict):
every one becomes a graph output, named by :func:`acmix_deploy.outputs.output_names`
(one tensor keeps the name ``logits``) or by ``output_names``, each with the
dynamic batch axis.  A validation callback runs on the finished file before it is
moved into place, so a file that fails validation never appears.

Why onnxslim rather than onnxsim: on our graphs both reach the same node
count in under a second with unchanged outputs (see ENVIRONMENT.md), but
onnxslim is pure Python on top of onnx (no native build to match onnx's
version) and is actively maintained; onnxsim pins its own onnx build.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from .._version import __version__
from ..artifacts.onnx import (CONV_PATH_GROUPS_KEY, CPU_ISA_KEY, DYNAMIC_HW_KEY, EXPORT_CPU_KEY, INPUT_NAME,
                              INPUT_NAME_KEY, INPUT_SHAPE_KEY, OUTPUT_NAME, OUTPUT_NAMES_KEY, OUTPUT_NAME_KEY,
                              PRECISION_KEY, SOFTMAX_FLOOR_KEY, VALID_HW_KEY, encode_metadata)
from ..artifacts.spatial import SpatialRule
from ..errors import ConfigError, ExportError
from ..modules.acmix import ACmixDeploy, dynamic_spatial_export, merged_conv_groups
from ..modules.window_attention import softmax_floor
from ..outputs import flatten_outputs, output_names as name_outputs
from ..util import atomic_write, detect_cpu, require, resolve_cpu_isa
from .dynamic_hw import derive_spatial_rule
from .precision import convert_fp16, quantize_int8
from .trt_ops import TENSORRT_ONNX_OPS, TENSORRT_VERSION

__all__ = ["GUARD_NAME", "MAX_GROUP_MERGE", "MAX_OPSET", "MIN_OPSET", "NCHWC_BLOCK", "OnnxExport", "check_graph_options", "conv_group_merge",
           "cpu_target", "export_onnx", "guard_spatial_rule", "op_histogram", "softmax_floor_for", "unsupported_ops"]

MIN_OPSET, MAX_OPSET = 13, 20

# ONNX Runtime's CPU provider runs a convolution in its blocked (NCHWc) kernels only when every group has whole
# blocks of input and output channels; otherwise im2col and small products.  The block is MLAS's NchwcBlockSize
# (onnxruntime/core/mlas/lib/platform.cpp): 16 floats where AVX-512F is usable, 8 with AVX2/FMA3.  ACmix's
# convolution path has head_dim groups of 3h -> h channels (12 -> 4 for 4 heads), so a graph for ONNX Runtime
# on the CPU merges the fewest neighbouring groups that make whole blocks (``merged_conv_groups``): 4 with
# AVX-512 (48 -> 16), 2 with AVX2 (24 -> 8); a merge of m does m times the multiply-adds, the added ones with
# exact zeros.  ACmix-ResNet-50 deploy / plain ResNet-50 in ONNX Runtime, 2 threads, interleaved, on AVX-512:
# 1.51x / 1.53x (batch 1 / 8) compact, 1.46x / 1.47x with 16-channel groups; 32-channel groups lost (batch 8
# 1.60x); see docs/deploy_attention.md.  "generic" CPUs and GPUs get the compact groups, and so does torch
# itself (oneDNN ran the merged form slower).
NCHWC_BLOCK = {"avx512": 16, "avx2": 8}
MAX_GROUP_MERGE = 4
# ONNX Runtime's CPU softmax is slow on the attention's masked (-inf) logits on Intel CPUs (subnormal
# intermediates in its exp, handled in microcode); a graph for the CPU raises every logit to at least 30 below
# its row's largest (modules.window_attention.softmax_floor: the output moves by at most 2 (n - 1) e^-30 max|v|, 3.1e-11 max|v| for
# the 169-slot halo; no exp below e^-30).  On the
# AMD EPYC where the graph was tuned the softmax was 3% of the deploy graph's ORT time without the floor (on an
# Intel Xeon 29%), so a graph exported for this machine (auto) on an AMD CPU is left without it.
SOFTMAX_FLOOR_MARGIN = 30.0
# The prefix of the size guard's nodes and tensors (:func:`guard_spatial_rule`); ONNX Runtime's error names
# the guard's Gather, whose name carries the rule.
GUARD_NAME = "acmix_deploy.valid_hw"


def softmax_floor_for(cpu_isa: str | None) -> float | None:
    """The softmax floor margin of a graph for ``cpu_isa`` (an :func:`export_onnx` argument), or None."""
    if cpu_isa is None or (cpu_isa == "auto" and detect_cpu().vendor == "AuthenticAMD"):
        return None
    return SOFTMAX_FLOOR_MARGIN


def conv_group_merge(heads: int, head_dim: int, cpu_isa: str | None) -> int:
    """How many of ACmix's ``head_dim`` conv-path groups (``3h -> h`` channels) a graph for ``cpu_isa`` runs as one.

    ``cpu_isa`` is a level of :data:`acmix_deploy.util.CPU_ISAS`, or None for a graph not meant for ONNX
    Runtime's CPU kernels (compact groups).
    """
    block = NCHWC_BLOCK.get(cpu_isa)
    if block is None:
        return 1
    factor = block // math.gcd(block, heads)
    return factor if 1 < factor <= MAX_GROUP_MERGE and head_dim % factor == 0 else 1


def cpu_target(device: str, cpu_isa: str = "auto") -> str | None:
    """The ``cpu_isa`` of :func:`export_onnx` for a graph meant to run on ``device`` with ONNX Runtime.

    A CPU gets the graph shaped for ``cpu_isa`` (``auto``: the exporting machine's); a GPU (ONNX Runtime's
    CUDA provider, TensorRT) gets None: the compact groups, the fewest multiply-adds.  ``cpu_isa="none"``
    asks for the plain graph on the CPU too (for other CPU runtimes such as OpenVINO, which the shaping
    does not help).  Every exporter that chooses asks here.
    """
    return cpu_isa if device == "cpu" and cpu_isa != "none" else None


@dataclass
class OnnxExport:
    path: Path
    seconds: float
    size_bytes: int
    nodes: int
    op_histogram: dict[str, int]
    opset: int
    dynamic_batch: bool
    input_shape: tuple[int, ...]
    simplified: bool
    fp16: bool = False
    int8: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    output_names: list[str] = field(default_factory=lambda: [OUTPUT_NAME])  # every graph output, in order
    dynamic_hw: bool = False
    spatial_rule: SpatialRule | None = None  # the sizes a dynamic_hw graph takes


def op_histogram(model_proto) -> dict[str, int]:
    """Operator counts of the main graph, most frequent first."""
    counts = collections.Counter(
        (n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}") for n in model_proto.graph.node
    )
    return dict(counts.most_common())


def unsupported_ops(model_proto) -> list[str]:
    """Operators TensorRT 10's ONNX parser does not accept (custom domains included)."""
    return sorted(op for op in op_histogram(model_proto) if op not in TENSORRT_ONNX_OPS)


def _check_tensorrt_ops(bad: list[str], what: str, enforce: bool) -> None:
    """Refuse (``enforce``: the graph is for TensorRT) or warn about operators TensorRT 10 cannot parse."""
    if not bad:
        return
    text = (f"the {what} uses operator(s) TensorRT {TENSORRT_VERSION}'s ONNX parser does not support: "
            f"{', '.join(bad)}")
    if enforce:
        raise ExportError(text + "; replace the module(s) that produce them, or export for ONNX Runtime")
    warnings.warn(text + " (fine for ONNX Runtime; a TensorRT engine cannot be built from it)", stacklevel=3)


def _trace(model: nn.Module, x: torch.Tensor, opset: int, dynamic: bool, names: list[str],
           ranks: list[int], spatial_axes: list[dict[int, str]] | None = None) -> bytes:
    buf = io.BytesIO()
    axes = None
    if dynamic:  # every output with a leading axis has the batch axis (a 0-d output has none to mark)
        axes = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n, rank in zip(names, ranks) if rank >= 1}}
    if spatial_axes is not None:  # dynamic height and width: the input's, and every output axis that follows them
        axes[INPUT_NAME].update({2: "height", 3: "width"})
        for n, extra in zip(names, spatial_axes):
            axes.setdefault(n, {}).update(extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints taken from shapes
        torch.onnx.export(
            model, (x,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
            output_names=list(names), dynamic_axes=axes, do_constant_folding=True,
        )
    return buf.getvalue()


def guard_spatial_rule(proto, rule: SpatialRule) -> None:
    """Make ``proto`` (a graph with dynamic height and width) fail in ONNX Runtime at a size outside ``rule``.

    ONNX has no assertion operator.  Every consumer of the input reads instead
    ``Reshape(images, Gather([[0, 0, 0, 0]], bad))``, ``bad`` the number of axes (0..2) whose size is not a
    multiple of ``rule.multiple`` or is below ``rule.minimum``: at a valid size the Reshape's shape is
    ``[0, 0, 0, 0]`` (every axis kept) and it returns the input unchanged (no arithmetic on the values, so
    the outputs are bit-identical; ONNX Runtime's Reshape aliases its input, no copy); at an invalid size
    the index is out of the one-row table and the Gather raises.  Height and width are read as the shape of
    ``images[0, 0]``, so once they are fixed (ONNX Runtime's free dimension overrides) the whole guard folds
    into a constant, batch still dynamic.  Edits ``proto`` in place.
    """
    onnx = require("onnx", "onnx")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper

    p = GUARD_NAME + "/"
    checked = p + "images"
    for node in proto.graph.node:
        node.input[:] = [checked if name == INPUT_NAME else name for name in node.input]
    consts = {"multiple": np.array(rule.multiple), "minimum": np.array(rule.minimum), "keep": np.zeros((1, 4)),
              "zero": np.array(0)}
    # [H, W] as the shape of images[0, 0] (channel 0 first: N*H*W values copied, not C*H*W): no batch axis, so
    # the guard folds into a constant once height and width are fixed (ONNX Runtime folds a Shape only when
    # every axis of its input is known).
    read_hw = [helper.make_node("Gather", [INPUT_NAME, p + "zero"], [p + "channel"], axis=1),  # (N, H, W)
               helper.make_node("Gather", [p + "channel", p + "zero"], [p + "plane"], axis=0),  # (H, W)
               helper.make_node("Shape", [p + "plane"], [p + "hw"])]
    inits = [numpy_helper.from_array(v.astype(np.int64), p + k) for k, v in consts.items()]
    nodes = [
        *read_hw,
        helper.make_node("Div", [p + "hw", p + "multiple"], [p + "quotient"]),
        helper.make_node("Mul", [p + "quotient", p + "multiple"], [p + "rounded"]),
        helper.make_node("Equal", [p + "rounded", p + "hw"], [p + "divisible"]),
        helper.make_node("GreaterOrEqual", [p + "hw", p + "minimum"], [p + "large_enough"]),
        helper.make_node("And", [p + "divisible", p + "large_enough"], [p + "valid"]),
        helper.make_node("Not", [p + "valid"], [p + "invalid"]),
        helper.make_node("Cast", [p + "invalid"], [p + "invalid_int"], to=onnx.TensorProto.INT64),
        helper.make_node("ReduceSum", [p + "invalid_int"], [p + "bad"], keepdims=0),
        # Out of bounds (ONNX Runtime raises "indices element out of data bounds") unless bad == 0.
        helper.make_node("Gather", [p + "keep", p + "bad"], [p + "same_shape"], axis=0,
                         name=f"{GUARD_NAME}: {rule.describe()}"),
        helper.make_node("Reshape", [INPUT_NAME, p + "same_shape"], [checked]),
    ]
    proto.graph.initializer.extend(inits)
    rest = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes + rest)


def name_symbolic_sizes(proto):
    """``proto`` with every tensor's symbolic sizes named consistently (ONNX Runtime's symbolic shape inference).

    In a graph with dynamic height and width the exporter cannot name the sizes that come out of the
    attention's in-graph index arithmetic (they become ``unk__N``), while the convolution path the
    attention output is added to has a named size.  ONNX Runtime fuses a convolution with the ``Add`` and
    activation that follow it (``FusedConv``, and the NCHWc residual sum) only when both inputs of the
    ``Add`` have equal sizes, equal names included.  ``onnxruntime.tools.symbolic_shape_infer`` computes the
    sizes as expressions of the input's (with sympy) and names them, merging the two sides of each
    elementwise operator.  It only rewrites the shape annotations of intermediate tensors (``value_info``;
    the graph's inputs and outputs keep their axis names), never a node; if it
    fails on a graph, the graph is returned as it was (still exact, only fused less) with a warning.
    """
    onnx = require("onnx", "onnx")
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:  # onnxruntime absent: the graph stays as exported
        return proto
    stripped = onnx.ModelProto()
    stripped.CopyFrom(proto)
    del stripped.graph.value_info[:]
    try:
        named = SymbolicShapeInference.infer_shapes(stripped, auto_merge=True)
    except Exception as exc:  # noqa: BLE001 - an optimisation only; the graph itself is unchanged either way
        warnings.warn(f"could not name the graph's symbolic sizes ({type(exc).__name__}: {exc}); ONNX Runtime "
                      "may fuse fewer operators", stacklevel=3)
        return proto
    if named is None:
        return proto
    for mine, theirs in ((named.graph.input, proto.graph.input), (named.graph.output, proto.graph.output)):
        del mine[:]
        mine.extend(theirs)  # the graph's own input and output axis names ("batch", "<output>_dim2", ...)
    return named


def check_graph_options(opset: int, dynamic: bool, dynamic_hw: bool) -> None:
    """Refuse an opset outside ``MIN_OPSET..MAX_OPSET`` and dynamic height and width without a dynamic batch
    (:func:`export_onnx`'s checks; the export driver runs them before any work)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"{{opset}} {opset} is not supported; use {MIN_OPSET}..{MAX_OPSET} (17 is the default)",
                          params=["opset"])
    if dynamic_hw and not dynamic:
        raise ConfigError("{dynamic_hw} makes batch, height and width dynamic; it cannot be combined with "
                          "{dynamic=False}", params=["dynamic_hw", "dynamic=False"])


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int, int],
    batch: int = 1,
    dynamic: bool = True,
    opset: int = 17,
    simplify: bool = True,
    metadata: dict[str, Any] | None = None,
    validate: Callable[[Path], None] | None = None,
    fp16: bool = False,
    int8_calibration=None,
    calibration_cache: str | os.PathLike | None = None,
    cpu_isa: str | None = None,
    output_names: list[str] | None = None,
    for_tensorrt: bool = False,
    dynamic_hw: bool = False,
    spatial_rule: SpatialRule | None = None,
) -> OnnxExport:
    """Export ``model`` (eval mode, CPU, float32) to ``path``.

    ``validate(tmp_path)`` runs on the complete file before it is renamed onto
    ``path``; if it raises, nothing is written.  ``fp16=True`` converts the graph
    to float16 with the attention kept in float32 (see :mod:`.precision`).
    ``cpu_isa`` shapes the graph for ONNX Runtime on a CPU of that level (``auto``: this machine's,
    :func:`acmix_deploy.util.detect_cpu`; or ``avx512``, ``avx2``, ``generic``): ACmix's convolution-path
    groups are merged into whole NCHWc blocks (:func:`conv_group_merge`).  None (the default) keeps the
    compact groups, as a plain ``torch.onnx.export`` does: the graph for GPUs and TensorRT.  The metadata
    records the level (``acmix_deploy.cpu_isa``), the exporting machine (``acmix_deploy.export_cpu``) and
    the groups (``acmix_deploy.conv_path_groups``).
    ``output_names`` names the outputs of a model that returns several tensors (one unique name per
    flattened tensor); by default they follow :func:`acmix_deploy.outputs.output_names`.  The names are
    recorded in the metadata as ``acmix_deploy.output_names`` (a JSON list), and, for a single output,
    also as ``acmix_deploy.output_name`` as in files written before several outputs were supported.
    ``for_tensorrt``: the graph is meant for TensorRT's ONNX parser (an engine build); an operator outside
    its support matrix (:mod:`.trt_ops`, TensorRT 10) is then an :class:`ExportError`.  Otherwise such an
    operator only warns (a ``UserWarning``): ONNX Runtime runs it.
    ``dynamic_hw``: height and width are dynamic too (with the batch; ``dynamic`` must be on).  The sizes
    the graph takes are derived from the model (:func:`.dynamic_hw.derive_spatial_rule`, a
    :class:`ConfigError` for models that cannot have them, e.g. Swin-ACmix) and recorded in the metadata
    (``acmix_deploy.dynamic_hw``, ``acmix_deploy.valid_hw``); output axes that change with the input size
    are dynamic as well (named ``<output>_dim<axis>``).  ``input_size`` is the size the graph is traced and
    tuned at (the attention core's tile and block groups are chosen for it).  ``spatial_rule``: the rule
    :func:`.dynamic_hw.derive_spatial_rule` already returned for this model and size (it is not derived
    again); only with ``dynamic_hw``.  The graph refuses other sizes itself (:func:`guard_spatial_rule`).
    """
    onnx = require("onnx", "onnx")
    check_graph_options(opset, dynamic, dynamic_hw)
    if batch < 1:
        raise ConfigError(f"batch must be positive, got {batch}")
    if spatial_rule is not None and not dynamic_hw:
        # spatial_rule is an argument of this function only (no flag): named as plain text, not a parameter
        raise ConfigError("spatial_rule is for a graph with dynamic height and width ({dynamic_hw})",
                          params=["dynamic_hw"])
    isa = None if cpu_isa is None else resolve_cpu_isa(cpu_isa)
    path = Path(path)
    t0 = time.perf_counter()
    model = model.eval()
    param = next(model.parameters())
    x = torch.randn(batch, *input_size, dtype=param.dtype, device=param.device)
    rule, spatial_axes = None, None
    with torch.no_grad():
        out = model(x)  # surface input-size errors before tracing, with their own message
        names = name_outputs(out, output_names)  # ConfigError for a wrong count or duplicate names
        flat = flatten_outputs(out)
        ranks = [t.dim() for t in flat]
        if dynamic_hw:
            rule = spatial_rule if spatial_rule is not None else derive_spatial_rule(model, input_size)
            # Which output axes follow the input size: the outputs at a larger valid size (wider than high).
            (mh, mw), (_, hh, ww) = rule.multiple, input_size
            other = flatten_outputs(model(x.new_zeros(batch, input_size[0], hh + mh, ww + 2 * mw)))
            spatial_axes = [{axis: f"{name}_dim{axis}" for axis in range(1, t.dim()) if t.shape[axis] != u.shape[axis]}
                            for name, t, u in zip(names, flat, other)]
        merge = None if isa is None else (lambda h, d: conv_group_merge(h, d, isa))
        floor = softmax_floor_for(cpu_isa)
        with merged_conv_groups(merge), dynamic_spatial_export(dynamic_hw), softmax_floor(floor):
            proto = onnx.load_from_string(_trace(model, x, opset, dynamic, names, ranks, spatial_axes))
    onnx.checker.check_model(proto)
    if simplify:
        onnxslim = require("onnxslim", "onnx")
        proto = onnxslim.slim(proto)
        onnx.checker.check_model(proto)
    if fp16:
        proto = convert_fp16(proto)
        onnx.checker.check_model(proto)
    if dynamic_hw:  # after the float16 conversion, which drops the shape annotations
        proto = name_symbolic_sizes(proto)
        onnx.checker.check_model(proto)
    if rule is not None:
        guard_spatial_rule(proto, rule)
        onnx.checker.check_model(proto)
    traced = [o.name for o in proto.graph.output]
    if traced != names:  # e.g. the model returns one tensor twice: the tracer gives it one graph output
        raise ExportError(f"the exported graph has outputs {traced}, expected {names}; return each output "
                          "tensor once (clone a tensor returned twice)")
    _check_tensorrt_ops(unsupported_ops(proto), "exported graph", for_tensorrt)
    meta = {
        INPUT_NAME_KEY: INPUT_NAME,
        INPUT_SHAPE_KEY: json.dumps(["batch" if dynamic else batch, input_size[0],
                                     *(("height", "width") if dynamic_hw else input_size[1:])]),
        **({OUTPUT_NAME_KEY: names[0]} if len(names) == 1 else {}),
        OUTPUT_NAMES_KEY: json.dumps(names),
        PRECISION_KEY: (
            "fp16 (softmax, mask and logits in fp32; float32 I/O)" if fp16
            else "int8 Q/DQ (Conv, Gemm; attention in fp32)" if int8_calibration is not None else "fp32"
        ),
    }
    if rule is not None:
        meta[DYNAMIC_HW_KEY] = "true"
        meta[VALID_HW_KEY] = json.dumps(rule.to_json())
    if isa is not None:
        meta[CPU_ISA_KEY] = isa
        meta[SOFTMAX_FLOOR_KEY] = "none" if floor is None else f"row max - {floor:g}"
        meta[EXPORT_CPU_KEY] = json.dumps(detect_cpu().as_dict())
    acmix_blocks = [m for m in model.modules() if isinstance(m, ACmixDeploy)]
    if acmix_blocks:
        merged = any(conv_group_merge(m.head, m.head_dim, isa) > 1 for m in acmix_blocks)
        meta[CONV_PATH_GROUPS_KEY] = f"merged into {NCHWC_BLOCK[isa]}-channel groups" if merged else "compact"
    meta.update(encode_metadata(metadata or {}))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "acmix-deploy", __version__  # torch sets its own version

    final = {"proto": proto}

    def write(tmp: str) -> None:
        if int8_calibration is None:
            onnx.save(proto, tmp)
        else:
            fp32_tmp = Path(tmp).with_suffix(".fp32.onnx")
            try:
                onnx.save(proto, fp32_tmp)
                quantize_int8(fp32_tmp, tmp, int8_calibration, calibration_cache, input_name=INPUT_NAME)
            finally:
                fp32_tmp.unlink(missing_ok=True)
            quantized = onnx.load(tmp)
            _check_tensorrt_ops(unsupported_ops(quantized), "quantized graph", for_tensorrt)
            final["proto"] = quantized
        if validate is not None:
            validate(Path(tmp))

    atomic_write(path, write)
    return OnnxExport(
        path=path, seconds=time.perf_counter() - t0, size_bytes=path.stat().st_size,
        nodes=len(final["proto"].graph.node), op_histogram=op_histogram(final["proto"]), opset=opset, dynamic_batch=dynamic,
        input_shape=(batch, *input_size), simplified=simplify, fp16=fp16,
        int8=int8_calibration is not None, metadata=meta, output_names=list(names), dynamic_hw=dynamic_hw,
        spatial_rule=rule,
    )
