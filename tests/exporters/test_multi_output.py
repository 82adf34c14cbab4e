"""Models with several outputs through export, runners, compare, validation and Triton configs.

The models are written here (a few convolutions with BatchNorm, heads at three resolutions, as a small
YOLO-style detector): one returns a nested tuple ``(y, [p3, p4, p5])``, one a dict.  Weights and BatchNorm
statistics are random (:func:`acmix_deploy.testing.randomize_model`), so a head that is dropped, swapped
or mis-ordered shows as an error of order 1.

Tolerance: relative error ``max|a - b| / max|a|`` <= 1e-5 in float32 (``tests.helpers.TOL_F32``) for ONNX
Runtime against torch on every output; the graph is the same arithmetic in another order.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from acmix_deploy.compare import Comparison, compare_runners, random_inputs
from acmix_deploy.errors import AcmixDeployError, ConfigError, EquivalenceError
from acmix_deploy.outputs import named_outputs
from acmix_deploy.runtime import OrtRunner, TorchRunner
from acmix_deploy.runtime import TensorSpec
from acmix_deploy.runtime.loader import open_runner
from acmix_deploy.testing import randomize_model

from tests.helpers import TOL_F32

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'acmix-deploy[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'acmix-deploy[onnx]')")

from acmix_deploy.exporters.onnx import export_onnx  # noqa: E402

SIZE = (3, 32, 48)  # non-square, so a swapped height and width shows
NESTED_NAMES = ["output0", "output1", "output2", "output3"]


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyDetector(nn.Module):
    """Stem at full resolution, two downsamplings; a head per scale and a pooled classifier.

    Like YOLO's ``Detect`` it caches the last input shape in ``self.shape`` (which pins the batch axis in a
    ``torch.export`` capture after any earlier run, unless the exporter clears the cache).
    """

    def __init__(self, as_dict: bool = False, classes: int = 5):
        super().__init__()
        self.as_dict = as_dict
        self.stem, self.down1, self.down2 = conv_bn(3, 8), conv_bn(8, 16, 2), conv_bn(16, 16, 2)
        self.p3, self.p4, self.p5 = nn.Conv2d(8, 6, 1), nn.Conv2d(16, 6, 1), nn.Conv2d(16, 6, 1)
        self.fc = nn.Linear(16, classes)
        self.shape = None

    def forward(self, x):
        if self.shape != x.shape:
            self.shape = x.shape
        a = self.stem(x)
        b = self.down1(a)
        c = self.down2(b)
        y = self.fc(c.mean((2, 3)))
        heads = [self.p3(a), self.p4(b), self.p5(c)]
        if self.as_dict:
            return {"scores": y, "boxes": heads[2].flatten(2).transpose(1, 2)}
        return y, heads


def make(as_dict: bool = False, seed: int = 0) -> nn.Module:
    return randomize_model(TinyDetector(as_dict), seed).eval()


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(a).max())


def torch_outputs(model: nn.Module, x: np.ndarray, names=None) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {k: v.numpy() for k, v in named_outputs(model(torch.from_numpy(x)), names).items()}


@pytest.fixture(scope="module")
def nested_onnx(tmp_path_factory):
    model = make()
    path = tmp_path_factory.mktemp("multi") / "det.onnx"
    res = export_onnx(model, path, SIZE, metadata={"arch": "tiny-detector"})
    return model, path, res


# -------------------------------------------------------------------------------------------- ONNX export


def test_onnx_export_names_every_output_by_the_rule(nested_onnx):
    _, path, res = nested_onnx
    proto = onnx.load(str(path))
    assert [o.name for o in proto.graph.output] == NESTED_NAMES == res.output_names
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["acmix_deploy.output_names"]) == NESTED_NAMES
    assert "acmix_deploy.output_name" not in meta  # the single-output key only where there is one output
    for out in proto.graph.output:  # the dynamic batch axis on every output
        assert out.type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_matches_torch_on_every_output(nested_onnx, batch):
    model, path, _ = nested_onnx
    x = np.random.default_rng(batch).standard_normal((batch, *SIZE)).astype(np.float32)
    ref = torch_outputs(model, x)
    got = OrtRunner(path).infer_outputs(x)
    assert len(got) == len(ref) == 4
    for (name, a), b in zip(ref.items(), got):
        assert a.shape == b.shape and a.shape[0] == batch, name
        assert rel(a, b) <= TOL_F32, name
    assert [g.shape[1:] for g in got] == [(5,), (6, 32, 48), (6, 16, 24), (6, 8, 12)]


def test_dict_outputs_take_their_keys_and_override_names(tmp_path):
    model = make(as_dict=True)
    res = export_onnx(model, tmp_path / "d.onnx", SIZE)
    assert res.output_names == ["scores", "boxes"]
    x = np.random.default_rng(0).standard_normal((2, *SIZE)).astype(np.float32)
    runner = OrtRunner(res.path)
    assert runner.output_names == ["scores", "boxes"]
    for (name, a), b in zip(torch_outputs(model, x).items(), runner.infer_outputs(x)):
        assert rel(a, b) <= TOL_F32, name

    renamed = export_onnx(make(), tmp_path / "n.onnx", SIZE, output_names=["cls", "p3", "p4", "p5"])
    assert [o.name for o in onnx.load(str(renamed.path)).graph.output] == ["cls", "p3", "p4", "p5"]
    with pytest.raises(ConfigError, match="gives 2 name"):
        export_onnx(make(), tmp_path / "bad.onnx", SIZE, output_names=["a", "b"])
    assert not (tmp_path / "bad.onnx").exists()


def test_single_output_file_keeps_its_names_and_keys(tmp_path):
    model = nn.Sequential(conv_bn(3, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    res = export_onnx(randomize_model(model).eval(), tmp_path / "one.onnx", SIZE)
    proto = onnx.load(str(res.path))
    assert [o.name for o in proto.graph.output] == ["logits"] and [i.name for i in proto.graph.input] == ["images"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["acmix_deploy.output_name"] == "logits" and json.loads(meta["acmix_deploy.output_names"]) == ["logits"]
    x = np.zeros((1, *SIZE), np.float32)
    r = OrtRunner(res.path)
    assert r.infer(x).shape == (1, 3) and len(r.infer_outputs(x)) == 1


# ------------------------------------------------------------------------------------------------ runners


def test_infer_refuses_a_model_with_several_outputs(nested_onnx):
    model, path, _ = nested_onnx
    x = np.zeros((1, *SIZE), np.float32)
    for runner in (OrtRunner(path), TorchRunner(model)):
        with pytest.raises(AcmixDeployError, match="4 outputs.*infer_outputs"):
            runner.infer(x)
        assert len(runner.infer_outputs(x)) == 4


def test_runner_specs_list_every_output(nested_onnx):
    model, path, _ = nested_onnx
    f32 = np.float32
    want = (TensorSpec("output0", ("batch", 5), f32), TensorSpec("output1", ("batch", 6, 32, 48), f32),
            TensorSpec("output2", ("batch", 6, 16, 24), f32), TensorSpec("output3", ("batch", 6, 8, 12), f32))
    loaded = open_runner(path)
    assert loaded.output_specs == want and loaded.output_names == NESTED_NAMES
    assert loaded.input_specs == (TensorSpec("images", ("batch", *SIZE), f32),)
    with pytest.raises(AcmixDeployError, match="has 4 outputs .*output_spec returns a single output: use output_specs"):
        loaded.output_spec
    # The torch runner of the same model: the same specs, from a run on zeros.
    assert TorchRunner(model, input_size=SIZE).output_specs == want
    with pytest.raises(ConfigError):
        open_runner(path, imgsz=(32, 0))


# ------------------------------------------------------------------------------------------------ compare


def test_compare_checks_every_output(nested_onnx):
    model, path, _ = nested_onnx
    rows = compare_runners(TorchRunner(model, name="torch"), [OrtRunner(path)], random_inputs(SIZE, (1, 3)))
    assert [(r.batch, r.output) for r in rows] == [(b, n) for b in (1, 3) for n in NESTED_NAMES]
    assert all(isinstance(r, Comparison) and r.diff.rel <= TOL_F32 for r in rows)


class _Tampered:
    """A runner whose one output (``index``) is perturbed: a mismatch that only per-output checks catch."""

    def __init__(self, inner, index: int, scale: float = 1e-2):
        self.inner, self.index, self.scale = inner, index, scale
        self.name, self.output_names = f"tampered:{inner.name}", inner.output_names

    def infer_outputs(self, x):
        outs = [o.copy() for o in self.inner.infer_outputs(x)]
        outs[self.index] += self.scale * np.abs(outs[self.index]).max()
        return outs


@pytest.mark.parametrize("index", [0, 3])
def test_compare_reports_the_wrong_output(nested_onnx, index):
    model, path, _ = nested_onnx
    rows = compare_runners(TorchRunner(model), [_Tampered(OrtRunner(path), index)], random_inputs(SIZE, (2,)))
    bad = [r.output for r in rows if not r.diff.rel <= 1e-4]
    assert bad == [NESTED_NAMES[index]]


def test_compare_refuses_another_number_of_outputs(nested_onnx, tmp_path):
    model, path, _ = nested_onnx
    other = export_onnx(make(as_dict=True), tmp_path / "d.onnx", SIZE)
    with pytest.raises(EquivalenceError, match="returns 2 output"):
        compare_runners(TorchRunner(model), [OrtRunner(other.path)], random_inputs(SIZE, (1,)))


# --------------------------------------------------------------------------------------------- validation


def _validator(model, tol=1e-4):
    """The check a Triton repository runs on its exported file when given no other: every output against
    ``model`` in torch, the worst must pass."""
    from acmix_deploy.exporters.triton_repository import _torch_check
    from acmix_deploy.verify import verify_artifact

    return _torch_check(verify_artifact, model, SIZE, {}, tol)


def test_validation_passes_and_fails_on_one_wrong_output(tmp_path):
    model = make()
    export_onnx(model, tmp_path / "ok.onnx", SIZE, validate=_validator(model))  # the real model passes
    assert (tmp_path / "ok.onnx").exists()
    # A reference whose p5 head differs (other weights in that head only): the export must fail, write nothing.
    tampered = make()
    with torch.no_grad():
        tampered.p5.weight.mul_(1.5)
    with pytest.raises(EquivalenceError, match="output3"):
        export_onnx(model, tmp_path / "bad.onnx", SIZE, validate=_validator(tampered))
    assert not (tmp_path / "bad.onnx").exists()


def test_export_driver_validation_fails_on_one_wrong_output(tmp_path, monkeypatch):
    """The driver's validator (export_model), with the checkpoint step replaced by the in-memory model, and ONNX
    Runtime returning one head perturbed: the export fails with the rows, names the output, writes nothing."""
    import acmix_deploy.exporters.driver as driver
    import acmix_deploy.pipeline as pipeline
    import acmix_deploy.verify as verify
    from acmix_deploy import export_model
    from acmix_deploy.exporters import ExportOptions

    model = make()
    model.default_cfg = {"input_size": SIZE}

    class Loaded:
        arch, arch_args, deploy = "tiny-detector", {}, True

    def fake_prepare(path, arch=None, imgsz=None, **kw):
        return pipeline.Prepared(Loaded(), None, model, SIZE, 0.0, None)

    monkeypatch.setattr(driver, "prepare_deploy", fake_prepare)
    ckpt = tmp_path / "det.pth"
    ckpt.write_bytes(b"stand-in: prepare_deploy is replaced")
    res = export_model(ckpt, ExportOptions(output=tmp_path / "ok.onnx", output_names=["cls", "p3", "p4", "p5"]))
    assert {r.output for r in res.rows} == {"cls", "p3", "p4", "p5"} and res.artifact.output_names[0] == "cls"

    real = verify.OrtRunner
    monkeypatch.setattr(verify, "OrtRunner", lambda p, *a, **k: _Tampered(real(p, *a, **k), 2))
    with pytest.raises(EquivalenceError, match="output p4 differs") as err:
        export_model(ckpt, ExportOptions(output=tmp_path / "bad.onnx", output_names="cls,p3,p4,p5"))
    assert not (tmp_path / "bad.onnx").exists()
    assert any(r.output == "p4" and r.diff.rel > 1e-3 for r in err.value.rows)


# ------------------------------------------------------------------------------------------------- Triton


def test_triton_config_lists_every_output(tmp_path):
    pytest.importorskip("google.protobuf.text_format", reason="protobuf is needed to parse config.pbtxt")
    pytest.importorskip("tritonclient", reason="tritonclient ships Triton's model_config.proto")
    from google.protobuf import text_format

    from acmix_deploy.exporters.triton_repository import write_onnx_file_repository, write_onnx_repository

    from tests.helpers.triton_config import load_model_config_pb2

    pb2 = load_model_config_pb2()
    from acmix_deploy.verify import verify_artifact

    res = write_onnx_repository(make(), tmp_path / "repo", "det", SIZE, max_batch=4,
                                output_names=["cls", "p3", "p4", "p5"], verify=verify_artifact)
    cfg = text_format.Parse((res.model_dir / "config.pbtxt").read_text(), pb2.ModelConfig())
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [
        ("cls", pb2.TYPE_FP32, [5]), ("p3", pb2.TYPE_FP32, [6, 32, 48]), ("p4", pb2.TYPE_FP32, [6, 16, 24]),
        ("p5", pb2.TYPE_FP32, [6, 8, 12])]
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("images", [3, 32, 48])]
    assert res.validation_rel_error is not None and res.validation_rel_error <= 1e-4

    again = write_onnx_file_repository(res.model_dir / "1" / "model.onnx", tmp_path / "repo", "det2", max_batch=2)
    cfg2 = text_format.Parse(again.config_text, pb2.ModelConfig())
    assert [o.name for o in cfg2.output] == ["cls", "p3", "p4", "p5"] and cfg2.max_batch_size == 2


def test_triton_engine_config_from_a_sidecar_with_several_outputs(tmp_path):
    pytest.importorskip("google.protobuf.text_format", reason="protobuf is needed to parse config.pbtxt")
    pytest.importorskip("tritonclient", reason="tritonclient ships Triton's model_config.proto")
    from google.protobuf import text_format

    from acmix_deploy.exporters.triton_repository import write_engine_repository

    from tests.helpers.fakes import fake_engine
    from tests.helpers.triton_config import load_model_config_pb2

    pb2 = load_model_config_pb2()
    engine = fake_engine(tmp_path / "e", "det", "9.0", output_shape=[-1, 5], output_names=["cls", "boxes"],
                         output_shapes=[[-1, 5], [-1, 96, 6]])
    res = write_engine_repository(engine, tmp_path / "repo", "det")
    cfg = text_format.Parse(res.config_text, pb2.ModelConfig())
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("cls", [5]), ("boxes", [96, 6])]


def test_engine_sidecar_lists_every_output(tmp_path, monkeypatch):
    from acmix_deploy.exporters import tensorrt as trt_export
    from acmix_deploy.artifacts.tensorrt import GpuInfo, read_sidecar
    from acmix_deploy.exporters.tensorrt import BatchProfile, build_engine

    from tests.helpers.fakes import fake_tensorrt

    monkeypatch.setattr(trt_export, "current_gpu", lambda index=0: GpuInfo("NVIDIA H200", "9.0"))
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"graph")
    build_engine(onnx_path, tmp_path / "m.engine", SIZE, BatchProfile(1, 2, 8), trt=fake_tensorrt("10.13.0.35"),
                 output_names=["cls", "boxes"], output_shapes=[[-1, 5], [-1, 96, 6]])
    side = read_sidecar(tmp_path / "m.engine")
    assert (side.output_name, side.output_names, side.all_output_names) == ("cls", ["cls", "boxes"], ["cls", "boxes"])
    assert side.output_shape == [-1, 5] and side.output_shapes == [[-1, 5], [-1, 96, 6]]


# ----------------------------------------------------------------------------- reduced precision, AOTInductor


def test_fp16_and_int8_graphs_keep_every_output(tmp_path):
    """float16 (I/O kept float32) within 2e-2 of torch on each output; int8 Q/DQ keeps all outputs, named."""
    model = make()
    x = np.random.default_rng(1).standard_normal((2, *SIZE)).astype(np.float32)
    ref = torch_outputs(model, x)
    f16 = export_onnx(model, tmp_path / "h.onnx", SIZE, fp16=True)
    got = OrtRunner(f16.path).infer_outputs(x)
    assert f16.output_names == NESTED_NAMES and all(g.dtype == np.float32 for g in got)
    for (name, a), b in zip(ref.items(), got):
        assert rel(a, b) <= 2e-2, name

    calib = np.random.default_rng(2).standard_normal((16, *SIZE)).astype(np.float32)
    q = export_onnx(model, tmp_path / "q.onnx", SIZE, int8_calibration=calib)
    proto = onnx.load(str(q.path))
    assert [o.name for o in proto.graph.output] == NESTED_NAMES
    assert "QuantizeLinear" in q.op_histogram
    got = OrtRunner(q.path).infer_outputs(x)
    assert [g.shape for g in got] == [a.shape for a in ref.values()]
    assert all(rel(a, b) <= 0.5 for a, b in zip(ref.values(), got))  # int8 of random weights: coarse, but the same heads


def test_aoti_package_returns_every_output(tmp_path):
    from acmix_deploy.exporters.aoti import export_aoti
    from acmix_deploy.runtime import AotiRunner

    model = make(as_dict=True)
    checked = []

    def validate(tmp):
        rows = compare_runners(TorchRunner(model), [AotiRunner(tmp)], random_inputs(SIZE, (1, 3)))
        checked.extend(rows)
        assert all(r.diff.rel <= TOL_F32 for r in rows)

    with torch.no_grad():
        model(torch.zeros(2, *SIZE))  # an earlier run leaves the shape cache set, as a fold check does
    res = export_aoti(model, tmp_path / "d.pt2", SIZE, max_batch=4, validate=validate)
    assert res.output_names == ["scores", "boxes"] and {r.output for r in checked} == {"scores", "boxes"}
    runner = AotiRunner(res.path)
    assert runner.output_names == ["scores", "boxes"]
    with pytest.raises(AcmixDeployError, match="2 outputs"):
        runner.infer(np.zeros((1, *SIZE), np.float32))
    loaded = open_runner(res.path)
    assert loaded.output_specs == (TensorSpec("scores", ("batch", 5), np.float32),
                                   TensorSpec("boxes", ("batch", 96, 6), np.float32))
    assert loaded.batch_range == (1, 4) and loaded.input_spec == TensorSpec("images", ("batch", *SIZE), np.float32)


# ------------------------------------------------------------------------------------------------ profile


def test_profile_times_a_model_with_several_outputs(nested_onnx):
    from acmix_deploy.profiling import ProfileSettings, profile_model

    _, path, _ = nested_onnx
    report = profile_model(path, ProfileSettings(batches=(1, 2), warmup=1, iters=2, layers=True, imgsz=(32, 48)))
    assert [r["batch"] for r in report["results"]] == [1, 2]
    assert report["model"]["outputs"] == NESTED_NAMES and report["model"]["input_size"] == list(SIZE)
    with pytest.raises(ConfigError, match=r"32x48 inputs.*imgsz 48x32"):
        profile_model(path, ProfileSettings(imgsz=(48, 32), iters=1))  # the old check let a swapped pair through


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_output_names_on_a_registry_model(tmp_path):
    """--output-names renames the one output of a registry model; a wrong count is refused, nothing written."""
    from typer.testing import CliRunner

    import acmix_deploy as ad
    from acmix_deploy.cli import app

    ckpt = ad.save_checkpoint(randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=4), 3).eval(),
                              tmp_path / "tiny.pth")
    out = tmp_path / "tiny.onnx"
    res = CliRunner().invoke(app, ["export", str(ckpt), "-o", str(out), "--output-names", "probs"])
    assert res.exit_code == 0, res.output
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["probs"]
    assert open_runner(out).output_spec == TensorSpec("probs", ("batch", 4), np.float32)
    bad = CliRunner().invoke(app, ["export", str(ckpt), "-o", str(tmp_path / "b.onnx"), "--output-names", "a,b"])
    assert bad.exit_code == 2 and "gives 2 name(s), but the model returns 1 tensor(s)" in " ".join(bad.output.split())
    assert not (tmp_path / "b.onnx").exists()
    dup = CliRunner().invoke(app, ["export", str(ckpt), "--output-names", "a,a"])
    assert dup.exit_code == 2 and "unique" in dup.output


def test_cli_chain_for_a_user_detector_checkpoint(tmp_path):
    """A YOLO-style user network (tests/user_nets.py, three heads) folded by ``reparam --model-def`` into a
    checkpoint that records its definition, then ``export`` (ONNX), ``compare`` and ``export --format triton``:
    every output named, checked and listed."""
    import shutil
    from pathlib import Path

    from typer.testing import CliRunner

    from acmix_deploy.cli import app

    from tests import user_nets

    shutil.copy(Path(user_nets.__file__), tmp_path / "user_nets.py")
    torch.save({"model": randomize_model(user_nets.yolo_acmix(), 0).state_dict()}, tmp_path / "w.pth")
    cli = CliRunner()
    deploy = tmp_path / "w.deploy.pth"
    res = cli.invoke(app, ["reparam", str(tmp_path / "w.pth"), "--model-def", f"{tmp_path / 'user_nets.py'}:yolo_acmix",
                           "--imgsz", "128", "160", "-o", str(deploy)])
    assert res.exit_code == 0, res.output
    onnx_path = tmp_path / "w.onnx"
    res = cli.invoke(app, ["export", str(deploy), "-o", str(onnx_path), "--output-names", "p3,p4,p5"])
    assert res.exit_code == 0, res.output
    assert [o.name for o in onnx.load(str(onnx_path)).graph.output] == ["p3", "p4", "p5"]
    assert [o.item_shape for o in open_runner(onnx_path).output_specs] == [(7, 16, 20), (7, 8, 10), (7, 4, 5)]
    res = cli.invoke(app, ["compare", str(deploy), str(onnx_path)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert all(name in res.output for name in ("p3", "p4", "p5"))
    res = cli.invoke(app, ["export", str(deploy), "--format", "triton", "-o", str(tmp_path / "repo"), "--name", "yolo"])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "repo" / "yolo" / "config.pbtxt").read_text()
    assert all(f'name: "output{i}"' in text for i in range(3))
