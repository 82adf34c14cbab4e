"""The command line, end to end in a temp dir (Typer's runner, same process)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import acmix_deploy as ad
from acmix_deploy.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and ad.__version__ in result.output


def test_reparam_end_to_end(train_ckpt, tmp_path):
    path, model = train_ckpt
    out = tmp_path / "deploy.pth"
    result = runner.invoke(app, ["reparam", str(path), "-o", str(out), "--batch", "3"])
    assert result.exit_code == 0, result.output
    assert "relative error" in result.output and "parameters" in result.output and f"wrote {out}" in result.output
    loaded = ad.read_checkpoint(out)
    assert loaded.deploy and ad.is_deploy(loaded.model)
    assert loaded.meta["source"] == "train.pth" and len(loaded.meta["source_sha256"]) == 64
    assert loaded.meta["check_rel_error"] <= 1e-5
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        assert float((ref - loaded.model(x)).abs().max() / ref.abs().max()) <= 1e-5


def test_reparam_default_output_name_and_already_deploy(train_ckpt):
    path, _ = train_ckpt
    result = runner.invoke(app, ["reparam", str(path), "--imgsz", "40"])
    assert result.exit_code == 0, result.output
    deploy_path = path.with_name("train.deploy.pth")
    assert deploy_path.exists()
    again = runner.invoke(app, ["reparam", str(deploy_path), "-o", str(path.with_name("x.pth"))])
    assert again.exit_code == 0 and "already in deploy form" in again.output
    assert not path.with_name("x.pth").exists()


def test_reparam_bare_state_dict_needs_arch_and_writes_nothing(train_ckpt, tmp_path):
    _, model = train_ckpt
    bare = tmp_path / "official.pth"
    torch.save({"model": model.state_dict()}, bare)
    out = tmp_path / "o.pth"
    result = runner.invoke(app, ["reparam", str(bare), "-o", str(out)])
    assert result.exit_code == 2 and "--arch" in result.output and not out.exists()
    result = runner.invoke(app, ["reparam", str(bare), "--arch", "acmix_resnet_tiny", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists()


def test_reparam_wrong_arch(train_ckpt, tmp_path):
    _, model = train_ckpt
    bare = tmp_path / "official.pth"
    torch.save(model.state_dict(), bare)
    result = runner.invoke(app, ["reparam", str(bare), "--arch", "acmix_resnet50", "-o", str(tmp_path / "o.pth")])
    assert result.exit_code == 2 and "does not match architecture acmix_resnet50" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.pth").exists()


def test_reparam_check_failure_exits_1_and_writes_nothing(train_ckpt, tmp_path, monkeypatch):
    """A fold that is really wrong (one weight perturbed) fails in float32 and in float64: exit 1, no file."""
    import acmix_deploy.pipeline as pipeline_mod
    import acmix_deploy.reparam as reparam_mod

    real = reparam_mod.reparameterize

    def broken(model, *args, **kwargs):
        deploy, report = real(model, *args, **kwargs)
        with torch.no_grad():
            next(deploy.parameters()).mul_(1.01)
        return deploy, report

    monkeypatch.setattr(reparam_mod, "reparameterize", broken)
    monkeypatch.setattr(pipeline_mod, "reparameterize", broken)  # the name reparam_checkpoint calls
    path, _ = train_ckpt
    out = tmp_path / "o.pth"
    result = runner.invoke(app, ["reparam", str(path), "-o", str(out)])
    assert result.exit_code == 1 and "check failed" in result.output and "float64" in result.output
    assert not out.exists()


def test_reparam_float32_rounding_beyond_tol_is_judged_in_float64(train_ckpt, tmp_path):
    """A tolerance below float32 rounding: the float64 copies decide (the fold is exact), with a note."""
    path, _ = train_ckpt
    out = tmp_path / "o.pth"
    result = runner.invoke(app, ["reparam", str(path), "-o", str(out), "--tol", "1e-12"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "not the fold" in result.output and out.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["reparam", "{tmp}/missing.pth"], "does not exist"),
        (["reparam", "{ckpt}", "-o", "{tmp}/no/such/dir/x.pth"], "does not exist"),
        (["reparam", "{ckpt}", "-o", "{ckpt}"], "is the input file"),
        (["reparam", "{ckpt}", "--imgsz", "30"], "not divisible by stride 2"),
        (["reparam", "{corrupt}"], "corrupt or truncated"),
        (["info", "{corrupt}"], "corrupt or truncated"),
    ],
)
def test_bad_input_is_a_clear_error(train_ckpt, tmp_path, args, message):
    path, _ = train_ckpt
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(path.read_bytes()[:1000])
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [a.format(tmp=tmp_path, ckpt=path, corrupt=corrupt) for a in args]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_info(train_ckpt):
    path, _ = train_ckpt
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    for text in ("acmix_resnet_tiny", "training", "num_classes=4", "ACmix blocks"):
        assert text in result.output


def test_list_models():
    result = runner.invoke(app, ["list-models"])
    assert result.exit_code == 0 and "acmix_resnet50" in result.output


def test_demo_pipeline_short(tmp_path):
    """Two epochs keep this fast; the full demo (12 epochs) reaches ~99-100% held-out accuracy."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from acmix_deploy.demo import DemoConfig, run_demo
    from acmix_deploy.profiling import load_report

    stages = []
    res = run_demo(DemoConfig(epochs=2, out_dir=tmp_path, timing_runs=2), lambda s, d, t: stages.append(s))
    assert res.predictions_identical and res.accuracy_train_form == res.accuracy_deploy_form
    assert res.accuracy_train_form > 0.5  # far above chance (0.1) after two epochs
    assert res.logits_diff["rel"] <= 1e-5
    assert res.onnx_predictions_identical and res.onnx_logits_diff["rel"] <= 1e-4
    assert res.train_checkpoint.exists() and res.deploy_checkpoint.exists() and res.onnx_path.exists()
    assert ad.read_checkpoint(res.deploy_checkpoint).deploy
    assert res.aoti_predictions_identical and res.aoti_logits_diff["rel"] <= 1e-4 and res.aoti_path.exists()
    assert {"train", "fold", "export", "aoti", "profile"} <= set(stages)
    assert set(res.latency_ms) == {
        ("torch", "training", 1), ("torch", "deploy", 1), ("torch", "training", 64), ("torch", "deploy", 64),
        ("onnxruntime", "deploy", 1), ("onnxruntime", "deploy", 64), ("aoti", "deploy", 1), ("aoti", "deploy", 64),
    }
    report = load_report(res.profile_json)
    assert report["model"]["input_size"] == [1, 16, 16] and len(report["compare_forms"]) == 2
    assert res.profile_plot.read_bytes()[:4] == b"\x89PNG"
