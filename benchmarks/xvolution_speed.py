"""X-volution-ResNet-50: training form vs deploy form vs plain ResNet-50, torch eager and ONNX Runtime on CPU.

X-volution-ResNet-50 (``xvolution_resnet50``) is ResNet-50 with X-volution in
place of the 3x3 conv+BN of the 6 stage-3 blocks.  Its training form (two
branches with BatchNorm each) and its folded deploy form (the merged dynamic
convolution, run as conv + products + 1x1 mix) are timed against a plain
ResNet-50 with its BatchNorms folded, in one process, interleaved round by
round, and compared by the median of per-round paired ratios
(``benchmarks/common.py``).  ONNX Runtime runs the ONNX export of each
model; its graph optimizer folds BatchNorm into a preceding Conv by itself, so
there the training form shows what remains of the fold's gain beyond
BatchNorm (the stride-2 block's products at the output grid only).
ONNX Runtime sessions are created with intra-op spinning off (``--ort-spin``
turns it on): with three sessions taking turns on a shared 2-core machine,
the idle sessions' spinning threads otherwise steal the cores of the one
being timed (measured here: ResNet-50 b1 interleaved 259-275 ms with
spinning, 113-161 ms without, same load).
Weights are random (non-initial), which does not change the cost.

    python benchmarks/xvolution_speed.py --threads 2 --batch 1 8 --rounds 9 \
        --json benchmarks/results/xvolution_speed_cpu.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import acmix_deploy as ad
from acmix_deploy.profiling import cpu_model
from acmix_deploy.testing import randomize_model

sys.path.insert(0, str(Path(__file__).parent))
from common import bind, interleaved, machine, write_json  # noqa: E402

FORMS = ("xvol_train", "xvol_deploy", "resnet50")


def ratios(t) -> dict[str, float]:
    return {
        "train_over_deploy": t.ratio("xvol_train", "xvol_deploy")["paired_median"],
        "deploy_over_plain": t.ratio("xvol_deploy", "resnet50")["paired_median"],
        "train_over_plain": t.ratio("xvol_train", "resnet50")["paired_median"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--imgsz", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=9, help="timed runs per model, backend and batch")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--backend", nargs="+", choices=("torch", "onnxruntime"), default=["torch", "onnxruntime"])
    ap.add_argument("--ort-spin", action="store_true", help="let ONNX Runtime's intra-op threads spin (its default)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size = (3, args.imgsz, args.imgsz)

    train = randomize_model(ad.create_model("xvolution_resnet50"), 0).eval()
    deploy = ad.reparameterize_model(train)
    plain = ad.reparameterize_model(randomize_model(ad.create_model("resnet50"), 0).eval())
    eager = {"xvol_train": train, "xvol_deploy": deploy, "resnet50": plain}
    diff = ad.check_equivalence(train, deploy, size, batch=1)
    print(f"deploy vs training form (float32, batch 1): relative error {diff.rel:.2g}")

    runners = {}
    if "torch" in args.backend:
        runners["torch"] = {k: (lambda m: (lambda x: m(torch.from_numpy(x))))(m) for k, m in eager.items()}
    onnx_check = {}
    if "onnxruntime" in args.backend:
        try:
            from acmix_deploy.exporters import export_onnx
            from acmix_deploy.runtime import OrtRunner

            tmp = Path(tempfile.mkdtemp(prefix="xvol-bench-"))
            ort = {}
            for name, m in eager.items():
                res = export_onnx(m, tmp / f"{name}.onnx", size)
                ort[name] = OrtRunner(tmp / f"{name}.onnx", threads=args.threads, spinning=args.ort_spin)
                onnx_check[name] = {"nodes": res.nodes, "ops": res.op_histogram}
            x1 = np.random.default_rng(1).standard_normal((1, *size), dtype=np.float32)
            with torch.inference_mode():
                ref = train(torch.from_numpy(x1))
            for name in ("xvol_train", "xvol_deploy"):
                onnx_check[name]["rel_error_vs_torch_training"] = ad.compare_outputs(
                    ref, torch.from_numpy(ort[name].infer(x1))).rel
            runners["onnxruntime"] = {k: r.infer for k, r in ort.items()}
        except ad.AcmixDeployError as exc:
            print(f"onnxruntime skipped: {exc}")

    results = []
    with torch.inference_mode():
        for backend, fns in runners.items():
            for b in args.batch:
                x = np.random.default_rng(0).standard_normal((b, *size), dtype=np.float32)
                t = interleaved(bind(fns, x), args.rounds, args.warmup)
                med = t.medians()
                row = {"backend": backend, "batch": b, **{f"{k}_ms": round(v, 2) for k, v in med.items()},
                       **ratios(t)}
                results.append(row)
                print(f"{backend:12s} batch {b:3d}: train {med['xvol_train']:8.1f} ms | deploy "
                      f"{med['xvol_deploy']:8.1f} ms | resnet50 {med['resnet50']:8.1f} ms || train/deploy "
                      f"{row['train_over_deploy']:.2f}x  deploy/plain {row['deploy_over_plain']:.2f}x  "
                      f"train/plain {row['train_over_plain']:.2f}x", flush=True)

    params = {k: ad.count_parameters(m) for k, m in eager.items()}
    macs = {k: ad.count_macs(m, size) for k, m in eager.items()}
    print("parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in params.items()))
    print("MACs (b1): " + ", ".join(f"{k} {v / 1e9:.2f}G" for k, v in macs.items()))
    if args.json:
        device = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "threads": args.threads,
                  "torch": str(torch.__version__), "python": platform.python_version(),
                  "acmix_deploy": ad.__version__, "machine": machine(args.threads)}
        if "onnxruntime" in runners:
            import onnxruntime

            device["onnxruntime"] = onnxruntime.__version__
        report = {
            "benchmark": "xvolution_speed",
            "device": device,
            "setup": {"imgsz": args.imgsz, "rounds": args.rounds, "warmup": args.warmup,
                      "statistic": "times: medians; ratios: median of per-round paired ratios",
                      "order": "interleaved, rotating start, 50 ms pause before each run", "ort_intra_op_spinning": args.ort_spin,
                      "models": {"xvol_train": "xvolution_resnet50, training form",
                                 "xvol_deploy": "xvolution_resnet50, folded (XVolutionDeploy)",
                                 "resnet50": "resnet50, BatchNorm folded"}},
            "params": params,
            "macs_batch1": macs,
            "equivalence_rel_error": diff.rel,
            "onnx": onnx_check,
            "results": results,
        }
        write_json(report, args.json)


if __name__ == "__main__":
    main()
