"""What ``acmix-deploy info`` shows, and the library functions it renders: ``analysis.summarize_model`` for
checkpoints, ``artifacts.onnx.describe_onnx`` for ONNX files, ``artifacts.tensorrt.read_sidecar`` for engines."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import acmix_deploy as ad
from acmix_deploy.analysis import summarize_model
from acmix_deploy.artifacts.onnx import describe_onnx
from acmix_deploy.artifacts.tensorrt import EngineSidecar, write_sidecar
from acmix_deploy.cli import app
from acmix_deploy.errors import AcmixDeployError

runner = CliRunner()
WIDE = {"COLUMNS": "300"}


def test_summarize_model_counts_blocks_in_both_forms():
    model = ad.create_model("acmix_resnet_tiny", num_classes=4).eval()
    train, deploy = summarize_model(model), summarize_model(ad.reparameterize_model(model))
    assert train.blocks["ACmix"] == deploy.blocks["ACmix"] == 4 and train.blocks["X-volution"] == 0
    assert train.parameters == ad.count_parameters(model) and train.input_size == (3, 32, 32)
    assert train.tensors == len(model.state_dict()) == sum(train.tensor_groups.values())
    assert "bn1" in train.tensor_groups and "bn1" not in deploy.tensor_groups  # the stem's BatchNorm folded
    xvol = summarize_model(ad.create_model("xvolution_resnet_tiny", num_classes=4))
    assert xvol.blocks["X-volution"] > 0


def test_describe_onnx(onnx_model):
    s = describe_onnx(onnx_model)
    assert [(t.name, t.dtype, t.shape) for t in s.inputs] == [("images", "float32", ("batch", 3, 32, 32))]
    assert [(t.name, t.shape) for t in s.outputs] == [("logits", ("batch", 5))]
    assert s.opset == 17 and s.size_bytes == onnx_model.stat().st_size and not s.external_data
    assert s.nodes == sum(s.op_histogram.values()) and s.op_histogram["Conv"] >= 1
    assert list(s.op_histogram.values()) == sorted(s.op_histogram.values(), reverse=True)
    assert s.metadata["input_name"] == "images" and s.metadata["output_names"] == ["logits"]
    assert 0 < s.parameters and s.initializers > 0
    assert s.producer == f"acmix-deploy {ad.__version__}"  # the package's version, not torch's


def test_describe_onnx_refuses_what_is_not_onnx(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"\x00not a protobuf at all" * 10)
    with pytest.raises(AcmixDeployError, match="cannot read ONNX model"):
        describe_onnx(bad)
    with pytest.raises(AcmixDeployError, match="does not exist"):
        describe_onnx(tmp_path / "missing.onnx")


def test_cli_info_onnx(onnx_model):
    res = runner.invoke(app, ["info", str(onnx_model)], env=WIDE)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for part in ("input images", "float32 [batch, 3, 32, 32]", "output logits", "ai.onnx 17",
                 'acmix_deploy.output_names │ ["logits"]', "Conv "):
        assert part in text, part
    assert "refused for safety" not in text
    res = runner.invoke(app, ["info", str(onnx_model), "--arch", "acmix_resnet_tiny"], env=WIDE)
    assert res.exit_code == 2 and "--arch applies to checkpoints" in res.output


def test_cli_info_engine_reads_the_sidecar(tmp_path):
    """No TensorRT needed: the engine is described by its sidecar."""
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\x00" * 2048)  # the plan itself is never read
    write_sidecar(engine, EngineSidecar(
        tensorrt_version="10.13.0.35", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", precision="fp16",
        typing="strong", input_name="images", output_name="p3", input_size=[3, 64, 96],
        profiles=[{"min": [1, 3, 64, 96], "opt": [8, 3, 64, 96], "max": [32, 3, 64, 96]}], onnx_sha256="ab" * 32,
        build_seconds=12.5, output_names=["p3", "p4"], output_shapes=[[-1, 8, 8, 12], [-1, 8, 4, 6]],
        source={"arch": "acmix_resnet_tiny"}))
    res = runner.invoke(app, ["info", str(engine)], env=WIDE)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for part in ("NVIDIA H100 80GB HBM3 (compute capability 9.0), TensorRT 10.13.0.35", "fp16 (strong typing)",
                 "input images", "[batch, 3, 64, 96]", "output p4", "[batch, 8, 4, 6]",
                 "batch 1 / 8 / 32 (min / opt / max)", "source.arch", "acmix_resnet_tiny"):
        assert part in text, part
    engine.with_name("m.engine.json").unlink()
    res = runner.invoke(app, ["info", str(engine)], env=WIDE)
    assert res.exit_code == 2 and "has no sidecar" in res.output and "Traceback" not in res.output
    assert "rebuild the engine (export, --format engine)" in " ".join(res.output.split())  # the library says fmt


def test_cli_info_pt2_says_what_it_reads(tmp_path):
    (tmp_path / "m.pt2").write_bytes(b"PK")
    res = runner.invoke(app, ["info", str(tmp_path / "m.pt2")], env=WIDE)
    assert res.exit_code == 2 and "AOTInductor package" in res.output and "corrupt" not in res.output


def test_sidecar_errors_name_the_parameter(tmp_path):
    from acmix_deploy.artifacts.tensorrt import read_sidecar

    with pytest.raises(AcmixDeployError, match=r"rebuild the engine \(export, fmt engine\)") as info:
        read_sidecar(tmp_path / "x.engine")
    assert info.value.params == ("fmt",)


def test_an_onnx_file_given_as_a_checkpoint_points_to_info(onnx_model):
    res = runner.invoke(app, ["compare", str(onnx_model)], env=WIDE)
    assert res.exit_code == 2 and "is an ONNX model" in res.output and "describe it (info" in res.output
    assert "refused for safety" not in res.output
