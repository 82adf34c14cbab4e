"""Exported ACmix-ResNet-50 against torch eager: ONNX Runtime and AOTInductor, training vs deploy form.

Every target is built first (ONNX export, AOTInductor compilation: minutes on a
small CPU), then all targets are timed in one process, interleaved round by
round so that drift of a shared machine hits them alike, and compared by
medians.  Ratios are against torch eager running the training form (the model
as trained) and the deploy form.  Weights are random (non-initial), which does
not change the cost of any operator.

CPU (the default; 2 threads):

    python benchmarks/export_speed.py --batch 1 8 --rounds 7 \
        --json benchmarks/results/export_speed_cpu.json

GPU (when one is lent): torch eager, torch.compile and AOTInductor on CUDA, in
float32 and (``--fp16``) float16:

    python benchmarks/export_speed.py --device cuda --fp16 --batch 1 8 32 --rounds 50 \
        --json benchmarks/results/export_speed_cuda.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import acmix_deploy as ad
from acmix_deploy.exporters import export_aoti, export_onnx
from acmix_deploy.profiling import device_fingerprint
from acmix_deploy.runtime import AotiRunner, OrtRunner
from acmix_deploy.testing import randomize_model

sys.path.insert(0, str(Path(__file__).parent))
from common import PAUSE_S, interleaved, write_json  # noqa: E402

Run = Callable[[], object]


def torch_target(model, device: str, dtype: torch.dtype, compiled: bool = False):
    model = model.to(device=device, dtype=dtype).eval()
    fn = torch.compile(model) if compiled else model

    def make(x: np.ndarray) -> Run:
        xt = torch.from_numpy(x).to(device=device, dtype=dtype)

        def run():
            with torch.inference_mode():
                return fn(xt)

        return run

    return make


def ort_target(path: Path, threads: int):
    runner = OrtRunner(path, threads=threads)

    def make(x: np.ndarray) -> Run:
        feed = {runner.input_name: np.ascontiguousarray(x)}
        return lambda: runner.session.run(None, feed)

    return make


def aoti_target(path: Path, device: str, dtype: torch.dtype):
    runner = AotiRunner(path, device)

    def make(x: np.ndarray) -> Run:
        xt = torch.from_numpy(x).to(device=device, dtype=dtype)

        def run():
            with torch.inference_mode():
                return runner.model(xt)

        return run

    return make


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="acmix_resnet50")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--imgsz", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=7, help="timed runs per target and batch")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--fp16", action="store_true", help="also float16 targets (CUDA)")
    ap.add_argument("--no-aoti", action="store_true", help="skip AOTInductor (it compiles for minutes on a small CPU)")
    ap.add_argument("--aoti-training", action="store_true", help="also compile the training form with AOTInductor")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA GPU")

    train = randomize_model(ad.create_model(args.arch), 0).eval()
    deploy = ad.reparameterize_model(train)
    size = (3, args.imgsz, args.imgsz)
    forms = {"training": train, "deploy": deploy}
    tmp = tempfile.TemporaryDirectory(prefix="export-speed-")
    targets: dict[tuple[str, str], Callable[[np.ndarray], Run]] = {}
    build_s: dict[str, float] = {}
    dtypes = [("fp32", torch.float32)] + ([("fp16", torch.float16)] if args.fp16 and cuda else [])

    for form, model in forms.items():
        for tag, dtype in dtypes:
            suffix = "" if tag == "fp32" else f" {tag}"
            targets[(f"torch eager{suffix}", form)] = torch_target(copy.deepcopy(model), args.device, dtype)
            if cuda:
                targets[(f"torch.compile{suffix}", form)] = torch_target(copy.deepcopy(model), args.device, dtype, True)
        if not cuda:
            t0 = time.perf_counter()
            path = Path(tmp.name) / f"{form}.onnx"
            export_onnx(model, path, size, batch=1, dynamic=True, cpu_isa="auto")
            build_s[f"onnx {form}"] = round(time.perf_counter() - t0, 1)
            targets[("onnxruntime", form)] = ort_target(path, args.threads)
            print(f"exported {form} form to ONNX in {build_s[f'onnx {form}']} s", flush=True)
        if not args.no_aoti and (form == "deploy" or args.aoti_training):
            for tag, dtype in dtypes:
                t0 = time.perf_counter()
                path = Path(tmp.name) / f"{form}-{tag}.pt2"
                m = copy.deepcopy(model).to(dtype=dtype)
                if dtype == torch.float32:
                    export_aoti(m, path, size, batch=min(args.batch), dynamic=True, max_batch=max(*args.batch, 2),
                                device=args.device)
                else:
                    _aoti_half(m, path, size, args)
                key = f"aoti {form} {tag}"
                build_s[key] = round(time.perf_counter() - t0, 1)
                suffix = "" if tag == "fp32" else f" {tag}"
                targets[(f"aotinductor{suffix}", form)] = aoti_target(path, args.device, dtype)
                print(f"compiled {form} form with AOTInductor ({tag}) in {build_s[key]} s", flush=True)

    results = []
    for b in args.batch:
        x = np.random.default_rng(0).standard_normal((b, *size), dtype=np.float32)
        runs = {key: make(x) for key, make in targets.items()}
        t = interleaved(runs, args.rounds, args.warmup, sync=torch.cuda.synchronize if cuda else None)
        med = t.medians()
        base_train = med[("torch eager", "training")]
        base_deploy = med[("torch eager", "deploy")]
        print(f"\nbatch {b}: median of {args.rounds} interleaved rounds")
        print(f"  {'backend':<22} {'form':<9} {'ms':>10} {'vs eager training':>18} {'vs eager deploy':>16}")
        for (backend, form), ms in med.items():
            row = {"batch": b, "backend": backend, "form": form, "median_ms": round(ms, 2),
                   "speedup_vs_eager_training": round(base_train / ms, 2),
                   "speedup_vs_eager_deploy": round(base_deploy / ms, 2)}
            results.append(row)
            print(f"  {backend:<22} {form:<9} {ms:10.1f} {row['speedup_vs_eager_training']:17.2f}x "
                  f"{row['speedup_vs_eager_deploy']:15.2f}x", flush=True)

    report = {
        "benchmark": "export_speed",
        "device": device_fingerprint(args.device, args.threads),
        "setup": {"arch": args.arch, "imgsz": args.imgsz, "rounds": args.rounds, "warmup": args.warmup,
                  "statistic": "median", "interleaved": "rotating start (benchmarks/common.py)",
                  "pause_between_runs_s": PAUSE_S,
                  "speedup": "median of torch eager (training or deploy form) / median of the target"},
        "build_seconds": build_s,
        "results": results,
    }
    if args.json:
        write_json(report, args.json)
    tmp.cleanup()


def _aoti_half(model, path: Path, size, args) -> None:
    """AOTInductor of a float16 model (CUDA): the package takes float16 input."""
    x = torch.randn(max(min(args.batch), 2), *size, device=args.device, dtype=torch.float16)
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=max(max(args.batch), 2))}}
    program = torch.export.export(model.to(args.device).eval(), (x,), dynamic_shapes=shapes)
    torch._inductor.aoti_compile_and_package(program, package_path=str(path))


if __name__ == "__main__":
    main()
