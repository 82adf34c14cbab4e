"""One ONNX file in two ONNX Runtime sessions, side by side: default optimizers vs some turned off.

Both sessions run the same input, interleaved round by round in one process (``benchmarks/common.py``);
each timed run repeats the call ``--reps`` times.  Printed: the median time of one call in each session and
the median of the per-round ratios default / without, and whether the outputs are bit-identical.

    python benchmarks/ort_optimizer_ab.py tiny.dynamic.onnx --imgsz 32 32 --batch 1 --threads 1 \\
        --rounds 31 --reps 20 --disable GatherSliceToSplitFusion
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, load_average, machine, write_json  # noqa: E402

DISABLED_OPTIMIZERS_KEY = "optimization.disable_specified_optimizers"


def session(path: Path, threads: int, disable: list[str]) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if disable:
        so.add_session_config_entry(DISABLED_OPTIMIZERS_KEY, ",".join(disable))
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--imgsz", type=int, nargs=2, required=True, metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--reps", type=int, default=1, help="calls per timed run")
    ap.add_argument("--disable", nargs="+", default=["GatherSliceToSplitFusion"], help="ONNX Runtime optimizer names")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    sessions = {"default": session(args.onnx, args.threads, []), "without": session(args.onnx, args.threads, args.disable)}
    name = sessions["default"].get_inputs()[0].name
    channels = sessions["default"].get_inputs()[0].shape[1]
    x = np.random.default_rng(0).standard_normal((args.batch, channels, *args.imgsz), dtype=np.float32)
    outs = {k: s.run(None, {name: x})[0] for k, s in sessions.items()}
    same = bool(np.array_equal(outs["default"], outs["without"]))

    def timed(s):
        return lambda: [s.run(None, {name: x}) for _ in range(args.reps)]

    clock = "cpu" if args.threads == 1 else "wall"
    load = load_average()
    t = interleaved({k: timed(s) for k, s in sessions.items()}, args.rounds, 2)
    med = {k: v / args.reps for k, v in t.medians(clock).items()}
    ratio = t.ratio("default", "without", clock)
    print(f"{args.onnx.name} {args.imgsz[0]}x{args.imgsz[1]} batch {args.batch}, {args.threads} thread(s), {clock} "
          f"clock, {args.rounds} rounds of {args.reps} calls: default {med['default']:.3f} ms, without "
          f"{' '.join(args.disable)} {med['without']:.3f} ms, default / without {ratio['paired_median']:.3f}x "
          f"(rounds {ratio['paired_min']:.2f}-{ratio['paired_max']:.2f}); outputs identical: {same}")
    if args.json:
        write_json({"benchmark": "ort_optimizer_ab", "machine": machine(args.threads), "onnx": args.onnx.name,
                    "imgsz": args.imgsz, "batch": args.batch, "disabled": args.disable, "rounds": args.rounds,
                    "reps": args.reps, "clock": clock, "load_average": [load, load_average()],
                    "ms_per_call": med, "default_over_without": ratio, "outputs_identical": same}, args.json)


if __name__ == "__main__":
    main()
