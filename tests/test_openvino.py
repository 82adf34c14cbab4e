"""The OpenVINO runner: ONNX files exported by this package, run by OpenVINO on the CPU in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import acmix_deploy as ad
from acmix_deploy.errors import AcmixDeployError, ConfigError
from acmix_deploy.testing import randomize_model

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'acmix-deploy[openvino]')")
pytest.importorskip("onnxslim", reason="the ONNX files are written by the exporter (pip install 'acmix-deploy[onnx]')")

from acmix_deploy.exporters import export_onnx  # noqa: E402
from acmix_deploy.runtime import OpenVinoRunner, TensorSpec  # noqa: E402

# The package's export tolerance: float32 graphs reorder sums, nothing more (observed ~1e-6).
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    train = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=7), 2).eval()
    folder = tmp_path_factory.mktemp("ov")
    graphs = {isa: export_onnx(ad.reparameterize_model(train), folder / f"{isa}.onnx", (3, 32, 32), cpu_isa=isa).path
              for isa in (None, "avx512")}
    return train, graphs


@pytest.mark.parametrize("isa", [None, "avx512"])  # the compact graph and the one shaped for ONNX Runtime
def test_openvino_matches_the_training_form(tiny, isa):
    train, graphs = tiny
    runner = OpenVinoRunner(graphs[isa], threads=1)
    assert runner.precision == "f32" and runner.name == "openvino:CPU" and runner.output_names == ["logits"]
    assert runner.input_spec == TensorSpec("images", ("batch", 3, 32, 32), np.float32)  # dynamic batch
    assert runner.output_specs == (TensorSpec("logits", ("batch", 7), np.float32),) and runner.batch_range == (1, None)
    for batch in (1, 3):  # one compiled model, two batch sizes
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
        with torch.no_grad():
            ref = train(torch.from_numpy(x)).double().numpy()
        out = runner.infer(x)
        assert out.shape == ref.shape
        assert float(np.abs(out - ref).max() / np.abs(ref).max()) <= TOL
    first = runner.infer(x)
    runner.infer(np.zeros_like(x))
    assert not np.array_equal(first, runner.infer(np.zeros_like(x)))  # results are copies, not reused buffers


def test_openvino_errors(tmp_path, tiny):
    with pytest.raises(AcmixDeployError, match="does not exist"):
        OpenVinoRunner(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(AcmixDeployError, match="OpenVINO cannot load"):
        OpenVinoRunner(bad)
    with pytest.raises(ConfigError, match="precision"):
        OpenVinoRunner(tiny[1][None], precision="fp32")
