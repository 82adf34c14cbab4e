"""Reduced precision written into the ONNX graph (TensorRT 10+/11 networks are strongly typed).

FP16: weights and activations are converted to float16 with onnxconverter-common's converter, with
the graph's inputs and outputs kept float32, and the attention kept in float32: every ``Softmax``,
the ``Add`` that feeds it (the window mask), the ``MatMul`` that produces the logits and, with the
softmax floor, the ``Max``/``Sub``/``ReduceMax`` between them (:func:`attention_nodes`).  Logits of
many terms lose accuracy in float16 and the ``-inf`` mask must not meet float16 overflow; the value
aggregation (second ``MatMul``) and all convolutions run in float16.  Shape arithmetic (the halo tables
of graphs with dynamic height and width) is left as exported (:func:`shape_nodes`).

Why onnxconverter-common rather than NVIDIA ModelOpt's AutoCast: ModelOpt's ONNX extra pulls
``onnxruntime-gpu`` (which clashes with ``onnxruntime``), cupy and an older onnx; the converter is a
small pure-Python package that keeps I/O types and takes an explicit block list.
"""

from __future__ import annotations

from ..util import require

FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT / FLOAT16

__all__ = ["attention_nodes", "convert_fp16", "drop_round_trips", "shape_nodes"]


def _floor_parts(node, producer) -> list:
    """``[Sub, ReduceMax]`` when ``node`` is the softmax floor's ``Max(L, ReduceMax(L) - m)``, else ``[]``."""
    if node.op_type != "Max":
        return []
    for sub in (producer.get(i) for i in node.input):
        if sub is not None and sub.op_type == "Sub":
            row_max = producer.get(sub.input[0])
            if row_max is not None and row_max.op_type == "ReduceMax" and row_max.input[0] in node.input:
                return [sub, row_max]
    return []


def attention_nodes(model_proto) -> list[str]:
    """Names of the nodes to keep in float32: each Softmax and the chain computing its logits.

    The chain is the Add (mask, bias) over the logits MatMul; in graphs with the softmax floor
    (``modules.window_attention.softmax_floor``) the Softmax reads ``Max(L, ReduceMax(L) - m)``, so the
    walk also keeps that Max, Sub and ReduceMax and goes on to the same logits ``L``.  It stops at the
    MatMul (its operands, queries and keys, stay float16) and at every other operator.
    """
    producer = {out: node for node in model_proto.graph.node for out in node.output}
    keep: list[str] = []
    for node in model_proto.graph.node:
        if node.op_type != "Softmax":
            continue
        keep.append(node.name)
        frontier = [producer.get(i) for i in node.input]
        while frontier:
            n = frontier.pop()
            if n is None or n.name in keep:
                continue
            floor = _floor_parts(n, producer)
            if floor:  # the Max's inputs are L and the Sub; L is walked on from here
                keep.extend(part.name for part in [n, *floor] if part.name not in keep)
                frontier.extend(producer.get(i) for i in n.input)
            elif n.op_type in ("Add", "MatMul"):
                keep.append(n.name)
                if n.op_type == "Add":  # the mask add: follow it to the logits MatMul
                    frontier.extend(producer.get(i) for i in n.input)
    return keep


def shape_nodes(model_proto) -> list[str]:
    """Names of the nodes that compute from tensor shapes only (and constants), not from tensor values.

    Graphs with dynamic height and width compute their halo tables from ``Shape`` in the graph (``Size``
    counts as a source too); part of that arithmetic runs in float32 (``Cast`` to float, ``Reciprocal``,
    ``Floor``).  The converter turns
    the types of those tensors to float16 without changing the ``Cast`` nodes' target type, which ONNX
    Runtime refuses ("Type (tensor(float16)) of output arg ... does not match"), and float16 could not
    hold the indices of a large map exactly anyway: this arithmetic stays as exported.
    """
    constant = {i.name for i in model_proto.graph.initializer}
    from_shape: set[str] = set()
    keep: list[str] = []
    for node in model_proto.graph.node:  # nodes are in topological order
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant":
            constant.update(node.output)
        elif node.op_type in ("Shape", "Size"):  # read a tensor's shape, not its values; they stay as they are
            from_shape.update(node.output)
        elif any(i in from_shape for i in inputs) and all(i in from_shape or i in constant for i in inputs):
            keep.append(node.name)
            from_shape.update(node.output)
    return keep


def convert_fp16(model_proto, keep_attention_fp32: bool = True):
    """A float16 copy of ``model_proto`` (I/O stay float32), attention in float32 by default.

    Shape arithmetic (:func:`shape_nodes`) is never converted."""
    require("onnxconverter_common", "onnx")
    from onnxconverter_common import float16

    import onnx

    for node in model_proto.graph.node:  # the block list works on names
        if not node.name:
            raise ValueError("every node needs a name for the FP16 block list")
    block = (attention_nodes(model_proto) if keep_attention_fp32 else []) + shape_nodes(model_proto)
    proto = onnx.ModelProto()
    proto.CopyFrom(model_proto)
    # Stale float32 value_info makes the converter insert casts of the wrong type around blocked
    # nodes (ONNX Runtime then refuses the model); types are re-inferred during the conversion.
    del proto.graph.value_info[:]
    converted = float16.convert_float_to_float16(proto, keep_io_types=True, node_block_list=block)
    drop_round_trips(converted)
    return converted


def drop_round_trips(model_proto) -> int:
    """Remove float32 -> float16 -> float32 ``Cast`` pairs in place; returns how many readers were rewired.

    Between two kept-float32 nodes the converter casts the tensor to float16 and back: the values lose
    float16's precision for nothing (16 such pairs in the shape arithmetic of ``acmix_resnet_tiny``'s graph
    with dynamic height and width, whose float values are exact in float16 only up to 2048).  Each cast
    back to float32 of such a tensor is replaced by the float32 original; the first cast goes too when
    nothing else reads it.
    """
    graph = model_proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    declared = {v.name: v.type.tensor_type.elem_type for v in
                [*graph.value_info, *graph.input, *graph.output]}
    graph_outputs = {o.name for o in graph.output}

    def cast_to(node) -> int | None:
        if node is None or node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    rename: dict[str, str] = {}
    dead = []
    for down in graph.node:
        up = producer.get(down.input[0]) if down.op_type == "Cast" and down.input else None
        if cast_to(down) != FLOAT or cast_to(up) != FLOAT16 or down.output[0] in graph_outputs:
            continue
        source = up.input[0]
        source_type = declared.get(source)
        if source_type is None and producer.get(source) is not None:
            source_type = FLOAT if cast_to(producer[source]) == FLOAT else None
        if source_type != FLOAT:
            continue
        rename[down.output[0]] = source
        dead.append(down)
    for name, source in rename.items():  # chained round trips: the first float32 tensor of the chain
        while source in rename:
            source = rename[source]
        rename[name] = source
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
    drop = {id(n) for n in dead}
    still_read = {name for node in graph.node if id(node) not in drop for name in node.input}
    drop |= {id(producer[d.input[0]]) for d in dead
             if producer[d.input[0]].output[0] not in still_read | graph_outputs}
    kept = [n for n in graph.node if id(n) not in drop]
    gone = {out for n in graph.node if id(n) in drop for out in n.output}
    del graph.node[:]
    graph.node.extend(kept)
    infos = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return len(rename)


def quantize_int8(fp32_path, out_path, calibration, cache_path=None, input_name: str = "images", batch: int = 8):
    """Post-training INT8 quantization of an ONNX file into Q/DQ form (what TensorRT 10+ builds from).

    Convolutions and the classifier (``Conv``, ``Gemm``) get symmetric int8 weights (per channel)
    and activations (zero point 0, as TensorRT requires), with ranges from min/max calibration on
    ``calibration`` (``(N, C, H, W)`` float32).  The attention's matrix products and softmax stay
    in float.  With ``cache_path`` (onnxruntime >= 1.23) the computed ranges are saved there and
    reused by later runs.
    """
    import inspect

    require("onnxruntime", "onnx")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(calibration[i : i + batch] for i in range(0, len(calibration), batch))

        def get_next(self):
            x = next(self._batches, None)
            return None if x is None else {input_name: x}

    import logging

    kwargs = {}
    if cache_path is not None and "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        kwargs["calibration_cache_path"] = str(cache_path)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs a pre-processing hint through the root logger
    try:
        quantize_static(
            str(fp32_path), str(out_path), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "Gemm"],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True}, **kwargs,
        )
    finally:
        root.setLevel(level)
    return "calibration_cache_path" in kwargs
