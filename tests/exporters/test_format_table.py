"""The format table decides which option applies to which format (exporters.validate_options)."""

import numpy as np
import pytest

from acmix_deploy.cli import FLAGS
from acmix_deploy.exporters import COMMON_OPTIONS, FORMATS, ExportOptions, OptionNotApplicable, validate_options
from acmix_deploy.errors import ConfigError


def test_every_option_belongs_to_some_format_and_has_a_flag():
    from dataclasses import fields

    names = {f.name for f in fields(ExportOptions)} - {"fmt"}
    assert set().union(*(f.accepted for f in FORMATS.values())) == names
    assert set(FLAGS) == names  # every refusal can be spelled with the CLI's flag
    assert COMMON_OPTIONS <= names


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_defaults_are_accepted_everywhere(fmt):
    validate_options(fmt, ExportOptions(fmt=fmt))


@pytest.mark.parametrize("fmt,opts,params", [
    ("onnx", dict(opt_batch=4), ["opt_batch"]),
    ("aoti", dict(fp16=True), ["fp16"]),
    ("aoti", dict(opset=18), ["opset"]),
    ("onnx", dict(workspace_gb=2.0, instances=2), ["workspace_gb", "instances"]),
    ("triton", dict(int8=True, tol=1e-3), ["int8", "tol"]),
    ("engine", dict(force=True), ["force"]),
])
def test_refusals_name_the_parameter(fmt, opts, params):
    with pytest.raises(OptionNotApplicable) as info:
        validate_options(fmt, ExportOptions(fmt=fmt, **opts))
    assert info.value.options == params and isinstance(info.value, ConfigError)
    for p in params:
        assert p in str(info.value)
    assert f"not apply to fmt='{fmt}'" in str(info.value) and "--" not in str(info.value)
    spelled = info.value.spell(FLAGS)  # the CLI's spelling (cli._common.flag)
    assert all(FLAGS[p] in spelled for p in params) and not any(f"{{{p}}}" in spelled for p in params)


def test_unknown_format():
    with pytest.raises(ConfigError, match="unknown format"):
        validate_options("tflite", ExportOptions())


def test_export_model_refuses_before_any_work(tmp_path):
    from acmix_deploy import export_model  # the public entry point (acmix_deploy.verify)

    with pytest.raises(OptionNotApplicable, match="instances"):
        export_model(tmp_path / "missing.pt", ExportOptions(fmt="onnx", instances=3))


def test_export_model_writes_a_triton_repository(tmp_path):
    pytest.importorskip("onnxruntime")
    import acmix_deploy as ad
    from acmix_deploy.testing import randomize_model

    model = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=5), 7).eval()
    ckpt = ad.save_checkpoint(model, tmp_path / "m.pth")
    res = ad.export_model(ckpt, ExportOptions(fmt="triton", output=tmp_path / "repo", imgsz=32, max_batch=4))
    assert res.fmt == "triton" and res.path == tmp_path / "repo" / "m"
    assert (res.path / "config.pbtxt").exists() and (res.path / "1" / "model.onnx").exists()
    assert res.artifact.config.max_batch_size == 4 and res.artifact.validation_rel_error <= 1e-4


def test_exporters_take_their_check_from_the_caller(tmp_path):
    """The exporters' export_model runs the ``verify`` it is given on the artifact before writing it (the
    rows it returns decide), and refuses to run without one; acmix_deploy.export_model passes the real one."""
    pytest.importorskip("onnxruntime")
    from types import SimpleNamespace

    import acmix_deploy as ad
    from acmix_deploy.errors import EquivalenceError
    from acmix_deploy.exporters import export_model
    from acmix_deploy.testing import randomize_model
    from acmix_deploy.verify import verify_artifact

    model = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=5), 7).eval()
    ckpt = ad.save_checkpoint(model, tmp_path / "m.pth")
    out = tmp_path / "m.onnx"
    with pytest.raises(ConfigError, match="needs verify"):
        export_model(ckpt, ExportOptions(output=out, imgsz=32))
    calls = []

    def verify(kind, path, reference, inputs, device="cpu", sidecar=None):
        calls.append((kind, path, [x.shape[0] for x in inputs], device, path.exists()))
        rel = 0.0 if len(calls) == 1 else 0.5  # the first export passes, the second fails
        return [SimpleNamespace(runner="fake", batch=x.shape[0], output="logits",
                                diff=SimpleNamespace(rel=rel, top1_agreement=None)) for x in inputs]

    res = export_model(ckpt, ExportOptions(output=out, imgsz=32), verify=verify)
    assert res.path == out and out.exists() and len(res.rows) == 2
    kind, checked, batches, device, existed = calls[0]
    assert (kind, batches, device, existed) == ("onnx", [1, 3], "cpu", True) and checked != out  # the temp file
    out2 = tmp_path / "m2.onnx"
    with pytest.raises(EquivalenceError, match="differs by 0.5"):
        export_model(ckpt, ExportOptions(output=out2, imgsz=32), verify=verify)
    assert not out2.exists()
    # The real check on the file written: torch vs ONNX Runtime, every batch a row.
    rows = verify_artifact("onnx", out, ad.load_checkpoint(ckpt), [np.zeros((2, 3, 32, 32), np.float32)])
    assert [(r.batch, r.output) for r in rows] == [(2, "logits")] and rows[0].diff.rel <= 1e-4


def test_paths_may_be_strings():
    """``ExportOptions(output="model.onnx")`` as the README writes it: str paths become Path (a str output
    raised AttributeError deep in the output check before)."""
    from pathlib import Path

    opts = ExportOptions(output="model.onnx", timing_cache="cache.bin")
    assert opts.output == Path("model.onnx") and opts.timing_cache == Path("cache.bin")
    assert ExportOptions().output is None
