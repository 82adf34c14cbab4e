"""Reduced precision written into the ONNX graph (TensorRT 10+/11 networks are strongly typed).

FP16: weights and activations are converted to float16 with onnxconverter-common's converter, with
the graph's inputs and outputs kept float32, and the attention kept in float32: every ``Softmax``,
the ``Add`` that feeds it (the window mask), the ``MatMul`` that produces the logits and, with the
softmax floor, the ``Max``/``Sub``/``ReduceMax`` between them (:func:`attention_nodes`).  Logits of
many terms lose accuracy in float16 and the ``-inf`` mask must not meet float16 overflow; the value
aggregation (second ``MatMul``) and all convolutions run in float16.

Why onnxconverter-common rather than NVIDIA ModelOpt's AutoCast: ModelOpt's ONNX extra pulls
``onnxruntime-gpu`` (which clashes with ``onnxruntime``), cupy and an older onnx; the converter is a
small pure-Python package that keeps I/O types and takes an explicit block list.
"""

from __future__ import annotations

from ..util import require

__all__ = ["attention_nodes", "convert_fp16"]


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


def convert_fp16(model_proto, keep_attention_fp32: bool = True):
    """A float16 copy of ``model_proto`` (I/O stay float32), attention in float32 by default."""
    require("onnxconverter_common", "onnx")
    from onnxconverter_common import float16

    import onnx

    for node in model_proto.graph.node:  # the block list works on names
        if not node.name:
            raise ValueError("every node needs a name for the FP16 block list")
    block = attention_nodes(model_proto) if keep_attention_fp32 else []
    proto = onnx.ModelProto()
    proto.CopyFrom(model_proto)
    # Stale float32 value_info makes the converter insert casts of the wrong type around blocked
    # nodes (ONNX Runtime then refuses the model); types are re-inferred during the conversion.
    del proto.graph.value_info[:]
    return float16.convert_float_to_float16(proto, keep_io_types=True, node_block_list=block)


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
