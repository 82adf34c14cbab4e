"""Cost of the size guard in a dynamic-height-and-width graph: the exported graph with and without it.

``export_onnx(dynamic_hw=True)`` puts a guard in front of the graph (``exporters.onnx.guard_spatial_rule``:
``Shape``, a dozen integer nodes on two numbers, a one-element ``Gather`` and a ``Reshape`` that aliases
the input) so that plain ONNX Runtime refuses sizes outside the rule.  This script exports each model
once, removes the guard from a copy, checks that both give bit-identical outputs at every measured size,
and times the two sessions interleaved in one process (``benchmarks/common.py``), printing guarded /
unguarded as the median of the per-round paired ratios with its range.

    python benchmarks/dynamic_hw_guard.py --threads 1 --rounds 15 --json benchmarks/results/dynamic_hw_guard.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import acmix_deploy as ad
from acmix_deploy.exporters.onnx import GUARD_NAME, export_onnx
from acmix_deploy.testing import randomize_model

sys.path.insert(0, str(Path(__file__).parent))
from common import bind, interleaved, load_average, machine, write_json  # noqa: E402

TRACE = {"acmix_resnet50": 224, "acmix_resnet_tiny": 32}
SIZES = {"acmix_resnet50": [(224, 224), (192, 320)], "acmix_resnet_tiny": [(32, 32), (40, 64)]}


def without_guard(proto):
    """A copy of ``proto`` with the guard's nodes and constants removed and the input read directly."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    prefix = GUARD_NAME + "/"
    keep = [n for n in out.graph.node if not any(o.startswith(prefix) for o in n.output)]
    for node in keep:
        node.input[:] = ["images" if name == prefix + "images" else name for name in node.input]
    del out.graph.node[:]
    out.graph.node.extend(keep)
    inits = [t for t in out.graph.initializer if not t.name.startswith(prefix)]
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(TRACE))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="cpu")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    report = {"machine": machine(args.threads), "load_before": load_average(), "clock": args.clock, "rows": []}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = ad.reparameterize_model(randomize_model(ad.create_model(name, num_classes=10), 0).eval())
            path = Path(tmp) / f"{name}.onnx"
            s = TRACE[name]
            export_onnx(model, path, (3, s, s), dynamic_hw=True, cpu_isa="auto")
            guarded = onnx.load(path)
            plain = without_guard(guarded)
            sessions = {k: ort.InferenceSession(p.SerializeToString(), opts, providers=["CPUExecutionProvider"])
                        for k, p in (("guarded", guarded), ("unguarded", plain))}
            fns = {k: (lambda x, sess=sess: sess.run(None, {"images": x})) for k, sess in sessions.items()}
            for hw in SIZES[name]:
                for b in args.batch:
                    x = np.random.default_rng(0).standard_normal((b, 3, *hw)).astype(np.float32)
                    same = all(np.array_equal(a, u) for a, u in zip(fns["guarded"](x), fns["unguarded"](x)))
                    t = interleaved(bind(fns, x), rounds=args.rounds)
                    ratio = t.ratio("guarded", "unguarded", args.clock)
                    row = {"model": name, "size": f"{hw[0]}x{hw[1]}", "batch": b, "bit_identical": same,
                           "guarded_ms": t.median("guarded", args.clock),
                           "unguarded_ms": t.median("unguarded", args.clock), **ratio}
                    report["rows"].append(row)
                    print(row, flush=True)
    report["load_after"] = load_average()
    if args.json:
        write_json(report, args.json)


if __name__ == "__main__":
    main()
