"""The KServe v2 / Triton inference protocol over HTTP: parse and validate requests, encode responses.

A request body is JSON, optionally followed by raw tensor bytes (Triton's
binary tensor data extension): the ``Inference-Header-Content-Length`` header
gives the length of the JSON part; each input whose ``parameters`` carry
``binary_data_size`` takes that many bytes from the rest of the body, in the
order of the ``inputs`` list.  Binary tensors are little-endian, row-major.

An output is returned as raw bytes after the JSON header when its request
entry has ``parameters.binary_data: true``, or when the request has
``parameters.binary_data_output: true`` (what ``tritonclient.http`` sends when
no outputs are named); otherwise as a flat JSON list in ``data``.

Every violation raises :class:`ProtocolError` with the HTTP status to answer
and a message for the client's ``{"error": ...}`` body.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["HEADER_LENGTH", "DATATYPES", "InferRequest", "ProtocolError", "decode_body", "encode_response",
           "parse_infer_request"]

HEADER_LENGTH = "Inference-Header-Content-Length"

# v2 datatype name -> NumPy dtype (little-endian); the models here take and return FP32 only,
# the table lets a request with another type be named in the error instead of misread.
DATATYPES = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}


class ProtocolError(Exception):
    """A request the protocol (or this model) cannot take; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class InferRequest:
    id: str | None
    tensor: np.ndarray  # the model's one input, float32 NCHW
    output_binary: bool  # return the output as raw bytes


def decode_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` gzip/deflate (what tritonclient's request compression sends), within ``limit`` bytes."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none", 415)
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    dec = zlib.decompressobj(wbits)
    try:
        out = dec.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or dec.unconsumed_tail:
        raise ProtocolError(f"decompressed body exceeds the limit of {limit} bytes", 413)
    return out


def _header_length(value: str | None, body_len: int) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None
    if not 0 < n <= body_len:
        raise ProtocolError(f"{HEADER_LENGTH} {n} does not lie within the body's {body_len} bytes")
    return n


def _shape(entry: dict, name: str) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
    return tuple(shape)


def _flatten_json_data(data, name: str) -> np.ndarray:
    """JSON ``data``: a flat list or nested lists (row-major) of numbers."""
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProtocolError(f"input {name!r}: 'data' must be a (nested) list of numbers") from None
    if arr.dtype == object:
        raise ProtocolError(f"input {name!r}: 'data' is a ragged nested list")
    return arr.reshape(-1)


def parse_infer_request(
    body: bytes,
    header_length: str | None,
    input_name: str,
    input_shape: tuple[int, ...],
    output_name: str,
) -> InferRequest:
    """Parse one ``POST .../infer`` body for a model with one FP32 input ``(N, *input_shape)`` and one output."""
    n_header = _header_length(header_length, len(body))
    head = body[:n_header] if n_header is not None else body
    try:
        req = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(req, dict):
        raise ProtocolError("request body must be a JSON object")
    req_id = req.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise ProtocolError("'id' must be a string")
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")

    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise ProtocolError("'inputs' must be a list of tensor objects")
    names = [i.get("name") for i in inputs]
    unknown = [n for n in names if n != input_name]
    if unknown:
        raise ProtocolError(f"unknown input {unknown[0]!r}; this model has one input, {input_name!r}")
    if len(inputs) != 1:
        raise ProtocolError(f"expected exactly one input {input_name!r}, got {len(inputs)}")
    entry = inputs[0]
    datatype = entry.get("datatype")
    if datatype != "FP32":
        known = datatype in DATATYPES
        raise ProtocolError(f"input {input_name!r}: datatype {datatype!r} {'' if known else '(not a v2 datatype) '}"
                            "does not match the model's FP32")
    shape = _shape(entry, input_name)
    if len(shape) != 1 + len(input_shape) or tuple(shape[1:]) != tuple(input_shape):
        expected = "[-1, " + ", ".join(map(str, input_shape)) + "]"
        raise ProtocolError(f"input {input_name!r}: shape {list(shape)} does not match the model's {expected}")
    if shape[0] < 1:
        raise ProtocolError(f"input {input_name!r}: the batch axis must be at least 1")
    count = math.prod(shape)

    in_params = entry.get("parameters") or {}
    if not isinstance(in_params, dict):
        raise ProtocolError(f"input {input_name!r}: 'parameters' must be an object")
    binary_size = in_params.get("binary_data_size")
    if binary_size is not None:
        if n_header is None:
            raise ProtocolError(f"input {input_name!r} has binary_data_size but the request has no {HEADER_LENGTH} header")
        if not isinstance(binary_size, int) or isinstance(binary_size, bool) or binary_size < 0:
            raise ProtocolError(f"input {input_name!r}: binary_data_size must be a non-negative integer")
        if "data" in entry:
            raise ProtocolError(f"input {input_name!r} has both 'data' and binary_data_size")
        if binary_size != count * 4:
            raise ProtocolError(f"input {input_name!r}: binary_data_size {binary_size} is not {count} FP32 elements "
                                f"({count * 4} bytes) of shape {list(shape)}")
        rest = len(body) - n_header
        if rest != binary_size:
            raise ProtocolError(f"the body holds {rest} bytes after the {n_header}-byte JSON header, "
                                f"but the inputs declare {binary_size}")
        tensor = np.frombuffer(body, dtype="<f4", count=count, offset=n_header).reshape(shape)
    else:
        if n_header is not None and n_header != len(body):
            raise ProtocolError(f"{len(body) - n_header} bytes follow the JSON header, but no input declares binary_data_size")
        if "data" not in entry:
            raise ProtocolError(f"input {input_name!r} has neither 'data' nor binary_data_size")
        flat = _flatten_json_data(entry["data"], input_name)
        if flat.size != count:
            raise ProtocolError(f"input {input_name!r}: {flat.size} elements in 'data', shape {list(shape)} needs {count}")
        tensor = flat.astype(np.float32).reshape(shape)

    binary_out = bool(params.get("binary_data_output", False))
    outputs = req.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise ProtocolError("'outputs' must be a list of objects")
        for out in outputs:
            if out.get("name") != output_name:
                raise ProtocolError(f"unknown output {out.get('name')!r}; this model has one output, {output_name!r}")
            out_params = out.get("parameters") or {}
            if not isinstance(out_params, dict):
                raise ProtocolError(f"output {output_name!r}: 'parameters' must be an object")
            if out_params.get("classification"):
                raise ProtocolError("the classification extension is not supported; ask for the raw output")
            if "binary_data" in out_params:
                binary_out = bool(out_params["binary_data"])
    return InferRequest(id=req_id, tensor=tensor, output_binary=binary_out)


def tensor_entry(name: str, array: np.ndarray, binary: bool) -> dict:
    """The JSON description of an FP32 tensor: its data inline, or its size when the bytes follow the JSON."""
    tensor: dict = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
    if binary:
        tensor["parameters"] = {"binary_data_size": array.nbytes}
    else:
        tensor["data"] = array.reshape(-1).tolist()
    return tensor


def encode_response(model_name: str, model_version: str, request_id: str | None, output_name: str,
                    output: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers (``Content-Type``, and the header length for binary outputs)."""
    output = np.ascontiguousarray(output, dtype="<f4")
    tensor = tensor_entry(output_name, output, binary)
    resp: dict = {"model_name": model_name, "model_version": model_version, "outputs": [tensor]}
    if request_id is not None:
        resp["id"] = request_id
    head = json.dumps(resp, separators=(",", ":")).encode()
    if not binary:
        return head, {"Content-Type": "application/json"}
    return head + output.tobytes(), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}

