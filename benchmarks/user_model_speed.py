"""A user's YOLO-style detector with pasted ACmix copies: training form vs deploy form, torch eager and ONNX Runtime.

The network is ``tests/user_nets.py:yolo_acmix`` (stride-2 ACmix downsample, ACmix before SPPF, ACmix-BN-SiLU
neck blocks, Conv-BN-SiLU attribute blocks, three outputs) with random weights and BatchNorm statistics.  The
training form is what the user trained (the official unfold ACmix, unfolded BatchNorms); the deploy form is
``acmix_deploy.reparameterize`` of it.  Both are exported to ONNX the same way (onnxslim, dynamic batch; the
training form through a plain ``torch.onnx.export``) and timed interleaved in one process (benchmarks/common.py).

    PYTHONPATH=. python benchmarks/user_model_speed.py --imgsz 640 --batch 1 8 --rounds 7 \\
        --json benchmarks/results/user_model_speed_cpu.json
"""

from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acmix_deploy.outputs import flatten_outputs  # noqa: E402
from acmix_deploy.profiling.fingerprint import device_fingerprint  # noqa: E402
from acmix_deploy.reparam import reparameterize  # noqa: E402
from benchmarks.common import bind, interleaved, load_average, write_json  # noqa: E402
from tests import user_nets  # noqa: E402
from tests.helpers import randomize  # noqa: E402


def _isa() -> list[str]:
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "fma"))


def _ort_session(model: torch.nn.Module, x: torch.Tensor, threads: int):
    import onnx
    import onnxruntime as ort
    import onnxslim

    names = [f"output{i}" for i in range(len(flatten_outputs(model(x))))]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["images"],
                          output_names=names, dynamic_axes={n: {0: "batch"} for n in ["images", *names]})
    proto = onnxslim.slim(onnx.load_from_string(buf.getvalue()))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess, len(proto.graph.node)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imgsz", type=int, nargs="+", default=[640])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--width", type=int, default=16, help="base channel width of the detector (16: ~0.6M parameters)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    h, w = (args.imgsz * 2)[:2]

    train = randomize(user_nets.yolo_acmix(width=args.width))
    deploy, report = reparameterize(train)
    assert not report.leftovers, report.leftovers
    rows, sessions = [], {}
    for b in args.batch:
        x = torch.randn(b, 3, h, w)
        with torch.no_grad():
            ref = flatten_outputs(train(x))
            got = flatten_outputs(deploy(x))
            rel = max(float((r - g).abs().max() / r.abs().max()) for r, g in zip(ref, got))
            if not sessions:
                sessions = {form: _ort_session(m, x, args.threads) for form, m in (("train", train), ("deploy", deploy))}
        xn = x.numpy()
        ort_rel = max(float(np.abs(r.numpy() - o).max() / np.abs(r.numpy()).max())
                      for r, o in zip(ref, sessions["deploy"][0].run(None, {"images": xn})))

        def eager(m):
            def run(inp):
                with torch.no_grad():
                    return m(inp)
            return run

        fns = bind({"torch train": eager(train), "torch deploy": eager(deploy)}, x)
        fns.update(bind({f"ort {form}": (lambda s: lambda inp: s.run(None, {"images": inp}))(sess)
                         for form, (sess, _) in sessions.items()}, xn))
        t = interleaved(fns, args.rounds)
        med = t.medians()
        row = {"batch": b, "imgsz": [h, w], "ms": {k: round(v, 2) for k, v in med.items()},
               "train_over_deploy": {"torch": t.ratio("torch train", "torch deploy"),
                                     "onnxruntime": t.ratio("ort train", "ort deploy")},
               "deploy_rel_error": {"torch": rel, "onnxruntime": ort_rel}}
        rows.append(row)
        print(f"batch {b} {h}x{w}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items()))
        print(f"  training / deploy: torch {row['train_over_deploy']['torch']['paired_median']}x "
              f"({row['train_over_deploy']['torch']['paired_min']}-{row['train_over_deploy']['torch']['paired_max']}), "
              f"ONNX Runtime {row['train_over_deploy']['onnxruntime']['paired_median']}x "
              f"({row['train_over_deploy']['onnxruntime']['paired_min']}-"
              f"{row['train_over_deploy']['onnxruntime']['paired_max']}); deploy vs training rel. error "
              f"torch {rel:.2g}, ORT {ort_rel:.2g}")
    result = {
        "benchmark": "user_model_speed", "network": f"tests/user_nets.py:yolo_acmix(width={args.width})",
        "machine": {**device_fingerprint("cpu", args.threads), "isa": _isa(), "load_average": load_average()},
        "versions": {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__},
        "onnx_nodes": {form: n for form, (_, n) in sessions.items()},
        "adopted": [a.path for a in report.adopted], "bn_folded_via_graph": len(report.pairs),
        "rounds": args.rounds, "threads": args.threads, "results": rows,
    }
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
