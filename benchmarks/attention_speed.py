"""Deployed ACmix-ResNet-50 against a plain ResNet-50: every backend of a device, and peak memory.

For each backend and batch size, times the deploy form of ACmix-ResNet-50 and
a plain ResNet-50 of the same widths interleaved in one process, and prints
deploy / plain.  On the CPU (default) the backends are torch eager and ONNX
Runtime; with ``--device cuda`` they are torch eager in float32 and float16,
each with the blocked attention core and with the fused Triton kernel
(``torch triton`` rows, when Triton is installed), plus torch.compile with
``--compile``.  The training form is timed in torch eager for reference.
With ``--memory``, on the CPU each (form, batch) runs once in a fresh
subprocess and its peak RSS growth over the loaded model is recorded
(activation memory plus allocator slack; Linux only: it resets the
watermark through /proc/self/clear_refs); on CUDA the peak memory allocated
by one forward pass is read from torch's allocator.

Timing protocol (``benchmarks/common.py``): interleaved rounds with a
rotating start and a pause before each run; ratios are reported as the
median of the per-round paired ratios (with their range) and as the ratio of
medians, and the goals are judged on the paired median.  ``--clock cpu``
judges by this process's CPU time instead of wall time: on a machine shared
with other jobs this counts only this process's work.  It is meaningful with
``--threads 1`` (ONNX Runtime's worker threads spin while waiting, which CPU
time would count).  The load average before and after the run is recorded.

    python benchmarks/attention_speed.py --batch 1 8 --rounds 7 --memory \
        --json benchmarks/results/attention_speed_cpu_run_a.json
    python benchmarks/attention_speed.py --threads 1 --clock cpu \
        --json benchmarks/results/attention_speed_cpu_1thread_cputime.json
    python benchmarks/attention_speed.py --device cuda --batch 1 8 32 --rounds 21 --memory --compile \
        --json benchmarks/results/attention_speed_cuda.json
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import acmix_deploy as ad
from acmix_deploy.modules.acmix import DEPLOY_LAYOUT
from acmix_deploy.kernels.window_attention_triton import set_attention_backend, triton_available
from acmix_deploy.profiling import device_fingerprint
from acmix_deploy.testing import randomize_model

sys.path.insert(0, str(Path(__file__).parent))
from common import PAUSE_S, interleaved, load_average, machine, write_json  # noqa: E402

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


class TorchTarget:
    """A torch model on a device and dtype; the timed call gets its input already there."""

    def __init__(self, model, device: str, dtype: torch.dtype):
        self.model, self.device, self.dtype = model, device, dtype

    def prepare(self, x: np.ndarray):
        xt = torch.from_numpy(x).to(device=self.device, dtype=self.dtype)
        return lambda: self.model(xt)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(x).to(device=self.device, dtype=self.dtype)).float().cpu().numpy()


class OrtTarget:
    def __init__(self, runner):
        self.runner = runner

    def prepare(self, x: np.ndarray):
        feed = {self.runner.input_name: np.ascontiguousarray(x)}
        return lambda: self.runner.session.run(None, feed)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.runner.infer(x)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cuda_peak_mb(target: TorchTarget, x: np.ndarray) -> float:
    """Peak CUDA memory allocated by one forward pass beyond what was allocated before it (input included)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        target.prepare(x)()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


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
    ap.add_argument("--memory", action="store_true", help="also measure peak memory per form: RSS growth in a subprocess (cpu), "
                         "allocator peak per attention implementation (cuda)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or this process's CPU time (robust to other jobs; use with --threads 1)")
    ap.add_argument("--no-train", action="store_true", help="skip timing the training form")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: torch eager with the blocked core and with the Triton kernel, float32 and float16 "
                         "(ONNX Runtime stays on the CPU and is skipped)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile'd models (minutes of compilation)")
    ap.add_argument("--tf32", action="store_true",
                    help="cuda: let float32 convolutions and products use TF32 (off by default: float32 means float32)")
    ap.add_argument("--cpu-isa", default="auto", choices=("auto", "avx512", "avx2", "generic", "none"),
                    help="the CPU level the deploy ONNX graph is shaped for (acmix_deploy.util.CPU_ISAS; auto: this "
                         "machine's; none: the compact graph a plain torch.onnx.export gives)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size = (3, args.imgsz, args.imgsz)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA GPU")
    if cuda:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32
    load_before = load_average()
    onnx_groups = None
    print(f"load average (1, 5, 15 min): {load_before}", flush=True)
    at_start = machine(args.threads)
    print(f"machine: {at_start['cpu']['model']} ({at_start['cpu']['isa']}), {at_start['logical_cpus']} logical CPUs, "
          f"{args.threads} threads; {at_start['uptime']}", flush=True)

    train = randomize_model(ad.create_model("acmix_resnet50"), 0).eval()
    deploy = ad.reparameterize_model(train)
    plain = randomize_model(ad.create_model("resnet50"), 0).eval()
    eager = {"acmix_train": train, "acmix_deploy": deploy, "resnet50": plain}
    if args.no_train:
        del eager["acmix_train"]

    runners: dict[str, dict] = {}
    attention: dict[str, str] = {}  # backend -> attention implementation of the deploy form while it runs
    dtypes = [("", torch.float32)] + ([(" fp16", torch.float16)] if cuda else [])
    for tag, dtype in dtypes:
        models = {k: copy.deepcopy(m).to(device=args.device, dtype=dtype) for k, m in eager.items()}
        runners[f"torch{tag}"] = {k: TorchTarget(m, args.device, dtype) for k, m in models.items()}
        if cuda and triton_available()[0]:  # the same models; the deploy form's attention by the fused kernel
            runners[f"torch triton{tag}"] = {k: t for k, t in runners[f"torch{tag}"].items() if k != "acmix_train"}
            attention[f"torch triton{tag}"] = "triton"
        if args.compile:  # one static graph per batch size, as a deployment would compile
            runners[f"torch-compile{tag}"] = {k: TorchTarget(torch.compile(m, dynamic=False), args.device, dtype)
                                              for k, m in models.items() if k != "acmix_train"}
    if not cuda:
        try:
            from acmix_deploy.exporters import export_onnx
            from acmix_deploy.runtime import OrtRunner

            tmp = Path(tempfile.mkdtemp(prefix="acmix-bench-"))
            cpu_isa = None if args.cpu_isa == "none" else args.cpu_isa
            onnx_groups = export_onnx(deploy, tmp / "deploy.onnx", size, cpu_isa=cpu_isa).metadata.get(
                "acmix_deploy.conv_path_groups")
            export_onnx(plain, tmp / "plain.onnx", size, cpu_isa=cpu_isa)
            print(f"deploy ONNX graph for cpu_isa={args.cpu_isa}: conv path {onnx_groups}", flush=True)
            runners["onnxruntime"] = {
                "acmix_deploy": OrtTarget(OrtRunner(tmp / "deploy.onnx", threads=args.threads)),
                "resnet50": OrtTarget(OrtRunner(tmp / "plain.onnx", threads=args.threads)),
            }
        except ad.AcmixDeployError as exc:
            print(f"onnxruntime skipped: {exc}")

    # Exactness on a random input: each deploy backend against the training form (float32).
    x_check = np.random.default_rng(1).standard_normal((2, *size), dtype=np.float32)
    with torch.inference_mode():
        ref = train(torch.from_numpy(x_check)).numpy()
    exactness = {}
    for backend, fns in runners.items():
        set_attention_backend(attention.get(backend, "halo"))  # explicit: ACMIX_DEPLOY_ATTENTION is not consulted
        with torch.inference_mode():
            out = np.asarray(fns["acmix_deploy"].infer(x_check), dtype=np.float64)
        exactness[backend] = float(np.abs(out - ref).max() / np.abs(ref).max())
        print(f"{backend:16s} deploy vs training form: max relative difference {exactness[backend]:.1e}", flush=True)

    results = []
    for backend, fns in runners.items():
        set_attention_backend(attention.get(backend, "halo"))  # outside the timed calls
        for b in args.batch:
            x = np.random.default_rng(0).standard_normal((b, *size), dtype=np.float32)
            with torch.inference_mode():
                t = interleaved({k: target.prepare(x) for k, target in fns.items()}, args.rounds,
                                sync=torch.cuda.synchronize if cuda else None)
            med = t.medians(args.clock)
            ratio = t.ratio("acmix_deploy", "resnet50", args.clock)
            row = {"backend": backend, "attention": attention.get(backend, "halo"), "batch": b,
                   **{f"{k}_ms": round(v, 2) for k, v in med.items()},
                   "deploy_over_plain": ratio["paired_median"], "deploy_over_plain_range": [ratio["paired_min"], ratio["paired_max"]],
                   "deploy_over_plain_of_medians": ratio["of_medians"],
                   "rounds_ms": {k: [round(v, 1) for v in vs] for k, vs in (t.cpu if args.clock == "cpu" else t.wall).items()}}
            if "acmix_train" in med:
                row["train_over_deploy"] = t.ratio("acmix_train", "acmix_deploy", args.clock)["paired_median"]
            results.append(row)
            extra = f"  train/deploy {row['train_over_deploy']:.2f}x" if "train_over_deploy" in row else ""
            print(f"{backend:16s} batch {b:3d}: deploy {med['acmix_deploy']:8.1f} ms  plain {med['resnet50']:8.1f} ms"
                  f"  deploy/plain {ratio['paired_median']:.3f}x (rounds {ratio['paired_min']:.2f}-{ratio['paired_max']:.2f}, "
                  f"of medians {ratio['of_medians']:.3f}x){extra}", flush=True)

    memory = []
    if args.memory:
        for b in args.batch:
            if cuda:  # in this process, per attention implementation of the deploy form
                x = np.random.default_rng(0).standard_normal((b, *size), dtype=np.float32)
                for backend in ("torch", "torch triton"):
                    if backend not in runners:
                        continue
                    set_attention_backend(attention.get(backend, "halo"))
                    row = {"batch": b, "backend": backend,
                           **{f"{f}_mb": round(cuda_peak_mb(target, x), 1) for f, target in runners[backend].items()}}
                    memory.append(row)
            else:
                memory.append({"batch": b, "backend": "torch", **{
                    f"{f}_mb": round(peak_memory_mb(f, b, args.threads, args.imgsz), 1)
                    for f in ("acmix_train", "acmix_deploy", "resnet50")}})
        set_attention_backend(None)
        train_mb = {r["batch"]: r["acmix_train_mb"] for r in memory if "acmix_train_mb" in r}
        for row in memory:
            if row["batch"] in train_mb:
                row["deploy_over_train"] = round(row["acmix_deploy_mb"] / train_mb[row["batch"]], 3)
            print(f"peak {'CUDA memory allocated' if cuda else 'RSS growth'}, batch {row['batch']}, {row['backend']}: "
                  + ", ".join(f"{k[:-3]} {v} MB" for k, v in row.items() if k.endswith("_mb"))
                  + (f" (deploy/train {row['deploy_over_train']:.2f})" if "deploy_over_train" in row else ""), flush=True)
    set_attention_backend(None)

    # The goals: ONNX Runtime on CPU <= 1.5x, torch eager on CPU <= 2x, every torch backend on a GPU <= 1.5x.
    goals = {"onnxruntime": 1.5, "torch": 2.0}
    for row in results:
        limit = 1.5 if cuda else goals.get(row["backend"])
        if limit is not None:
            row["goal_deploy_over_plain"] = limit
            row["goal_met"] = row["deploy_over_plain"] <= limit
    for row in memory:
        if "deploy_over_train" in row:
            row["goal_met"] = row["deploy_over_train"] <= 0.5
    print("goals: " + ", ".join(
        f"{r['backend']} b{r['batch']} {r['deploy_over_plain']:.2f}x<={r['goal_deploy_over_plain']}: "
        f"{'met' if r['goal_met'] else 'NOT met'}" for r in results if "goal_met" in r))
    load_after = load_average()
    print(f"load average after (1, 5, 15 min): {load_after}")
    if args.json:
        device = {**device_fingerprint(args.device, args.threads), "machine_at_start": at_start,
                  "machine_at_end": machine(args.threads)}
        device.pop("acmix_attention", None)  # per row here ("attention"), not one value for the run
        if cuda:
            device["tf32"] = args.tf32
            device["triton"] = _version("triton")
        if "onnxruntime" in runners:
            import onnxruntime

            device["onnxruntime"] = onnxruntime.__version__
        report = {
            "benchmark": "attention_speed",
            "device": device,
            "setup": {"imgsz": args.imgsz, "rounds": args.rounds, "clock": args.clock, "pause_between_runs_s": PAUSE_S,
                      **({} if cuda else {"ort_intra_op_spinning": True}),
                      "memory_method": ("peak CUDA memory allocated by one forward pass (torch allocator), input included"
                                        if cuda else "peak RSS growth of one forward pass in a fresh process"),
                      "timed_call": "the forward pass only; inputs prepared on the device before timing",
                      "statistic": "deploy_over_plain: median of per-round paired ratios (range: min-max); "
                                   "times: medians; interleaved rounds with rotating start",
                      "attention_core": "blocked halo matmuls, tile by traffic count (4x4 on 56/28 maps, 7x7 on 14/7); "
                                        "'torch triton' rows: the fused Triton kernel (kernels/window_attention_triton.py)",
                      "onnx_cpu_isa": args.cpu_isa, "onnx_conv_path": onnx_groups,
                      "deploy_layout": DEPLOY_LAYOUT},
            "load_average": {"before": load_before, "after": load_after},
            "exactness_rel_vs_training": exactness,
            "results": results,
            "memory": memory,
        }
        write_json(report, args.json)


if __name__ == "__main__":
    main()
