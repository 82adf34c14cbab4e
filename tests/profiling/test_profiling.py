"""Profiling: statistics, fingerprint, report schema, merging, CLI and bad input."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import acmix_deploy as ad
from acmix_deploy.cli import app
from acmix_deploy.errors import AcmixDeployError, ConfigError
from acmix_deploy.profiling import (
    ProfileSettings,
    device_fingerprint,
    load_report,
    markdown_table,
    percentile,
    profile_model,
    summarize,
)
from acmix_deploy.testing import randomize_model

runner = CliRunner()


def _type7(sorted_values, q):
    """The definition the statistics are documented with (Hyndman & Fan type 7), written out: rank
    q/100 * (n - 1), linear interpolation between the two closest ranks."""
    pos = q / 100 * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def test_numpy_linear_percentiles_and_std_agree_with_the_written_definitions():
    """summarize() uses numpy.percentile(method="linear") and std(ddof=1); both equal the definitions in the
    docs written out by hand, on samples of 1..200 runs in any order, ties included."""
    from acmix_deploy.profiling.stats import PERCENTILE_METHOD

    assert PERCENTILE_METHOD == "linear"
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 10, 101, 200):
        xs = rng.exponential(size=n).round(2).tolist()  # rounding makes ties
        ordered = sorted(xs)
        s = summarize(xs, batch=4)
        for q in (0, 1, 50, 90, 95, 99, 99.9, 100):
            assert math.isclose(percentile(xs, q), _type7(ordered, q), rel_tol=1e-12, abs_tol=1e-15)
        for q in (50, 90, 95, 99):
            assert math.isclose(s[f"p{q}_ms"], _type7(ordered, q), rel_tol=1e-12, abs_tol=1e-15)
        mean = sum(xs) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
        assert math.isclose(s["mean_ms"], mean, rel_tol=1e-12) and math.isclose(s["std_ms"], std, rel_tol=1e-9,
                                                                                abs_tol=1e-15)
        assert (s["min_ms"], s["max_ms"]) == (ordered[0], ordered[-1])
    with pytest.raises(ValueError, match="in \\[0, 100\\]"):
        percentile([1.0], 101)


def test_summarize_known_values():
    s = summarize([4.0, 1.0, 3.0, 2.0, 10.0], batch=8)
    assert s["runs"] == 5 and s["min_ms"] == 1.0 and s["max_ms"] == 10.0
    assert s["mean_ms"] == 4.0 and s["p50_ms"] == 3.0
    assert math.isclose(s["p90_ms"], 4.0 + 0.6 * 6.0)  # rank 3.6 between 4 and 10
    assert math.isclose(s["std_ms"], math.sqrt(((0 + 9 + 1 + 4 + 36) / 4)))
    assert math.isclose(s["throughput_per_s"], 8 * 1000 / 4.0)
    assert summarize([5.0], batch=1)["std_ms"] == 0.0
    with pytest.raises(ValueError):
        summarize([], batch=1)


def test_fingerprint_of_this_machine():
    fp = device_fingerprint("cpu", threads=2)
    assert fp["threads"] == 2 and fp["torch"] == str(torch.__version__) and fp["acmix_deploy"] == ad.__version__
    assert fp["cpu"] and fp["logical_cpus"] >= 1 and len(fp["hostname_sha256"]) == 16
    import socket

    assert socket.gethostname() not in json.dumps(fp)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("prof")
    model = randomize_model(ad.create_model("acmix_resnet_tiny"), 0).eval()
    train = ad.save_checkpoint(model, d / "train.pth")
    deploy = ad.save_checkpoint(ad.reparameterize_model(model), d / "deploy.pth")
    return d, train, deploy


def _settings(**kw):
    base = dict(backends=("torch",), batches=(1, 2), warmup=1, iters=3)
    base.update(kw)
    return ProfileSettings(**base)


def test_profile_each_backend_and_compare_forms(ckpts):
    _, train, _ = ckpts
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    rep = profile_model(train, _settings(backends=("torch", "onnxruntime"), compare_forms=True))
    assert set(rep) >= {"schema", "device", "model", "settings", "results", "compare_forms"}
    combos = {(r["backend"], r["form"], r["batch"]) for r in rep["results"]}
    assert combos == {("torch", "training", 1), ("torch", "training", 2), ("torch", "deploy", 1),
                      ("torch", "deploy", 2), ("onnxruntime", "deploy", 1), ("onnxruntime", "deploy", 2)}
    for r in rep["results"]:
        assert r["runs"] == 3 and 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["throughput_per_s"] == pytest.approx(r["batch"] * 1000 / r["mean_ms"])
    ratios = {(c["backend"], c["batch"]): c["training_over_deploy"] for c in rep["compare_forms"]}
    assert set(ratios) == {("torch", 1), ("torch", 2)} and all(v > 0 for v in ratios.values())
    assert any("onnxruntime runs the deploy form" in n for n in rep["notes"])


def test_training_checkpoint_in_onnxruntime_profiles_its_deploy_form(ckpts):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    _, train, _ = ckpts
    rep = profile_model(train, _settings(backends=("onnxruntime",), batches=(1,)))
    assert [(r["backend"], r["form"]) for r in rep["results"]] == [("onnxruntime", "deploy")]


def test_profile_onnx_file_and_layers(ckpts, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from acmix_deploy.exporters import export_onnx

    _, _, deploy = ckpts
    onnx_path = tmp_path / "m.onnx"
    export_onnx(ad.load_checkpoint(deploy), onnx_path, (3, 32, 32))
    rep = profile_model(onnx_path, _settings(backends=("onnxruntime",), layers=True))
    assert rep["model"]["format"] == "onnx" and rep["model"]["input_size"] == [3, 32, 32]
    ops = rep["layers"]["onnxruntime/onnx"]
    assert ops and {"name", "calls", "ms_per_run", "percent"} <= set(ops[0])
    assert sum(o["percent"] for o in ops) <= 100.0 + 1e-6


def test_profile_seconds_mode_and_torch_layers(ckpts):
    _, _, deploy = ckpts
    rep = profile_model(deploy, _settings(batches=(1,), iters=None, seconds=0.2, layers=True))
    assert rep["results"][0]["runs"] >= 1
    names = [o["name"] for o in rep["layers"]["torch/deploy"]]
    assert any("bmm" in n or "softmax" in n or "convolution" in n for n in names)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(backends=("tensorflow",)), "unknown backend"),
        (dict(iters=0), "^iters must be at least 1"),
        (dict(seconds=0.0), "^seconds must be positive"),
        (dict(batches=(0,)), "batch sizes must be positive"),
        (dict(warmup=-1), "^warmup must be"),
        (dict(device="tpu"), "cpu or cuda"),
    ],
)
def test_bad_settings(ckpts, kw, match):
    _, train, _ = ckpts
    with pytest.raises(ConfigError, match=match):
        profile_model(train, _settings(**kw))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no CUDA GPU is present")
def test_cuda_without_gpu(ckpts):
    _, train, _ = ckpts
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
        profile_model(train, _settings(device="cuda"))


def test_bad_models(ckpts, tmp_path):
    _, _, deploy = ckpts
    with pytest.raises(AcmixDeployError, match="does not exist"):
        profile_model(tmp_path / "none.pth", _settings())
    with pytest.raises(ConfigError, match="; compare_forms needs a training checkpoint"):
        profile_model(deploy, _settings(compare_forms=True))
    _, train, _ = ckpts
    for backend in ("aoti", "tensorrt"):
        with pytest.raises(ConfigError, match=rf"the {backend} backend \(backends\) runs compiled files: export the checkpoint first"):
            profile_model(train, _settings(backends=(backend,)))
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"m.engine runs on the tensorrt backend only \(backends\)"):
        profile_model(engine, _settings())
    with pytest.raises(ConfigError, match="TensorRT engines run on the GPU"):
        profile_model(engine, _settings(backends=()))
    package = tmp_path / "m.pt2"
    package.write_bytes(b"not a zip")
    with pytest.raises(AcmixDeployError, match="cannot load AOTInductor package"):
        profile_model(package, _settings(backends=()))


def test_profile_conv_layouts_side_by_side(ckpts, tmp_path):
    """--conv-layout: each layout really runs the deploy form's convolution paths on that memory (seen by a
    hook on every grouped convolution), the two are timed interleaved, and the ratio is that of the medians."""
    from acmix_deploy.profiling import markdown_table, save_csv

    _, _, deploy = ckpts
    seen: list[bool] = []

    def record(module, args):
        if isinstance(module, torch.nn.Conv2d) and module.groups > 1:
            seen.append(args[0].is_contiguous(memory_format=torch.channels_last)
                        and not args[0].is_contiguous())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        rep = profile_model(deploy, _settings(batches=(1, 3), warmup=1, iters=4,
                                              conv_layouts=("channels_first", "channels_last")))
    finally:
        handle.remove()
    rows = {(r["conv_layout"], r["batch"]): r for r in rep["results"]}
    assert set(rows) == {(layout, b) for layout in ("channels_first", "channels_last") for b in (1, 3)}
    assert all(r["form"] == "deploy" and r["runs"] == 4 and r["peak_mem_mb"] is None for r in rows.values())
    # the tiny model has grouped convolution paths in each deploy block: as many channels-last calls as others
    assert seen.count(True) == seen.count(False) > 0
    ratios = {(c["batch"], tuple(c["imgsz"])): c["channels_first_over_channels_last"]
              for c in rep["compare_conv_layouts"]}
    assert set(ratios) == {(1, (32, 32)), (3, (32, 32))}
    for b in (1, 3):
        want = rows[("channels_first", b)]["p50_ms"] / rows[("channels_last", b)]["p50_ms"]
        assert ratios[(b, (32, 32))] == pytest.approx(want)
    assert rep["settings"]["conv_layouts"] == ["channels_first", "channels_last"]
    assert any("auto here: channels_last" in n and "interleaved" in n for n in rep["notes"])
    assert "| deploy (channels_last) | 3 |" in markdown_table([rep])
    save_csv([rep], tmp_path / "l.csv")
    with open(tmp_path / "l.csv") as f:
        assert {r["conv_layout"] for r in csv.DictReader(f)} == {"channels_first", "channels_last"}


def test_profile_one_conv_layout_keeps_the_usual_timing(ckpts):
    _, train, _ = ckpts
    rep = profile_model(train, _settings(batches=(1,), compare_forms=True, conv_layouts=("channels_first",)))
    forms = {(r["form"], r.get("conv_layout")) for r in rep["results"]}
    assert forms == {("training", None), ("deploy", "channels_first")}  # the training form runs as it is
    assert all(r["peak_mem_mb"] is not None for r in rep["results"])  # timed alone: its own memory figure
    assert "compare_conv_layouts" not in rep


def test_compare_forms_and_layers_per_conv_layout(ckpts):
    _, train, _ = ckpts
    rep = profile_model(train, _settings(batches=(1,), compare_forms=True, layers=True,
                                         conv_layouts=("channels_first", "channels_last")))
    by_layout = {c["conv_layout"]: c["training_over_deploy"] for c in rep["compare_forms"]}
    assert set(by_layout) == {"channels_first", "channels_last"}
    p50 = {(r["form"], r.get("conv_layout")): r["p50_ms"] for r in rep["results"]}
    for layout, ratio in by_layout.items():
        assert ratio == pytest.approx(p50[("training", None)] / p50[("deploy", layout)])
    assert {"torch/training", "torch/deploy (channels_first)", "torch/deploy (channels_last)"} == set(rep["layers"])


@pytest.mark.parametrize("kw,message", [
    (dict(conv_layouts=("channels_middle",)), "conv_layouts takes auto, channels_last, channels_first"),
    (dict(conv_layouts=("auto", "auto")), "each layout once"),
    (dict(conv_layouts=("auto",), backends=("onnxruntime",)), "applies to the torch backend"),
    (dict(conv_layouts=("auto",), device="cuda"), "applies on the CPU"),
])
def test_conv_layouts_bad_settings(kw, message):
    with pytest.raises(ConfigError, match=message):
        _settings(**kw).validate()


def test_conv_layouts_need_a_deploy_form_in_torch(ckpts):
    _, train, _ = ckpts
    with pytest.raises(ConfigError, match="applies to the deploy form in the torch backend"):
        profile_model(train, _settings(conv_layouts=("channels_last",)))


def test_cli_profile_conv_layouts(ckpts):
    _, train, deploy = ckpts
    result = runner.invoke(app, ["profile", str(deploy), "--conv-layout", "channels_first", "--conv-layout",
                                 "channels_last", "--iters", "2", "--warmup", "0"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "conv layout" in text and "channels-first / channels-last (torch deploy, batch 1, 32x32" in text
    result = runner.invoke(app, ["profile", str(train), "--conv-layout", "channels_last"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "--conv-layout applies to the deploy form" in text and "--compare-forms" in text
    result = runner.invoke(app, ["profile", str(deploy), "--conv-layout", "nhwc"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "--conv-layout takes auto, channels_last, channels_first; got 'nhwc'" in text


def test_cli_profile_and_report(ckpts, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    _, train, deploy = ckpts
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    result = runner.invoke(app, ["profile", str(train), "--compare-forms", "--batch", "1", "--iters", "3",
                                 "--warmup", "1", "--json", str(a), "--csv", str(tmp_path / "a.csv")])
    assert result.exit_code == 0, result.output
    assert "training / deploy" in result.output
    result = runner.invoke(app, ["profile", str(deploy), "--batch", "1", "--batch", "2", "--iters", "2",
                                 "--json", str(b), "--plot", str(tmp_path / "b.png")])
    assert result.exit_code == 0, result.output
    rep = load_report(a)
    assert rep["schema"] == "acmix-deploy/profile/1"
    for key in ("backend", "batch", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "throughput_per_s"):
        assert key in rep["results"][0]
    with open(tmp_path / "a.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and rows[0]["backend"] == "torch" and float(rows[0]["p50_ms"]) > 0
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    md, png = tmp_path / "m.md", tmp_path / "m.png"
    result = runner.invoke(app, ["report", str(a), str(b), "--markdown", str(md), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    text = md.read_text()
    assert text.count("\n") == 2 + 2 + 2  # header, separator, 2 rows from a, 2 from b
    assert markdown_table([load_report(a), load_report(b)]) == text
    assert png.stat().st_size > 1000


@pytest.mark.parametrize(
    "args,message",
    [
        (["profile", "{train}", "--backend", "tensorflow"], "unknown backend"),
        (["profile", "{train}", "--iters", "0"], "--iters must be at least 1"),
        (["profile", "{train}", "--backend", "aoti"], "the aoti backend (--backend) runs compiled files"),
        (["profile", "{train}", "--backend", "aoti"], "(export, --format aoti)"),
        (["profile", "{train}", "--json", "{tmp}/missing/x.json"], "does not exist"),
        (["report", "{tmp}/nope.json"], "does not exist"),
        (["report", "{notjson}"], "not a JSON profile report"),
        (["report", "{wrongjson}"], "needs the keys device, model, results"),
    ],
)
def test_cli_bad_input(ckpts, tmp_path, args, message):
    _, train, _ = ckpts
    (tmp_path / "n.json").write_text("{not json")
    (tmp_path / "w.json").write_text(json.dumps({"results": []}))
    argv = [x.format(train=train, tmp=tmp_path, notjson=tmp_path / "n.json", wrongjson=tmp_path / "w.json") for x in args]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


def test_torch_compile_backend(ckpts):
    """torch.compile (inductor, CPU): compiled outside the timing, compile time reported (~50 s here)."""
    _, _, deploy = ckpts
    rep = profile_model(deploy, _settings(backends=("torch-compile",), batches=(1,), iters=2, warmup=0))
    row = rep["results"][0]
    assert row["backend"] == "torch-compile" and row["runs"] == 2 and row["compile_s"] > 0
    assert row["compile_s"] * 1000 > row["p50_ms"]  # the compile run is not among the timed ones


def test_backend_not_installed_is_a_clear_error(ckpts, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "onnxruntime", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    _, _, deploy = ckpts
    from acmix_deploy.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError, match=r'pip install "acmix-deploy\[onnx\]"'):
        profile_model(deploy, _settings(backends=("onnxruntime",)))
