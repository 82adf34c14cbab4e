"""Deployed ACmix-ResNet-50 against a plain ResNet-50: every CPU backend, and peak memory.

For each backend (torch eager, ONNX Runtime CPU) and batch size, times the
deploy form of ACmix-ResNet-50 and a plain ResNet-50 of the same widths
interleaved in one process, and prints deploy / plain as the ratio of medians.
The training form is timed in torch eager for reference.  With ``--memory``,
each (form, batch) runs once in a fresh subprocess and its peak RSS growth
over the loaded model is recorded (activation memory plus allocator slack;
Linux only: it resets the watermark through /proc/self/clear_refs).

    python benchmarks/attention_speed.py --batch 1 8 --rounds 7 --memory \
        --json benchmarks/results/attention_speed_cpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import acmix_deploy as ad
from acmix_deploy.profiling import cpu_model
from acmix_deploy.testing import randomize_model

sys.path.insert(0, str(Path(__file__).parent))
from reparam_speed import write_json  # noqa: E402

MEMORY_PROBE = r"""
import sys, torch, acmix_deploy as ad
from acmix_deploy.testing import randomize_model

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB -> MB

torch.set_num_threads(int(sys.argv[3]))
form, batch, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[4])
if form == "resnet50":
    m = randomize_model(ad.create_model("resnet50"), 0).eval()
else:
    m = randomize_model(ad.create_model("acmix_resnet50"), 0).eval()
    if form == "acmix_deploy":
        m = ad.reparameterize_model(m, inplace=True)
x = torch.randn(batch, 3, size, size)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS watermark (VmHWM) to the current RSS
before = status("VmRSS")
with torch.inference_mode():
    m(x)
print(status("VmHWM") - before)
"""


def peak_memory_mb(form: str, batch: int, threads: int, size: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, form, str(batch), str(threads), str(size)],
        check=True, capture_output=True, text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--imgsz", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS growth per form (subprocesses)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size = (3, args.imgsz, args.imgsz)

    train = randomize_model(ad.create_model("acmix_resnet50"), 0).eval()
    deploy = ad.reparameterize_model(train)
    plain = randomize_model(ad.create_model("resnet50"), 0).eval()
    eager = {"acmix_train": train, "acmix_deploy": deploy, "resnet50": plain}

    runners = {"torch": {k: (lambda m: (lambda x: m(torch.from_numpy(x))))(m) for k, m in eager.items()}}
    try:
        from acmix_deploy.exporters import export_onnx
        from acmix_deploy.runtime import OrtRunner

        tmp = Path(tempfile.mkdtemp(prefix="acmix-bench-"))
        export_onnx(deploy, tmp / "deploy.onnx", size)
        export_onnx(plain, tmp / "plain.onnx", size)
        runners["onnxruntime"] = {
            "acmix_deploy": OrtRunner(tmp / "deploy.onnx", threads=args.threads).infer,
            "resnet50": OrtRunner(tmp / "plain.onnx", threads=args.threads).infer,
        }
    except ad.AcmixDeployError as exc:
        print(f"onnxruntime skipped: {exc}")

    results = []
    for backend, fns in runners.items():
        for b in args.batch:
            x = np.random.default_rng(0).standard_normal((b, *size), dtype=np.float32)
            times: dict[str, list[float]] = {k: [] for k in fns}
            with torch.inference_mode():
                for f in fns.values():
                    f(x)
                for _ in range(args.rounds):
                    for name, f in fns.items():
                        t0 = time.perf_counter_ns()
                        f(x)
                        times[name].append((time.perf_counter_ns() - t0) / 1e6)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {"backend": backend, "batch": b, **{f"{k}_ms": round(v, 2) for k, v in med.items()},
                   "deploy_over_plain": round(med["acmix_deploy"] / med["resnet50"], 2)}
            if "acmix_train" in med:
                row["train_over_deploy"] = round(med["acmix_train"] / med["acmix_deploy"], 2)
            results.append(row)
            extra = f"  train/deploy {row['train_over_deploy']:.2f}x" if "train_over_deploy" in row else ""
            print(f"{backend:12s} batch {b:3d}: deploy {med['acmix_deploy']:8.1f} ms  plain {med['resnet50']:8.1f} ms"
                  f"  deploy/plain {row['deploy_over_plain']:.2f}x{extra}", flush=True)

    memory = []
    if args.memory:
        for b in args.batch:
            row = {"batch": b, **{f"{f}_mb": round(peak_memory_mb(f, b, args.threads, args.imgsz), 1)
                                  for f in ("acmix_train", "acmix_deploy", "resnet50")}}
            row["deploy_over_train"] = round(row["acmix_deploy_mb"] / row["acmix_train_mb"], 3)
            memory.append(row)
            print(f"peak RSS growth, batch {b}: train {row['acmix_train_mb']} MB, deploy {row['acmix_deploy_mb']} MB, "
                  f"resnet50 {row['resnet50_mb']} MB (deploy/train {row['deploy_over_train']:.2f})", flush=True)

    if args.json:
        import onnxruntime

        report = {
            "benchmark": "attention_speed",
            "device": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "threads": args.threads,
                       "torch": str(torch.__version__), "onnxruntime": onnxruntime.__version__,
                       "acmix_deploy": ad.__version__},
            "setup": {"imgsz": args.imgsz, "rounds": args.rounds, "statistic": "median",
                      "attention_core": "blocked halo matmuls, 7x7 tiles"},
            "results": results,
            "memory": memory,
        }
        write_json(report, args.json)


if __name__ == "__main__":
    main()
