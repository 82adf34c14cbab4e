"""The KServe v2 / Triton HTTP server, end to end: a real uvicorn server on a free loopback port.

One tiny ACmix-ResNet (random weights, folded, exported to ONNX) is served; every
answer is checked against the runner's direct output for the same input.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

fastapi = pytest.importorskip("fastapi", reason="serving needs fastapi (pip install 'acmix-deploy[serve]')")
pytest.importorskip("uvicorn", reason="serving needs uvicorn (pip install 'acmix-deploy[serve]')")
httpx = pytest.importorskip("httpx", reason="the serving tests talk HTTP with httpx")
pytest.importorskip("onnxruntime", reason="the served model runs in ONNX Runtime")

import acmix_deploy as ad  # noqa: E402
from acmix_deploy.errors import ConfigError  # noqa: E402
from acmix_deploy.runtime import Runner, TensorSpec  # noqa: E402
from acmix_deploy.runtime.loader import open_runner  # noqa: E402
from acmix_deploy.serving import ServeSettings, ServingClient  # noqa: E402
from acmix_deploy.serving.client import ServingError  # noqa: E402
from acmix_deploy.testing import randomize_model  # noqa: E402

from tests.helpers.server import ServerThread  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "tiny"
REL = 1e-6


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def loaded(onnx_model):
    return open_runner(onnx_model, threads=1)


@pytest.fixture(scope="module")
def server(loaded):
    # A long batching window and small body limit, so that merging and 413 are easy to provoke.
    settings = ServeSettings(name=NAME, port=0, max_batch=8, batch_timeout_ms=60, workers=1, max_body_mb=0.25)
    with ServerThread(loaded, settings) as srv:
        yield srv


def metric_values(text: str) -> dict[str, float]:
    """Parse Prometheus text: ``name{labels} value`` lines; comments must be HELP/TYPE.

    Keys are ``name{label="value",...}`` with the labels in alphabetical order (their order carries no
    meaning in the format)."""
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    values = {}
    for line in text.strip().splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line), line
            continue
        m = sample.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(label.findall(m.group(2) or "")))
        key = m.group(1) + (f"{{{labels}}}" if labels else "")
        assert key not in values, f"sample {key} appears twice"
        values[key] = float(m.group(3))
    return values


def histogram(values: dict[str, float], name: str) -> tuple[list[tuple[float, float]], float]:
    buckets = sorted(
        (math.inf if m.group(1) == "+Inf" else float(m.group(1)), v)
        for k, v in values.items() if (m := re.match(rf'^{name}_bucket\{{.*le="([^"]+)".*\}}$', k))
    )
    count = next(v for k, v in values.items() if k.startswith(f"{name}_count"))
    return buckets, count


def batch_executions(url: str) -> tuple[float, float]:
    buckets, count = histogram(metric_values(httpx.get(url + "/metrics").text), "acmix_inference_batch_size")
    rows = next(v for k, v in metric_values(httpx.get(url + "/metrics").text).items()
                if k.startswith("acmix_inference_batch_size_sum"))
    return count, rows


# -- health and metadata ---------------------------------------------------------------------------------------------

def test_health_and_metadata(server, loaded):
    assert httpx.get(server.url + "/v2/health/live").status_code == 200
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    meta = httpx.get(server.url + "/v2").json()
    assert meta["name"] == "acmix-deploy" and "binary_tensor_data" in meta["extensions"]
    for path in (f"/v2/models/{NAME}", f"/v2/models/{NAME}/versions/1"):
        m = httpx.get(server.url + path).json()
        assert m["name"] == NAME and m["versions"] == ["1"] and m["platform"] == "onnxruntime_onnx"
        assert m["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
        assert m["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 5]}]
    assert httpx.get(server.url + f"/v2/models/{NAME}/ready").status_code == 200
    assert httpx.get(server.url + f"/v2/models/{NAME}/versions/1/ready").status_code == 200
    for path in ("/v2/models/other", "/v2/models/other/ready", f"/v2/models/{NAME}/versions/2"):
        r = httpx.get(server.url + path)
        assert r.status_code == 404 and "error" in r.json()


# -- inference ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("binary", [True, False])
def test_infer_matches_runner(server, loaded, binary):
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    y = ServingClient(server.url).infer(NAME, x, binary=binary, request_id="abc")
    assert y.shape == (3, 5) and y.dtype == np.float32
    assert rel_err(y, loaded.infer(x)) <= REL


def test_infer_json_nested_data_and_request_id(server, loaded):
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    body = {"id": "req-7", "inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                      "data": x.tolist()}]}
    r = httpx.post(server.url + f"/v2/models/{NAME}/versions/1/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "req-7" and out["model_name"] == NAME and out["model_version"] == "1"
    assert out["outputs"][0]["name"] == "logits" and out["outputs"][0]["shape"] == [1, 5]
    y = np.asarray(out["outputs"][0]["data"], dtype=np.float32).reshape(1, 5)
    assert rel_err(y, loaded.infer(x)) <= REL


def test_gzip_request_body(server, loaded):
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [2, 3, 32, 32],
                                   "data": x.reshape(-1).tolist()}]}).encode()
    r = httpx.post(server.url + f"/v2/models/{NAME}/infer", content=gzip.compress(body),
                   headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    y = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 5)
    assert rel_err(y, loaded.infer(x)) <= REL


def test_tritonclient_http_binary_and_json(server, loaded):
    """The official Triton HTTP client talks to our server: binary and JSON inputs and outputs."""
    tritonhttp = pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed")
    client = tritonhttp.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
        meta = client.get_model_metadata(NAME)
        assert meta["inputs"][0]["shape"] == [-1, 3, 32, 32]
        x = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
        ref = loaded.infer(x)
        for binary_in in (True, False):
            for binary_out in (True, False, None):
                inp = tritonhttp.InferInput("images", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=binary_in)
                outputs = None if binary_out is None else [tritonhttp.InferRequestedOutput("logits", binary_data=binary_out)]
                res = client.infer(NAME, [inp], outputs=outputs, request_id="t1")
                assert rel_err(res.as_numpy("logits"), ref) <= REL
                assert res.get_response()["id"] == "t1"
        with pytest.raises(Exception, match="unknown input"):
            bad = tritonhttp.InferInput("pixels", list(x.shape), "FP32")
            bad.set_data_from_numpy(x)
            client.infer(NAME, [bad])
    finally:
        client.close()


def test_concurrent_requests_are_batched_and_exact(server, loaded):
    """Concurrent requests of different batch sizes: merged (fewer executions than requests), each answer exact."""
    rng = np.random.default_rng(5)
    sizes = [1, 2, 3, 1, 2, 1, 4, 1, 2, 8, 1, 3]  # 8 = max_batch: run alone
    xs = [rng.standard_normal((n, 3, 32, 32)).astype(np.float32) for n in sizes]
    before_count, before_rows = batch_executions(server.url)
    barrier = threading.Barrier(len(xs))

    def one(i: int) -> np.ndarray:
        client = ServingClient(server.url)
        client._meta_cache(NAME)
        barrier.wait()
        return client.infer(NAME, xs[i], binary=i % 2 == 0 or sizes[i] > 4)  # JSON of 10 rows exceeds 0.25 MB

    with concurrent.futures.ThreadPoolExecutor(len(xs)) as pool:
        results = list(pool.map(one, range(len(xs))))
    for x, y in zip(xs, results):
        assert y.shape == (x.shape[0], 5)
        assert rel_err(y, loaded.infer(x)) <= REL
    count, rows = batch_executions(server.url)
    assert rows - before_rows == sum(sizes)
    assert count - before_count < len(xs), "no two requests were merged into one batch"
    buckets, total = histogram(metric_values(httpx.get(server.url + "/metrics").text), "acmix_inference_batch_size")
    assert total - next(v for le, v in buckets if le == 8) == 0  # no batch above --max-batch


def test_request_above_max_batch_is_refused_naming_the_limit(server, loaded):
    """As Triton refuses batches above max_batch_size: one request cannot cost more than the largest batch."""
    x = np.zeros((9, 3, 32, 32), dtype=np.float32)
    with pytest.raises(ServingError, match=r"9 rows exceeds this model's limit of 8") as info:
        ServingClient(server.url).infer(NAME, x)
    assert info.value.status == 400
    head = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [5400, 3, 32, 32],
                                   "parameters": {"binary_data_size": 5400 * 3072 * 4}}]}).encode()
    r = httpx.post(server.url + f"/v2/models/{NAME}/infer", content=head,  # refused on the JSON, before any tensor
                   headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and "limit of 8 rows" in r.json()["error"]
    y = ServingClient(server.url).infer(NAME, x[:8])
    assert rel_err(y, loaded.infer(x[:8])) <= REL


# -- bad input ------------------------------------------------------------------------------------------------------

def _binary_body(x: np.ndarray, size: int | None = None, shape=None, extra: bytes = b"") -> tuple[bytes, int]:
    head = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": list(shape or x.shape),
                                   "parameters": {"binary_data_size": x.nbytes if size is None else size}}]}).encode()
    return head + x.tobytes() + extra, len(head)


X1 = np.ones((1, 3, 32, 32), dtype=np.float32)


def _json(**changes) -> bytes:
    tensor = {"name": "images", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.5] * 3072}
    tensor.update(changes)
    return json.dumps({"inputs": [tensor]}).encode()


BAD_REQUESTS = {
    # case: (path suffix, body, headers, status, message fragment)
    "unknown model": ("/v2/models/nope/infer", _json(), {}, 404, "unknown model"),
    "unknown version": (f"/v2/models/{NAME}/versions/3/infer", _json(), {}, 404, "no version"),
    "not json": (f"/v2/models/{NAME}/infer", b"{this is not json", {}, 400, "not valid JSON"),
    "json list": (f"/v2/models/{NAME}/infer", b"[1, 2]", {}, 400, "JSON object"),
    "no inputs": (f"/v2/models/{NAME}/infer", b'{"outputs": []}', {}, 400, "'inputs'"),
    "wrong tensor name": (f"/v2/models/{NAME}/infer", _json(name="pixels"), {}, 400, "unknown input"),
    "wrong datatype": (f"/v2/models/{NAME}/infer", _json(datatype="FP64"), {}, 400, "datatype"),
    "unknown datatype": (f"/v2/models/{NAME}/infer", _json(datatype="FLOAT"), {}, 400, "not a v2 datatype"),
    "wrong shape": (f"/v2/models/{NAME}/infer", _json(shape=[1, 3, 16, 16], data=[0.0] * 768), {}, 400, "shape"),
    "zero batch": (f"/v2/models/{NAME}/infer", _json(shape=[0, 3, 32, 32], data=[]), {}, 400, "batch axis"),
    "element count": (f"/v2/models/{NAME}/infer", _json(data=[0.5] * 3000), {}, 400, "elements"),
    "non-numeric data": (f"/v2/models/{NAME}/infer", _json(data=["a"] * 3072), {}, 400, "numbers"),
    "unknown output": (f"/v2/models/{NAME}/infer",
                       json.dumps({**json.loads(_json()), "outputs": [{"name": "probs"}]}).encode(), {}, 400,
                       "unknown output"),
    "header length beyond body": (f"/v2/models/{NAME}/infer", _binary_body(X1)[0],
                                  {"Inference-Header-Content-Length": "999999"}, 400, "within the body"),
    "header length not a number": (f"/v2/models/{NAME}/infer", _binary_body(X1)[0],
                                   {"Inference-Header-Content-Length": "ten"}, 400, "integer"),
    "header length too short": (f"/v2/models/{NAME}/infer", _binary_body(X1)[0],
                                {"Inference-Header-Content-Length": "20"}, 400, "not valid JSON"),
    "binary size vs shape": (f"/v2/models/{NAME}/infer", _binary_body(X1, size=100)[0],
                             {"Inference-Header-Content-Length": str(_binary_body(X1, size=100)[1])}, 400,
                             "binary_data_size"),
    "binary trailing bytes": (f"/v2/models/{NAME}/infer", _binary_body(X1, extra=b"1234")[0],
                              {"Inference-Header-Content-Length": str(_binary_body(X1)[1])}, 400, "declare"),
    "binary without header": (f"/v2/models/{NAME}/infer", _binary_body(X1)[0], {}, 400, "not valid JSON"),
    "oversized body": (f"/v2/models/{NAME}/infer", b" " * (300 * 1024), {}, 413, "limit"),
    "unsupported encoding": (f"/v2/models/{NAME}/infer", _json(), {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    "corrupt gzip": (f"/v2/models/{NAME}/infer", b"not gzip", {"Content-Encoding": "gzip"}, 400, "gzip"),
    "gzip bomb": (f"/v2/models/{NAME}/infer", gzip.compress(b" " * (2 << 20)), {"Content-Encoding": "gzip"}, 413,
                  "limit"),
    # the hardening issue's parser cases: each was a plain-text 500 with a traceback
    "100,000 [": (f"/v2/models/{NAME}/infer", b"[" * 100_000, {}, 400, "nested"),
    "5,000-digit integer": (f"/v2/models/{NAME}/infer", _json(data=None).replace(b"null", b"1" * 5000), {}, 400,
                            "too long"),
    "10**400 in data": (f"/v2/models/{NAME}/infer",
                        _json(data=None).replace(b"null", b"[" + str(10 ** 400).encode() + b"]"), {}, 400, "too long"),
    "1e39 in data": (f"/v2/models/{NAME}/infer", _json(data=[1e39] * 3072), {}, 400, "FP32 range"),
    "strings as data": (f"/v2/models/{NAME}/infer", _json(data=["0.5"] * 3072), {}, 400, "only numbers"),
    "booleans as data": (f"/v2/models/{NAME}/infer", _json(data=[True] * 3072), {}, 400, "booleans"),
    "null as data": (f"/v2/models/{NAME}/infer", _json(data=[None] * 3072), {}, 400, "null"),
    "ragged data": (f"/v2/models/{NAME}/infer", _json(data=[[0.5] * 3071, [0.5]]), {}, 400, "nested 'data'"),
    "datatype a list": (f"/v2/models/{NAME}/infer", _json(datatype=["FP32"]), {}, 400, "datatype"),
    "binary_data_output string": (f"/v2/models/{NAME}/infer",
                                  json.dumps({**json.loads(_json()), "parameters": {"binary_data_output": "false"}}).encode(),
                                  {}, 400, "JSON boolean"),
    "binary_data string": (f"/v2/models/{NAME}/infer",
                           json.dumps({**json.loads(_json()), "outputs": [{"name": "logits", "parameters": {
                               "binary_data": "false"}}]}).encode(), {}, 400, "JSON boolean"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_refused_and_server_keeps_serving(server, loaded, case):
    path, body, headers, status, fragment = BAD_REQUESTS[case]
    r = httpx.post(server.url + path, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    y = ServingClient(server.url).infer(NAME, X1)
    assert rel_err(y, loaded.infer(X1)) <= REL


def test_content_encoding_is_case_insensitive_and_nan_travels_as_in_triton(server, loaded):
    x = np.random.default_rng(8).standard_normal((1, 3, 32, 32)).astype(np.float32)
    r = httpx.post(server.url + f"/v2/models/{NAME}/infer", content=gzip.compress(_json(data=x.reshape(-1).tolist())),
                   headers={"Content-Encoding": "GZIP"})
    assert r.status_code == 200, r.text
    y = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(1, 5)
    assert rel_err(y, loaded.infer(x)) <= REL
    body = _json(data=None).replace(b"null", b"[NaN, Infinity, -Infinity" + b", 0.5" * 3069 + b"]")
    r = httpx.post(server.url + f"/v2/models/{NAME}/infer", content=body)
    assert r.status_code == 200, r.text
    assert b"NaN" in r.content  # bare literals, as Triton writes them; Python's json reads them
    assert np.isnan(np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32)).any()


def test_malformed_http_is_a_json_400(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n".encode())
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                break
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head.lower()
    assert "error" in json.loads(body)


def test_wrong_method_and_route_answer_json_errors(server):
    r = httpx.get(server.url + f"/v2/models/{NAME}/infer")
    assert r.status_code == 405 and "error" in r.json()
    r = httpx.get(server.url + "/v2/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_failures_are_counted(server):
    before = metric_values(httpx.get(server.url + "/metrics").text)
    httpx.post(server.url + f"/v2/models/{NAME}/infer", content=b"nope")
    after = metric_values(httpx.get(server.url + "/metrics").text)
    key = f'acmix_inference_failures_total{{code="400",model="{NAME}"}}'
    assert after[key] == before.get(key, 0) + 1
    fail = f'acmix_inference_requests_total{{model="{NAME}",outcome="failure"}}'
    assert after[fail] == before[fail] + 1


class Delegate(Runner):
    """A stand-in over a real runner's specs: its own batch range, and ``run`` (default: the real one)."""

    def __init__(self, inner: Runner, name: str = "delegate", run=None, batch_range=None):
        self.backend, self.inner, self._run = inner.backend, inner, run or inner.infer_outputs
        super().__init__(name, inner.device, inner.input_specs, inner.output_specs, batch_range or inner.batch_range)

    def _infer_impl(self, x):
        return self._run(x)


def test_internal_failure_is_500_for_that_request_only(loaded):
    def flaky_run(x):  # raises on inputs whose first value is above 1e6
        if x[0, 0, 0, 0] > 1e6:
            raise RuntimeError("model exploded on this batch")
        return loaded.infer_outputs(x)

    flaky = Delegate(loaded, "flaky", flaky_run)
    with ServerThread(flaky, ServeSettings(name=NAME, port=0, max_batch=1, batch_timeout_ms=0)) as srv:
        client = ServingClient(srv.url)
        bad = X1.copy()
        bad[0, 0, 0, 0] = 1e7
        with pytest.raises(ServingError, match="model exploded") as info:
            client.infer(NAME, bad)
        assert info.value.status == 500
        assert httpx.get(srv.url + "/v2/health/ready").status_code == 200
        assert rel_err(client.infer(NAME, X1), loaded.infer(X1)) <= REL
        values = metric_values(httpx.get(srv.url + "/metrics").text)
        assert values[f'acmix_inference_failures_total{{code="500",model="{NAME}"}}'] == 1


def test_batch_outside_model_range_is_refused(loaded):
    fixed = Delegate(loaded, batch_range=(1, 2))  # e.g. a TensorRT profile of 1..2
    with ServerThread(fixed, ServeSettings(name=NAME, port=0)) as srv:
        r = httpx.post(srv.url + f"/v2/models/{NAME}/infer", content=_json(shape=[3, 3, 32, 32], data=[0.0] * 9216))
        assert r.status_code == 400 and "1..2" in r.json()["error"]
        assert ServingClient(srv.url).infer(NAME, np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 5)


@pytest.mark.parametrize("lo,hi,sizes", [(1, 1, [1] * 6), (1, 3, [2, 1, 2, 3, 1, 2])])
def test_merged_batches_stay_inside_model_range(loaded, lo, hi, sizes):
    """A static-batch model takes no merging and a bounded one (a TensorRT profile) caps it: concurrent
    requests that fit one by one must all succeed, never be merged into a batch the model rejects."""
    def strict_run(x):
        if not lo <= x.shape[0] <= hi:
            raise RuntimeError(f"batch {x.shape[0]} outside {lo}..{hi}")
        return loaded.infer_outputs(x)

    strict = Delegate(loaded, "strict", strict_run, batch_range=(lo, hi))
    xs = [np.random.default_rng(i).standard_normal((n, 3, 32, 32)).astype(np.float32) for i, n in enumerate(sizes)]
    with ServerThread(strict, ServeSettings(name=NAME, port=0, max_batch=8, batch_timeout_ms=20)) as srv:
        barrier = threading.Barrier(len(xs))

        def one(i: int) -> np.ndarray:
            client = ServingClient(srv.url)
            client._meta_cache(NAME)
            barrier.wait()
            return client.infer(NAME, xs[i])

        with concurrent.futures.ThreadPoolExecutor(len(xs)) as pool:
            results = list(pool.map(one, range(len(xs))))
    for x, y in zip(xs, results):
        assert rel_err(y, loaded.infer(x)) <= REL


# -- metrics ----------------------------------------------------------------------------------------------------------

def test_metrics_text_parses(server):
    ServingClient(server.url).infer(NAME, X1)
    r = httpx.get(server.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values = metric_values(r.text)
    assert values[f'acmix_inference_requests_total{{model="{NAME}",outcome="success"}}'] >= 1
    for name in ("acmix_inference_request_duration_seconds", "acmix_inference_batch_size",
                 "acmix_inference_queue_duration_seconds"):
        buckets, count = histogram(values, name)
        counts = [v for _, v in buckets]
        assert counts == sorted(counts) and buckets[-1][0] == math.inf and buckets[-1][1] == count and count >= 1


def test_server_metrics_series_and_values():
    """Every series /metrics has always exposed, with its value after known events; no other series
    (prometheus_client's *_created timestamps are left out); HELP and TYPE before each family."""
    from acmix_deploy.serving.metrics import LATENCY_BUCKETS_S, ServerMetrics

    m = ServerMetrics("tiny", max_batch=8)
    m.request_done(200, 0.003)
    m.request_done(200, 0.2)
    m.request_done(400, 0.1)
    m.request_done(503, 0.1)
    m.request_done(400, 0.1)
    m.batch_executed(3, [0.001, 0.02, 0.02])
    m.batch_executed(1, [0.5])
    m.inflight = 2
    m.client_disconnected()
    m.connection_refused()
    m.connection_refused()
    text = m.render()
    values = metric_values(text)
    lab = 'model="tiny"'
    expected = {
        f'acmix_inference_requests_total{{{lab},outcome="success"}}': 2,
        f'acmix_inference_requests_total{{{lab},outcome="failure"}}': 3,
        f'acmix_inference_failures_total{{code="400",{lab}}}': 2,
        f'acmix_inference_failures_total{{code="503",{lab}}}': 1,
        f"acmix_inference_request_duration_seconds_count{{{lab}}}": 2,
        f"acmix_inference_queue_duration_seconds_count{{{lab}}}": 4,
        f"acmix_inference_batch_size_count{{{lab}}}": 2,
        f"acmix_inference_batch_size_sum{{{lab}}}": 4,
        f"acmix_inference_inflight_requests{{{lab}}}": 2,
        f"acmix_client_disconnects_total{{{lab}}}": 1,
        f"acmix_connections_refused_total{{{lab}}}": 2,
        f"acmix_header_timeouts_total{{{lab}}}": 0,
    }
    for key, value in expected.items():
        assert values[key] == value, key
    assert math.isclose(values[f"acmix_inference_request_duration_seconds_sum{{{lab}}}"], 0.203)
    assert math.isclose(values[f"acmix_inference_queue_duration_seconds_sum{{{lab}}}"], 0.541)
    buckets, _ = histogram(values, "acmix_inference_queue_duration_seconds")
    assert [b for b, _ in buckets] == [*LATENCY_BUCKETS_S, math.inf]
    assert dict(buckets)[0.001] == 1 and dict(buckets)[0.025] == 3 and dict(buckets)[0.5] == 4
    assert [b for b, _ in histogram(values, "acmix_inference_batch_size")[0]] == [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, math.inf]
    families = ["acmix_inference_requests_total", "acmix_inference_failures_total",
                "acmix_inference_request_duration_seconds", "acmix_inference_queue_duration_seconds",
                "acmix_inference_batch_size", "acmix_inference_inflight_requests", "acmix_client_disconnects_total",
                "acmix_connections_refused_total", "acmix_header_timeouts_total"]
    assert re.findall(r"^# TYPE (\S+) ", text, re.M) == families
    series = {k.split("{")[0] for k in values}
    assert not any(name.endswith("_created") for name in series)
    # requests 2 + failures 2, two latency histograms (14 buckets + sum + count), batch size (12 + 2), the gauge,
    # three counters
    assert len(values) == 4 + 2 * 16 + 14 + 1 + 3


# -- settings and CLI -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [("port", 70000), ("max_batch", 0), ("workers", 0), ("max_body_mb", 0),
                                         ("batch_timeout_ms", -1), ("name", "a/b"), ("max_inflight_mb", 10),
                                         ("max_decodes", 0), ("max_connections", 1), ("read_timeout_s", 0),
                                         ("body_timeout_s", -1), ("keep_alive_s", 0), ("graceful_timeout_s", 1e9)])
def test_settings_are_validated(field, value):
    with pytest.raises(ConfigError):
        ServeSettings(**{"name": NAME, field: value}).validate()


def test_open_runner_errors(tmp_path, onnx_model):
    with pytest.raises(ad.AcmixDeployError, match="does not exist"):
        open_runner(tmp_path / "none.onnx")
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="suffix"):
        open_runner(tmp_path / "m.bin")
    with pytest.raises(ConfigError, match="backend torch runs"):
        open_runner(onnx_model, backend="torch")
    with pytest.raises(ad.AcmixDeployError, match="sidecar"):
        (tmp_path / "m.engine").write_bytes(b"x")
        open_runner(tmp_path / "m.engine")


def test_open_runner_checkpoint_matches_torch(tmp_path):
    model = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=3), 4).eval()
    path = ad.save_checkpoint(model, tmp_path / "train.pth")
    loaded = open_runner(path, imgsz=24)
    assert loaded.backend == "torch" and loaded.batch_range == (1, None)
    assert loaded.input_specs == (TensorSpec("images", ("batch", 3, 24, 24), np.float32),)
    assert loaded.output_specs == (TensorSpec("logits", ("batch", 3), np.float32),)
    x = np.random.default_rng(6).standard_normal((2, 3, 24, 24)).astype(np.float32)
    import torch

    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert rel_err(loaded.infer(x), ref) <= 1e-5


def test_cli_serve_errors(tmp_path, onnx_model):
    from typer.testing import CliRunner

    from acmix_deploy.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["serve", str(tmp_path / "missing.onnx")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(app, ["serve", str(onnx_model), "--port", "70000"])
    assert res.exit_code == 2 and "--port" in res.output
    res = runner.invoke(app, ["serve", str(onnx_model), "--max-batch", "0"])
    assert res.exit_code == 2 and "--max-batch" in res.output
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        res = runner.invoke(app, ["serve", str(onnx_model), "--port", str(taken.getsockname()[1])])
        assert res.exit_code == 2 and "cannot listen" in res.output
    finally:
        taken.close()


def test_sigterm_finishes_inflight_request(onnx_model, loaded):
    """A real ``acmix-deploy serve`` process: SIGTERM while a request waits in the batcher; it still gets its answer."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "acmix_deploy.cli", "serve", str(onnx_model), "--name", NAME, "--port", "0",
         "--max-batch", "64", "--batch-timeout-ms", "1500", "--threads", "1", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT,
    )
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            url = m.group(1) if m else None
        assert url, "the server did not announce its address"
        client = ServingClient(url)
        client.wait_ready(timeout_s=30, poll_s=0.05)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            t0 = time.monotonic()
            pending = pool.submit(client.infer, NAME, X1, True, "images", "logits")
            time.sleep(0.5)  # the request now waits for its batch to fill (1.5 s window)
            proc.send_signal(signal.SIGTERM)
            y = pending.result(timeout=30)
            waited = time.monotonic() - t0
        assert rel_err(y, loaded.infer(X1)) <= REL
        assert waited >= 1.0  # it was answered after the signal, when its batching window closed
        # uvicorn re-raises the captured SIGTERM once it has shut down, so the status is the signal's
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert not client.live()  # and the server is gone
        assert "Traceback" not in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _engine_with_sidecar(tmp_path: Path) -> Path:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"fake plan")
    profiles = [{"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [8, 3, 32, 32]},
                {"min": [8, 3, 32, 32], "opt": [16, 3, 32, 32], "max": [32, 3, 32, 32]}]
    (tmp_path / "m.engine.json").write_text(json.dumps({
        "format": "acmix-deploy.tensorrt-engine", "format_version": 1, "tensorrt_version": "10.13.0.35",
        "gpu_name": "NVIDIA H200", "compute_capability": "9.0", "precision": "fp32", "typing": "strong",
        "input_name": "input", "output_name": "output", "input_size": [3, 32, 32], "profiles": profiles,
        "onnx_sha256": "0" * 64, "build_seconds": 1.0}))
    return engine


def test_open_runner_engine_without_gpu_is_refused(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ad.AcmixDeployError, match="no CUDA GPU"):
        open_runner(_engine_with_sidecar(tmp_path))


def test_open_runner_engine_reads_the_sidecar_once_and_completes_specs(tmp_path, monkeypatch, loaded):
    """With a stand-in TrtRunner (no TensorRT here): open_runner hands it the sidecar it read (not the path to
    read again), on the GPU; the warm-up fills the output dims the stand-in leaves open."""
    import torch

    from acmix_deploy.runtime import loader

    calls = []

    class FakeTrtRunner(Runner):
        backend = "tensorrt"

        def __init__(self, path, device="cuda", sidecar=None):
            calls.append((Path(path).name, device, sidecar.input_name))
            p = sidecar.profiles[0]
            super().__init__("tensorrt:fake", device,
                             [TensorSpec(sidecar.input_name, ("batch", *p["opt"][1:]), np.float32)],
                             [TensorSpec(sidecar.all_output_names[0], ("batch", None), np.float32)],
                             (p["min"][0], p["max"][0]))

        def _infer_impl(self, x):
            return loaded.infer_outputs(x)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(loader, "TrtRunner", FakeTrtRunner)
    runner = open_runner(_engine_with_sidecar(tmp_path))
    assert calls == [("m.engine", "cuda", "input")]
    assert runner.input_specs == (TensorSpec("input", ("batch", 3, 32, 32), np.float32),)
    assert runner.output_specs == (TensorSpec("output", ("batch", 5), np.float32),)
    assert runner.batch_range == (1, 8)
    with ServerThread(runner, ServeSettings(name=NAME, port=0)) as srv:
        meta = httpx.get(srv.url + f"/v2/models/{NAME}").json()
    assert meta["platform"] == "tensorrt_plan" and meta["outputs"] == [{"name": "output", "datatype": "FP32",
                                                                         "shape": [-1, 5]}]


def test_batcher_stop_fails_waiting_requests_instead_of_losing_them():
    """Stopping while a batch is still being filled answers its requests with an error (no hung clients)."""
    import asyncio

    from acmix_deploy.serving import DynamicBatcher

    async def scenario():
        batcher = DynamicBatcher(lambda x: x[:, :1, 0, 0] * 2, max_batch=64, timeout_s=30.0)
        await batcher.start()
        pending = asyncio.ensure_future(batcher.submit(np.ones((2, 1, 1, 1), np.float32)))
        await asyncio.sleep(0.05)  # collected, waiting for the batch to fill
        await batcher.stop()
        with pytest.raises(RuntimeError, match="shutting down"):
            await asyncio.wait_for(pending, 5)

    asyncio.run(scenario())


def test_batcher_merges_and_splits_exactly():
    import asyncio

    from acmix_deploy.serving import DynamicBatcher

    seen = []

    def infer(x):
        seen.append(x.shape[0])
        return x.reshape(x.shape[0], -1).sum(axis=1, keepdims=True)

    async def scenario():
        batcher = DynamicBatcher(infer, max_batch=4, timeout_s=0.2)
        await batcher.start()
        xs = [np.full((n, 1, 2, 2), i, np.float32) for i, n in enumerate([1, 2, 1, 3, 5])]
        outs = await asyncio.gather(*(batcher.submit(x) for x in xs))
        await batcher.stop()
        return xs, outs

    xs, outs = asyncio.run(scenario())
    for x, y in zip(xs, outs):
        assert y.shape == (x.shape[0], 1) and np.all(y == x.reshape(x.shape[0], -1).sum(axis=1, keepdims=True))
    # arrival order 1,2,1 fill 4; 3 does not fit with 5 -> alone; 5 >= max_batch runs alone
    assert seen == [4, 3, 5]
