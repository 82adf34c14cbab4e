"""Latency profiling of a model file on one device, over backends and batch sizes.

Timing protocol: ``warmup`` untimed runs, then ``iters`` timed runs (or as
many as fit in ``seconds``).  With ``torch-compile`` one more untimed run per
batch size compiles the model first; its duration is reported as ``compile_s``.  Inputs are prepared once, already on the device.
On CPU each run is timed with ``perf_counter_ns``; on CUDA with CUDA events
recorded around the run, after a synchronisation, so the GPU time is
measured and not the launch.  Peak memory: on CUDA ``max_memory_allocated``
during the timed runs; on CPU the growth of the process's peak RSS over its
RSS before the runs (Linux: the watermark is reset through
``/proc/self/clear_refs``; elsewhere the field is ``None``).  The CPU figure
counts only memory the process had to take from the OS: after a larger form
ran in the same process, the allocator reuses freed memory and a smaller
form can read 0 MB.  For a clean per-form figure, profile one form per
process (``benchmarks/attention_speed.py --memory`` does).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ..errors import AcmixDeployError, ConfigError, InputShapeError
from ..exporters import export_onnx
from ..exporters.onnx import cpu_target
from ..modules.window_attention import CONV_LAYOUTS, conv_path_layout, grouped_conv_channels_last
from ..pipeline import prepare_deploy
from ..runtime import OrtRunner, Runner
from ..runtime.loader import BACKENDS as FILE_SUFFIXES, EXPORTED, backend_for, open_runner
from ..util import check_device, normalize_imgsz, sha256_file
from .fingerprint import device_fingerprint
from .stats import summarize

__all__ = ["BACKENDS", "ProfileSettings", "profile_model", "REPORT_SCHEMA"]

BACKENDS = ("torch", "torch-compile", "onnxruntime", "openvino", "aoti", "tensorrt")
# The form each file backend's rows are labelled with.
_FILE_FORMS = {"onnxruntime": "onnx", "openvino": "onnx", "aoti": "aoti", "tensorrt": "engine"}
REPORT_SCHEMA = "acmix-deploy/profile/1"
Progress = Callable[[str, int, int], None]


@dataclass
class ProfileSettings:
    backends: tuple[str, ...] = ()  # () = the natural one for the file (torch for checkpoints)
    batches: tuple[int, ...] = (1,)
    imgsz: int | tuple[int, int] | None = None  # a square, or (height, width)
    # Several input sizes timed one after the other ((height, width) each): a checkpoint (its ONNX graph then
    # exported once with dynamic height and width) or a file exported with --dynamic-hw.  Overrides imgsz.
    sizes: tuple[tuple[int, int], ...] = ()
    warmup: int = 5
    iters: int | None = 30
    seconds: float | None = None
    threads: int | None = None
    device: str = "cpu"
    compare_forms: bool = False
    layers: bool = False
    arch: str | None = None
    model_def: str | None = None  # a user's model (see acmix_deploy.read_checkpoint)
    model_args: str | dict | None = None
    # ONNX Runtime on a graph with dynamic height and width: sessions fixed to one input size each (OrtRunner)
    specialize: int = 4
    # torch (eager): the memory layout of the convolution paths, "auto" (the default rule or
    # ACMIX_DEPLOY_CONV_LAYOUT), "channels_last" or "channels_first"; several are timed interleaved
    conv_layouts: tuple[str, ...] = ()

    def validate(self) -> None:
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise ConfigError(f"unknown backend(s) {', '.join(unknown)}; available: {', '.join(BACKENDS)}")
        if not self.batches or any(b < 1 for b in self.batches):
            raise ConfigError(f"batch sizes must be positive, got {list(self.batches)}")
        if self.seconds is not None:
            if not self.seconds > 0:
                raise ConfigError(f"{{seconds}} must be positive, got {self.seconds}", params=["seconds"])
        elif self.iters is None or self.iters < 1:
            raise ConfigError(f"{{iters}} must be at least 1, got {self.iters}", params=["iters"])
        if self.warmup < 0:
            raise ConfigError(f"{{warmup}} must be >= 0, got {self.warmup}", params=["warmup"])
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"{{threads}} must be positive, got {self.threads}", params=["threads"])
        if self.specialize < 0:
            raise ConfigError(f"{{specialize}} must be 0 or more, got {self.specialize}", params=["specialize"])
        layouts = ("auto", *CONV_LAYOUTS)
        bad = [v for v in self.conv_layouts if v not in layouts]
        if bad:
            raise ConfigError(f"{{conv_layouts}} takes {', '.join(layouts)}; got {bad[0]!r}", params=["conv_layouts"])
        if len(set(self.conv_layouts)) != len(self.conv_layouts):
            raise ConfigError("{conv_layouts}: each layout once", params=["conv_layouts"])
        if self.conv_layouts and self.backends and "torch" not in self.backends:
            raise ConfigError("{conv_layouts} applies to the torch backend (eager); exported graphs and "
                              "torch-compile keep the layout they were built with", params=["conv_layouts", "backends"])
        if self.conv_layouts and self.device != "cpu":
            raise ConfigError("{conv_layouts} applies on the CPU, where the default rule was measured",
                              params=["conv_layouts", "device"])
        normalize_imgsz(self.imgsz)  # ConfigError for anything but a positive int or (height, width)
        for size in self.sizes:
            normalize_imgsz(tuple(size))
        if self.sizes and self.imgsz is not None and tuple(normalize_imgsz(self.imgsz)) not in map(tuple, self.sizes):
            raise ConfigError("give the input sizes once: {imgsz} or sizes", params=["imgsz"])
        if self.layers and len(self.sizes) > 1:
            raise ConfigError("{layers} shows one input size; give one {imgsz}", params=["layers", "imgsz"])
        check_device(self.device)


@dataclass
class _Target:
    backend: str
    form: str
    make: Callable[[np.ndarray], Callable[[], object]]  # input -> zero-argument run
    kind: str  # "torch", "onnxruntime" or "runner" (AOTInductor, TensorRT: no per-layer view)
    handle: object = None  # nn.Module (per-layer view) or the file's Runner
    notes: list[str] = field(default_factory=list)
    conv_layout: str | None = None  # torch eager with ProfileSettings.conv_layouts: the layout it runs


def _layout_block(conv_layout: str | None):
    """The ``with`` block a torch target runs in: its convolution-path layout forced, or (None, ``auto``) the rule's."""
    return conv_path_layout(None if conv_layout in (None, "auto") else conv_layout)


def _torch_target(model: nn.Module, backend: str, form: str, device: str, conv_layout: str | None = None) -> _Target:
    model = model.eval().to(device)
    fn = model
    if backend == "torch-compile":
        fn = torch.compile(model)

    def make(x: np.ndarray):
        xt = torch.from_numpy(x).to(device)

        def run():
            with torch.inference_mode(), _layout_block(conv_layout):
                return fn(xt)

        return run

    return _Target(backend, form, make, "torch", model, conv_layout=conv_layout)


def _file_target(path: Path, backend: str, form: str, settings: ProfileSettings) -> _Target:
    """A file opened by :func:`~acmix_deploy.runtime.loader.open_runner`; its ``prepare`` places the input
    where the backend reads it (host memory for ONNX Runtime, the device for AOTInductor and TensorRT), so the
    timed call runs the model only."""
    if backend == "tensorrt" and settings.device != "cuda":
        raise ConfigError("TensorRT engines run on the GPU: profile them with {device} cuda", params=["device"])
    # A slot for every swept size: the sizes are timed one after the other, each in its own session.
    specialize = max(settings.specialize, len(settings.sizes)) if settings.specialize else 0
    runner = open_runner(path, backend=backend, device=settings.device, arch=settings.arch, imgsz=settings.imgsz,
                         threads=settings.threads, specialize=specialize)
    if backend == "onnxruntime" and settings.device == "cuda" and "CUDAExecutionProvider" not in runner.providers:
        raise ConfigError(
            "{device} cuda with onnxruntime needs the CUDA execution provider (pip install onnxruntime-gpu); "
            f"this session runs on {runner.providers}", params=["device"]
        )
    return _Target(backend, form, runner.prepare, "onnxruntime" if backend == "onnxruntime" else "runner", runner)


def _rss_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _time(run: Callable[[], object], settings: ProfileSettings) -> tuple[list[float], float | None]:
    for _ in range(settings.warmup):
        run()
    cuda = settings.device == "cuda"
    times: list[float] = []
    peak = None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        tracked = _reset_peak_rss()
        rss_before = _rss_mb("VmRSS") if tracked else None
    deadline = time.perf_counter() + settings.seconds if settings.seconds else None
    while True:
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter_ns()
            run()
            times.append((time.perf_counter_ns() - t0) / 1e6)
        if deadline is not None:
            if time.perf_counter() >= deadline:
                break
        elif len(times) >= settings.iters:
            break
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    elif rss_before is not None:
        hwm = _rss_mb("VmHWM")
        peak = max(0.0, hwm - rss_before) if hwm is not None else None
    return times, peak


def _time_interleaved(runs: list[Callable[[], object]], settings: ProfileSettings) -> list[list[float]]:
    """:func:`_time` for several runs side by side (CPU): one timed call of each per round, the order rotated
    every round, so that a machine slowing down or speeding up during the measurement reaches all of them alike.
    ``seconds`` is the time for each run, as when they are timed one after the other.  No peak memory (one
    process watermark for all)."""
    for run in runs:
        for _ in range(settings.warmup):
            run()
    times: list[list[float]] = [[] for _ in runs]
    deadline = time.perf_counter() + settings.seconds * len(runs) if settings.seconds else None
    i = 0
    while True:
        for k in range(len(runs)):
            j = (i + k) % len(runs)
            t0 = time.perf_counter_ns()
            runs[j]()
            times[j].append((time.perf_counter_ns() - t0) / 1e6)
        i += 1
        if deadline is not None:
            if time.perf_counter() >= deadline:
                break
        elif i >= settings.iters:
            break
    return times


def _torch_layers(model: nn.Module, x: np.ndarray, device: str, runs: int = 3, top: int = 15) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    xt = torch.from_numpy(x).to(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.inference_mode():
        model(xt)
        with profile(activities=acts) as prof:
            for _ in range(runs):
                model(xt)
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [
        {"name": e.key, "calls": e.count // runs, "ms_per_run": getattr(e, key) / 1000 / runs,
         "percent": 100 * getattr(e, key) / total}
        for e in events[:top]
    ]


def _ort_layers(path: Path, x: np.ndarray, threads: int | None, runs: int = 3, top: int = 15) -> list[dict]:
    import json

    with tempfile.TemporaryDirectory(prefix="acmix-ortprof-") as tmp:
        runner = OrtRunner(path, threads=threads, profile_prefix=os.path.join(tmp, "ort"))
        runner.infer_outputs(x)  # every output: a model with several runs its whole graph
        for _ in range(runs):
            runner.infer_outputs(x)
        events = json.loads(Path(runner.session.end_profiling()).read_text())
    per_op: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op.setdefault(op, []).append(e["dur"])
    total = sum(sum(v) for v in per_op.values()) or 1.0
    rows = sorted(per_op.items(), key=lambda kv: sum(kv[1]), reverse=True)[:top]
    n_runs = runs + 1
    return [
        {"name": op, "calls": len(d) // n_runs, "ms_per_run": sum(d) / 1000 / n_runs, "percent": 100 * sum(d) / total}
        for op, d in rows
    ]


def profile_model(path: str | os.PathLike, settings: ProfileSettings, progress: Progress | None = None) -> dict:
    """Profile a checkpoint (training or deploy form) or an exported file; returns the report dict.

    A model with several outputs is timed producing all of them (every backend runs the whole graph).
    """
    settings.validate()
    sizes = [tuple(normalize_imgsz(tuple(sz))) for sz in settings.sizes]
    imgsz = normalize_imgsz(settings.imgsz) if not sizes else sizes[0]
    sweep = len(sizes) > 1

    def check_imgsz(input_size: tuple, rule=None) -> list[tuple[int, ...]]:
        """Every input size (C, H, W) to time.  A file exported with fixed height and width takes its own
        size only; one with dynamic height and width (``rule``) takes any size of its rule (default: the
        smallest)."""
        if rule is not None:
            wanted = sizes or ([imgsz] if imgsz is not None else [rule.minimum])
            for h, w in wanted:
                try:
                    rule.check(h, w, what=path.name)
                except InputShapeError as exc:
                    raise ConfigError(str(exc)) from None
            return [(input_size[0], h, w) for h, w in wanted]
        for want in sizes or ([imgsz] if imgsz is not None else []):
            # An exported file has its spatial size built in: an --imgsz that differs cannot apply.
            if tuple(want) != tuple(input_size[1:]):
                raise ConfigError(f"{path.name} takes {input_size[1]}x{input_size[2]} inputs (height x width); "
                                  f"{{imgsz}} {'x'.join(map(str, want))} cannot change that (export it with "
                                  "{dynamic_hw} for one file that takes several sizes)", params=["imgsz", "dynamic_hw"])
        return [tuple(input_size)]

    path = Path(path)
    if not path.exists():
        raise AcmixDeployError(f"model {path} does not exist")
    try:
        natural = backend_for(path, allowed=EXPORTED)
    except ConfigError:
        natural = "torch"  # any other file is read as a checkpoint
    if not settings.backends:  # a copy: the caller's settings stay as given
        settings = dataclasses.replace(settings, backends=(natural,))
    if settings.threads:
        torch.set_num_threads(settings.threads)
    tmpdir = tempfile.TemporaryDirectory(prefix="acmix-profile-")
    targets: list[_Target] = []
    notes: list[str] = []
    onnx_paths: dict[str, Path] = {}
    model_info: dict = {"path": str(path), "sha256": sha256_file(path)}
    try:
        if natural != "torch":
            # the backends that open this suffix: .onnx runs in ONNX Runtime (the default) or OpenVINO
            runs_it = [b for b in EXPORTED if path.suffix.lower() in FILE_SUFFIXES[b]]
            if not set(settings.backends) <= set(runs_it):
                raise ConfigError(f"{path.name} runs on the {' or '.join(runs_it)} backend only ({{backends}})",
                                  params=["backends"])
            if settings.compare_forms:
                raise ConfigError("{compare_forms} needs a training checkpoint, not an exported model", params=["compare_forms"])
            if settings.layers and set(settings.backends) != {"onnxruntime"}:
                raise ConfigError("{layers} is available for checkpoints and ONNX models in onnxruntime",
                                  params=["layers"])
            for backend in settings.backends:
                form = _FILE_FORMS[backend]
                target = _file_target(path, backend, form, settings)
                runner: Runner = target.handle  # type: ignore[assignment]
                input_sizes = check_imgsz(tuple(runner.input_spec.item_shape), runner.spatial_rule)
                input_size = input_sizes[0]
                model_info.update({"format": form if natural != "tensorrt" else "tensorrt", "forms": [form],
                                   "outputs": [s.name for s in runner.output_specs]})
                if natural == "tensorrt":
                    model_info["engine"] = {k: getattr(runner.sidecar, k, None) for k in
                                            ("precision", "tensorrt_version", "gpu_name", "compute_capability")}
                if backend == "onnxruntime":
                    onnx_paths[form] = path
                lo, hi = runner.batch_range
                if lo == hi and any(b != lo for b in settings.batches):
                    raise ConfigError(f"{path.name} has a static batch of {lo}; profile {{batches}} {lo}",
                                      params=["batches"])
                outside = [b for b in settings.batches if b < lo or (hi is not None and b > hi)]
                if outside:
                    span = f"{lo}.." if hi is None else f"{lo}..{hi}"
                    raise ConfigError(f"{path.name} takes batches {span}; {{batches}} {outside[0]} is outside",
                                      params=["batches"])
                targets.append(target)
        else:
            prep = prepare_deploy(path, settings.arch, imgsz, check=False, model_def=settings.model_def,
                                  model_args=settings.model_args)
            input_size = prep.input_size
            input_sizes = [input_size] + [(input_size[0], *sz) for sz in sizes[1:]]
            forms: dict[str, nn.Module] = {}
            if prep.training is not None:
                forms["training"] = prep.training
                if settings.compare_forms:
                    forms["deploy"] = prep.deploy
            else:
                if settings.compare_forms:
                    raise ConfigError(f"{path.name} holds the deploy form already; {{compare_forms}} needs a training checkpoint",
                                      params=["compare_forms"])
                forms["deploy"] = prep.deploy
            model_info.update({"format": "checkpoint", "arch": prep.loaded.arch,
                               "arch_args": prep.loaded.arch_args, "forms": list(forms)})
            for backend in settings.backends:
                if backend in ("onnxruntime", "openvino"):
                    # ONNX models are exported from the deploy form, whatever form the file holds; one graph
                    # serves both backends.
                    if "training" in forms:
                        notes.append(f"{backend} runs the deploy form (exported from the folded model)")
                    onnx_path = Path(tmpdir.name) / "deploy.onnx"
                    if "deploy" not in onnx_paths:
                        # Several sizes: one graph with dynamic height and width, timed at each (traced at the first).
                        export_onnx(prep.deploy, onnx_path, input_size,
                                    cpu_isa=cpu_target(settings.device), dynamic_hw=sweep)
                        onnx_paths["deploy"] = onnx_path
                    if sweep:
                        notes.append(f"{backend} runs one graph with dynamic height and width, traced and tuned "
                                     f"at {input_size[1]}x{input_size[2]}")
                    targets.append(_file_target(onnx_path, backend, "deploy", settings))
                    continue
                if backend in ("aoti", "tensorrt"):
                    suffix = ".pt2" if backend == "aoti" else ".engine"
                    fmt = "aoti" if backend == "aoti" else "engine"
                    raise ConfigError(f"the {backend} backend ({{backends}}) runs compiled files: export the checkpoint "
                                      f"first (export, {{fmt}} {fmt}) and profile the {suffix} file",
                                      params=["backends", "fmt"])
                for form, model in forms.items():
                    # the layouts concern the deploy form's convolution paths; the training form runs as it is
                    layouts = settings.conv_layouts if backend == "torch" and form == "deploy" else ()
                    for layout in layouts or (None,):
                        targets.append(_torch_target(model, backend, form, settings.device, layout))
        if not targets:
            raise ConfigError("nothing to profile with these backends and forms")
        if settings.conv_layouts and not any(t.conv_layout for t in targets):
            raise ConfigError("{conv_layouts} applies to the deploy form in the torch backend (eager): profile a "
                              "deploy checkpoint, or a training one with {compare_forms}",
                              params=["conv_layouts", "compare_forms"])
        model_info["input_size"] = list(input_size)
        if sweep or input_sizes[0] != input_size:
            model_info["input_sizes"] = [list(sz) for sz in input_sizes]

        # Targets timed together: one form's convolution-path layouts, interleaved; every other target alone.
        groups: dict[tuple, list[_Target]] = {}
        for t in targets:
            groups.setdefault((t.backend, t.form) if t.conv_layout else (id(t),), []).append(t)
        results = []
        total = len(targets) * len(settings.batches) * len(input_sizes)
        done = 0
        rng = np.random.default_rng(0)
        for group, size, batch in ((g, sz, b) for g in groups.values() for sz in input_sizes for b in settings.batches):
            x = rng.standard_normal((batch, *size), dtype=np.float32)
            target = group[0]
            what = f"{target.backend}/{target.form} batch {batch}" + (f" {size[1]}x{size[2]}" if sweep else "")
            if len(group) > 1:
                what += f" ({len(group)} conv layouts, interleaved)"
            if progress:
                progress(what, done, total)
            runs = [t.make(x) for t in group]
            first_run_s = None
            if target.backend == "torch-compile":  # compilation happens here, outside the timing
                t0 = time.perf_counter()
                runs[0]()
                first_run_s = time.perf_counter() - t0
            if len(group) > 1:
                timed = [(times, None) for times in _time_interleaved(runs, settings)]
            else:
                timed = [_time(runs[0], settings)]
            for t, (times, peak) in zip(group, timed):
                row = {"backend": t.backend, "form": t.form, "batch": batch, "imgsz": list(size[1:]),
                       **summarize(times, batch), "peak_mem_mb": peak,
                       "peak_mem_kind": "cuda_max_allocated" if settings.device == "cuda" else "rss_growth"}
                if t.conv_layout:
                    row["conv_layout"] = t.conv_layout
                if first_run_s is not None:
                    row["compile_s"] = first_run_s
                results.append(row)
            done += len(group)
            if progress:
                progress(what, done, total)

        if settings.conv_layouts:
            probe = torch.zeros(1, device=settings.device)
            with conv_path_layout(None):
                auto = "channels_last" if grouped_conv_channels_last(probe) else "channels_first"
            notes.append(f"torch ran the convolution paths of ACmix deploy blocks on each layout asked for "
                         f"(auto here: {auto}, float32 on {settings.device})"
                         + (", interleaved call by call; no peak memory per layout" if len(settings.conv_layouts) > 1
                            else ""))
        if any(getattr(t.handle, "specialize", 0) for t in targets):
            notes.append("onnxruntime / openvino ran each input size in a session with that height and width fixed "
                         f"(specialize {settings.specialize}, a slot per size): the speed of a graph exported at it; "
                         "specialize 0 times the general graph with dynamic height and width")
        report = {
            "schema": REPORT_SCHEMA,
            "device": device_fingerprint(settings.device, settings.threads),
            "model": model_info,
            "settings": {"backends": list(settings.backends), "batches": list(settings.batches),
                         "imgsz": [list(sz[1:]) for sz in input_sizes],
                         "warmup": settings.warmup, "iters": settings.iters, "seconds": settings.seconds,
                         "specialize": settings.specialize, "conv_layouts": list(settings.conv_layouts),
                         "timer": "cuda_events" if settings.device == "cuda" else "perf_counter_ns",
                         "percentiles": "linear interpolation between closest ranks (NumPy default)"},
            "results": results,
            "notes": notes,
        }
        if settings.compare_forms:
            ratios = []
            for backend in settings.backends:
                for size in input_sizes:
                    for batch in settings.batches:
                        t = [r for r in results if r["backend"] == backend and r["batch"] == batch
                             and r["imgsz"] == list(size[1:])]
                        tr = next((r for r in t if r["form"] == "training"), None)
                        for dp in (r for r in t if r["form"] == "deploy"):  # one per convolution-path layout
                            if tr:
                                row = {"backend": backend, "batch": batch, "imgsz": list(size[1:]),
                                       "training_over_deploy": tr["p50_ms"] / dp["p50_ms"]}
                                if dp.get("conv_layout"):
                                    row["conv_layout"] = dp["conv_layout"]
                                ratios.append(row)
            report["compare_forms"] = ratios
        if {"channels_first", "channels_last"} <= set(settings.conv_layouts):
            report["compare_conv_layouts"] = [
                {"form": first["form"], "batch": first["batch"], "imgsz": first["imgsz"],
                 "channels_first_over_channels_last": first["p50_ms"] / last["p50_ms"]}
                for first in results if first.get("conv_layout") == "channels_first"
                for last in results if last.get("conv_layout") == "channels_last"
                and (last["form"], last["batch"], last["imgsz"]) == (first["form"], first["batch"], first["imgsz"])]
        if settings.layers:
            layers = {}
            x = rng.standard_normal((settings.batches[0], *input_sizes[0]), dtype=np.float32)
            for target in targets:
                label = f"{target.backend}/{target.form}" + (f" ({target.conv_layout})" if target.conv_layout else "")
                if target.kind == "torch":
                    with _layout_block(target.conv_layout):
                        layers[label] = _torch_layers(target.handle, x, settings.device)
                elif target.kind == "onnxruntime":
                    layers[label] = _ort_layers(onnx_paths[target.form], x, settings.threads)
                # other runners (OpenVINO, AOTInductor, TensorRT) have no per-layer view here
            report["layers"] = layers
        return report
    finally:
        tmpdir.cleanup()
