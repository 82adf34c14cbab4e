"""What a newcomer meets first: the equivalence check on badly conditioned models, recorded input sizes."""

from __future__ import annotations

import torch

import acmix_deploy as ad
from acmix_deploy.checkpoint import read_checkpoint
from acmix_deploy.reparam import reparameterize_model
from acmix_deploy.testing import randomize_model


def _pair():
    torch.manual_seed(0)
    model = randomize_model(ad.create_model("acmix_resnet_tiny")).eval()
    return model, reparameterize_model(model)


def test_float32_above_tol_is_judged_in_float64():
    model, deploy = _pair()
    diff = ad.check_equivalence(model, deploy, (3, 32, 32), tol=1e-12, fold=reparameterize_model)
    assert diff.rel > 1e-12 and diff.rel_float64 is not None and diff.rel_float64 <= 1e-12
    assert diff.within(1e-12) and diff.first_divergence is None
    assert "float64" in diff.summary(1e-12)
    # without tol: the float32 figure only, as before
    plain = ad.check_equivalence(model, deploy, (3, 32, 32))
    assert plain.rel == diff.rel and plain.rel_float64 is None


def test_a_wrong_fold_fails_and_names_the_first_diverging_module():
    model, deploy = _pair()
    with torch.no_grad():
        dict(deploy.named_parameters())["layer3.0.conv3.weight"].mul_(1.01)
    for fold in (None, reparameterize_model):
        diff = ad.check_equivalence(model, deploy, (3, 32, 32), tol=1e-5, fold=fold)
        assert not diff.within(1e-5)
        assert diff.first_divergence and diff.first_divergence.startswith("layer3.0"), diff.first_divergence


def test_recorded_input_size_is_read_back(tmp_path):
    model = ad.create_model("acmix_resnet_tiny", num_classes=10, in_chans=1, k_att=3)
    model.default_cfg["input_size"] = (1, 16, 16)  # what the demo trains at
    path = ad.save_checkpoint(model, tmp_path / "m.pth")
    assert read_checkpoint(path).model.default_cfg["input_size"] == (1, 16, 16)
    deploy = ad.save_checkpoint(reparameterize_model(read_checkpoint(path).model), tmp_path / "d.pth")
    assert read_checkpoint(deploy).model.default_cfg["input_size"] == (1, 16, 16)


def _report(p50s: dict[int, float]) -> dict:
    return {"device": {"device": "cpu", "cpu": "Some CPU", "threads": 2}, "model": {"arch": "acmix_resnet_tiny"},
            "results": [{"backend": "torch", "form": "deploy", "batch": b, "mean_ms": t, "p50_ms": t, "p90_ms": t,
                         "p99_ms": t, "throughput_per_s": b / t * 1e3} for b, t in p50s.items()]}


def test_reports_that_share_device_and_model_stay_apart(tmp_path):
    import json

    from acmix_deploy.profiling import load_report, merged_rows

    paths = []
    for name, p50s in (("a.json", {1: 1.0, 8: 5.0}), ("b.json", {1: 2.0, 8: 9.0})):
        (tmp_path / name).write_text(json.dumps(_report(p50s)))
        paths.append(tmp_path / name)
    rows = merged_rows([load_report(p) for p in paths])
    assert len({r["device"] for r in rows}) == 2 and all(r["device"].endswith(".json") for r in rows)
    rows = merged_rows([load_report(paths[0]), load_report(paths[0])])  # the same file twice
    assert len({r["device"] for r in rows}) == 2


def test_tables_never_cut_numbers(tmp_path):
    import json

    from typer.testing import CliRunner

    from acmix_deploy.cli import app

    rep = _report({1: 123456.789, 8: 98765.4321})
    (tmp_path / "r.json").write_text(json.dumps(rep))
    result = CliRunner().invoke(app, ["report", str(tmp_path / "r.json")], env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output and "123456.79" in result.output and "98765.43" in result.output


def test_list_models_and_help_read_as_plain_text():
    from typer.testing import CliRunner

    from acmix_deploy.cli import app

    out = CliRunner().invoke(app, ["list-models"], env={"COLUMNS": "200"}).output
    assert ":func:" not in out and "counterpart of acmix_resnet_tiny" in out
    out = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "200"}).output
    assert "(default: CKPT with the format's suffix)" in out
