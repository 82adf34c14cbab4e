"""Load test of ``acmix-deploy serve``: throughput and latency with and without dynamic batching.

Starts one server per mode on 127.0.0.1 (subprocesses running the CLI), both
loaded for the whole run, and drives them in interleaved rounds (A B, B A, ...)
so that the drift of a shared machine hits both alike; each round sends a
bounded number of requests from ``--concurrency`` concurrent clients (and stops
after ``--max-seconds`` in any case).  Requests carry binary FP32 tensors
(``--rows`` images each).  Every answer of every round is checked: HTTP 200,
output shape, and its values against ONNX Runtime run in this process on
that request's input alone (a mismatch is counted when the relative error
exceeds 1e-5).

Reported per mode (medians over rounds): requests/s, images/s, p50 and p99
latency, errors, mismatches, the server's peak RSS, and the mean executed
batch size read from its ``/metrics``; the ratio batched / unbatched is
computed within each round.

``--hostile`` drives every mode a second time per round ("<mode>+hostile")
with a hostile client mixed in: slowloris connections, stalled uploads,
clients that vanish mid-upload or after sending, decompression bombs,
malformed JSON, oversized requests.  The valid clients' answers must still
all be correct; the hostile requests' own answers are counted by status.

    python benchmarks/load_test.py --concurrency 16 --requests 300 --rounds 3 \
        --json benchmarks/results/load_test_cpu.json

Without ``--model`` a random-weight ``acmix_resnet_tiny`` (32x32, ONNX) is
exported to a temporary folder.  ``--url`` targets one running server on
the loopback interface instead (one mode, no comparison).

``--compare specialize`` compares instead two batched servers of one graph with dynamic height and width
(exported with ``--dynamic-hw`` when ``--model`` is not given): ``serve --specialize 4`` (the default: a
session fixed to the size, built in the background after the first requests) against ``--specialize 0``
(the general session); requests at ``--imgsz``:

    python benchmarks/load_test.py --compare specialize --imgsz 40 64 --concurrency 8 --requests 300 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from acmix_deploy.profiling import cpu_model  # noqa: E402
from acmix_deploy.serving.client import ServingClient  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_json  # noqa: E402

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MISMATCH_REL = 1e-5


def isa_flags() -> list[str]:
    """The SIMD extensions the kernels may use, from /proc/cpuinfo (avx2, avx512*, amx*, fma)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(fl for fl in flags if fl.startswith(("avx", "amx", "fma", "sse4")))
    except OSError:
        pass
    return []


class RssWatch:
    """Peak RSS of a process, sampled every 20 ms from /proc (0 when unknown, e.g. with --url)."""

    def __init__(self, pid: int | None):
        import threading

        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set() and self.pid is not None:
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
                kb = int(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("VmRSS:")))
                self.peak = max(self.peak, kb * 1024)
            except (OSError, StopIteration, ValueError):
                pass
            self._stop.wait(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@functools.lru_cache(maxsize=1)
def hostile_bodies() -> list[tuple[bytes, dict]]:
    """A decompression bomb (24 MB of JSON in ~25 KB), 50,000 '[', strings as data, 600 rows (7 MB binary)."""
    import gzip

    bomb = gzip.compress(b'{"inputs": [{"data": [' + b"0, " * (8 << 20) + b"0]}]}", 9)
    big = np.zeros((600, 3, 32, 32), np.float32)
    big_head = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": list(big.shape),
                                       "parameters": {"binary_data_size": big.nbytes}}]}).encode()
    return [(bomb, {"Content-Encoding": "gzip"}), (b"[" * 50_000, {}), (b'{"inputs": [{"data": ["x"]}]}', {}),
            (big_head + big.tobytes(), {"Inference-Header-Content-Length": str(len(big_head))})]


async def hostile_client(url: str, model: str, stop: asyncio.Event, counts: dict) -> None:
    """Misbehaves until ``stop``: each round opens slowloris connections and stalled uploads, abandons requests,
    and sends a decompression bomb, malformed JSON and an oversized request; answers are tallied by status."""
    import httpx

    port = urllib.parse.urlparse(url).port
    head = f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: t\r\n"
    bodies = hostile_bodies()
    held: list = []

    def tally(key: str) -> None:
        counts[key] = counts.get(key, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while not stop.is_set():
            for _ in range(5):  # slowloris and stalled uploads, kept open until the server lets go
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.write((head + "X-a: b\r\n").encode())
                    held.append(w)
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.write((head + "Content-Length: 1048576\r\n\r\n{").encode())
                    held.append(w)
                    _, w = await asyncio.open_connection("127.0.0.1", port)  # vanishes mid-upload
                    w.write((head + "Content-Length: 100000\r\n\r\n" + "{" * 500).encode())
                    w.close()
                    tally("sent: slowloris/stalled/vanished")
                except OSError:
                    tally("connect refused")
            for body, headers in bodies:
                try:
                    r = await client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
                    tally(f"HTTP {r.status_code}")
                except httpx.HTTPError as exc:
                    tally(type(exc).__name__)
            held = [w for w in held if not w.is_closing()][-200:]
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
    for w in held:
        w.close()


def export_tiny(folder: Path, arch: str, dynamic_hw: bool = False) -> Path:
    import acmix_deploy as ad
    from acmix_deploy.exporters import export_onnx
    from acmix_deploy.testing import randomize_model

    model = randomize_model(ad.create_model(arch, num_classes=10), 0).eval()
    path = folder / f"{arch}.onnx"
    export_onnx(ad.reparameterize_model(model), path, (3, 32, 32), cpu_isa="auto", dynamic_hw=dynamic_hw)
    return path


def start_server(model: Path, name: str, max_batch: int, timeout_ms: float, threads: int,
                 extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "acmix_deploy.cli", "serve", str(model), "--name", name, "--host", "127.0.0.1",
           "--port", "0", "--max-batch", str(max_batch), "--batch-timeout-ms", str(timeout_ms),
           "--threads", str(threads), "--log-level", "warning", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        if m:
            ServingClient(m.group(1)).wait_ready(timeout_s=60)
            return proc, m.group(1)
    proc.kill()
    raise SystemExit(f"server for {name} did not start: {proc.stdout.read()}")


def batch_metrics(url: str) -> tuple[float, float]:
    text = ServingClient(url)._request("GET", "/metrics")[2].decode()
    count = float(re.search(r"^acmix_inference_batch_size_count\{[^}]*\} (\S+)$", text, re.M).group(1))
    rows = float(re.search(r"^acmix_inference_batch_size_sum\{[^}]*\} (\S+)$", text, re.M).group(1))
    return count, rows


async def drive(url: str, model: str, payloads: list[np.ndarray], concurrency: int, n_requests: int,
                max_seconds: float, expected: list[np.ndarray] | None, hostile: bool = False) -> dict:
    import httpx

    meta = ServingClient(url).metadata(model)
    in_name, out_name = meta["inputs"][0]["name"], meta["outputs"][0]["name"]
    n_out = meta["outputs"][0]["shape"][1:]
    bodies = []
    for x in payloads:
        head = json.dumps({"inputs": [{"name": in_name, "datatype": "FP32", "shape": list(x.shape),
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "outputs": [{"name": out_name, "parameters": {"binary_data": True}}]}).encode()
        bodies.append((head + x.tobytes(), len(head)))
    latencies: list[float] = []
    errors: list[str] = []
    mismatches = 0
    worst_rel = 0.0
    next_index = 0
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def worker() -> None:
            nonlocal next_index, worst_rel, mismatches
            while next_index < n_requests and time.monotonic() < deadline:
                i = next_index
                next_index += 1
                body, n_head = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"/v2/models/{model}/infer", content=body,
                                          headers={"Inference-Header-Content-Length": str(n_head)})
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)
                    continue
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}")
                    continue
                h = int(r.headers["Inference-Header-Content-Length"])
                out = json.loads(r.content[:h])["outputs"][0]
                y = np.frombuffer(r.content, dtype="<f4", offset=h).reshape(out["shape"])
                if list(y.shape[1:]) != n_out or y.shape[0] != payloads[i % len(payloads)].shape[0]:
                    errors.append(f"shape {y.shape}")
                elif expected is not None:
                    ref = expected[i % len(expected)]
                    rel = float(np.abs(y - ref).max() / np.abs(ref).max())
                    worst_rel = max(worst_rel, rel)
                    mismatches += rel > MISMATCH_REL

        hostile_counts: dict = {}
        if hostile:
            hostile_bodies()  # built before the clock starts
        stop = asyncio.Event()
        enemy = asyncio.ensure_future(hostile_client(url, model, stop, hostile_counts)) if hostile else None
        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t_start
        if enemy is not None:
            stop.set()
            await enemy
    done = len(latencies)
    lat_ms = np.asarray(latencies) * 1000 if latencies else np.asarray([float("nan")])
    rows = payloads[0].shape[0]
    return {"requests": done, "errors": len(errors), "error_kinds": sorted(set(errors)), "mismatches": mismatches,
            "hostile_requests": hostile_counts if hostile else None, "seconds": wall,
            "requests_per_s": done / wall, "images_per_s": done * rows / wall,
            "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
            "max_rel_error_vs_local": worst_rel if expected is not None else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="ONNX model [default: a random-weight acmix_resnet_tiny]")
    ap.add_argument("--arch", default="acmix_resnet_tiny", help="architecture exported when --model is not given")
    ap.add_argument("--url", help="target a running server on 127.0.0.1 instead (one mode)")
    ap.add_argument("--name", default="model", help="model name (with --url: the served name)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=300, help="requests per mode and round")
    ap.add_argument("--max-seconds", type=float, default=60, help="stop a round after this long")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1, help="images per request")
    ap.add_argument("--max-batch", type=int, default=16, help="the batched server's --max-batch")
    ap.add_argument("--batch-timeout-ms", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of each server")
    ap.add_argument("--hostile", action="store_true", help="also drive each mode with a hostile client mixed in")
    ap.add_argument("--compare", choices=("batching", "specialize"), default="batching",
                    help="batched vs unbatched servers, or (a --dynamic-hw graph) --specialize 4 vs 0")
    ap.add_argument("--imgsz", type=int, nargs=2, metavar=("H", "W"), help="request size for a graph with dynamic "
                    "height and width")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    for flag in ("concurrency", "requests", "rounds", "rows"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be positive")
    if args.url and urllib.parse.urlparse(args.url).hostname not in LOOPBACK:
        ap.error("--url must point at the loopback interface (127.0.0.1)")
    if args.url and args.compare == "specialize":
        ap.error("--compare specialize starts its own two servers: drop --url")

    rng = np.random.default_rng(0)
    procs: list[subprocess.Popen] = []
    pids: dict[str, int | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model
        if args.url:
            modes = {"target": args.url}
            pids["target"] = None
            model_path = None
        else:
            model_path = model_path or export_tiny(Path(tmp), args.arch, dynamic_hw=args.compare == "specialize")
            modes = {}
            setups = ((("batched", args.max_batch, ()), ("unbatched", 1, ())) if args.compare == "batching" else
                      (("specialize4", args.max_batch, ("--specialize", "4")),
                       ("specialize0", args.max_batch, ("--specialize", "0"))))
            for mode, max_batch, extra in setups:
                proc, url = start_server(model_path, args.name, max_batch, args.batch_timeout_ms, args.threads, extra)
                procs.append(proc)
                modes[mode] = url
                pids[mode] = proc.pid
        try:
            shape = ServingClient(next(iter(modes.values()))).metadata(args.name)["inputs"][0]["shape"][1:]
            if -1 in shape[1:]:  # dynamic height and width
                if not args.imgsz:
                    raise SystemExit("the model takes every valid height and width: give --imgsz H W")
                shape = [shape[0], *args.imgsz]
            elif args.compare == "specialize":
                raise SystemExit("--compare specialize needs a model exported with --dynamic-hw")
            elif args.imgsz:
                raise SystemExit(f"the model takes {shape} only: drop --imgsz")
            payloads = [rng.standard_normal((args.rows, *shape)).astype(np.float32) for _ in range(32)]
            expected = None
            if model_path is not None:
                from acmix_deploy.runtime import OrtRunner

                local = OrtRunner(model_path, threads=1)
                expected = [local.infer(x) for x in payloads]
            runs = [(m, False) for m in modes] + ([(m, True) for m in modes] if args.hostile else [])
            results: dict[str, list[dict]] = {m + ("+hostile" if h else ""): [] for m, h in runs}
            for r in range(args.rounds):
                for mode, hostile in (runs if r % 2 == 0 else runs[::-1]):
                    label = mode + ("+hostile" if hostile else "")
                    before = batch_metrics(modes[mode])
                    with RssWatch(pids[mode]) as rss:
                        res = asyncio.run(drive(modes[mode], args.name, payloads, args.concurrency, args.requests,
                                                args.max_seconds, expected, hostile=hostile))
                    after = batch_metrics(modes[mode])
                    executions = after[0] - before[0]
                    res["mean_executed_batch"] = (after[1] - before[1]) / executions if executions else None
                    res["server_rss_peak_mb"] = rss.peak / 2**20 if rss.peak else None
                    results[label].append(res)
                    print(f"round {r + 1} {label:>17}: {res['requests_per_s']:8.1f} req/s  p50 {res['p50_ms']:7.2f} ms  "
                          f"p99 {res['p99_ms']:7.2f} ms  errors {res['errors']}  mismatches {res['mismatches']}  "
                          f"RSS {res['server_rss_peak_mb'] or 0:.0f} MB  mean batch {res['mean_executed_batch'] or 0:.2f}",
                          flush=True)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
                proc.stdout.close()

    summary = {}
    for mode, rounds in results.items():
        summary[mode] = {k: statistics.median(r[k] for r in rounds) for k in
                         ("requests_per_s", "images_per_s", "p50_ms", "p99_ms")}
        summary[mode]["errors"] = sum(r["errors"] for r in rounds)
        summary[mode]["mismatches"] = sum(r["mismatches"] for r in rounds)
        summary[mode]["requests"] = sum(r["requests"] for r in rounds)
        summary[mode]["mean_executed_batch"] = statistics.median(r["mean_executed_batch"] or 0 for r in rounds)
        rels = [r["max_rel_error_vs_local"] for r in rounds if r.get("max_rel_error_vs_local") is not None]
        summary[mode]["max_rel_error_vs_local"] = max(rels) if rels else None
        peaks = [r["server_rss_peak_mb"] for r in rounds if r.get("server_rss_peak_mb")]
        summary[mode]["server_rss_peak_mb"] = max(peaks) if peaks else None
        if rounds[0].get("hostile_requests") is not None:
            merged: dict = {}
            for r in rounds:
                for k, v in r["hostile_requests"].items():
                    merged[k] = merged.get(k, 0) + v
            summary[mode]["hostile_requests"] = merged
    if {"specialize4", "specialize0"} <= set(results):
        summary["specialize4_over_specialize0_throughput"] = statistics.median(
            a["requests_per_s"] / b["requests_per_s"] for a, b in zip(results["specialize4"], results["specialize0"]))
        summary["specialize4_over_specialize0_p50"] = statistics.median(
            a["p50_ms"] / b["p50_ms"] for a, b in zip(results["specialize4"], results["specialize0"]))
    if {"batched", "unbatched"} <= set(results):
        summary["batched_over_unbatched_throughput"] = statistics.median(
            b["requests_per_s"] / u["requests_per_s"] for b, u in zip(results["batched"], results["unbatched"]))
        summary["batched_over_unbatched_p99"] = statistics.median(
            b["p99_ms"] / u["p99_ms"] for b, u in zip(results["batched"], results["unbatched"]))
    print(json.dumps(summary, indent=2))
    if args.json:
        report = {
            "benchmark": "load_test", "cpu": cpu_model(), "cpu_count": os.cpu_count(), "isa_flags": isa_flags(), "machine": machine(),
            "hostile": args.hostile, "mismatch_rel_threshold": MISMATCH_REL,
            "model": str(model_path.name if model_path else args.url), "rows_per_request": args.rows,
            "concurrency": args.concurrency, "requests_per_round": args.requests, "rounds": args.rounds,
            "max_batch": args.max_batch, "batch_timeout_ms": args.batch_timeout_ms, "server_threads": args.threads,
            "compare": args.compare, "imgsz": args.imgsz,
            "note": "client and servers share this machine's CPUs",
            "summary": summary, "rounds_detail": results,
        }
        write_json(report, args.json)


if __name__ == "__main__":
    main()
