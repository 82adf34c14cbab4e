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
and a message for the client's ``{"error": ...}`` body; nothing a client can
send makes the parser raise anything else (the property tests feed it random
bytes and mutated requests).  Strictness follows Triton's HTTP front end,
which parses with RapidJSON: tensor ``data`` must be numbers (not strings,
booleans or null), numbers beyond the FP32 range are refused rather than
turned into infinities, and the ``binary_data`` / ``binary_data_output``
parameters must be JSON booleans.  Non-finite values travel as the bare
literals ``NaN``, ``Infinity`` and ``-Infinity`` in both directions, as in
Triton since 22.03 (RapidJSON's kParseNanAndInfFlag / kWriteNanAndInfFlag,
triton-inference-server/server#3870); strict JSON readers need binary outputs.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import ConfigError

__all__ = ["HEADER_LENGTH", "DATATYPES", "v2_datatype", "InferRequest", "ProtocolError", "decode_and_parse",
           "decode_body", "encode_outputs", "encode_response", "exit_with_parent", "header_length_value", "json_limit",
           "loads_json", "parse_infer_request"]

HEADER_LENGTH = "Inference-Header-Content-Length"

# v2 datatype name -> NumPy dtype (little-endian); the models here take and return FP32 only,
# the table lets a request with another type be named in the error instead of misread.
DATATYPES = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}


# Limits that keep one request's parsing cost proportional to what the model can take.
JSON_DEPTH_LIMIT = 64  # nesting levels of the JSON header (a request needs < 10)
INT_DIGITS_LIMIT = 40  # digits of one JSON integer (int64 has 19); CPython refuses > 4300 with ValueError
JSON_BYTES_PER_ELEMENT = 96  # generous bound on one FP32 value as JSON text (repr, separator, pretty-printing)
JSON_SLACK_BYTES = 1 << 20


def json_limit(max_rows: int, input_shape: tuple[int, ...], body_limit: int,
               max_hw: tuple[int, int] | None = None) -> int:
    """The most bytes of JSON a request may carry: room for ``max_rows`` rows as text, and 1 MiB of slack.

    A request cannot need more (its rows are capped by the model's batch
    limit), so parsing cost is bounded by the model's size rather than by
    ``--max-body-mb``, whose room is meant for binary tensors.  A dynamic
    height and width count at ``max_hw`` (``--max-imgsz``).
    """
    if max_hw is not None and len(input_shape) == 3:
        input_shape = (input_shape[0], *(top if d < 0 else d for d, top in zip(input_shape[1:], max_hw)))
    if any(d < 0 for d in input_shape):  # a dynamic axis without a bound: none but the body's
        return body_limit
    return min(body_limit, JSON_SLACK_BYTES + JSON_BYTES_PER_ELEMENT * max_rows * math.prod(input_shape))


class ProtocolError(Exception):
    """A request the protocol (or this model) cannot take; ``status`` is the HTTP status to answer.

    Its message is the answer's body.  A limit in it is named by the ``serve`` flag that sets it
    (``--max-body-mb``), not by the Python parameter: the client reads it, and the operator who raises the
    limit starts the server with ``acmix-deploy serve`` (the flags are the fields of ``ServeSettings`` with
    dashes for underscores).
    """

    MAX_MESSAGE = 1000  # messages quote what the client sent; a 60 MB name must not come back whole

    def __init__(self, message: str, status: int = 400):
        if len(message) > self.MAX_MESSAGE:
            message = message[:self.MAX_MESSAGE] + f"... ({len(message)} characters)"
        super().__init__(message)
        self.status = status

    def __reduce__(self):  # across the parsing workers' process boundary: the status too, the message as it is
        return _restore_protocol_error, (str(self), self.status)


def _restore_protocol_error(message: str, status: int) -> ProtocolError:
    exc = ProtocolError.__new__(ProtocolError)
    Exception.__init__(exc, message)
    exc.status = status
    return exc


@dataclass
class InferRequest:
    id: str | None
    tensor: np.ndarray  # the model's one input, float32 NCHW
    outputs: list[tuple[str, bool]]  # (output name, as raw bytes) to return, in response order

    @property
    def output_binary(self) -> bool:
        """Whether the first returned output travels as raw bytes (single-output callers)."""
        return self.outputs[0][1]


def decode_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` gzip/deflate (what tritonclient's request compression sends), within ``limit`` bytes.

    Content codings are case-insensitive (RFC 9110 8.4.1), so ``GZIP`` is
    gzip.  Inflation stops at ``limit + 1`` bytes: a decompression bomb costs
    at most ``limit`` bytes of memory before its 413.
    """
    coding = (encoding or "").strip().lower()
    if not coding or coding == "identity":
        return body
    if coding not in ("gzip", "deflate"):
        raise ProtocolError(f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none", 415)
    wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
    dec = zlib.decompressobj(wbits)
    try:
        out = dec.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"body is not valid {coding} data: {exc}") from None
    if len(out) > limit or dec.unconsumed_tail:
        raise ProtocolError(f"decompressed body exceeds the limit of {limit} bytes (--max-body-mb)", 413)
    if not dec.eof:
        raise ProtocolError(f"body is truncated {coding} data")
    return out


def header_length_value(value: str) -> int | None:
    """The ``Inference-Header-Content-Length`` value as an integer, or None when it is not one: decimal digits
    only, as HTTP's Content-Length (``int()`` would also take " 120 ", "+120" and "12_0"), at most 20 of them."""
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 20 else None


def _header_length(value: str | None, body_len: int) -> int | None:
    if value is None:
        return None
    n = header_length_value(value)
    if n is None:
        raise ProtocolError(f"{HEADER_LENGTH} must be a decimal integer, got {value!r}"[:300])
    if not 0 < n <= body_len:
        raise ProtocolError(f"{HEADER_LENGTH} {n} does not lie within the body's {body_len} bytes")
    return n


MAX_DIM = (1 << 31) - 1  # no axis of a tensor a model here takes comes near it


def _shape(entry: dict, name: str) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}"[:300])
    if any(d > MAX_DIM for d in shape):
        raise ProtocolError(f"input {name!r}: an axis of the shape exceeds {MAX_DIM}")
    return tuple(shape)


def _params(obj: dict, what: str) -> dict:
    """A ``parameters`` member: absent or null is no parameters; anything but an object is refused (not ``[]``)."""
    value = obj.get("parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}'parameters' must be an object")
    return value


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > INT_DIGITS_LIMIT:
        raise ProtocolError(f"a JSON integer of {len(text)} characters is too long (at most {INT_DIGITS_LIMIT} digits)")
    return int(text)


def _json_depth_ok(head: bytes) -> bool:
    """Whether the JSON's bracket nesting stays within JSON_DEPTH_LIMIT (strings ignored; a cheap pre-scan).

    CPython's decoder recurses per level and raises RecursionError near
    1000 levels; refusing deep nesting up front keeps that path unused.
    """
    if head.count(b"[") + head.count(b"{") <= JSON_DEPTH_LIMIT:
        return True
    depth, in_string, escaped = 0, False, False
    for byte in head:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > JSON_DEPTH_LIMIT:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


def loads_json(head: bytes) -> tuple[object, int]:
    """The parsed JSON and how many ``NaN``/``Infinity`` literals it held; every failure is a 400 ProtocolError.

    The count tells a deliberate ``Infinity`` from a number such as ``1e400``
    that overflowed to one while parsing (refused later, as RapidJSON does).
    """
    if not _json_depth_ok(head):
        raise ProtocolError(f"request JSON is nested more than {JSON_DEPTH_LIMIT} levels deep")
    constants = [0]

    def constant(name: str) -> float:
        constants[0] += 1
        return float(name)

    try:
        return json.loads(head, parse_constant=constant, parse_int=_parse_int), constants[0]
    except ProtocolError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc}") from None
    except (RecursionError, ValueError, OverflowError, MemoryError) as exc:
        raise ProtocolError(f"request body is not acceptable JSON: {type(exc).__name__}: {str(exc)[:200]}") from None


_NUMBER_TYPES = {int, float}


def _flatten_json_data(data, name: str, shape: tuple[int, ...], literals: int = 0) -> np.ndarray:
    """JSON ``data``: a flat list or nested lists (row-major) of numbers, as float64.

    Only JSON numbers are tensor data (as in Triton): NumPy would quietly
    turn ``"1.5"`` into 1.5, ``true`` into 1.0 and ``null`` into NaN, so the
    element types are checked before converting.
    """
    if not isinstance(data, list):
        raise ProtocolError(f"input {name!r}: 'data' must be a (nested) list of numbers")
    expected = math.prod(shape)
    flat = data
    if flat and isinstance(flat[0], list):  # nested: every level must have the shape's length (no ragged lists)
        if len(flat) != shape[0]:
            raise ProtocolError(f"input {name!r}: nested 'data' has {len(flat)} rows, the shape {list(shape)} "
                                f"needs {shape[0]}")
        for level in range(1, len(shape) + 1):
            if not flat or not isinstance(flat[0], list):
                break
            if level == len(shape):
                raise ProtocolError(f"input {name!r}: 'data' is nested deeper than the shape {list(shape)}")
            if not all(type(v) is list and len(v) == shape[level] for v in flat):
                raise ProtocolError(f"input {name!r}: nested 'data' does not match the shape {list(shape)} at "
                                    f"level {level} (ragged lists, or lists mixed with numbers)")
            flat = list(itertools.chain.from_iterable(flat))
    if len(flat) != expected:
        raise ProtocolError(f"input {name!r}: {len(flat)} elements in 'data', the shape needs {expected}")
    kinds = set(map(type, flat))
    if not kinds <= _NUMBER_TYPES:
        bad = sorted(k.__name__ for k in kinds - _NUMBER_TYPES)
        names = {"str": "strings", "bool": "booleans", "NoneType": "null", "list": "nested lists", "dict": "objects"}
        raise ProtocolError(f"input {name!r}: 'data' must hold only numbers (FP32), found "
                            + ", ".join(names.get(b, b) for b in bad))
    try:
        arr = np.asarray(flat, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        raise ProtocolError(f"input {name!r}: a value in 'data' lies outside the FP32 range") from None
    with np.errstate(over="ignore"):
        as32 = arr.astype(np.float32)
    finite64 = np.isfinite(arr)
    overflowed = int((~finite64).sum()) > literals or not np.isfinite(as32[finite64]).all()
    if overflowed:
        raise ProtocolError(f"input {name!r}: a number in 'data' lies outside the FP32 range "
                            f"(|x| > {float(np.finfo(np.float32).max):.4g}); write NaN, Infinity or -Infinity "
                            "for non-finite values")
    return as32


def _reshaped(flat: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    try:
        return flat.reshape(shape)
    except ValueError as exc:  # NumPy's own limits on a shape with a zero axis ("maximum allowed dimension")
        raise ProtocolError(f"input {name!r}: shape {list(shape)} cannot be built: {exc}") from None


def _json_bool(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"{what} must be a JSON boolean (true or false), got {value!r}"[:300])
    return value


def parse_infer_request(
    body: bytes,
    header_length: str | None,
    input_name: str,
    input_shape: tuple[int, ...],
    output_name: str | Sequence[str],
    max_rows: int | None = None,
    max_json_bytes: int | None = None,
    rows_limit_source: str = "--max-batch",
    max_hw: tuple[int, int] | None = None,
) -> InferRequest:
    """Parse one ``POST .../infer`` body for a model with one FP32 input ``(N, *input_shape)`` (-1 in
    ``input_shape``: any size on that axis, e.g. the height and width of a graph exported with --dynamic-hw).

    ``output_name`` is the model's output name, or the list of its output
    names.  As in Triton, a request without ``outputs`` gets every output
    (raw bytes when ``parameters.binary_data_output`` is true); one with
    ``outputs`` gets those it names, in its order, each as raw bytes when its
    ``parameters.binary_data`` is true (default: ``binary_data_output``).

    ``max_rows`` refuses a batch axis above the model's limit (as Triton
    refuses batches above ``max_batch_size``) before any tensor is built;
    ``max_json_bytes`` bounds the JSON part (see :func:`json_limit`);
    ``max_hw`` bounds a dynamic height and width (``--max-imgsz``), each axis and the pixels of all rows.
    """
    n_header = _header_length(header_length, len(body))
    head = body[:n_header] if n_header is not None else body
    if max_json_bytes is not None and len(head) > max_json_bytes:
        raise ProtocolError(f"the JSON part of the request is {len(head)} bytes, more than {max_json_bytes} bytes "
                            "(room for the model's largest batch as JSON text); send large tensors as binary data", 413)
    try:
        req, literals = loads_json(head)
    except ProtocolError as exc:
        if n_header is None and b"binary_data_size" in head[:1 << 16]:
            raise ProtocolError(f"{exc} (the body carries binary tensor data: send the {HEADER_LENGTH} header "
                                "with the length of its JSON part)") from None
        raise
    if not isinstance(req, dict):
        raise ProtocolError("request body must be a JSON object")
    req_id = req.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise ProtocolError("'id' must be a string")
    params = _params(req, "")

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
        known = isinstance(datatype, str) and datatype in DATATYPES
        raise ProtocolError(f"input {input_name!r}: datatype {datatype!r} {'' if known else '(not a v2 datatype) '}"
                            "does not match the model's FP32")
    shape = _shape(entry, input_name)
    if len(shape) != 1 + len(input_shape) or any(d >= 0 and d != n for d, n in zip(input_shape, shape[1:])):
        expected = "[-1, " + ", ".join(map(str, input_shape)) + "]"
        raise ProtocolError(f"input {input_name!r}: shape {list(shape)} does not match the model's {expected}")
    if shape[0] < 1:
        raise ProtocolError(f"input {input_name!r}: the batch axis must be at least 1")
    if max_hw is not None and len(input_shape) == 3 and len(shape) == 4:
        for axis, (label, top) in enumerate(zip(("height", "width"), max_hw), start=2):
            if input_shape[axis - 1] < 0 and shape[axis] > top:
                raise ProtocolError(f"input {input_name!r}: {label} {shape[axis]} exceeds this server's limit of "
                                    f"{max_hw[0]}x{max_hw[1]} (--max-imgsz)")
        if input_shape[1] < 0 and shape[0] * shape[2] * shape[3] > max_hw[0] * max_hw[1]:
            raise ProtocolError(f"{shape[0]} rows of {shape[2]}x{shape[3]} exceed this server's pixels per batch "
                                f"(one {max_hw[0]}x{max_hw[1]} image, --max-imgsz); split the request")
    if max_rows is not None and shape[0] > max_rows:
        raise ProtocolError(f"input {input_name!r}: batch of {shape[0]} rows exceeds this model's limit of "
                            f"{max_rows} rows per request ({rows_limit_source}); split the request")
    count = math.prod(shape)

    in_params = _params(entry, f"input {input_name!r}: ")
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
        tensor = _reshaped(np.frombuffer(body, dtype="<f4", count=count, offset=n_header), shape, input_name)
    else:
        if n_header is not None and n_header != len(body):
            raise ProtocolError(f"{len(body) - n_header} bytes follow the JSON header, but no input declares binary_data_size")
        if "data" not in entry:
            raise ProtocolError(f"input {input_name!r} has neither 'data' nor binary_data_size")
        tensor = _reshaped(_flatten_json_data(entry["data"], input_name, shape, literals), shape, input_name)

    names = [output_name] if isinstance(output_name, str) else list(output_name)
    binary_default = _json_bool(params.get("binary_data_output", False), "parameters.binary_data_output")
    outputs = req.get("outputs")
    if outputs is None:
        return InferRequest(id=req_id, tensor=tensor, outputs=[(n, binary_default) for n in names])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise ProtocolError("'outputs' must be a list of objects")
    wanted: list[tuple[str, bool]] = []
    for out in outputs:
        name = out.get("name")
        if not isinstance(name, str) or name not in names:
            has = (f"one output, {names[0]!r}" if len(names) == 1
                   else f"{len(names)} outputs, " + ", ".join(map(repr, names)))
            raise ProtocolError(f"unknown output {name!r}; this model has {has}")
        if any(name == n for n, _ in wanted):
            raise ProtocolError(f"output {name!r} is requested twice")
        out_params = _params(out, f"output {name!r}: ")
        if out_params.get("classification"):
            raise ProtocolError("the classification extension is not supported; ask for the raw output")
        binary = binary_default
        if "binary_data" in out_params:
            binary = _json_bool(out_params["binary_data"], f"output {name!r}: parameters.binary_data")
        wanted.append((name, binary))
    if not wanted:  # "outputs": [] asks for nothing in particular: every output, as without the field
        wanted = [(n, binary_default) for n in names]
    return InferRequest(id=req_id, tensor=tensor, outputs=wanted)


_V2_NAMES = {dtype: name for name, dtype in DATATYPES.items()}


def v2_datatype(dtype) -> str:
    """The v2 protocol name of a NumPy dtype (``float32`` -> ``FP32``); one it cannot carry is a clear error."""
    name = _V2_NAMES.get(np.dtype(dtype).newbyteorder("<"))
    if name is None:
        raise ConfigError(f"a tensor of dtype {np.dtype(dtype).name} cannot be described to Triton or the v2 "
                          f"protocol; use one of {', '.join(sorted(DATATYPES))}")
    return name


def tensor_entry(name: str, array: np.ndarray, binary: bool) -> dict:
    """The JSON description of a tensor: its data inline, or its size when the bytes follow the JSON."""
    datatype = _V2_NAMES.get(np.dtype(array.dtype).newbyteorder("<"), "FP32")
    tensor: dict = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if binary:
        tensor["parameters"] = {"binary_data_size": array.nbytes}
    else:
        tensor["data"] = array.reshape(-1).tolist()
    return tensor


def encode_response(model_name: str, model_version: str, request_id: str | None, output_name: str,
                    output: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers for one FP32 output (see :func:`encode_outputs`)."""
    return encode_outputs(model_name, model_version, request_id,
                          [(output_name, np.asarray(output, dtype=np.float32), binary)])


def encode_outputs(model_name: str, model_version: str, request_id: str | None,
                   outputs: Sequence[tuple[str, np.ndarray, bool]]) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers (``Content-Type``, and the header length when any output is binary).

    ``outputs`` is ``(name, array, binary)`` per returned output, in order; the
    raw bytes of the binary ones follow the JSON in that order (Triton's binary
    tensor data extension).  Non-finite values in JSON ``data`` are written as
    ``NaN`` / ``Infinity`` / ``-Infinity``, as Triton writes them.
    """
    tensors, blobs = [], []
    for name, array, binary in outputs:
        array = np.ascontiguousarray(array, dtype=np.asarray(array).dtype.newbyteorder("<"))
        tensors.append(tensor_entry(name, array, binary))
        if binary:
            blobs.append(array.tobytes())
    resp: dict = {"model_name": model_name, "model_version": model_version, "outputs": tensors}
    if request_id is not None:
        resp["id"] = request_id
    head = json.dumps(resp, separators=(",", ":")).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


def decode_and_parse(raw: bytes, encoding: str | None, header_length: str | None, body_limit: int,
                     options: dict) -> InferRequest:
    """:func:`decode_body` then :func:`parse_infer_request` (keyword ``options``): one request body, start to end.

    A module-level function with positional arguments (what a process pool passes), so that the server can
    run it in a worker process: parsing a large JSON body holds the interpreter lock for seconds, which a
    thread would take from the event loop.
    """
    return parse_infer_request(decode_body(raw, encoding, body_limit), header_length, **options)


def exit_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Initializer of the server's parsing workers: end this process when the server process is gone.

    A worker blocks on its task queue, whose pipe it holds both ends of, so a server killed outright
    (SIGKILL, the OOM killer) would leave it waiting forever; a daemon thread watches the parent instead.
    """
    import os
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(0)

    threading.Thread(target=watch, name="acmix-parent-watch", daemon=True).start()
