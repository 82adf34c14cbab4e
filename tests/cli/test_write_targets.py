"""Where reports go: a symlinked destination keeps its link, non-regular targets are written through, '-' is stdout."""

import json
import os
import threading

import pytest
from typer.testing import CliRunner

import acmix_deploy as ad
from acmix_deploy.cli import app
from acmix_deploy.util import atomic_write

runner = CliRunner()


def test_atomic_write_follows_a_symlink(tmp_path):
    target = tmp_path / "real" / "report.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert atomic_write(link, lambda tmp: open(tmp, "w").write("new")) == link
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]  # no temp file left


def test_atomic_write_into_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "out"
    link.symlink_to(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()))
    reader.start()
    atomic_write(link, lambda tmp: open(tmp, "w").write("through the pipe"))
    reader.join(10)
    assert got == ["through the pipe"] and link.is_symlink()


def test_dash_is_standard_output(tmp_path):
    from acmix_deploy.profiling import markdown_table

    model = ad.create_model("acmix_resnet_tiny", num_classes=4, deploy=True).eval()
    ckpt = ad.save_checkpoint(model, tmp_path / "m.pth")
    result = runner.invoke(app, ["profile", str(ckpt), "--batch", "1", "--iters", "2", "--warmup", "0",
                                 "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # the table went to standard error: stdout is the JSON alone
    assert report["results"] and not (tmp_path / "-").exists()
    saved = tmp_path / "r.json"
    saved.write_text(result.stdout)
    result = runner.invoke(app, ["report", str(saved), "--markdown", "-"])
    assert result.exit_code == 0, result.output
    assert result.stdout == markdown_table([report])
    result = runner.invoke(app, ["report", str(saved), "--markdown", "-", "--csv", "-"])
    assert result.exit_code == 2 and "only one of" in result.output
    result = runner.invoke(app, ["report", str(saved), "--plot", "-"])
    assert result.exit_code == 2 and "PNG" in result.output
