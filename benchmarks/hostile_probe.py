"""Hostile-input probe of ``acmix-deploy serve`` and the CLI: runs a fixed list of bad inputs, prints the tally.

Each case is one bad input (a malformed or hostile HTTP request, a misbehaving
client, a damaged or crafted checkpoint) with what handling it cleanly means.
Every case ends in one outcome:

* ``clean``: refused or served as documented (the expected status with a JSON
  ``{"error"}`` body / the expected exit code and a one-line message), no
  traceback, the server still answering a good request correctly, and the
  case's own bound held (probe latency, RSS, time to close, time to exit);
* ``traceback``: a Python traceback in the server's log or the command's output;
* ``wrong``: a 200 whose answer differs from ONNX Runtime run on that request
  alone, or a command that exits 0 on a file it should refuse;
* ``unclean``: none of those, but not clean (a 500 for a client's mistake, a
  hang, a probe that waited seconds, unbounded memory, invalid input accepted).

    python benchmarks/hostile_probe.py                       # this tree
    python benchmarks/hostile_probe.py --root /tmp/old-tree  # the same cases against another checkout
    python benchmarks/hostile_probe.py --json benchmarks/results/hostile_probe_after.json

``--root`` runs the server and the CLI from that checkout (``PYTHONPATH``);
the model, the files and the cases come from this script, so two runs are
comparable.  The server runs with its defaults except ``--max-batch 8``; a
watchdog kills it when its RSS passes ``--rss-limit-gb`` (the case is then
``unclean``, and a fresh server is started for the remaining cases).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

NAME = "tiny"
PROBE_BOUND_S = 0.25  # a health probe must answer within this while a hostile request is being handled


@dataclass
class Result:
    group: str
    case: str
    outcome: str
    detail: str = ""


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path
    rss_peak: list = field(default_factory=lambda: [0])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def start_server(root: Path, model: Path, logdir: Path, extra: list[str], rss_limit: int, tag: str) -> Server:
    log = logdir / f"server-{tag}-{time.monotonic_ns()}.log"
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "acmix_deploy.cli", "serve", str(model), "--name", NAME, "--port", "0",
           "--max-batch", "8", "--threads", "1", "--log-level", "warning", *extra]
    f = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=root)
    deadline = time.monotonic() + 120
    port = None
    while time.monotonic() < deadline and port is None:
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text(errors="replace"))
        if m:
            port = int(m.group(1))
        elif proc.poll() is not None:
            raise SystemExit(f"server did not start:\n{log.read_text()}")
        time.sleep(0.05)
    srv = Server(proc, port, log)
    while time.monotonic() < deadline:
        try:
            if http("GET", srv.url + "/v2/health/ready", timeout=2)[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.05)

    def watchdog():
        while proc.poll() is None:
            r = rss_bytes(proc.pid)
            srv.rss_peak[0] = max(srv.rss_peak[0], r)
            if r > rss_limit:
                proc.kill()
                break
            time.sleep(0.02)

    threading.Thread(target=watchdog, daemon=True).start()
    return srv


def stop_server(srv: Server) -> None:
    if srv.proc.poll() is None:
        srv.proc.terminate()
        try:
            srv.proc.wait(40)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait()


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30):
    """(status, headers, body) over a fresh connection, with the standard library only."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, u.path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def probe_latency(url: str, stop: threading.Event, out: list) -> None:
    """Poll /v2/health/live until ``stop``; record each answer's latency (a 503 "busy" counts as an answer; inf
    when no answer came)."""
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            status = http("GET", url + "/v2/health/live", timeout=30)[0]
            out.append(time.perf_counter() - t0 if status in (200, 503) else float("inf"))
        except OSError:
            out.append(float("inf"))
        time.sleep(0.01)


def binary_body(x: np.ndarray, **input_params) -> tuple[bytes, dict]:
    head = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": list(x.shape),
                                   "parameters": {"binary_data_size": x.nbytes, **input_params}}],
                       "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}


def json_body(x, **changes) -> bytes:
    tensor = {"name": "images", "datatype": "FP32", "shape": list(np.shape(x)), "data": np.asarray(x).reshape(-1).tolist()}
    tensor.update(changes)
    return json.dumps({"inputs": [tensor]}).encode()


def decode_output(status, headers, raw) -> np.ndarray | None:
    if status != 200:
        return None
    n = int(headers.get("inference-header-content-length", len(raw)))
    out = json.loads(raw[:n])["outputs"][0]
    size = (out.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        return np.frombuffer(raw, dtype="<f4", offset=n, count=size // 4).reshape(out["shape"])
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


class Probe:
    def __init__(self, root: Path, model: Path, logdir: Path, rss_limit: int):
        from acmix_deploy.runtime import OrtRunner

        self.root, self.model, self.logdir, self.rss_limit = root, model, logdir, rss_limit
        self.ort = OrtRunner(model, threads=1)
        self.results: list[Result] = []
        self.srv: Server | None = None

    # -- helpers ---------------------------------------------------------------------------------------------------
    def server(self) -> Server:
        if self.srv is None or self.srv.proc.poll() is not None:
            self.srv = start_server(self.root, self.model, self.logdir, [], self.rss_limit, "main")
        return self.srv

    def good_request_ok(self) -> bool:
        x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
        body, headers = binary_body(x)
        try:
            y = decode_output(*http("POST", self.server().url + f"/v2/models/{NAME}/infer", body, headers, timeout=30))
        except OSError:
            return False
        return y is not None and np.allclose(y, self.ort.infer(x), rtol=1e-5, atol=1e-6)

    def record(self, group: str, case: str, fn) -> None:
        srv = self.server()
        log_before = len(srv.log_text())
        try:
            outcome, detail = fn(srv)
        except Exception as exc:  # the probe itself failed to get an answer: a hang, a reset
            outcome, detail = "unclean", f"{type(exc).__name__}: {exc}"[:200]
        time.sleep(0.3)  # a traceback is logged after the response went out: let it reach the log
        crashed = srv.proc.poll() is not None
        new_log = srv.log_text()[log_before:]
        if "Traceback" in new_log:
            outcome, detail = "traceback", (detail + " | " if detail else "") + _first_error(new_log)
        if crashed:
            if outcome == "clean":
                outcome = "unclean"
            detail += f" | server died (rc {srv.proc.returncode}, peak RSS {srv.rss_peak[0] / 2**30:.1f} GB)"
            self.srv = None
        elif outcome == "clean" and not self.good_request_ok():
            outcome, detail = "unclean", detail + " | the next good request failed"
        self.results.append(Result(group, case, outcome, detail))
        print(f"  {outcome:9s} {case}: {detail}"[:220], flush=True)

    def record_cli(self, case: str, fn) -> None:
        try:
            outcome, detail = fn()
        except Exception as exc:
            outcome, detail = "unclean", f"{type(exc).__name__}: {exc}"[:200]
        self.results.append(Result("cli", case, outcome, detail))
        print(f"  {outcome:9s} {case}: {detail}"[:220], flush=True)

    # -- HTTP cases --------------------------------------------------------------------------------------------------
    def post_expect(self, body: bytes, headers: dict, statuses: set[int], x_ok=None, path=None, probe=False,
                    rss_bound_gb: float | None = None):
        def run(srv: Server):
            stop, lat = threading.Event(), []
            t = threading.Thread(target=probe_latency, args=(srv.url, stop, lat), daemon=True)
            if probe:
                t.start()
            rss0 = rss_bytes(srv.proc.pid)
            t0 = time.perf_counter()
            try:
                status, h, raw = http("POST", srv.url + (path or f"/v2/models/{NAME}/infer"), body, headers,
                                      timeout=60)
            finally:
                stop.set()
                if probe:
                    t.join()
            took = time.perf_counter() - t0
            detail = f"HTTP {status} in {took:.2f} s"
            if probe and lat:
                detail += f", worst probe {max(lat) * 1000:.0f} ms"
            if rss_bound_gb is not None:
                grown = (srv.rss_peak[0] - rss0) / 2**30
                detail += f", RSS +{max(grown, 0):.2f} GB"
            if status == 200 and x_ok is not None:
                y = decode_output(status, h, raw)
                ref = self.ort.infer(x_ok)
                if y is None or y.shape != ref.shape or not np.allclose(y, ref, rtol=1e-5, atol=1e-6, equal_nan=True):
                    return "wrong", detail + ": answer differs from ONNX Runtime"
            if status not in statuses:
                return ("unclean" if status != 200 or x_ok is None else "unclean"), detail + f" (expected {sorted(statuses)})"
            if status >= 400:
                try:
                    err = json.loads(raw)["error"]
                    detail += f": {err[:90]}"
                except (ValueError, KeyError, TypeError):
                    return "unclean", detail + ": error body is not JSON {error}"
            if probe and lat and max(lat) > PROBE_BOUND_S:
                return "unclean", detail + f" (probe bound {PROBE_BOUND_S * 1000:.0f} ms)"
            if rss_bound_gb is not None and (srv.rss_peak[0] - rss0) / 2**30 > rss_bound_gb:
                return "unclean", detail + f" (RSS bound +{rss_bound_gb} GB)"
            return "clean", detail
        return run

    def http_cases(self) -> None:
        rng = np.random.default_rng(1)
        x1 = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
        good = json.loads(json_body(x1))
        flat = good["inputs"][0]["data"]

        def with_input(**changes) -> bytes:
            return json_body(x1, **changes)

        def with_req(**changes) -> bytes:
            return json.dumps({**good, **changes}).encode()

        bad = {400, 404, 405, 413, 415}
        cases: dict[str, tuple[bytes, dict, set[int]]] = {
            "empty body": (b"", {}, {400}),
            "not JSON": (b"{nope", {}, {400}),
            "invalid UTF-8": (b'{"inputs": "\xff\xfe"}', {}, {400}),
            "JSON array": (b"[1, 2, 3]", {}, {400}),
            "JSON null": (b"null", {}, {400}),
            "100,000 [": (b"[" * 100_000, {}, {400}),
            "100,000 {\"a\":": (b'{"a":' * 100_000, {}, {400}),
            "integer of 5,000 digits as data": (with_input(data=None).replace(b"null", b"1" * 5000), {}, {400}),
            "10**400 as data": (with_input(data=None).replace(b"null", b"[" + str(10 ** 400).encode() + b"]"), {}, {400}),
            "1e400 in data": (with_input(data=None).replace(b"null", b"[" + b"1e400, " * 3071 + b"1e400]"), {}, {400}),
            "1e39 (beyond FP32) in data": (with_input(data=[1e39] * 3072), {}, {400}),
            "integer of 5,000 digits as shape": (with_input(shape=None).replace(b"null", b"[" + b"9" * 5000 + b", 3, 32, 32]"), {}, {400}),
            "huge batch in shape": (with_input(shape=[10 ** 18, 3, 32, 32]), {}, {400}),
            "negative shape": (with_input(shape=[-1, 3, 32, 32]), {}, {400}),
            "float shape": (with_input(shape=[1.0, 3, 32, 32]), {}, {400}),
            "shape is a string": (with_input(shape="1,3,32,32"), {}, {400}),
            "strings as FP32 data": (with_input(data=[str(v) for v in flat]), {}, {400}),
            "booleans as FP32 data": (with_input(data=[True] * 3072), {}, {400}),
            "null as FP32 data": (with_input(data=[None] * 3072), {}, {400}),
            "one string among numbers": (with_input(data=flat[:-1] + ["0.5"]), {}, {400}),
            "one boolean among numbers": (with_input(data=flat[:-1] + [True]), {}, {400}),
            "data is an object": (with_input(data={"a": 1}), {}, {400}),
            "data is a number": (with_input(data=1.5), {}, {400}),
            "ragged nested data": (with_input(data=[[0.5] * 3071, [0.5]]), {}, {400}),
            "nested data deeper than the shape": (with_input(data=[[[[[0.5]] * 32] * 32] * 3]), {}, {400}),
            "datatype is a list": (with_input(datatype=["FP32"]), {}, {400}),
            "datatype is an object": (with_input(datatype={"a": 1}), {}, {400}),
            "name is a list": (with_input(name=["images"]), {}, {400}),
            "inputs is an object": (with_req(inputs={"name": "images"}), {}, {400}),
            "inputs empty": (with_req(inputs=[]), {}, {400}),
            "two inputs": (with_req(inputs=good["inputs"] * 2), {}, {400}),
            "id is a number": (with_req(id=7), {}, {400}),
            "parameters is a list": (with_req(parameters=[1]), {}, {400}),
            "binary_data_output \"false\"": (with_req(parameters={"binary_data_output": "false"}), {}, {400}),
            "binary_data_output 1": (with_req(parameters={"binary_data_output": 1}), {}, {400}),
            "binary_data \"yes\"": (with_req(outputs=[{"name": "logits", "parameters": {"binary_data": "yes"}}]), {}, {400}),
            "outputs is a string": (with_req(outputs="logits"), {}, {400}),
            "unknown output": (with_req(outputs=[{"name": "probs"}]), {}, {400}),
            "output name is a list": (with_req(outputs=[{"name": ["logits"]}]), {}, {400}),
            "classification": (with_req(outputs=[{"name": "logits", "parameters": {"classification": 3}}]), {}, {400}),
            "header length 0": (binary_body(x1)[0], {"Inference-Header-Content-Length": "0"}, {400}),
            "header length -5": (binary_body(x1)[0], {"Inference-Header-Content-Length": "-5"}, {400}),
            "header length 10**30": (binary_body(x1)[0], {"Inference-Header-Content-Length": "1" + "0" * 30}, {400}),
            "header length of 5,000 digits": (binary_body(x1)[0], {"Inference-Header-Content-Length": "9" * 5000}, {400}),
            "binary_data_size is a string": (*binary_body(x1, binary_data_size="12288"), {400}),
            "binary_data_size negative": (*binary_body(x1, binary_data_size=-4), {400}),
            "binary_data_size 10**30": (*binary_body(x1, binary_data_size=10 ** 30), {400}),
            "binary body truncated": (binary_body(x1)[0][:-100], binary_body(x1)[1], {400}),
            "binary with bytes left over": (binary_body(x1)[0] + b"xxxx", binary_body(x1)[1], {400}),
            "9 rows (above --max-batch 8)": (*binary_body(np.zeros((9, 3, 32, 32), np.float32)), {400}),
            "Content-Length not a number": (with_input(), {"Content-Length": "abc"}, {400}),
            "Content-Encoding br": (with_input(), {"Content-Encoding": "br"}, {415}),
            "corrupt gzip": (b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, {400}),
            "truncated gzip": (gzip.compress(with_input())[:200], {"Content-Encoding": "gzip"}, {400}),
            "gzip of not JSON": (gzip.compress(b"\x00" * 1000), {"Content-Encoding": "gzip"}, {400}),
            "deflate of garbage": (b"garbage", {"Content-Encoding": "deflate"}, {400}),
            "unknown model": (with_input(), {}, {404}),
        }
        paths = {"unknown model": "/v2/models/other/infer"}
        for case, (body, headers, statuses) in cases.items():
            self.record("server: malformed request", case,
                        self.post_expect(body, headers, statuses | ({404} if case == "unknown model" else set()),
                                         path=paths.get(case)))

        # Requests that are valid and must be served, and answered right.
        nan_x = x1.copy()
        nan_x[0, 0, 0, :4] = [np.nan, np.inf, -np.inf, 0.0]
        nan_body = json_body(x1, data=None).replace(b"null", ("[" + ", ".join(
            {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(str(v), repr(float(v)))
            for v in nan_x.reshape(-1)) + "]").encode())
        served = {
            "Content-Encoding: GZIP (upper case)": (gzip.compress(json_body(x1)), {"Content-Encoding": "GZIP"}, x1),
            "Content-Encoding: ' gzip '": (gzip.compress(json_body(x1)), {"Content-Encoding": " gzip "}, x1),
            "NaN/Infinity in input and output (Triton's JSON)": (nan_body, {}, nan_x),
            "binary_data_output false (boolean)": (with_req(parameters={"binary_data_output": False}), {}, x1),
            "8 rows binary (= --max-batch)": (*binary_body(np.tile(x1, (8, 1, 1, 1))), np.tile(x1, (8, 1, 1, 1))),
        }
        for case, (body, headers, x) in served.items():
            self.record("server: valid but unusual", case, self.post_expect(body, headers, {200}, x_ok=x))

        # Costly requests: must be refused (or served) within bounds, with probes answering meanwhile.
        big = np.zeros((5400, 3, 32, 32), np.float32)
        big_body, big_headers = binary_body(big)
        self.record("server: costly request", "binary [5400, 3, 32, 32] (66 MB)",
                    self.post_expect(big_body, big_headers, {400, 413}, probe=True, rss_bound_gb=1.0))
        del big, big_body
        bomb_json = b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [' + \
            b"0, " * ((60 << 20) // 3) + b"0]}]}"
        bomb = gzip.compress(bomb_json, 9)
        del bomb_json
        self.record("server: costly request", f"gzip of {len(bomb) // 1024} KB inflating to 60 MB of JSON",
                    self.post_expect(bomb, {"Content-Encoding": "gzip"}, {400, 413}, probe=True, rss_bound_gb=1.0))
        bomb2 = gzip.compress(b" " * (256 << 20), 9)
        self.record("server: costly request", f"gzip of {len(bomb2) // 1024} KB inflating to 256 MB",
                    self.post_expect(bomb2, {"Content-Encoding": "gzip"}, {413}, probe=True, rss_bound_gb=1.0))
        x300 = rng.standard_normal((300, 3, 32, 32)).astype(np.float32)
        json20 = json_body(x300)  # ~20 MB of valid JSON
        self.record("server: costly request", f"valid JSON of {len(json20) / 1e6:.0f} MB (300 rows)",
                    self.post_expect(json20, {}, {200, 400, 413}, x_ok=x300, probe=True, rss_bound_gb=1.5))
        self.record("server: costly request", "Content-Length 10 GB declared",
                    self.post_expect(b"{}", {"Content-Length": str(10 << 30)}, {413}))

    # -- misbehaving clients ------------------------------------------------------------------------------------------
    def client_cases(self) -> None:
        def metric(srv, name) -> float:
            text = http("GET", srv.url + "/metrics")[2].decode()
            return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))

        def failures_500(srv) -> float:
            text = http("GET", srv.url + "/metrics")[2].decode()
            return sum(float(m.group(1)) for m in re.finditer(r'^acmix_inference_failures_total\{[^}]*code="500"[^}]*\} (\S+)$', text, re.M))

        def connect(srv) -> socket.socket:
            return socket.create_connection(("127.0.0.1", srv.port), timeout=30)

        def request_head(length: int, extra: str = "") -> bytes:
            return (f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}\r\n").encode()

        def mid_upload(srv):
            before = failures_500(srv)
            socks = []
            for _ in range(10):
                s = connect(srv)
                s.sendall(request_head(100_000) + b"{" * 1000)
                socks.append(s)
            time.sleep(0.2)
            for s in socks:
                s.close()
            time.sleep(0.5)
            after = failures_500(srv)
            if after > before:
                return "unclean", f"{after - before:.0f} disconnects counted as HTTP 500"
            return "clean", "no 500 counted"

        def abandoned(rows: int, count: int):
            def run(srv):
                x = np.random.default_rng(2).standard_normal((rows, 3, 32, 32)).astype(np.float32)
                body, headers = binary_body(x)
                head = request_head(len(body), f"Inference-Header-Content-Length: {headers['Inference-Header-Content-Length']}\r\n")
                socks = []
                for _ in range(count):
                    s = connect(srv)
                    s.sendall(head + body)
                    socks.append(s)
                time.sleep(0.05)
                for s in socks:
                    s.close()
                x1 = x[:1]
                b1, h1 = binary_body(x1)
                t0 = time.perf_counter()
                y = decode_output(*http("POST", srv.url + f"/v2/models/{NAME}/infer", b1, h1, timeout=120))
                took = time.perf_counter() - t0
                if y is None or not np.allclose(y, self.ort.infer(x1), rtol=1e-5, atol=1e-6):
                    return "wrong", f"next request answered wrongly after {took:.2f} s"
                detail = f"next 1-row request answered in {took:.2f} s"
                return ("clean", detail) if took < 1.0 else ("unclean", detail + " (bound 1 s)")
            return run

        def slowloris(srv, n=300, bound_s=16.0):
            socks = []
            for _ in range(n):
                try:
                    s = connect(srv)
                    s.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\n")
                    socks.append(s)
                except OSError:
                    pass
            stop, lat = threading.Event(), []
            t = threading.Thread(target=probe_latency, args=(srv.url, stop, lat), daemon=True)
            t.start()
            t0 = time.monotonic()
            open_ = list(socks)
            while open_ and time.monotonic() - t0 < bound_s:
                still = []
                for s in open_:
                    try:
                        s.settimeout(0.001)
                        s.sendall(b"X-a: b\r\n")
                        data = s.recv(1)
                        if data == b"":
                            s.close()
                            continue
                        s.close()  # answered (503 busy): the server let go
                        continue
                    except (BrokenPipeError, ConnectionResetError):
                        s.close()
                        continue
                    except (socket.timeout, BlockingIOError):
                        still.append(s)
                open_ = still
                time.sleep(0.5)
            stop.set()
            t.join()
            held = len(open_)
            for s in open_:
                s.close()
            took = time.monotonic() - t0
            worst = max(lat) if lat else float("inf")
            detail = f"{n} connections; {held} still held after {took:.0f} s; worst probe {worst * 1000:.0f} ms"
            if held or worst > PROBE_BOUND_S:
                return "unclean", detail
            return "clean", detail

        def stalled(srv, n=50, bound_s=16.0):
            socks = []
            for _ in range(n):
                s = connect(srv)
                s.sendall(request_head(1 << 20) + b"{" + b" " * 1023)
                socks.append(s)
            t0 = time.monotonic()
            answered = {}
            while len(answered) < n and time.monotonic() - t0 < bound_s:
                for i, s in enumerate(socks):
                    if i in answered:
                        continue
                    s.settimeout(0.001)
                    try:
                        data = s.recv(200)
                        answered[i] = data[:12].decode(errors="replace") or "closed"
                    except (socket.timeout, BlockingIOError):
                        pass
                    except OSError:
                        answered[i] = "reset"
                time.sleep(0.2)
            for s in socks:
                s.close()
            kinds = sorted(set(answered.values()))
            detail = f"{n} uploads stalled: {len(answered)} let go within {time.monotonic() - t0:.0f} s ({kinds})"
            return ("clean" if len(answered) == n else "unclean"), detail

        def idle_flood(srv, n=600):
            socks = []
            for _ in range(n):
                try:
                    socks.append(connect(srv))
                except OSError:
                    break
            time.sleep(0.2)
            t0 = time.perf_counter()
            try:
                status = http("GET", srv.url + "/v2/health/live", timeout=30)[0]
            except OSError as exc:
                status = type(exc).__name__
            took = time.perf_counter() - t0
            for s in socks:
                s.close()
            detail = f"{len(socks)} idle connections; a probe then got {status} in {took * 1000:.0f} ms"
            return ("clean" if took < PROBE_BOUND_S and status in (200, 503) else "unclean"), detail

        self.record("server: misbehaving client", "10 disconnects mid-upload", mid_upload)
        self.record("server: misbehaving client", "six 300-row requests abandoned", abandoned(300, 6))
        self.record("server: misbehaving client", "thirty 8-row requests abandoned", abandoned(8, 30))
        self.record("server: misbehaving client", "300 slowloris connections", slowloris)
        self.record("server: misbehaving client", "50 stalled uploads", stalled)
        self.record("server: misbehaving client", "600 idle connections", idle_flood)

    def shutdown_cases(self) -> None:
        def sigterm_stalled(_srv):
            srv = start_server(self.root, self.model, self.logdir, [], self.rss_limit, "sigterm")
            socks = []
            for _ in range(20):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
                s.sendall(f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n{{".encode())
                socks.append(s)
            time.sleep(0.3)
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            try:
                srv.proc.wait(60)
            except subprocess.TimeoutExpired:
                srv.proc.kill()
            took = time.monotonic() - t0
            for s in socks:
                s.close()
            log = srv.log_text()
            tracebacks = log.count("Traceback")
            detail = f"exit after {took:.1f} s, {tracebacks} traceback(s), {log.count('CancelledError')} CancelledError"
            if tracebacks:
                return "traceback", detail
            return ("clean" if took < 5 else "unclean"), detail + " (bound 5 s)"

        def ready_during_shutdown(_srv):
            srv = start_server(self.root, self.model, self.logdir, ["--batch-timeout-ms", "1500"], self.rss_limit,
                               "ready")
            x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
            body, headers = binary_body(x)
            answer = {}

            def send():
                try:
                    answer["r"] = http("POST", srv.url + f"/v2/models/{NAME}/infer", body, headers, timeout=30)
                except OSError as exc:
                    answer["r"] = exc

            t = threading.Thread(target=send)
            t.start()
            time.sleep(0.4)
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            try:
                ready = http("GET", srv.url + "/v2/health/ready", timeout=5)[0]
            except OSError as exc:
                ready = type(exc).__name__
            t.join()
            try:
                srv.proc.wait(40)
            except subprocess.TimeoutExpired:
                srv.proc.kill()
            r = answer.get("r")
            ok = not isinstance(r, Exception) and r is not None and r[0] == 200 and np.allclose(
                decode_output(*r), self.ort.infer(x), rtol=1e-5, atol=1e-6)
            detail = f"ready during shutdown: {ready}; in-flight request {'answered' if ok else 'lost'}"
            if "Traceback" in srv.log_text():
                return "traceback", detail
            return ("clean" if ready == 503 and ok else "unclean"), detail

        self.record("server: shutdown", "SIGTERM with 20 stalled uploads", sigterm_stalled)
        self.record("server: shutdown", "/v2/health/ready during shutdown", ready_during_shutdown)

    # -- CLI cases ------------------------------------------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 120) -> tuple[int, str, float]:
        env = {**os.environ, "PYTHONPATH": str(self.root), "COLUMNS": "200"}
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-m", "acmix_deploy.cli", *args], capture_output=True, text=True,
                               env=env, cwd=self.root, timeout=timeout)
            return p.returncode, p.stdout + p.stderr, time.perf_counter() - t0
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return -9, out + "\n(timed out)", time.perf_counter() - t0

    def cli_cases(self, work: Path) -> None:
        import torch

        import acmix_deploy as ad

        model = ad.create_model("acmix_resnet_tiny", num_classes=5)
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        payload = {"format_version": 1, "arch": "acmix_resnet_tiny", "arch_args": {"num_classes": 5}, "deploy": False,
                   "state_dict": sd, "meta": {}}

        def save(name: str, obj) -> Path:
            path = work / name
            path.parent.mkdir(parents=True, exist_ok=True)  # "a[/b]c.pth" lies in a folder "a["
            torch.save(obj, path)
            return path

        files = {
            "meta with [/bold]": save("meta_markup.pth", {**payload, "meta": {"note": "[/bold] closed [red]x"}}),
            "meta with ANSI escapes": save("meta_ansi.pth", {**payload, "meta": {"note": "\x1b[2J\x1b[31mred\x1b]0;title\x07"}}),
            "meta key with [/]": save("meta_key.pth", {**payload, "meta": {"[/]": "v"}}),
            "path a[/b]c.pth": save("a[/b]c.pth", payload),
            "wrapper key [/]": save("wrapper.pth", {"model": sd, "[/]": 1}),
        }
        for case, path in files.items():
            args = ["info", str(path)] + (["--arch", "acmix_resnet_tiny"] if case == "wrapper key [/]" else [])

            def run(args=args):
                rc, out, took = self.cli(*args)
                if "Traceback" in out:
                    return "traceback", _first_error(out)
                if "\x1b" in out:
                    return "unclean", f"exit {rc}; raw ESC reached the terminal"
                return ("clean" if rc == 0 else "unclean"), f"exit {rc}"
            self.record_cli(f"info: {case}", run)

        bad_args = {
            "num_classes = 2**31": {"num_classes": 2 ** 31},
            "num_classes = 4,000,000": {"num_classes": 4_000_000},
            "num_classes = '5' (a string)": {"num_classes": "5"},
            "num_classes = -1": {"num_classes": -1},
            "unknown argument": {"num_classes": 5, "depth": 1000},
            "arch_args is a list": [5],
        }
        for case, args in bad_args.items():
            path = save(f"args_{abs(hash(case))}.pth", {**payload, "arch_args": args})

            def run(path=path):
                rc, out, took = self.cli("info", str(path), timeout=90)
                if "Traceback" in out:
                    return "traceback", _first_error(out)
                detail = f"exit {rc} in {took:.1f} s: {_last_line(out)}"
                if rc != 2:
                    return ("wrong" if rc == 0 else "unclean"), detail
                return ("clean" if took < 20 else "unclean"), detail
            self.record_cli(f"info: arch_args {case}", run)

        (work / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
        (work / "text.pth").write_text("hello, this is not a checkpoint\n")
        onnx_copy = work / "model_as_ckpt.pth"
        onnx_copy.write_bytes(self.model.read_bytes())
        for case, path in {"random bytes": work / "random.pth", "text file beginning with h": work / "text.pth",
                           "ONNX file": onnx_copy}.items():
            def run(path=path):
                rc, out, took = self.cli("info", str(path))
                if "Traceback" in out:
                    return "traceback", _first_error(out)
                detail = f"exit {rc}: {_last_line(out)}"
                if "weights_only=False" in out or "Python objects" in out:
                    return "unclean", detail + " (misleading advice)"
                return ("clean" if rc == 2 else "unclean"), detail
            self.record_cli(f"info: {case} as a checkpoint", run)

        nan_sd = dict(sd)
        nan_sd["fc.weight"] = sd["fc.weight"].clone()
        nan_sd["fc.weight"][0, 0] = float("nan")
        nan_sd["conv1.weight"] = sd["conv1.weight"].clone()
        nan_sd["conv1.weight"][0, 0, 0, 0] = float("inf")
        nan_path = save("nan.pth", {**payload, "state_dict": nan_sd})

        def nan_info():
            rc, out, _ = self.cli("info", str(nan_path))
            if "Traceback" in out:
                return "traceback", _first_error(out)
            named = "fc.weight" in out and "conv1.weight" in out and ("NaN" in out or "nan" in out)
            return ("clean" if rc == 0 and named else "unclean"), f"exit {rc}; names the tensors: {named}"

        def nan_cmd(*args):
            def run():
                rc, out, _ = self.cli(*args)
                if "Traceback" in out:
                    return "traceback", _first_error(out)
                named = "fc.weight" in out and "conv1.weight" in out
                return ("clean" if rc == 2 and named else "unclean"), f"exit {rc}: {_last_line(out)}"
            return run

        self.record_cli("info: NaN/Inf weights", nan_info)
        self.record_cli("reparam: NaN/Inf weights", nan_cmd("reparam", str(nan_path), "-o", str(work / "nan.deploy.pth")))
        self.record_cli("export: NaN/Inf weights", nan_cmd("export", str(nan_path), "-o", str(work / "nan.onnx")))

        good_path = save("good.pth", payload)
        for case, args in {"reparam -o into an unwritable directory": ("reparam", str(good_path), "-o", "/sys/x.pth"),
                           "export -o into an unwritable directory": ("export", str(good_path), "-o", "/sys/x.onnx")}.items():
            def run(args=args):
                rc, out, took = self.cli(*args)
                if "Traceback" in out:
                    return "traceback", _first_error(out)
                return ("clean" if rc == 2 else "unclean"), f"exit {rc} after {took:.1f} s: {_last_line(out)}"
            self.record_cli(case, run)


def _first_error(text: str) -> str:
    lines = [ln for ln in text.splitlines() if re.match(r"^[A-Za-z_.]+(Error|Exception|Exit)\b", ln.strip())]
    return (lines[-1].strip() if lines else "traceback")[:120]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[:140]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=HERE, help="checkout whose server and CLI are probed [this one]")
    ap.add_argument("--only", choices=("server", "cli"), help="run one half")
    ap.add_argument("--rss-limit-gb", type=float, default=3.0, help="kill the server above this RSS")
    ap.add_argument("--json", type=Path, help="write the cases and the tally here")
    args = ap.parse_args()

    import acmix_deploy as ad
    from acmix_deploy.exporters import export_onnx
    from acmix_deploy.testing import randomize_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_path = tmp / "tiny.onnx"
        net = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=5), 3).eval()
        export_onnx(ad.reparameterize_model(net), model_path, (3, 32, 32))
        probe = Probe(args.root.resolve(), model_path, tmp, int(args.rss_limit_gb * 2**30))
        try:
            if args.only in (None, "server"):
                print("server (acmix_resnet_tiny ONNX, --max-batch 8, other settings default):")
                probe.http_cases()
                probe.client_cases()
                probe.shutdown_cases()
            if args.only in (None, "cli"):
                print("CLI:")
                work = tmp / "cli"
                work.mkdir()
                probe.cli_cases(work)
        finally:
            if probe.srv is not None:
                stop_server(probe.srv)
    results = probe.results
    tally = {k: sum(r.outcome == k for r in results) for k in ("clean", "traceback", "wrong", "unclean")}
    print(f"\ntried {len(results)}: handled cleanly {tally['clean']}, tracebacks {tally['traceback']}, "
          f"wrong answers {tally['wrong']}, otherwise not clean {tally['unclean']}")
    if args.json:
        from common import write_json  # noqa: E402 (benchmarks/common.py)

        write_json({"benchmark": "hostile_probe", "root": str(args.root), "tried": len(results), **tally,
                    "cases": [r.__dict__ for r in results]}, args.json)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
