"""Property-based tests of the KServe v2 request parser and the binary tensor extension (hypothesis).

Properties: any bytes (and any mutation of a valid request) give a parsed
request or a 4xx :class:`ProtocolError`, never another exception; through
the app, every body gets a 200 or a 4xx JSON ``{"error"}``; and a valid
request's decoded tensor equals, bit for bit, what was sent (binary and JSON,
NaN and infinities included).  Examples are bounded so that the file runs in
seconds on two cores.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="property tests need hypothesis (pip install hypothesis)")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from acmix_deploy.serving.protocol import (HEADER_LENGTH, ProtocolError, decode_body, encode_response,  # noqa: E402
                                           parse_infer_request)

IN_SHAPE = (2, 3)  # the model's input without the batch axis
MAX_ROWS = 4
FAST = settings(max_examples=120, deadline=1000, suppress_health_check=[HealthCheck.too_slow])


def parse(body: bytes, header_length: str | None = None):
    return parse_infer_request(body, header_length, "images", IN_SHAPE, "logits", max_rows=MAX_ROWS,
                               max_json_bytes=1 << 20)


def outcome(body: bytes, header_length: str | None = None):
    """The parsed request, or the ProtocolError; anything else propagates and fails the test."""
    try:
        return parse(body, header_length)
    except ProtocolError as exc:
        assert 400 <= exc.status < 500, exc.status
        assert str(exc) and len(str(exc)) <= ProtocolError.MAX_MESSAGE + 40
        return exc


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10 ** 50), 10 ** 50) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)

FIELDS = ["id", "parameters", "inputs", "outputs", "inputs.0", "inputs.0.name", "inputs.0.datatype", "inputs.0.shape",
          "inputs.0.data", "inputs.0.parameters", "inputs.0.shape.0", "inputs.0.data.0", "outputs.0",
          "outputs.0.name", "outputs.0.parameters", "outputs.0.parameters.binary_data",
          "parameters.binary_data_output", "inputs.0.parameters.binary_data_size"]


def valid_request(rows: int = 1) -> dict:
    return {"id": "r", "parameters": {"binary_data_output": False},
            "inputs": [{"name": "images", "datatype": "FP32", "shape": [rows, *IN_SHAPE],
                        "data": [0.5] * (rows * math.prod(IN_SHAPE)), "parameters": {}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": False}}]}


def mutate(req: dict, path: str, value):
    """Replace (or add) the value at a dotted path; missing containers make the mutation a no-op."""
    keys = path.split(".")
    node = req
    for k in keys[:-1]:
        if isinstance(node, list) and k.isdigit() and int(k) < len(node):
            node = node[int(k)]
        elif isinstance(node, dict) and k in node:
            node = node[k]
        else:
            return req
    last = keys[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    return req


@FAST
@given(st.binary(max_size=600), st.one_of(st.none(), st.text(max_size=6), st.integers(-5, 700).map(str)))
def test_any_bytes_parse_or_4xx(body, header_length):
    outcome(body, header_length)


@FAST
@given(st.sampled_from(["[", "{\"a\":", "[1,", "{\"inputs\":["]), st.integers(1, 20000))
def test_deep_nesting_is_a_4xx(prefix, depth):
    result = outcome((prefix * depth).encode())
    assert isinstance(result, ProtocolError)


@FAST
@given(st.lists(st.tuples(st.sampled_from(FIELDS), json_values), min_size=1, max_size=3), st.integers(1, 6))
def test_mutated_requests_parse_or_4xx(mutations, rows):
    req = valid_request(rows)
    for path, value in mutations:
        req = mutate(req, path, value)
    try:
        body = json.dumps(req).encode()
    except (ValueError, TypeError):
        return
    result = outcome(body)
    if not isinstance(result, ProtocolError):  # whatever was accepted is a well-formed FP32 tensor within the limit
        assert result.tensor.dtype == np.float32 and result.tensor.shape[1:] == IN_SHAPE
        assert 1 <= result.tensor.shape[0] <= MAX_ROWS
        assert isinstance(result.output_binary, bool)


@FAST
@given(st.integers(0, 10 ** 6), st.sampled_from(["data", "shape", "header"]))
def test_big_numbers_are_4xx(digits_seed, where):
    big = "1" + "0" * (40 + digits_seed % 5000)  # 41..5040 digits (str(int) itself refuses > 4300)
    req = valid_request()
    if where == "data":
        body = json.dumps(req).replace("0.5", big, 1).encode()
    elif where == "shape":
        body = json.dumps(req).replace('"shape": [1', f'"shape": [{big}', 1).encode()
    else:
        result = outcome(json.dumps(req).encode(), big)
        assert isinstance(result, ProtocolError)
        return
    assert isinstance(outcome(body), ProtocolError)


float32_rows = st.integers(1, MAX_ROWS).flatmap(lambda n: hnp.arrays(
    np.float32, (n, *IN_SHAPE), elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))


@FAST
@given(float32_rows)
def test_binary_tensor_round_trip_is_bit_exact(x):
    head = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": list(x.shape),
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    req = parse(head + x.astype("<f4").tobytes(), str(len(head)))
    assert req.tensor.tobytes() == x.astype("<f4").tobytes()


@FAST
@given(float32_rows, st.booleans())
def test_json_tensor_round_trip_is_exact(x, nested):
    data = x.tolist() if nested else x.reshape(-1).tolist()
    body = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": list(x.shape), "data": data}]})
    req = parse(body.encode())
    np.testing.assert_array_equal(req.tensor, x)  # NaN == NaN for assert_array_equal


@FAST
@given(float32_rows, st.booleans())
def test_response_encodes_what_it_was_given(y, binary):
    body, headers = encode_response("m", "1", "id", "logits", y, binary)
    n = int(headers.get(HEADER_LENGTH, len(body)))
    out = json.loads(body[:n])["outputs"][0]  # Python's json reads Triton's NaN / Infinity literals
    if binary:
        got = np.frombuffer(body, dtype="<f4", offset=n).reshape(out["shape"])
    else:
        got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    np.testing.assert_array_equal(got, y)


@FAST
@given(st.binary(max_size=400), st.sampled_from(["gzip", "GZIP", "deflate", "Deflate", " gzip ", "br", "x"]))
def test_decode_body_of_any_bytes(body, encoding):
    try:
        out = decode_body(body, encoding, 1 << 16)
        assert isinstance(out, bytes) and len(out) <= 1 << 16
    except ProtocolError as exc:
        assert exc.status in (400, 413, 415)


@FAST
@given(st.binary(max_size=3000), st.sampled_from(["gzip", "deflate"]))
def test_decode_body_round_trip(payload, encoding):
    packed = gzip.compress(payload) if encoding == "gzip" else zlib.compress(payload)
    assert decode_body(packed, encoding.upper(), 1 << 16) == payload


def test_decompression_bomb_stops_at_the_limit():
    bomb = gzip.compress(b"\0" * (64 << 20))
    with pytest.raises(ProtocolError) as info:
        decode_body(bomb, "gzip", 1 << 20)
    assert info.value.status == 413


# -- through the app (in process, a NumPy model) ---------------------------------------------------------------------

fastapi = pytest.importorskip("fastapi", reason="serving needs fastapi")


def _doubler():
    from acmix_deploy.runtime import Runner, TensorSpec

    class Doubler(Runner):
        backend = "numpy"

        def _infer_impl(self, x):
            with np.errstate(over="ignore"):  # 2 * 3e38 is inf, on both sides of the comparison
                return [(x.reshape(x.shape[0], -1) * 2).astype(np.float32)]

    return Doubler("numpy-doubler", "cpu", [TensorSpec("images", ("batch", *IN_SHAPE), np.float32)],
                   [TensorSpec("logits", ("batch", math.prod(IN_SHAPE)), np.float32)])


@pytest.fixture(scope="module")
def client():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's note about httpx vs httpx2
        from starlette.testclient import TestClient

    from acmix_deploy.serving import ServeSettings, create_app

    app = create_app(_doubler(), ServeSettings(name="m", max_batch=MAX_ROWS, batch_timeout_ms=0, max_body_mb=1,
                                          max_inflight_mb=8))
    with TestClient(app, raise_server_exceptions=True) as c:
        yield c


@settings(max_examples=80, deadline=2000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=500), st.sampled_from([None, "gzip", "GZIP", "deflate", "br"]),
       st.one_of(st.none(), st.integers(-3, 600).map(str), st.text(alphabet="0123456789x-", max_size=5)))
def test_app_answers_any_body_with_200_or_4xx_json(client, body, encoding, header_length):
    headers = {}
    if encoding:
        headers["Content-Encoding"] = encoding
    if header_length is not None:
        headers[HEADER_LENGTH] = header_length
    r = client.post("/v2/models/m/infer", content=body, headers=headers)
    assert r.status_code == 200 or 400 <= r.status_code < 500, r.text
    if r.status_code != 200:
        assert isinstance(r.json()["error"], str)


@settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(float32_rows, st.booleans(), st.booleans())
def test_app_answer_equals_the_model_on_the_request(client, x, binary_in, binary_out):
    tensor = {"name": "images", "datatype": "FP32", "shape": list(x.shape)}
    if binary_in:
        tensor["parameters"] = {"binary_data_size": x.nbytes}
    else:
        tensor["data"] = x.reshape(-1).tolist()
    head = json.dumps({"inputs": [tensor], "outputs": [{"name": "logits", "parameters": {"binary_data": binary_out}}]})
    body = head.encode() + (x.tobytes() if binary_in else b"")
    headers = {HEADER_LENGTH: str(len(head.encode()))} if binary_in else {}
    r = client.post("/v2/models/m/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    n = int(r.headers.get(HEADER_LENGTH, len(r.content)))
    out = json.loads(r.content[:n])["outputs"][0]
    got = (np.frombuffer(r.content, dtype="<f4", offset=n) if binary_out
           else np.asarray(out["data"], dtype=np.float32)).reshape(out["shape"])
    np.testing.assert_array_equal(got, _doubler().infer(x))
