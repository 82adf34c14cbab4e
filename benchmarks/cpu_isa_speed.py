"""Which deploy ACmix-ResNet-50 graph is fastest on this CPU, and is OpenVINO a faster exact CPU path?

Exports the plain ResNet-50 (BatchNorm folded) and the deploy form of ACmix-ResNet-50 once per
``--cpu-isa`` candidate (as ``export_onnx(cpu_isa=...)`` shapes the graph: ``none`` the plain graph,
compact conv-path groups and softmax; ``generic`` compact groups with the softmax floor; ``avx2`` 8-channel
and ``avx512`` 16-channel groups with the floor; ``auto`` what this machine gets by default, e.g. ``avx2``
groups without the floor on an AMD CPU), then times every graph in ONNX
Runtime, and with ``--openvino`` the plain graph and each deploy graph in OpenVINO (its default CPU
settings, and with ``INFERENCE_PRECISION_HINT=f32`` where the default is a reduced precision), all
interleaved in one process (``benchmarks/common.py``: rotating start, a pause before each run).
Ratios are medians of per-round paired ratios ``deploy_r / plain_r`` against the plain ResNet-50 of
the same backend and settings, and against ONNX Runtime's plain ResNet-50.  Every graph's output is
compared with the training form (relative error, float32).

With ``--ort-extended`` each ONNX Runtime graph also runs with ``ORT_ENABLE_EXTENDED`` (every
optimisation except the NCHWc layout transform): what a CPU without the blocked kernels gets.

    PYTHONPATH=. python benchmarks/cpu_isa_speed.py --batch 1 8 --rounds 9 --openvino \\
        --json benchmarks/results/cpu_isa_speed_<machine>.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import acmix_deploy as ad
from acmix_deploy.exporters import export_onnx
from acmix_deploy.testing import randomize_model

sys.path.insert(0, str(Path(__file__).parent))
from common import PAUSE_S, interleaved, machine, write_json  # noqa: E402

CANDIDATES = ("none", "generic", "avx2", "avx512", "auto")


def _ort(path: Path, threads: int, extended: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if extended
                                     else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def _openvino(path: Path, threads: int, precision: str | None):
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()

    def run(x):
        request.infer({0: x})  # inputs of another batch size reshape the request (dynamic batch axis)
        return request.get_output_tensor(0).data

    return run, compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--imgsz", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--cpu-isa", nargs="+", default=list(CANDIDATES), choices=CANDIDATES,
                    help="deploy graphs to time (none: compact conv-path groups)")
    ap.add_argument("--openvino", action="store_true", help="also time the graphs in OpenVINO")
    ap.add_argument("--ort-extended", action="store_true", help="also ONNX Runtime without the NCHWc transform")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    at_start = machine(args.threads)
    print(f"machine: {at_start['cpu']['model']} ({at_start['cpu']['isa']}), {args.threads} threads; "
          f"{at_start['uptime']}", flush=True)
    size = (3, args.imgsz, args.imgsz)

    train = randomize_model(ad.create_model("acmix_resnet50"), 0).eval()
    deploy = ad.reparameterize_model(train)
    plain = randomize_model(ad.create_model("resnet50"), 0).eval()
    tmp = Path(tempfile.mkdtemp(prefix="acmix-isa-bench-"))
    files = {"plain": export_onnx(plain, tmp / "plain.onnx", size).path}
    groups = {}
    for isa in args.cpu_isa:
        res = export_onnx(deploy, tmp / f"deploy_{isa}.onnx", size, cpu_isa=None if isa == "none" else isa)
        files[f"deploy_{isa}"] = res.path
        groups[isa] = res.metadata.get("acmix_deploy.conv_path_groups")
        if isa == "auto":
            groups[isa] += (f" ({res.metadata.get('acmix_deploy.cpu_isa')}, softmax floor "
                            f"{res.metadata.get('acmix_deploy.softmax_floor', 'none')})")
    print(f"deploy graphs: {groups}", flush=True)

    fns: dict[str, object] = {}
    settings: dict[str, dict] = {}
    for name, path in files.items():
        fns[f"ort {name}"] = _ort(path, args.threads, False)
        settings["ort"] = {"graph_optimization_level": "ORT_ENABLE_ALL"}
        if args.ort_extended:
            fns[f"ort-extended {name}"] = _ort(path, args.threads, True)
            settings["ort-extended"] = {"graph_optimization_level": "ORT_ENABLE_EXTENDED (no NCHWc)"}
    if args.openvino:
        default_precision = None
        for name, path in files.items():
            fns[f"ov {name}"], default_precision = _openvino(path, args.threads, None)
        settings["ov"] = {"config": "defaults + INFERENCE_NUM_THREADS, PERFORMANCE_HINT=LATENCY",
                          "inference_precision": default_precision}
        if default_precision != "f32":  # reduced precision by default (bf16 on AMX / AVX-512 BF16 CPUs)
            for name, path in files.items():
                fns[f"ov-f32 {name}"], _ = _openvino(path, args.threads, "f32")
            settings["ov-f32"] = {"config": "INFERENCE_PRECISION_HINT=f32", "inference_precision": "f32"}
        print(f"OpenVINO default inference precision on this CPU: {default_precision}", flush=True)

    # Exactness: every graph against its torch model (deploy graphs against the training form), float32.
    x_check = np.random.default_rng(1).standard_normal((2, *size), dtype=np.float32)
    with torch.inference_mode():
        refs = {"plain": plain(torch.from_numpy(x_check)).numpy(), "deploy": train(torch.from_numpy(x_check)).numpy()}
    exactness = {}
    for key, fn in fns.items():
        ref = refs["plain" if key.endswith(" plain") else "deploy"]
        out = np.asarray(fn(x_check), dtype=np.float64)
        exactness[key] = float(np.abs(out - ref).max() / np.abs(ref).max())
    print("relative error vs torch: " + ", ".join(f"{k} {v:.1e}" for k, v in exactness.items()), flush=True)

    results = []
    for b in args.batch:
        x = np.random.default_rng(0).standard_normal((b, *size), dtype=np.float32)
        t = interleaved({k: (lambda f: lambda: f(x))(f) for k, f in fns.items()}, args.rounds)
        med = t.medians()
        row = {"batch": b, "ms": {k: round(v, 2) for k, v in med.items()}, "over_own_plain": {}, "over_ort_plain": {}}
        for key in fns:
            backend, name = key.split(" ")
            if name == "plain":
                continue
            own = t.ratio(key, f"{backend} plain")
            ort_ref = t.ratio(key, "ort plain")
            row["over_own_plain"][key] = {"median": own["paired_median"],
                                          "range": [own["paired_min"], own["paired_max"]]}
            row["over_ort_plain"][key] = ort_ref["paired_median"]
        for key in fns:
            if key.endswith(" plain") and key != "ort plain":
                row["over_ort_plain"][key] = t.ratio(key, "ort plain")["paired_median"]
        row["rounds_ms"] = {k: [round(v, 1) for v in vs] for k, vs in t.wall.items()}
        results.append(row)
        print(f"batch {b}:", flush=True)
        for key in fns:
            own = row["over_own_plain"].get(key)
            text = (f"/ own plain {own['median']:.3f}x ({own['range'][0]:.2f}-{own['range'][1]:.2f})" if own else "")
            ref = row["over_ort_plain"].get(key)
            print(f"  {key:26s} {med[key]:8.1f} ms  {text:32s} / ort plain {ref if ref is not None else 1.0:.3f}x",
                  flush=True)
    at_end = machine(args.threads)
    print(f"uptime at end: {at_end['uptime']}", flush=True)
    if args.json:
        versions = {}
        for dist in ("onnxruntime", "openvino", "torch"):
            try:
                versions[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                versions[dist] = None
        write_json({
            "benchmark": "cpu_isa_speed",
            "machine_at_start": at_start, "machine_at_end": at_end, "versions": versions,
            "setup": {"imgsz": args.imgsz, "rounds": args.rounds, "threads": args.threads,
                      "pause_between_runs_s": PAUSE_S,
                      "deploy_graphs": groups, "backends": settings,
                      "statistic": "times: medians; ratios: median (range) of per-round paired ratios; interleaved "
                                   "rounds with rotating start"},
            "exactness_rel_vs_torch": exactness,
            "results": results,
        }, args.json)


if __name__ == "__main__":
    main()
