"""The runner interface (runtime/base.py) and the one suffix table (runtime/loader.py) that compare, profile
and serve open files through.  TensorRT's runner is checked against a stand-in engine in test_tensorrt.py,
AOTInductor's specs in test_export.py and test_multi_output.py (a package is slow to compile)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import acmix_deploy as ad
from acmix_deploy.errors import AcmixDeployError, ConfigError, InputShapeError
from acmix_deploy.runtime import EXPORTED, Runner, TensorSpec, TorchRunner, backend_for, open_runner
from acmix_deploy.runtime.loader import describe_suffixes
from acmix_deploy.testing import randomize_model

F32 = np.dtype(np.float32)


class TwoHeads(nn.Module):
    """Logits and an integer class index: two outputs of different dtypes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)

    def forward(self, x):
        y = self.conv(x)
        logits = y.mean(dim=(2, 3))
        return {"logits": logits, "index": logits.argmax(dim=1)}


# ------------------------------------------------------------------------------------------------ TensorSpec


def test_tensor_spec_normalizes_and_refuses_bad_dims():
    spec = TensorSpec("x", ("batch", np.int64(3), 8, None), "float32")
    assert spec.shape == ("batch", 3, 8, None) and type(spec.shape[1]) is int and spec.dtype == F32
    assert spec.item_shape == (3, 8, None) and not spec.is_static
    assert TensorSpec("x", ("batch", 3, 8, 8), np.float32).is_static
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="a dimension is a size"):
            TensorSpec("x", (bad, 3), np.float32)


# ------------------------------------------------------------------------------------------------ runners


def test_onnx_runner_specs_and_input_checks(onnx_model):
    pytest.importorskip("onnxruntime")
    from acmix_deploy.runtime import OrtRunner

    r = OrtRunner(onnx_model)
    assert (r.backend, r.device, r.name) == ("onnxruntime", "cpu", "onnxruntime:CPU")
    assert r.input_specs == (TensorSpec("images", ("batch", 3, 32, 32), F32),)
    assert r.output_specs == (TensorSpec("logits", ("batch", 5), F32),) and r.batch_range == (1, None)
    assert r.infer(np.zeros((3, 3, 32, 32), np.float32)).shape == (3, 5)
    with pytest.raises(InputShapeError, match=r"takes images of shape \(N, 3, 32, 32\), got \(1, 3, 16, 32\)"):
        r.infer(np.zeros((1, 3, 16, 32), np.float32))
    with pytest.raises(InputShapeError, match="takes images of shape"):
        r.infer(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(InputShapeError, match="NumPy array"):
        r.infer([[0.0]])
    # prepare(): the input placed once, the call runs the session only.
    run = r.prepare(np.ones((2, 3, 32, 32), np.float32))
    assert np.allclose(run()[0], r.infer(np.ones((2, 3, 32, 32), np.float32)))


def test_static_onnx_batch_is_the_batch_range(tmp_path):
    pytest.importorskip("onnxruntime")
    from acmix_deploy.exporters import export_onnx

    model = ad.reparameterize_model(randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=3), 1).eval())
    path = tmp_path / "static.onnx"
    export_onnx(model, path, (3, 32, 32), batch=2, dynamic=False)
    r = open_runner(path)
    assert r.batch_range == (2, 2) and r.input_spec.shape == (2, 3, 32, 32)
    assert r.output_spec == TensorSpec("logits", (2, 3), F32)
    with pytest.raises(InputShapeError, match=r"batch 3 is outside the ONNX model's batch range 2\.\.2"):
        r.infer(np.zeros((3, 3, 32, 32), np.float32))


def test_torch_runner_specs_from_a_run():
    model = TwoHeads()
    # With an input size: the output specs come from a run on zeros, named by acmix_deploy.outputs' rule.
    r = TorchRunner(model, name="torch:two", input_size=(3, 10, 14))
    assert (r.backend, r.device, r.batch_range) == ("torch", "cpu", (1, None))
    assert r.output_specs == (TensorSpec("logits", ("batch", 4), F32), TensorSpec("index", ("batch",), np.int64))
    assert r.output_names == ["logits", "index"]
    with pytest.raises(AcmixDeployError, match="2 outputs.*infer_outputs"):
        r.infer(np.zeros((1, 3, 10, 14), np.float32))
    with pytest.raises(AcmixDeployError, match="output_spec returns a single output"):
        r.output_spec
    # Without one the sample shape is open: no specs until a run, any H x W accepted.
    free = TorchRunner(model)
    assert free.input_spec.shape == ("batch", None, None, None) and free.output_names is None
    with pytest.raises(AcmixDeployError, match="known after a run"):
        free.output_specs
    assert [o.shape for o in free.infer_outputs(np.zeros((2, 3, 7, 9), np.float32))] == [(2, 4), (2,)]
    assert free.output_names == ["logits", "index"]


def test_a_runner_subclass_gets_the_checks_of_the_base():
    """A new backend implements _infer_impl only; the checks (batch range, fixed axes, output count) and
    the warm-up that completes its specs are the base's."""

    class Doubler(Runner):
        backend = "numpy"
        batch_range_name = "the doubler's range"

        def __init__(self, outputs):
            self.outputs = outputs
            super().__init__("numpy:double", "cpu", [TensorSpec("x", ("n", 2), np.float32)],
                             [TensorSpec("y", ("n", None), np.float32)], batch_range=(1, 4))

        def _infer_impl(self, x):
            return [2 * x] * self.outputs

    r = Doubler(1)
    assert r.warm_up()[0].shape == (1, 2)
    assert r.output_specs == (TensorSpec("y", ("n", 2), np.float32),)  # the open axis filled, the name kept
    with pytest.raises(InputShapeError, match=r"batch 5 is outside the doubler's range 1\.\.4"):
        r.infer(np.zeros((5, 2), np.float32))
    with pytest.raises(AcmixDeployError, match="returned 2 output"):
        Doubler(2).infer_outputs(np.zeros((1, 2), np.float32))

    class Backwards(Doubler):
        def __init__(self):
            Runner.__init__(self, "bad", "cpu", r.input_specs, batch_range=(3, 2))

    with pytest.raises(AcmixDeployError, match="empty or starts below 1"):
        Backwards()


# ------------------------------------------------------------------------------------------------ suffix table


def test_one_suffix_table():
    from pathlib import Path

    assert backend_for(Path("m.ONNX")) == "onnxruntime" and backend_for(Path("m.plan")) == "tensorrt"
    assert backend_for(Path("w.pth")) == "torch" and backend_for(Path("m.pt2")) == "aoti"
    assert EXPORTED == ("onnxruntime", "aoti", "tensorrt", "openvino")
    # .onnx opens in ONNX Runtime unless OpenVINO is asked for; OpenVINO IR (.xml) by its suffix
    assert backend_for(Path("m.onnx"), "openvino") == "openvino" and backend_for(Path("m.xml")) == "openvino"
    assert describe_suffixes(EXPORTED) == (".onnx (ONNX Runtime), .pt2 (AOTInductor), .engine/.plan (TensorRT) "
                                           "or .xml/.onnx (OpenVINO)")
    with pytest.raises(ConfigError, match=r"backend openvino runs \.xml/\.onnx files, not m\.pt2"):
        backend_for(Path("m.pt2"), "openvino")
    with pytest.raises(ConfigError, match=r"cannot tell how to run m\.bin by its suffix: give \.onnx"):
        backend_for(Path("m.bin"))
    with pytest.raises(ConfigError, match=r"give \.onnx \(ONNX Runtime\), \.pt2 \(AOTInductor\), "
                                          r"\.engine/\.plan \(TensorRT\) or \.xml/\.onnx \(OpenVINO\)$"):
        backend_for(Path("w.pth"), allowed=EXPORTED)  # compare takes exported files only
    with pytest.raises(ConfigError, match="backend tensorrt runs .engine/.plan files, not m.onnx"):
        backend_for(Path("m.onnx"), "tensorrt")
    with pytest.raises(ConfigError, match="unknown backend 'tflite'"):
        backend_for(Path("m.onnx"), "tflite")


def test_open_runner_unknown_suffix_and_device(tmp_path, onnx_model):
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="by its suffix"):
        open_runner(tmp_path / "m.bin")
    with pytest.raises(ConfigError, match="device must be cpu or cuda"):
        open_runner(onnx_model, device="tpu")


def _recording(monkeypatch, module, calls):
    real = module.open_runner

    def recorded(path, *args, **kwargs):
        calls.append((path.name, kwargs))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(module, "open_runner", recorded)


def test_compare_profile_and_serve_open_files_through_open_runner(tmp_path, onnx_model, monkeypatch):
    pytest.importorskip("onnxruntime")
    import acmix_deploy.compare as compare
    import acmix_deploy.profiling.profiler as profiler
    from acmix_deploy.profiling import ProfileSettings

    calls: list = []
    model = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=5), 3).eval()
    ckpt = ad.save_checkpoint(model, tmp_path / "tiny.pth")
    _recording(monkeypatch, compare, calls)
    res = compare.compare_files(ckpt, [onnx_model], imgsz=32, batches=(1, 2))
    assert calls == [("tiny.onnx", {"backend": "onnxruntime", "allowed": EXPORTED, "input_size": (3, 32, 32)})]
    assert {r.runner for r in res.rows} == {"torch:deploy", "onnxruntime:CPU (tiny.onnx)"}
    with pytest.raises(ConfigError, match=r"tiny\.pth by its suffix: give \.onnx \(ONNX Runtime\)"):
        compare.compare_files(ckpt, [ckpt], imgsz=32)

    calls.clear()
    _recording(monkeypatch, profiler, calls)
    report = profiler.profile_model(onnx_model, ProfileSettings(batches=(1,), warmup=0, iters=1))
    assert [c[0] for c in calls] == ["tiny.onnx"] and calls[0][1]["backend"] == "onnxruntime"
    assert report["model"]["format"] == "onnx" and report["model"]["outputs"] == ["logits"]

    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    import acmix_deploy.serving.app as app
    from acmix_deploy.serving import ServeSettings

    calls.clear()
    _recording(monkeypatch, app, calls)
    seen = []

    class Loaded(Exception):
        pass

    def on_ready(runner, address):
        seen.append(runner)
        raise Loaded  # stop before serving

    with pytest.raises(Loaded):
        app.serve(onnx_model, ServeSettings(name="tiny", port=0), threads=1, on_ready=on_ready)
    assert [c[0] for c in calls] == ["tiny.onnx"] and calls[0][1]["threads"] == 1
    assert seen[0].output_spec == TensorSpec("logits", ("batch", 5), F32)


# ------------------------------------------------------------------------------------------ files that fail


@pytest.mark.parametrize("module,cls,suffix,message", [
    ("onnxruntime", "OrtRunner", ".onnx", "ONNX Runtime cannot load"),
    ("torch", "AotiRunner", ".pt2", "cannot load AOTInductor package"),
    ("openvino", "OpenVinoRunner", ".onnx", "OpenVINO cannot load"),
])
def test_a_runner_refuses_a_missing_or_garbage_file_by_name(tmp_path, module, cls, suffix, message):
    pytest.importorskip(module)
    import acmix_deploy.runtime as runtime

    runner_cls = getattr(runtime, cls)
    with pytest.raises(AcmixDeployError, match="does not exist"):
        runner_cls(tmp_path / f"missing{suffix}")
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(b"not a model")
    with pytest.raises(AcmixDeployError, match=message):
        runner_cls(bad)
