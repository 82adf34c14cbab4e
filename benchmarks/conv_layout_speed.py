"""Eager torch: the convolution paths on channels-first vs channels-last memory, whole models, side by side.

Times, interleaved round by round in one process (``benchmarks/common.py``):

* ACmix-ResNet-50 deploy form with its convolution path on channels-first memory and on channels-last
  memory (``acmix_deploy.modules.conv_path_layout``), against a plain ResNet-50 of the same widths;
* Swin-T + ACmix training form and deploy form, the deploy form's convolution path both ways.

The ``*_last`` columns force channels-last (what the default rule, ``grouped_conv_channels_last``, picks
for eager float32 on the CPU); ``*_first`` forces channels-first (what the deploy forms ran before).
Weights are random, non-initial.

    python benchmarks/conv_layout_speed.py --threads 1 --batch 1 8 --rounds 9 \\
        --json benchmarks/results/conv_layout_speed_epyc_avx2.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import acmix_deploy as ad
from acmix_deploy.modules import conv_path_layout
from acmix_deploy.testing import randomize_model

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, load_average, machine, write_json  # noqa: E402


def in_layout(model: torch.nn.Module, layout: str):
    def run(x: torch.Tensor) -> torch.Tensor:
        with conv_path_layout(layout):
            return model(x)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--models", nargs="+", choices=("resnet", "swin"), default=["resnet", "swin"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_at_start = load_average()

    suites = {}
    if "resnet" in args.models:
        deploy = ad.reparameterize_model(randomize_model(ad.create_model("acmix_resnet50"), 0).eval())
        suites["acmix_resnet50"] = ({
            "plain": randomize_model(ad.create_model("resnet50"), 0).eval(),
            "deploy_first": in_layout(deploy, "channels_first"),
            "deploy_last": in_layout(deploy, "channels_last"),
        }, [("deploy_first", "plain"), ("deploy_last", "plain"), ("deploy_first", "deploy_last")])
    if "swin" in args.models:
        train = randomize_model(ad.create_model("acmix_swin_tiny"), 0).eval()
        deploy = ad.reparameterize_model(train)
        suites["acmix_swin_tiny"] = ({
            "train": train,
            "deploy_first": in_layout(deploy, "channels_first"),
            "deploy_last": in_layout(deploy, "channels_last"),
        }, [("train", "deploy_first"), ("train", "deploy_last"), ("deploy_first", "deploy_last")])

    results = []
    for name, (forms, ratios) in suites.items():
        for b in args.batch:
            x = torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(b))
            with torch.inference_mode():
                outs = {k: f(x) for k, f in forms.items() if k.startswith("deploy")}
                diff = float((outs["deploy_first"] - outs["deploy_last"]).abs().max()
                             / outs["deploy_first"].abs().max())
                t = interleaved({k: (lambda f: lambda: f(x))(f) for k, f in forms.items()}, args.rounds, args.warmup)
            row = {"model": name, "batch": b, "first_vs_last_rel_diff": diff,
                   **{f"{k}_cpu_ms": round(v, 2) for k, v in t.medians("cpu").items()},
                   **{f"{k}_wall_ms": round(v, 2) for k, v in t.medians("wall").items()}}
            for num, den in ratios:
                r = t.ratio(num, den, "cpu")
                row[f"{num}/{den}_cpu"] = r
            results.append(row)
            text = "  ".join(f"{num}/{den} {row[f'{num}/{den}_cpu']['paired_median']:.3f}x" for num, den in ratios)
            print(f"{name:16s} batch {b}: " + "  ".join(f"{k} {v:.1f}" for k, v in t.medians("cpu").items())
                  + f" ms CPU time | {text} | layouts differ by {diff:.1e}", flush=True)

    report = {
        "benchmark": "conv_layout_speed",
        "machine": machine(args.threads),
        "load_average_at_start": load_at_start,
        "load_average_at_end": load_average(),
        "torch": str(torch.__version__),
        "acmix_deploy": ad.__version__,
        "setup": {"rounds": args.rounds, "warmup": args.warmup, "input": [3, 224, 224],
                  "statistic": "process CPU time; ratios: median of per-round paired ratios (benchmarks/common.py)"},
        "results": results,
    }
    if args.json:
        write_json(report, args.json)


if __name__ == "__main__":
    main()
