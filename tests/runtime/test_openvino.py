"""The OpenVINO runner: ONNX files exported by this package, run by OpenVINO on the CPU in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import acmix_deploy as ad
from acmix_deploy.errors import ConfigError
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


def test_openvino_refuses_an_unknown_precision(tiny):  # a missing or garbage file: tests/runtime/test_runtime.py
    with pytest.raises(ConfigError, match="precision"):
        OpenVinoRunner(tiny[1][None], precision="fp32")


def test_open_runner_takes_openvino_and_the_recorded_sizes(tmp_path):
    # .onnx opens in ONNX Runtime by default and in OpenVINO when asked; a graph with dynamic height and width
    # carries its size rule into OpenVINO as into ONNX Runtime (read from the file's metadata).
    from acmix_deploy.errors import InputShapeError
    from acmix_deploy.runtime import OrtRunner, open_runner

    train = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=7), 4).eval()
    path = export_onnx(ad.reparameterize_model(train), tmp_path / "dyn.onnx", (3, 32, 32), dynamic_hw=True).path
    runner = open_runner(path, backend="openvino", threads=1)
    assert isinstance(runner, OpenVinoRunner) and runner.backend == "openvino"
    assert isinstance(open_runner(path), OrtRunner)
    rule = OrtRunner(path).spatial_rule
    assert rule is not None and runner.spatial_rule == rule
    assert runner.input_spec.shape == ("batch", 3, None, None)
    for size in ((32, 32), (rule.minimum[0], rule.minimum[1] + rule.multiple[1])):  # traced size, and another
        x = np.random.default_rng(size[1]).standard_normal((2, 3, *size), dtype=np.float32)
        with torch.no_grad():
            ref = train(torch.from_numpy(x)).double().numpy()
        assert float(np.abs(runner.infer(x) - ref).max() / np.abs(ref).max()) <= TOL
    with pytest.raises(InputShapeError, match="multiples of"):
        runner.infer(np.zeros((1, 3, 32, 32 + 1), np.float32))
    with pytest.raises(ConfigError, match="on the CPU"):
        open_runner(path, backend="openvino", device="cuda")


def test_profile_and_compare_run_an_onnx_file_in_openvino(tmp_path, tiny):
    from typer.testing import CliRunner

    from acmix_deploy.cli import app
    from acmix_deploy.compare import compare_files
    from acmix_deploy.profiling import ProfileSettings, profile_model

    train, graphs = tiny
    path = graphs["avx512"]
    rep = profile_model(path, ProfileSettings(backends=("onnxruntime", "openvino"), batches=(1,), warmup=0, iters=2))
    assert sorted(r["backend"] for r in rep["results"]) == ["onnxruntime", "openvino"]
    with pytest.raises(ConfigError, match="runs on the onnxruntime or openvino backend only"):
        profile_model(path, ProfileSettings(backends=("aoti",), batches=(1,)))
    result = CliRunner().invoke(app, ["profile", str(path), "-b", "openvino", "--batch", "1", "--iters", "2",
                                      "--warmup", "0"])
    assert result.exit_code == 0, result.output
    assert "openvino" in result.output

    ckpt = ad.save_checkpoint(train, tmp_path / "tiny.pth")
    res = compare_files(ckpt, [path], imgsz=32, batches=(2,), onnx_backends=("onnxruntime", "openvino"))
    by_runner = {r.runner: r.diff.rel for r in res.rows}
    assert set(by_runner) == {"torch:deploy", f"onnxruntime:CPU ({path.name})", f"openvino:CPU ({path.name})"}
    assert all(rel <= TOL for rel in by_runner.values())
    with pytest.raises(ConfigError, match="takes backends that run .onnx files"):
        compare_files(ckpt, [path], imgsz=32, onnx_backends=("aoti",))
    result = CliRunner().invoke(app, ["compare", str(ckpt), str(path), "--imgsz", "32", "--onnx-backend", "openvino"])
    assert result.exit_code == 0, result.output
    assert "openvino:CPU" in result.output and "onnxruntime:CPU" not in result.output


def test_server_answers_from_openvino(tiny):
    """``serve --backend openvino --workers 2``: concurrent requests of batch 1 and 2, merged by the batcher and
    run by two workers, answered by OpenVINO as the training form answers (the package's export tolerance)."""
    import concurrent.futures

    from acmix_deploy.runtime.loader import open_runner
    from acmix_deploy.serving import ServeSettings, ServingClient
    from tests.helpers.server import ServerThread  # skips without the serve extra

    train, graphs = tiny
    runner = open_runner(graphs[None], backend="openvino", threads=1)
    assert runner.backend == "openvino"
    settings = ServeSettings(name="tiny", port=0, max_batch=4, batch_timeout_ms=30, workers=2)
    with ServerThread(runner, settings) as srv:
        client = ServingClient(srv.url)
        meta = client.metadata("tiny")
        assert meta["platform"] == "openvino" and meta["outputs"][0]["shape"] == [-1, 7]
        inputs = [np.random.default_rng(10 + i).standard_normal((1 + i % 2, 3, 32, 32), dtype=np.float32)
                  for i in range(6)]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda x: client.infer("tiny", x), inputs))
    for x, y in zip(inputs, answers):
        with torch.no_grad():
            ref = train(torch.from_numpy(x)).numpy()
        assert y.shape == ref.shape and float(np.abs(y - ref).max() / np.abs(ref).max()) <= TOL


def test_runner_called_from_several_threads_answers_each_caller(tiny):
    """Each thread gets its own infer request: a shared one handed one caller's outputs to another (253 of 320
    answers wrong with 4 threads before)."""
    import concurrent.futures

    train, graphs = tiny
    runner = OpenVinoRunner(graphs[None], threads=1)
    inputs = [np.random.default_rng(100 + i).standard_normal((1 + i % 3, 3, 32, 32), dtype=np.float32)
              for i in range(12)]
    with torch.no_grad():
        refs = [train(torch.from_numpy(x)).numpy() for x in inputs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            answers = list(pool.map(runner.infer, inputs))
            for y, ref in zip(answers, refs):
                assert y.shape == ref.shape and float(np.abs(y - ref).max() / np.abs(ref).max()) <= TOL
