"""Hostile files against the CLI (items 7-10 of the hardening issue): each must end in one clear message.

Checkpoint text is data: markup in metadata, paths and keys is shown as
written, ANSI escapes never reach the terminal; recorded architecture
arguments are checked before anything is built; a file that is not a
checkpoint is named for what it is; NaN/Inf weights are named; an
unwritable output directory is refused before the work, with exit 2.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import acmix_deploy as ad
from acmix_deploy.checkpoint import nonfinite_tensors, read_checkpoint, validate_arch_args
from acmix_deploy.cli import _safe, app
from acmix_deploy.errors import CheckpointError

runner = CliRunner()


@pytest.fixture(scope="module")
def payload():
    model = ad.create_model("acmix_resnet_tiny", num_classes=5)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    return {"format_version": 1, "arch": "acmix_resnet_tiny", "arch_args": {"num_classes": 5}, "deploy": False,
            "state_dict": sd, "meta": {}}


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        f"uncaught {type(result.exception).__name__}: {result.exception}"
    return result


def test_safe_escapes_markup_and_strips_control_characters():
    from rich.console import Console

    text = "[/bold] a[/b]c [/] \x1b[31mred\x1b[0m \x1b]0;title\x07 bell\x07 nul\x00"
    console = Console(record=True, width=200, force_terminal=False)
    console.print(_safe(text))  # would raise MarkupError unescaped
    out = console.export_text()
    assert "\x1b" not in out and "\x07" not in out and "\x00" not in out
    assert "[/bold] a[/b]c [/]" in out and "red" in out


@pytest.mark.parametrize("meta", [{"note": "[/bold] closed"}, {"[/]": "value"},
                                  {"note": "\x1b[2J\x1b[31mred\x1b]0;title\x07"}])
def test_info_prints_file_text_as_data(tmp_path, payload, meta):
    path = tmp_path / "m.pth"
    torch.save({**payload, "meta": meta}, path)
    result = _invoke("info", path)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    key, value = next(iter(meta.items()))
    if "\x1b" not in value:
        assert value in result.output and f"meta.{key}" in result.output


def test_markup_in_path_and_wrapper_key(tmp_path, payload):
    folder = tmp_path / "a["
    folder.mkdir()
    path = folder / "b]c.pth"  # the path a[/b]c.pth
    torch.save(payload, path)
    assert _invoke("info", path).exit_code == 0
    wrapped = tmp_path / "w.pth"
    torch.save({"model": payload["state_dict"], "[/]": 1}, wrapped)
    result = _invoke("info", wrapped, "--arch", "acmix_resnet_tiny")
    assert result.exit_code == 0 and "[/]" in result.output
    out = tmp_path / "a[" / "out]x.pth"
    result = _invoke("reparam", path, "-o", out, "--no-check")
    assert result.exit_code == 0 and out.exists(), result.output


@pytest.mark.parametrize("args, fragment", [
    ({"num_classes": 2 ** 31}, "not an integer in 1..1048576"),
    ({"num_classes": 4_000_000}, "not an integer in 1..1048576"),
    ({"num_classes": "5"}, "not an integer"),
    ({"num_classes": True}, "not an integer"),
    ({"num_classes": 7}, "disagrees with the state dict"),
    ({"num_classes": 5, "depth": 10}, "'depth' is not one acmix_resnet_tiny takes"),
    ({"num_classes": 5, "deploy": True}, "'deploy' is not one"),
    ([5], "not a dict"),
])
def test_recorded_arch_args_are_checked_before_building(tmp_path, payload, args, fragment):
    path = tmp_path / "a.pth"
    torch.save({**payload, "arch_args": args}, path)
    t0 = time.perf_counter()
    result = _invoke("info", path)
    assert result.exit_code == 2 and fragment in result.output, result.output
    assert time.perf_counter() - t0 < 10  # refused before a 4,000,000-class head is allocated


def test_validate_arch_args_accepts_what_save_checkpoint_writes(payload):
    validate_arch_args("acmix_resnet_tiny", {"num_classes": 5, "k_att": 7, "head": 4}, payload["state_dict"], "x")
    with pytest.raises(CheckpointError, match="k_att"):
        validate_arch_args("acmix_resnet_tiny", {"k_att": 10 ** 6}, payload["state_dict"], "x")


@pytest.mark.parametrize("content, fragment", [
    (np.random.default_rng(0).bytes(4096), "neither a zip archive"),
    (b"hello, this is a text file\n", "a text file"),
    (b"h", "a text file"),
])
def test_files_that_are_not_checkpoints_are_named(tmp_path, content, fragment):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    result = _invoke("info", path)
    assert result.exit_code == 2 and fragment in result.output, result.output
    assert "weights_only=False" not in result.output and "Python objects" not in result.output


def test_onnx_file_given_as_checkpoint_is_named(tmp_path):
    pytest.importorskip("onnx")
    from acmix_deploy.exporters import export_onnx

    model = ad.reparameterize_model(ad.create_model("resnet_tiny", num_classes=3).eval())
    onnx_path = export_onnx(model, tmp_path / "m.onnx", (3, 32, 32))
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes((onnx_path if isinstance(onnx_path, type(tmp_path)) else tmp_path / "m.onnx").read_bytes())
    with pytest.raises(CheckpointError, match="an ONNX model"):
        read_checkpoint(ckpt)


def _nan_payload(payload):
    sd = dict(payload["state_dict"])
    sd["fc.weight"] = sd["fc.weight"].clone()
    sd["fc.weight"][0, 0] = float("nan")
    sd["conv1.weight"] = sd["conv1.weight"].clone()
    sd["conv1.weight"][0, 0, 0, 0] = float("inf")
    return {**payload, "state_dict": sd}


def test_nonfinite_weights_are_named(tmp_path, payload):
    path = tmp_path / "nan.pth"
    torch.save(_nan_payload(payload), path)
    assert sorted(nonfinite_tensors(_nan_payload(payload)["state_dict"])) == ["conv1.weight", "fc.weight"]
    info = _invoke("info", path)
    assert info.exit_code == 0 and "NaN or Inf" in info.output and "fc.weight" in info.output
    for cmd in (["reparam", path, "-o", tmp_path / "o.pth"], ["export", path, "-o", tmp_path / "o.onnx"]):
        result = _invoke(*cmd)
        assert result.exit_code == 2, result.output
        assert "conv1.weight" in result.output and "fc.weight" in result.output and "relative error inf" not in result.output
        assert not (tmp_path / "o.pth").exists() and not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("cmd", ["reparam", "export"])
def test_unwritable_output_directory_is_refused_up_front(tmp_path, payload, cmd, monkeypatch):
    path = tmp_path / "good.pth"
    torch.save(payload, path)
    ro = tmp_path / "ro"
    ro.mkdir()
    import tempfile as _tempfile

    real = _tempfile.mkstemp

    def refuse(*args, dir=None, **kw):  # a read-only folder, also for root (who ignores permission bits)
        if dir is not None and str(dir).startswith(str(ro)):
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(_tempfile, "mkstemp", refuse)
    calls = []
    monkeypatch.setattr("acmix_deploy.reparam.reparameterize_model",
                        lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(AssertionError("folded")))
    result = _invoke(cmd, path, "-o", ro / ("x.pth" if cmd == "reparam" else "x.onnx"))
    assert result.exit_code == 2 and "not writable" in result.output, result.output
    assert not calls
