"""ACmix-ResNet-50: training form vs deploy form vs plain ResNet-50, torch eager on CPU.

All three models are timed in one process, interleaved round by round (so
that drift of a shared machine hits them alike), and compared by medians.
Weights are random (non-initial), which does not change the cost.

    python benchmarks/reparam_speed.py --threads 2 --batch 1 8 --rounds 7 \
        --json benchmarks/results/reparam_speed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import acmix_deploy as ad
from acmix_deploy.profiling import cpu_model
from acmix_deploy.testing import randomize_model


def write_json(report: dict, path: Path) -> None:
    """Write a result file atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")


@torch.inference_mode()
def time_once(model, x) -> float:
    t0 = time.perf_counter_ns()
    model(x)
    return (time.perf_counter_ns() - t0) / 1e6


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
        for m in models.values():
            for _ in range(args.warmup):
                time_once(m, x)
        times = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, m in models.items():
                times[name].append(time_once(m, x))
        med = {name: statistics.median(t) for name, t in times.items()}
        row = {
            "batch": b,
            **{f"{name}_ms": round(v, 2) for name, v in med.items()},
            "train_over_plain": round(med["acmix_train"] / med["resnet50"], 2),
            "deploy_over_plain": round(med["acmix_deploy"] / med["resnet50"], 2),
            "train_over_deploy": round(med["acmix_train"] / med["acmix_deploy"], 2),
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
        "setup": {"imgsz": args.imgsz, "rounds": args.rounds, "warmup": args.warmup, "statistic": "median"},
        "params": {name: ad.count_parameters(m) for name, m in models.items()},
        "equivalence_rel_error": diff.rel,
        "results": results,
    }
    if args.json:
        write_json(report, args.json)


if __name__ == "__main__":
    main()
