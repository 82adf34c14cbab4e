"""Cost of dynamic height and width: one dynamic ONNX graph against static graphs of each size, ONNX Runtime.

For each model, one graph is exported with dynamic batch, height and width (``dynamic_hw=True``, traced
and tuned at ``--imgsz``) and one static graph per measured size (dynamic batch only, traced at that size:
what ``acmix-deploy export --imgsz H,W`` writes today).  For every (size, batch) the two sessions run
interleaved in one process (``benchmarks/common.py``: rotating start, pause between runs) and the script
prints dynamic / static as the median of the per-round paired ratios, with its range.  A third column runs
the dynamic file through ``OrtRunner(specialize=...)``, a session with that height and width fixed (what
``serve`` and ``profile`` do by default): specialised / static.  Both graphs are also checked against the
training form at every size (relative max difference).  Each timed run repeats the call for at least
``--min-run-ms`` (small models at batch 1 take a few milliseconds).

Goal (issue 18): dynamic / static <= 1.10 at every size and batch.

    python benchmarks/dynamic_hw_speed.py --rounds 9 --json benchmarks/results/dynamic_hw_speed.json
    python benchmarks/dynamic_hw_speed.py --models acmix_resnet_tiny --sizes 32 40x64 --batch 1 8
    python benchmarks/dynamic_hw_speed.py --threads 1 --clock cpu --json benchmarks/results/dynamic_hw_speed_1thread_cputime.json

``--clock cpu`` judges by this process's CPU time: on a machine shared with other jobs it counts only this
process's work (meaningful with ``--threads 1``, where no ONNX Runtime worker thread spins).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import acmix_deploy as ad
from acmix_deploy.exporters.onnx import export_onnx
from acmix_deploy.profiling import device_fingerprint
from acmix_deploy.runtime import OrtRunner
from acmix_deploy.testing import randomize_model

sys.path.insert(0, str(Path(__file__).parent))
from common import PAUSE_S, bind, interleaved, load_average, repeated, repeats_for, write_json  # noqa: E402

GOAL = 1.10
DEFAULT_SIZES = {"acmix_resnet50": ["224", "192x320"], "acmix_resnet_tiny": ["32", "40x64"]}
TRACE_SIZE = {"acmix_resnet50": 224, "acmix_resnet_tiny": 32}


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w or h)


def cpu_isa() -> dict:
    """CPU model and the vector ISA flags that decide ONNX Runtime's kernels (Linux /proc/cpuinfo)."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_tile")
    return {"cpu_model": model, "isa_flags": [f for f in wanted if f in flags]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["acmix_resnet50", "acmix_resnet_tiny"])
    ap.add_argument("--sizes", nargs="+", default=None, help="HxW or H (square); default per model")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or this process's CPU time (robust to other jobs; use with --threads 1)")
    ap.add_argument("--min-run-ms", type=float, default=100.0,
                    help="each timed run repeats the call until it lasts about this long (small models at batch 1 "
                         "take a few ms: one call after the pause between runs is mostly cold caches)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = load_average()
    isa = cpu_isa()
    print(f"{isa['cpu_model']}; ISA {' '.join(isa['isa_flags'])}; {args.threads} threads; "
          f"load average {load_before}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="acmix-dynhw-"))
    results = []
    for arch in args.models:
        classes = {} if arch == "acmix_resnet50" else {"num_classes": 10}
        train = randomize_model(ad.create_model(arch, **classes), 0).eval()
        deploy = ad.reparameterize_model(train)
        trace = TRACE_SIZE.get(arch, 224)
        dyn_path = tmp / f"{arch}.dynamic.onnx"
        res = export_onnx(deploy, dyn_path, (3, trace, trace), dynamic_hw=True)
        print(f"{arch}: dynamic graph traced at {trace}x{trace}, {res.nodes} nodes; valid sizes: "
              f"{res.spatial_rule.describe()}", flush=True)
        dynamic = OrtRunner(dyn_path, threads=args.threads, spinning=False)
        # The same file with per-size sessions (OrtRunner(specialize=...), what serve and profile use by default)
        special = OrtRunner(dyn_path, threads=args.threads, spinning=False, specialize=len(args.sizes or
                                                                                          DEFAULT_SIZES.get(arch, ["224"])))
        for text in args.sizes or DEFAULT_SIZES.get(arch, ["224"]):
            h, w = parse_size(text)
            static_path = tmp / f"{arch}.{h}x{w}.onnx"
            static_res = export_onnx(deploy, static_path, (3, h, w))
            static = OrtRunner(static_path, threads=args.threads, spinning=False)
            x_check = np.random.default_rng(1).standard_normal((2, 3, h, w), dtype=np.float32)
            with torch.inference_mode():
                ref = train(torch.from_numpy(x_check)).numpy().astype(np.float64)
            err = {name: float(np.abs(r.infer(x_check) - ref).max() / np.abs(ref).max())
                   for name, r in (("dynamic", dynamic), ("static", static))}
            for b in args.batch:
                x = np.random.default_rng(0).standard_normal((b, 3, h, w), dtype=np.float32)
                calls = repeats_for(static.infer, x, args.min_run_ms)
                special.infer(x)  # builds the session fixed to this size (blocking mode)
                t = interleaved(bind({"dynamic": repeated(dynamic.infer, calls), "static": repeated(static.infer, calls),
                                      "specialised": repeated(special.infer, calls)}, x), args.rounds).per_call(calls)
                ratio = t.ratio("dynamic", "static", args.clock)
                sratio = t.ratio("specialised", "static", args.clock)
                med = t.medians(args.clock)
                row = {"model": arch, "size": [h, w], "batch": b, "calls_per_run": calls,
                       "dynamic_ms": round(med["dynamic"], 2),
                       "static_ms": round(med["static"], 2), "dynamic_over_static": ratio["paired_median"],
                       "range": [ratio["paired_min"], ratio["paired_max"]], "of_medians": ratio["of_medians"],
                       "specialised_ms": round(med["specialised"], 2),
                       "specialised_over_static": sratio["paired_median"],
                       "specialised_range": [sratio["paired_min"], sratio["paired_max"]],
                       "goal_met": ratio["paired_median"] <= GOAL, "nodes": {"dynamic": res.nodes,
                                                                             "static": static_res.nodes},
                       "rel_vs_training": err, "rounds_ms": {k: [round(v, 1) for v in vs]
                                     for k, vs in (t.cpu if args.clock == "cpu" else t.wall).items()}}
                results.append(row)
                print(f"{arch:18s} {h:4d}x{w:<4d} batch {b:2d}: dynamic {med['dynamic']:8.1f} ms  static "
                      f"{med['static']:8.1f} ms  dynamic/static {ratio['paired_median']:.3f}x (rounds "
                      f"{ratio['paired_min']:.2f}-{ratio['paired_max']:.2f}, of medians {ratio['of_medians']:.3f}x)  "
                      f"specialised/static {sratio['paired_median']:.3f}x ({sratio['paired_min']:.2f}-"
                      f"{sratio['paired_max']:.2f})  "
                      f"rel. error vs training: dynamic {err['dynamic']:.1e}, static {err['static']:.1e}", flush=True)
    load_after = load_average()
    met = all(r["goal_met"] for r in results)
    print(f"goal dynamic/static <= {GOAL}: {'met' if met else 'NOT met'} everywhere; load average after {load_after}")
    if args.json:
        device = device_fingerprint("cpu", args.threads)
        device.pop("acmix_attention", None)
        device.update(isa)
        write_json({
            "benchmark": "dynamic_hw_speed", "device": device,
            "setup": {"rounds": args.rounds, "clock": args.clock, "min_run_ms": args.min_run_ms, "pause_between_runs_s": PAUSE_S, "ort_intra_op_spinning": False,
                      "trace_sizes": {m: TRACE_SIZE.get(m, 224) for m in args.models},
                      "statistic": "median of per-round paired ratios dynamic/static (range min-max); "
                                   "interleaved rounds with rotating start",
                      "machine_note": "shared machine (other jobs running); see load_average"},
            "load_average": {"before": load_before, "after": load_after}, "goal": GOAL, "results": results,
        }, args.json)


if __name__ == "__main__":
    main()
