"""Checkpoints: our format, official/wrapped state dicts, and every bad-input case."""

from __future__ import annotations

import collections
import pickle

import pytest
import torch

import acmix_deploy as ad
from acmix_deploy.checkpoint import read_checkpoint
from acmix_deploy.errors import OutputError
from acmix_deploy.util import atomic_write
from acmix_deploy.errors import CheckpointError, UnknownArchitectureError
from acmix_deploy.testing import randomize_model


@pytest.fixture
def trained():
    return randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=5), 0).eval()


def _same_outputs(a, b, size=32, chans=3):
    x = torch.randn(2, chans, size, size)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_round_trip_training_and_deploy(tmp_path, trained):
    path = ad.save_checkpoint(trained, tmp_path / "t.pth", meta={"epoch": 3})
    loaded = read_checkpoint(path)
    assert loaded.arch == "acmix_resnet_tiny" and loaded.arch_args == {"num_classes": 5}
    assert not loaded.deploy and loaded.meta["epoch"] == 3 and loaded.source_format == "acmix-deploy"
    assert _same_outputs(trained, loaded.model)

    deploy = ad.reparameterize_model(trained)
    dpath = ad.save_checkpoint(deploy, tmp_path / "d.pth")
    raw = torch.load(dpath, weights_only=True)
    assert set(raw) == {"format_version", "arch", "arch_args", "deploy", "state_dict", "meta", "input_size"}
    assert raw["deploy"] is True and list(raw["input_size"]) == list(deploy.default_cfg["input_size"])
    assert _same_outputs(deploy, ad.load_checkpoint(dpath))


def test_deploy_checkpoint_loads_without_training_classes(tmp_path, trained, monkeypatch):
    dpath = ad.save_checkpoint(ad.reparameterize_model(trained), tmp_path / "d.pth")

    def forbidden(*args, **kwargs):
        raise AssertionError("the training-form ACmix was instantiated")

    monkeypatch.setattr(ad.ACmix, "__init__", forbidden)
    model = ad.load_checkpoint(dpath)
    assert ad.is_deploy(model)


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_foreign_state_dicts(tmp_path, trained, wrapper, prefix):
    sd = collections.OrderedDict((prefix + k, v) for k, v in trained.state_dict().items())
    obj = sd if wrapper is None else {wrapper: sd, "optimizer": {"lr": 0.1}, "epoch": 300}
    path = tmp_path / "official.pth"
    torch.save(obj, path)
    loaded = read_checkpoint(path, arch="acmix_resnet_tiny")
    assert loaded.arch_args == {"num_classes": 5, "in_chans": 3}  # inferred from fc / conv1 shapes
    assert not loaded.deploy
    if wrapper:
        assert any("optimizer" in n for n in loaded.notes)
    assert _same_outputs(trained, loaded.model)


def test_bare_state_dict_needs_arch(tmp_path, trained):
    path = tmp_path / "bare.pth"
    torch.save(trained.state_dict(), path)
    with pytest.raises(CheckpointError, match="pass it with arch .*acmix_resnet50"):
        read_checkpoint(path)


def test_unknown_arch(tmp_path, trained):
    path = tmp_path / "bare.pth"
    torch.save(trained.state_dict(), path)
    with pytest.raises(UnknownArchitectureError, match="Known architectures"):
        read_checkpoint(path, arch="vit_base")


def test_wrong_arch_names_missing_and_unexpected_keys(tmp_path, trained):
    path = tmp_path / "bare.pth"
    torch.save(trained.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"missing key\(s\): layer2.1.conv1.weight.*Is arch right"):
        read_checkpoint(path, arch="acmix_resnet26")
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): .*rate1"):
        read_checkpoint(path, arch="resnet_tiny")


def test_missing_key_is_named(tmp_path, trained):
    sd = trained.state_dict()
    del sd["layer2.0.conv2.conv_p.weight"]
    path = tmp_path / "m.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): layer2.0.conv2.conv_p.weight"):
        read_checkpoint(path, arch="acmix_resnet_tiny")


def test_shape_mismatch_names_the_tensor(tmp_path, trained):
    sd = trained.state_dict()
    sd["layer1.0.conv2.fc.weight"] = torch.zeros(9, 6, 1, 1)
    path = tmp_path / "s.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"layer1.0.conv2.fc.weight has shape \(9, 6, 1, 1\) in the file but \(9, 12, 1, 1\)"):
        read_checkpoint(path, arch="acmix_resnet_tiny")


def test_stored_arch_conflicts_with_requested(tmp_path, trained):
    path = ad.save_checkpoint(trained, tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match="saved as architecture 'acmix_resnet_tiny'"):
        read_checkpoint(path, arch="acmix_resnet50")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        read_checkpoint(tmp_path)


def test_empty_truncated_and_garbage_files(tmp_path, trained):
    good = ad.save_checkpoint(trained, tmp_path / "good.pth")
    data = good.read_bytes()
    cases = {"empty.pth": b"", "truncated.pth": data[: len(data) // 2], "garbage.pth": b"\x00not a checkpoint" * 50}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match="empty|corrupt or truncated"):
            read_checkpoint(tmp_path / name)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(CheckpointError, match="refused for safety"):
        read_checkpoint(path, arch="acmix_resnet_tiny")
    assert "this must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("obj", [{"epoch": 3, "lr": 0.1}, [torch.zeros(2)], torch.zeros(3)])
def test_not_a_checkpoint(tmp_path, obj):
    path = tmp_path / "x.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        read_checkpoint(path, arch="acmix_resnet_tiny")


def test_newer_format_version_is_refused(tmp_path, trained):
    path = ad.save_checkpoint(trained, tmp_path / "t.pth")
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = 99
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        read_checkpoint(path)


def test_save_needs_a_registered_model(tmp_path):
    with pytest.raises(CheckpointError, match="create_model"):
        ad.save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.pth")


def test_atomic_write_leaves_nothing_on_failure(tmp_path, trained, monkeypatch):
    target = tmp_path / "out.pth"
    target.write_bytes(b"previous content")

    def failing_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ad.save_checkpoint(trained, target)
    assert target.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pth"]


def test_atomic_write_needs_existing_directory(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        atomic_write(tmp_path / "missing" / "x.pth", lambda p: None)
