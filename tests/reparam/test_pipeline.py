"""``pipeline.reparam_checkpoint`` (what ``acmix-deploy reparam`` calls) and errors that name parameters.

The library speaks its parameters' names (``arch``, ``tol``, ``allow_partial``); the command line renders the
same errors with its flags (``--arch``, ``--tol``, ``--allow-partial``) through ``AcmixDeployError.spell``.
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import acmix_deploy as ad
from acmix_deploy.cli import app
from acmix_deploy.errors import CheckpointError, ConfigError, EquivalenceError, IncompleteFoldError
from acmix_deploy.pipeline import ReparamResult, default_deploy_path, reparam_checkpoint

from tests import user_nets
from tests.helpers import NETS, randomize

runner = CliRunner()


def test_errors_spell_only_their_parameters():
    exc = ConfigError("{imgsz} must be positive, got {'h': -1}; see {other}", params=["imgsz"])
    assert str(exc) == "imgsz must be positive, got {'h': -1}; see {other}"
    assert exc.spell({"imgsz": "--imgsz"}) == "--imgsz must be positive, got {'h': -1}; see {other}"
    assert exc.spell(lambda p: p.upper()) == "IMGSZ must be positive, got {'h': -1}; see {other}"
    plain = ConfigError("no parameters {here}")
    assert plain.spell({"here": "--here"}) == str(plain) == "no parameters {here}"


def test_reparam_checkpoint_is_a_top_level_name():
    """``ad.reparam_checkpoint`` is the pipeline's function, listed in ``__all__`` and ``dir()`` (imported on use)."""
    assert "reparam_checkpoint" in ad.__all__ and "reparam_checkpoint" in dir(ad)
    assert ad.reparam_checkpoint is reparam_checkpoint


def test_reparam_checkpoint_writes_and_reports(train_ckpt, tmp_path):
    path, model = train_ckpt
    res = reparam_checkpoint(path, tmp_path / "d.pth", batch=3, imgsz=(24, 40))
    assert isinstance(res, ReparamResult) and res.written == tmp_path / "d.pth"
    assert res.input_size == (3, 24, 40) and res.diff.rel <= 1e-5 and res.check_seconds is not None
    assert res.params[0] != res.params[1] and res.macs[0] > 0 and res.report.complete
    loaded = ad.read_checkpoint(res.written)
    assert loaded.deploy and loaded.meta["source"] == "train.pth" and loaded.meta["check_input"] == [3, 24, 40]
    x = torch.randn(2, 3, 24, 40)
    with torch.no_grad():
        ref = model(x)
        assert float((ref - loaded.model(x)).abs().max() / ref.abs().max()) <= 1e-5
    again = reparam_checkpoint(res.written, tmp_path / "e.pth")
    assert again.already_deploy and again.written is None and not (tmp_path / "e.pth").exists()
    assert default_deploy_path(path) == path.with_name("train.deploy.pth")
    assert default_deploy_path(tmp_path / "last.pt", pickled=True) == tmp_path / "last.deploy.pt"


def test_reparam_checkpoint_failed_check_raises_with_the_result(train_ckpt, tmp_path, monkeypatch):
    import acmix_deploy.pipeline as pipeline

    real = pipeline.reparameterize

    def broken(model, *args, **kwargs):
        deploy, report = real(model, *args, **kwargs)
        with torch.no_grad():
            next(deploy.parameters()).mul_(1.01)
        return deploy, report

    monkeypatch.setattr(pipeline, "reparameterize", broken)
    path, _ = train_ckpt
    with pytest.raises(EquivalenceError) as info:
        reparam_checkpoint(path, tmp_path / "d.pth")
    assert "above tol 1e-05" in str(info.value) and "--tol" not in str(info.value)
    assert info.value.params == ("tol",) and info.value.spell({"tol": "--tol"}).count("--tol 1e-05") == 1
    assert info.value.result.diff.rel > 1e-3 and info.value.result.written is None
    assert not (tmp_path / "d.pth").exists()


def test_incomplete_fold_names_allow_partial(tmp_path):
    torch.save(randomize(user_nets.WithLookAlike()).state_dict(), tmp_path / "w.pth")
    kwargs = dict(model_def=f"{NETS}:WithLookAlike", imgsz=12)
    with pytest.raises(IncompleteFoldError) as info:
        reparam_checkpoint(tmp_path / "w.pth", **kwargs)
    assert "allow_partial" in str(info.value) and "odd" in str(info.value) and "--" not in str(info.value)
    assert info.value.result.report.leftovers and not (tmp_path / "w.deploy.pth").exists()
    res = reparam_checkpoint(tmp_path / "w.pth", allow_partial=True, **kwargs)
    assert res.written == tmp_path / "w.deploy.pth" and res.report.leftovers


@pytest.mark.parametrize("kwargs,params", [
    (dict(code_paths=["."]), ["code_paths", "trust_pickle"]),
    (dict(trust_pickle=True, arch="acmix_resnet_tiny"), ["arch", "trust_pickle"]),
])
def test_options_that_do_not_apply_are_refused_by_name(train_ckpt, tmp_path, kwargs, params):
    path, _ = train_ckpt
    with pytest.raises(ConfigError) as info:
        reparam_checkpoint(path, tmp_path / "d.pth", **kwargs)
    assert all(p in str(info.value) for p in params) and "--" not in str(info.value)
    assert info.value.params == tuple(params) and not (tmp_path / "d.pth").exists()


def test_library_errors_name_parameters(train_ckpt, tmp_path):
    path, model = train_ckpt
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    with pytest.raises(CheckpointError) as info:
        reparam_checkpoint(bare, tmp_path / "d.pth")
    assert "pass it with arch " in str(info.value) and "--arch" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        reparam_checkpoint(path, path)
    assert str(info.value).endswith("choose another path (output)")
    with pytest.raises(ConfigError) as info:
        ad.util.check_device("tpu")
    assert str(info.value).startswith("device must be cpu or cuda")


@pytest.mark.parametrize("argv,flag_text", [
    (["reparam", "{bare}"], "pass it with --arch "),
    (["reparam", "{ckpt}", "--code-path", "{tmp}"], "--code-path only applies with --trust-pickle"),
    (["reparam", "{ckpt}", "--trust-pickle", "--arch", "acmix_resnet_tiny"], "--arch does not apply with --trust-pickle"),
    (["reparam", "{ckpt}", "-o", "{ckpt}"], "choose another path (--output)"),
    (["profile", "{ckpt}", "--device", "tpu"], "--device must be cpu or cuda"),
])
def test_cli_errors_name_flags(train_ckpt, tmp_path, argv, flag_text):
    path, model = train_ckpt
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    res = runner.invoke(app, [a.format(bare=bare, ckpt=path, tmp=tmp_path) for a in argv], env={"COLUMNS": "300"})
    assert res.exit_code == 2 and flag_text in " ".join(res.output.split()), res.output
