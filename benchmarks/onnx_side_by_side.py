"""Time several ONNX files side by side in ONNX Runtime, interleaved in one process; ratios to the first.

For graphs that should compute the same thing in different ways: a fixed-size export against a
``--dynamic-hw`` one, or the same model exported by two versions of acmix-deploy (check out the older
commit in a worktree and export there).  Every file gets the same input; the outputs are compared with
the first file's (relative max difference) before timing.  Each round runs every file once, in a rotating
order (``benchmarks/common.py``); a run repeats the call for at least ``--min-run-ms``.  Printed per file:
the median time of one call and the median of the per-round ratios to the first file, with their range.

    python benchmarks/onnx_side_by_side.py fixed.onnx old_dynamic.onnx dynamic.onnx --imgsz 32 32 --batch 1 \\
        --threads 1 --clock cpu --rounds 25
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from acmix_deploy.profiling import device_fingerprint
from acmix_deploy.runtime import OrtRunner

sys.path.insert(0, str(Path(__file__).parent))
from common import bind, interleaved, load_average, repeated, repeats_for, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path, help="ONNX files; the first is the reference")
    ap.add_argument("--imgsz", type=int, nargs=2, required=True, metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    ap.add_argument("--min-run-ms", type=float, default=100.0)
    ap.add_argument("--specialize", action="store_true",
                    help="run --dynamic-hw files in a session with height and width fixed (OrtRunner(specialize=1))")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    h, w = args.imgsz
    x = np.random.default_rng(0).standard_normal((args.batch, 3, h, w), dtype=np.float32)
    names = [f"{i}:{p.name}" for i, p in enumerate(args.files)]
    runners = {n: OrtRunner(p, threads=args.threads, spinning=False, specialize=int(args.specialize))
               for n, p in zip(names, args.files)}
    ref = runners[names[0]].infer(x).astype(np.float64)
    errors = {n: float(np.abs(r.infer(x) - ref).max() / max(np.abs(ref).max(), 1e-30)) for n, r in runners.items()}
    calls = repeats_for(runners[names[0]].infer, x, args.min_run_ms)
    before = load_average()
    t = interleaved(bind({n: repeated(r.infer, calls) for n, r in runners.items()}, x), args.rounds).per_call(calls)
    med = t.medians(args.clock)
    rows = []
    print(f"{h}x{w}, batch {args.batch}, {args.threads} thread(s), {args.clock} clock, {args.rounds} rounds of "
          f"{calls} calls; load average {before} -> {load_average()}")
    for n in names:
        ratio = t.ratio(n, names[0], args.clock)
        rows.append({"file": n, "ms": round(med[n], 3), "over_first": ratio["paired_median"],
                     "range": [ratio["paired_min"], ratio["paired_max"]], "rel_error_vs_first": errors[n]})
        print(f"{n:45s} {med[n]:9.3f} ms  /first {ratio['paired_median']:.3f}x "
              f"({ratio['paired_min']:.2f}-{ratio['paired_max']:.2f})  rel. diff {errors[n]:.1e}")
    if args.json:
        write_json({"benchmark": "onnx_side_by_side", "device": device_fingerprint("cpu", args.threads),
                    "setup": {"imgsz": [h, w], "batch": args.batch, "rounds": args.rounds, "clock": args.clock,
                              "calls_per_run": calls, "specialize": args.specialize}, "results": rows}, args.json)


if __name__ == "__main__":
    main()
