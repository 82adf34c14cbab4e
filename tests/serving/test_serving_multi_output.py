"""Serving a model with three outputs: metadata lists each, responses carry each (or those asked for, in the
request's order, each binary or JSON as asked, as Triton does), and dynamic batching splits every output."""

from __future__ import annotations

import concurrent.futures
import json
import threading

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("fastapi", reason="serving needs fastapi")
pytest.importorskip("uvicorn", reason="serving needs uvicorn")
httpx = pytest.importorskip("httpx", reason="the serving tests talk HTTP with httpx")
pytest.importorskip("onnxruntime", reason="the served model runs in ONNX Runtime")

from acmix_deploy.exporters.onnx import export_onnx  # noqa: E402
from acmix_deploy.runtime.loader import open_runner  # noqa: E402
from acmix_deploy.serving import ServeSettings, ServingClient, bind_socket, build_server, create_app  # noqa: E402

NAME = "three"
OUTPUTS = ["logits", "features", "score"]
HL = "Inference-Header-Content-Length"


class ThreeHeads(nn.Module):
    """(N, 5) logits, (N, 4, 8, 8) features, (N, 1) score: three outputs of different shapes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        pooled = f.mean(dim=(2, 3))
        return self.fc(pooled), f, pooled.sum(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("multi") / "three.onnx"
    export_onnx(ThreeHeads().eval(), path, (3, 16, 16), output_names=OUTPUTS)
    return open_runner(path, threads=1)


@pytest.fixture(scope="module")
def url(loaded):
    app = create_app(loaded, ServeSettings(name=NAME, port=0, max_batch=8, batch_timeout_ms=80))
    sock = bind_socket("127.0.0.1", 0)
    server = build_server(app, sock, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    ServingClient(base).wait_ready(timeout_s=20, poll_s=0.02)
    yield base
    server.should_exit = True
    thread.join(10)
    sock.close()


def reference(loaded, x) -> dict[str, np.ndarray]:
    return dict(zip(OUTPUTS, loaded.infer_outputs(x)))


def decode(r) -> list[tuple[str, np.ndarray, bool]]:
    n = int(r.headers.get(HL, len(r.content)))
    offset, result = n, []
    for out in json.loads(r.content[:n])["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            arr = np.frombuffer(r.content, dtype="<f4", count=size // 4, offset=offset).reshape(out["shape"])
            offset += size
        else:
            arr = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        result.append((out["name"], arr, size is not None))
    assert offset == len(r.content)
    return result


def post(url, x, outputs=None, binary_in=True, params=None):
    tensor = {"name": "images", "datatype": "FP32", "shape": list(x.shape)}
    req: dict = {"inputs": [tensor]}
    if outputs is not None:
        req["outputs"] = outputs
    if params is not None:
        req["parameters"] = params
    if binary_in:
        tensor["parameters"] = {"binary_data_size": x.nbytes}
        head = json.dumps(req).encode()
        return httpx.post(url + f"/v2/models/{NAME}/infer", content=head + x.tobytes(), headers={HL: str(len(head))})
    tensor["data"] = x.reshape(-1).tolist()
    return httpx.post(url + f"/v2/models/{NAME}/infer", json=req)


def test_metadata_lists_every_output(url, loaded):
    meta = httpx.get(url + f"/v2/models/{NAME}").json()
    assert [o["name"] for o in meta["outputs"]] == OUTPUTS
    assert [o["shape"] for o in meta["outputs"]] == [[-1, 5], [-1, 4, 8, 8], [-1, 1]]
    assert all(o["datatype"] == "FP32" for o in meta["outputs"])


def test_every_output_returned_without_outputs_field(url, loaded):
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    ref = reference(loaded, x)
    for params, binary in ((None, False), ({"binary_data_output": True}, True)):
        r = post(url, x, params=params)
        assert r.status_code == 200, r.text
        got = decode(r)
        assert [g[0] for g in got] == OUTPUTS and all(g[2] == binary for g in got)
        for name, arr, _ in got:
            np.testing.assert_allclose(arr, ref[name], rtol=1e-6, atol=1e-7)


def test_outputs_field_selects_orders_and_sets_binary_per_output(url, loaded):
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    ref = reference(loaded, x)
    asked = [{"name": "score", "parameters": {"binary_data": True}}, {"name": "logits"},
             {"name": "features", "parameters": {"binary_data": True}}]
    r = post(url, x, outputs=asked, binary_in=False)
    assert r.status_code == 200, r.text
    got = decode(r)
    assert [(g[0], g[2]) for g in got] == [("score", True), ("logits", False), ("features", True)]
    for name, arr, _ in got:
        np.testing.assert_allclose(arr, ref[name], rtol=1e-6, atol=1e-7)
    only = decode(post(url, x, outputs=[{"name": "features"}]))
    assert [g[0] for g in only] == ["features"]
    # binary_data_output is the default of outputs that do not say
    mixed = decode(post(url, x, outputs=[{"name": "logits"}, {"name": "score", "parameters": {"binary_data": False}}],
                        params={"binary_data_output": True}))
    assert [(g[0], g[2]) for g in mixed] == [("logits", True), ("score", False)]


@pytest.mark.parametrize("outputs, fragment", [
    ([{"name": "boxes"}], "this model has 3 outputs"),
    ([{"name": "score"}, {"name": "score"}], "requested twice"),
    ([{"name": "score", "parameters": {"binary_data": "true"}}], "JSON boolean"),
])
def test_bad_output_requests(url, outputs, fragment):
    r = post(url, np.zeros((1, 3, 16, 16), np.float32), outputs=outputs)
    assert r.status_code == 400 and fragment in r.json()["error"]


def test_batched_requests_get_their_own_rows_of_every_output(url, loaded):
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((n, 3, 16, 16)).astype(np.float32) for n in (1, 3, 2, 1, 4, 2, 1)]
    before = executions(url)
    barrier = threading.Barrier(len(xs))

    def one(x):
        barrier.wait()
        return ServingClient(url).infer_outputs(NAME, x, binary=bool(x.shape[0] % 2))

    with concurrent.futures.ThreadPoolExecutor(len(xs)) as pool:
        results = list(pool.map(one, xs))
    for x, got in zip(xs, results):
        ref = reference(loaded, x)
        assert list(got) == OUTPUTS
        for name in OUTPUTS:
            assert got[name].shape == ref[name].shape
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-6, atol=1e-7)
    assert executions(url) - before < len(xs), "no two requests were merged into one batch"


def executions(url) -> float:
    text = httpx.get(url + "/metrics").text
    return float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith("acmix_inference_batch_size_count")))
