"""ACmix-ResNet-50: training form vs deploy form vs plain ResNet-50, torch eager on CPU.

All three models are timed in one process, interleaved round by round (so
that drift of a shared machine hits them alike); ratios are medians of the
per-round paired ratios (``benchmarks/common.py``).
Weights are random (non-initial), which does not change the cost.

    python benchmarks/reparam_speed.py --threads 2 --batch 1 8 --rounds 7 \
        --json benchmarks/results/reparam_speed_cpu.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

import acmix_deploy as ad
from acmix_deploy.profiling import cpu_model
from acmix_deploy.testing import randomize_model

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--imgsz", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=7, help="timed runs per model and batch")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    train = randomize_model(ad.create_model("acmix_resnet50"), 0).eval()
    deploy = ad.reparameterize_model(train)
    plain = randomize_model(ad.create_model("resnet50"), 0).eval()
    models = {"acmix_train": train, "acmix_deploy": deploy, "resnet50": plain}
    size = (3, args.imgsz, args.imgsz)
    diff = ad.check_equivalence(train, deploy, size, batch=1)

    results = []
    for b in args.batch:
        x = torch.randn(b, *size)
        with torch.inference_mode():
            t = interleaved({k: (lambda m: lambda: m(x))(m) for k, m in models.items()}, args.rounds, args.warmup)
        med = t.medians()
        row = {
            "batch": b,
            **{f"{name}_ms": round(v, 2) for name, v in med.items()},
            "train_over_plain": t.ratio("acmix_train", "resnet50")["paired_median"],
            "deploy_over_plain": t.ratio("acmix_deploy", "resnet50")["paired_median"],
            "train_over_deploy": t.ratio("acmix_train", "acmix_deploy")["paired_median"],
        }
        results.append(row)
        print(
            f"batch {b:3d}: train {med['acmix_train']:8.1f} ms | deploy {med['acmix_deploy']:8.1f} ms | "
            f"resnet50 {med['resnet50']:7.1f} ms || train/plain {row['train_over_plain']:.2f}x  "
            f"deploy/plain {row['deploy_over_plain']:.2f}x  train/deploy {row['train_over_deploy']:.2f}x",
            flush=True,
        )

    report = {
        "benchmark": "reparam_speed",
        "device": {
            "cpu": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
            "acmix_deploy": ad.__version__,
        },
        "setup": {"imgsz": args.imgsz, "rounds": args.rounds, "warmup": args.warmup, "statistic": "times: medians; ratios: median of per-round paired ratios (benchmarks/common.py)"},
        "params": {name: ad.count_parameters(m) for name, m in models.items()},
        "equivalence_rel_error": diff.rel,
        "results": results,
    }
    if args.json:
        write_json(report, args.json)


if __name__ == "__main__":
    main()
