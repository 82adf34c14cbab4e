"""The format table decides which option applies to which format (exporters.validate_options)."""

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
    assert info.value.params == params and isinstance(info.value, ConfigError)
    for p in params:
        assert p in str(info.value)
    with pytest.raises(OptionNotApplicable) as info:
        validate_options(fmt, ExportOptions(fmt=fmt, **opts), flags=FLAGS)
    assert FLAGS[params[0]] in str(info.value)


def test_unknown_format():
    with pytest.raises(ConfigError, match="unknown format"):
        validate_options("tflite", ExportOptions())


def test_export_model_refuses_before_any_work(tmp_path):
    from acmix_deploy.exporters import export_model

    with pytest.raises(OptionNotApplicable, match="instances"):
        export_model(tmp_path / "missing.pt", ExportOptions(fmt="onnx", instances=3))


def test_export_model_writes_a_triton_repository(tmp_path):
    pytest.importorskip("onnxruntime")
    import acmix_deploy as ad
    from acmix_deploy.exporters import export_model
    from acmix_deploy.testing import randomize_model

    model = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=5), 7).eval()
    ckpt = ad.save_checkpoint(model, tmp_path / "m.pth")
    res = export_model(ckpt, ExportOptions(fmt="triton", output=tmp_path / "repo", imgsz=32, max_batch=4))
    assert res.fmt == "triton" and res.path == tmp_path / "repo" / "m"
    assert (res.path / "config.pbtxt").exists() and (res.path / "1" / "model.onnx").exists()
    assert res.artifact.config.max_batch_size == 4 and res.artifact.validation_rel_error <= 1e-4
