"""Swin-T + ACmix: training form vs deploy form, torch eager and ONNX Runtime on CPU.

Three forms are timed interleaved, round by round, in one process and
compared by the median of per-round paired ratios of wall time and of
process CPU time (the latter is less sensitive to other processes on a
shared machine; protocol in ``benchmarks/common.py``):

* ``train``: the official structure (norm affines, fc + dep_conv, rate1/rate2, gathered position bias);
* ``deploy``: :func:`acmix_deploy.reparameterize_model` with the default
  ``conv_fold='factored'`` (folded fc + dep_conv);
* ``deploy_merged``: every block's convolution path merged into one grouped 3x3 conv.

In ONNX Runtime each form is exported with the package's exporter (training
form included, for a like-for-like comparison).  Weights are random,
non-initial; that does not change the cost.

    python benchmarks/swin_speed.py --threads 1 --batch 1 8 --rounds 7 \
        --json benchmarks/results/swin_speed_cpu.json
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
from common import bind, interleaved, load_average, machine, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="acmix_swin_tiny")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=7, help="timed runs per form, backend and batch")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-onnx", action="store_true", help="torch eager only")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_at_start = load_average()

    train = randomize_model(ad.create_model(args.arch), 0).eval()
    merged_train = randomize_model(ad.create_model(args.arch, conv_fold="merged"), 0).eval()
    forms = {
        "train": train,
        "deploy": ad.reparameterize_model(train),
        "deploy_merged": ad.reparameterize_model(merged_train),
    }
    size = tuple(train.default_cfg["input_size"])
    errors = {
        "deploy": ad.check_equivalence(train, forms["deploy"], size, batch=2).rel,
        "deploy_merged": ad.check_equivalence(merged_train, forms["deploy_merged"], size, batch=2).rel,
    }
    print(f"equivalence (relative, float32): {errors}", flush=True)

    runners = {"torch": {k: (lambda m: (lambda x: m(torch.from_numpy(x))))(m) for k, m in forms.items()}}
    export_s = {}
    if not args.no_onnx:
        from acmix_deploy.exporters import export_onnx
        from acmix_deploy.runtime import OrtRunner

        tmp = Path(tempfile.mkdtemp(prefix="acmix-swin-bench-"))
        runners["onnxruntime"] = {}
        for name, m in forms.items():
            res = export_onnx(m, tmp / f"{name}.onnx", size, cpu_isa="auto")
            export_s[name] = {"seconds": round(res.seconds, 1), "nodes": res.nodes}
            runners["onnxruntime"][name] = OrtRunner(res.path, threads=args.threads).infer
        print(f"exports: {export_s}", flush=True)

    results = []
    for backend, fns in runners.items():
        for b in args.batch:
            x = np.random.default_rng(0).standard_normal((b, *size), dtype=np.float32)
            with torch.inference_mode():
                t = interleaved(bind(fns, x), args.rounds, args.warmup)
            med, med_cpu = t.medians("wall"), t.medians("cpu")
            row = {
                "backend": backend, "batch": b, **{f"{k}_ms": round(v, 2) for k, v in med.items()},
                **{f"{k}_cpu_ms": round(v, 2) for k, v in med_cpu.items()},
                "train_over_deploy": t.ratio("train", "deploy")["paired_median"],
                "merged_over_deploy": t.ratio("deploy_merged", "deploy")["paired_median"],
                "train_over_deploy_cpu": t.ratio("train", "deploy", "cpu")["paired_median"],
                "merged_over_deploy_cpu": t.ratio("deploy_merged", "deploy", "cpu")["paired_median"],
            }
            results.append(row)
            print(f"{backend:12s} batch {b:2d}: train {med['train']:8.1f} ms  deploy {med['deploy']:8.1f} ms  "
                  f"deploy_merged {med['deploy_merged']:8.1f} ms  train/deploy {row['train_over_deploy']:.2f}x  "
                  f"merged/deploy {row['merged_over_deploy']:.2f}x | CPU time: train/deploy "
                  f"{row['train_over_deploy_cpu']:.2f}x merged/deploy {row['merged_over_deploy_cpu']:.2f}x", flush=True)

    report = {
        "benchmark": "swin_speed",
        "arch": args.arch,
        "device": {
            "cpu": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "threads": args.threads,
            "load_average_at_start": load_at_start,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
            "acmix_deploy": ad.__version__,
            "machine_at_end": machine(args.threads),  # CPU model, ISA level and flags, threads, uptime
        },
        "setup": {"input_size": list(size), "rounds": args.rounds, "warmup": args.warmup, "statistic": "times: medians; ratios: median of per-round paired ratios (benchmarks/common.py)"},
        "params": {name: ad.count_parameters(m) for name, m in forms.items()},
        "macs_batch1": {name: ad.count_macs(m, size) for name, m in forms.items()},
        "equivalence_rel_error": errors,
        "onnx_exports": export_s,
        "results": results,
    }
    if not args.no_onnx:
        import onnxruntime

        report["device"]["onnxruntime"] = onnxruntime.__version__
    if args.json:
        write_json(report, args.json)


if __name__ == "__main__":
    main()
