"""The end-to-end demo: train a small ACmix (or X-volution) network on real data, fold it, prove it, time it.

Data: scikit-learn's handwritten digits (1797 grey 8x8 images, 10 classes,
shipped inside the package, no download), upsampled to ``imgsz`` and split
80/20 stratified.  The demo is a pipeline of the same library calls that the
CLI uses (``create_model``, ``save_checkpoint``, ``read_checkpoint``,
``reparameterize_model``), so what it shows is what users get.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .analysis import compare_outputs, count_macs, count_parameters
from .checkpoint import read_checkpoint, save_checkpoint
from .compare import compare_runners, random_inputs
from .errors import ConfigError, EquivalenceError, ExportError, MissingDependencyError
from .exporters import export_aoti, export_onnx
from .models import create_model, model_entrypoint
from .profiling import ProfileSettings, plot_reports, profile_model, save_json
from .reparam import reparameterize_model
from .runtime import AotiRunner, OrtRunner, TorchRunner

__all__ = ["DEMO_ARCHS", "DemoConfig", "DemoResult", "load_digits", "run_demo"]

# The small backbones (3x3 stem, no pooling) that train on 8x8-32x32 digits in a few minutes on 2 CPU cores.
DEMO_ARCHS = ("acmix_resnet_tiny", "xvolution_resnet_tiny", "resnet_tiny")

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class DemoConfig:
    arch: str = "acmix_resnet_tiny"
    imgsz: int = 16
    k_att: int = 3
    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    out_dir: Path = Path("acmix-demo")
    timing_runs: int = 20
    export_onnx: bool = True  # needs the [onnx] extra; skipped with a note when missing
    export_aoti: bool = True  # needs a C++ compiler; skipped with a note when compilation fails

    def validate(self) -> None:
        if self.arch not in DEMO_ARCHS:
            raise ConfigError(f"the demo trains one of {', '.join(DEMO_ARCHS)}; got {{arch}} {self.arch!r}", params=["arch"])


@dataclass
class DemoResult:
    train_checkpoint: Path
    deploy_checkpoint: Path
    n_train: int
    n_test: int
    train_seconds: float
    accuracy_train_form: float
    accuracy_deploy_form: float
    predictions_identical: bool
    logits_diff: dict
    params: tuple[int, int]
    macs: tuple[int, int]
    latency_ms: dict = field(default_factory=dict)  # {(backend, form, batch): median ms}
    onnx_path: Path | None = None
    onnx_predictions_identical: bool | None = None
    onnx_logits_diff: dict | None = None
    aoti_path: Path | None = None
    aoti_predictions_identical: bool | None = None
    aoti_logits_diff: dict | None = None
    profile_json: Path | None = None
    profile_plot: Path | None = None
    notes: list[str] = field(default_factory=list)


def load_digits(imgsz: int, seed: int = 0):
    """Digits as ``(x_train, y_train, x_test, y_test)``: float32 ``(N, 1, imgsz, imgsz)``, standardised."""
    try:
        from sklearn.datasets import load_digits as _load
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - scikit-learn is a declared dependency of the demo
        raise ConfigError('the demo needs scikit-learn: pip install "acmix-deploy[demo]"') from exc
    data = _load()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    if imgsz != 8:
        x = F.interpolate(x, size=(imgsz, imgsz), mode="bilinear", align_corners=False)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.2, random_state=seed, stratify=y.numpy()
    )
    x_train, x_test = x[idx_train], x[idx_test]
    mean, std = x_train.mean(), x_train.std()
    return (x_train - mean) / std, y[idx_train], (x_test - mean) / std, y[idx_test]


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: DemoConfig, progress: Progress | None) -> None:
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05)
    steps_per_epoch = (len(x) + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.2)
    step = 0
    model.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            xb = x[idx]
            # Light augmentation: random shifts of up to one pixel.
            dy, dx = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress:
                progress("train", step, total)
    model.eval()


def run_demo(cfg: DemoConfig, progress: Progress | None = None) -> DemoResult:
    """Train, save, reload, fold, verify on the held-out set, save the deploy form, export it to
    ONNX and check its held-out predictions, then profile both forms on every available backend."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    x_train, y_train, x_test, y_test = load_digits(cfg.imgsz, cfg.seed)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    extra = {"k_att": cfg.k_att} if "k_att" in inspect.signature(model_entrypoint(cfg.arch)).parameters else {}
    model = create_model(cfg.arch, num_classes=10, in_chans=1, **extra)
    # The size it trains at, recorded in both checkpoints (save_checkpoint's input_size): later commands
    # (export, compare, profile, serve) use it without --imgsz.
    model.default_cfg["input_size"] = (1, cfg.imgsz, cfg.imgsz)

    t0 = time.perf_counter()
    _train(model, x_train, y_train, cfg, progress)
    train_seconds = time.perf_counter() - t0
    train_ckpt = save_checkpoint(
        model, cfg.out_dir / "digits_train.pth",
        meta={"dataset": "sklearn digits", "imgsz": cfg.imgsz, "epochs": cfg.epochs},
    )

    # From here on, work from the saved file as a user would.
    if progress:
        progress("fold", 0, 1)
    loaded = read_checkpoint(train_ckpt).model
    deploy = reparameterize_model(loaded)
    deploy_ckpt = save_checkpoint(deploy, cfg.out_dir / "digits_deploy.pth", meta={"source": train_ckpt.name})
    deploy = read_checkpoint(deploy_ckpt).model
    if progress:
        progress("fold", 1, 1)

    logits_train = _predict(loaded, x_test)
    logits_deploy = _predict(deploy, x_test)
    pred_train, pred_deploy = logits_train.argmax(1), logits_deploy.argmax(1)
    input_size = (1, cfg.imgsz, cfg.imgsz)
    notes: list[str] = []
    onnx_path = onnx_identical = onnx_diff = None
    backends: tuple[str, ...] = ("torch",)
    if cfg.export_onnx:
        if progress:
            progress("export", 0, 1)
        try:
            onnx_path, onnx_logits = _export_and_predict(deploy, deploy_ckpt, cfg, x_test)
            onnx_identical = bool(torch.equal(onnx_logits.argmax(1), pred_deploy))
            onnx_diff = compare_outputs(logits_train, onnx_logits).as_dict()
            backends = ("torch", "onnxruntime")
        except MissingDependencyError as exc:
            notes.append(f"ONNX export skipped: {exc}")
        if progress:
            progress("export", 1, 1)
    aoti_path = aoti_identical = aoti_diff = None
    if cfg.export_aoti:
        if progress:
            progress("aoti", 0, 1)
        try:
            aoti_path, aoti_logits = _compile_and_predict(deploy, cfg, x_test)
            aoti_identical = bool(torch.equal(aoti_logits.argmax(1), pred_deploy))
            aoti_diff = compare_outputs(logits_train, aoti_logits).as_dict()
        except ExportError as exc:  # no C++ compiler here; a mismatch (EquivalenceError) is not skipped
            notes.append(f"AOTInductor export skipped: {exc}")
        if progress:
            progress("aoti", 1, 1)

    report = profile_model(
        train_ckpt,
        ProfileSettings(backends=backends, batches=(1, 64), imgsz=cfg.imgsz, warmup=3, iters=cfg.timing_runs,
                        compare_forms=True),
        (lambda desc, done, total: progress("profile", done, total)) if progress else None,
    )
    if aoti_path is not None:
        compiled = profile_model(aoti_path, ProfileSettings(batches=(1, 64), warmup=3, iters=cfg.timing_runs))
        report["results"] += [{**r, "form": "deploy"} for r in compiled["results"]]  # the deploy form, compiled
    profile_json = save_json(report, cfg.out_dir / "profile.json")
    try:
        profile_plot = plot_reports([report], cfg.out_dir / "profile.png", title="digits demo: latency vs batch")
    except MissingDependencyError as exc:
        profile_plot = None
        notes.append(f"plot skipped: {exc}")
    latency = {(r["backend"], r["form"], r["batch"]): r["p50_ms"] for r in report["results"]}

    return DemoResult(
        train_checkpoint=train_ckpt,
        deploy_checkpoint=deploy_ckpt,
        n_train=len(x_train),
        n_test=len(x_test),
        train_seconds=train_seconds,
        accuracy_train_form=float((pred_train == y_test).float().mean()),
        accuracy_deploy_form=float((pred_deploy == y_test).float().mean()),
        predictions_identical=bool(torch.equal(pred_train, pred_deploy)),
        logits_diff=compare_outputs(logits_train, logits_deploy).as_dict(),
        params=(count_parameters(loaded), count_parameters(deploy)),
        macs=(count_macs(loaded, input_size), count_macs(deploy, input_size)),
        latency_ms=latency,
        onnx_path=onnx_path,
        onnx_predictions_identical=onnx_identical,
        onnx_logits_diff=onnx_diff,
        aoti_path=aoti_path,
        aoti_predictions_identical=aoti_identical,
        aoti_logits_diff=aoti_diff,
        profile_json=profile_json,
        profile_plot=profile_plot,
        notes=notes,
    )


def _export_and_predict(deploy: nn.Module, deploy_ckpt: Path, cfg: DemoConfig, x_test: torch.Tensor):
    """Export the deploy form to ONNX (validated by ``export_onnx``'s rules) and run the held-out set in ORT."""
    path = cfg.out_dir / "digits_deploy.onnx"
    export_onnx(deploy, path, (1, cfg.imgsz, cfg.imgsz), metadata={"source": deploy_ckpt.name},
                cpu_isa="auto")
    runner = OrtRunner(path)
    logits = torch.cat([torch.from_numpy(runner.infer(x_test[i : i + 256].numpy())) for i in range(0, len(x_test), 256)])
    return path, logits


def _compile_and_predict(deploy: nn.Module, cfg: DemoConfig, x_test: torch.Tensor):
    """Compile the deploy form with AOTInductor (validated against torch before the rename) and run the
    held-out set through the loaded package."""
    path = cfg.out_dir / "digits_deploy.pt2"
    size = (1, cfg.imgsz, cfg.imgsz)

    def validate(tmp: Path) -> None:
        rows = compare_runners(TorchRunner(deploy), [AotiRunner(tmp)], random_inputs(size, (1, 5)))
        worst = max(r.diff.rel for r in rows)
        if not worst <= 1e-4:
            raise EquivalenceError(f"the AOTInductor package differs from torch by {worst:.3g} (relative)")

    export_aoti(deploy, path, size, batch=2, max_batch=256, validate=validate)
    runner = AotiRunner(path)
    logits = torch.cat([torch.from_numpy(runner.infer(x_test[i : i + 256].numpy())) for i in range(0, len(x_test), 256)])
    return path, logits
