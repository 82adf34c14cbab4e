"""TensorRT export without a GPU: profiles, sidecars, mismatch refusal, CLI errors, and the builder's
configuration checked against a recording stand-in for the ``tensorrt`` module.

Building and running a real engine needs TensorRT and a CUDA GPU; that test skips with the reason
when either is missing.
"""

from __future__ import annotations

import enum
import importlib.util
import json
import os
import re
import types

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import acmix_deploy as ad
from acmix_deploy.cli import app
from acmix_deploy.errors import AcmixDeployError, ConfigError, ExportError
from acmix_deploy.artifacts.tensorrt import EngineSidecar, GpuInfo, check_sidecar, read_sidecar, sidecar_path, write_sidecar
from acmix_deploy.exporters import tensorrt as trt_export
from acmix_deploy.exporters.tensorrt import BatchProfile, build_engine, configure_builder, engine_profiles

from tests.helpers.fakes import fake_tensorrt

runner = CliRunner()
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


# ------------------------------------------------------------------------------------------- profiles


def test_profiles_defaults_and_static():
    assert engine_profiles(1, True) == BatchProfile(1, 1, 32)
    assert engine_profiles(8, True) == BatchProfile(1, 8, 32)
    assert engine_profiles(64, True) == BatchProfile(1, 64, 64)
    assert engine_profiles(4, True, min_batch=2, opt_batch=8, max_batch=16) == BatchProfile(2, 8, 16)
    assert engine_profiles(4, False) == BatchProfile(4, 4, 4)
    assert engine_profiles(4, False, max_batch=4) == BatchProfile(4, 4, 4)
    assert BatchProfile(1, 4, 8).shapes((3, 32, 32)) == ((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch=1, dynamic=True, min_batch=8, opt_batch=4), r"--min-batch \(8\) <= --opt-batch \(4\)"),
        (dict(batch=1, dynamic=True, opt_batch=16, max_batch=8), r"--opt-batch \(16\) <= --max-batch \(8\)"),
        (dict(batch=0, dynamic=True), "--batch must be a positive integer"),
        (dict(batch=1, dynamic=True, max_batch=-3), "--max-batch must be a positive integer"),
        (dict(batch=2, dynamic=False, min_batch=1), "--static builds for exactly --batch 2; drop --min-batch or use "
                                                    "--dynamic"),
        (dict(batch=1, dynamic=True, min_batch=4, opt_batch=8, max_batch=16), r"--batch 1 .* must lie in .* 4..16"),
    ],
)
def test_impossible_profiles(kwargs, message):
    """The message names the parameters (``min_batch``); the CLI spells the same error with its flags."""
    from acmix_deploy.cli._common import flag

    with pytest.raises(ConfigError) as info:
        engine_profiles(**kwargs)
    assert re.search(message, info.value.spell(flag)) and "--" not in str(info.value)
    python = message.replace("--static", "dynamic=False").replace("--dynamic", "dynamic=True")
    assert re.search(re.sub(r"--([a-z-]+)", lambda m: m[1].replace("-", "_"), python), str(info.value))


# -------------------------------------------------------------------------------------------- sidecar


def _sidecar(**kw) -> EngineSidecar:
    base = dict(
        tensorrt_version="10.13.0.35", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
        precision="fp16", typing="strong", input_name="images", output_name="logits", input_size=[3, 224, 224],
        profiles=[{"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [32, 3, 224, 224]}],
        onnx_sha256="ab" * 32, build_seconds=12.5,
    )
    base.update(kw)
    return EngineSidecar(**base)


def test_sidecar_round_trip(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    written = write_sidecar(engine, _sidecar())
    assert written == sidecar_path(engine) == tmp_path / "model.engine.json"
    back = read_sidecar(engine)
    assert back == _sidecar()
    assert (back.min_batch, back.max_batch) == (1, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine", "model.engine.json"]  # no temp files
    umask = os.umask(0)
    os.umask(umask)
    assert written.stat().st_mode & 0o777 == 0o666 & ~umask  # as an ordinary create, not mkstemp's 0600


def test_sidecar_errors(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(AcmixDeployError, match="has no sidecar model.engine.json"):
        read_sidecar(engine)
    side = sidecar_path(engine)
    side.write_text("{not json")
    with pytest.raises(AcmixDeployError, match="cannot read engine sidecar"):
        read_sidecar(engine)
    side.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(AcmixDeployError, match="not an acmix-deploy engine sidecar"):
        read_sidecar(engine)
    data = json.loads(json.dumps(_sidecar().__dict__))
    data["format_version"] = 99
    side.write_text(json.dumps(data))
    with pytest.raises(AcmixDeployError, match="newer than this acmix-deploy understands"):
        read_sidecar(engine)
    data["format_version"] = 1
    del data["compute_capability"]
    side.write_text(json.dumps(data))
    with pytest.raises(AcmixDeployError, match="lacks compute_capability"):
        read_sidecar(engine)


def test_mismatch_is_refused_naming_both():
    side = _sidecar()
    check_sidecar(side, "10.13.0.35", GpuInfo("NVIDIA H100 80GB HBM3", "9.0"))  # same: accepted
    with pytest.raises(AcmixDeployError) as err:
        check_sidecar(side, "10.13.0.35", GpuInfo("NVIDIA A100-SXM4-80GB", "8.0"), "m.engine")
    msg = str(err.value)
    assert "NVIDIA H100 80GB HBM3 (compute capability 9.0)" in msg and "NVIDIA A100-SXM4-80GB (compute capability 8.0)" in msg
    assert "refusing to load m.engine" in msg
    with pytest.raises(AcmixDeployError, match=r"built with TensorRT 10\.13\.0\.35, this machine has TensorRT 11\.0\.0"):
        check_sidecar(side, "11.0.0", GpuInfo("NVIDIA H100 80GB HBM3", "9.0"))
    # Same compute capability, another model (H100 vs H200): still refused, the tactics were timed on the other.
    with pytest.raises(AcmixDeployError, match="NVIDIA H200"):
        check_sidecar(side, "10.13.0.35", GpuInfo("NVIDIA H200", "9.0"))


# ------------------------------------------------------------------- builder against a recording stand-in


def _configure(trt, precision="fp32", typing="strong"):
    builder = trt.Builder(None)
    return configure_builder(trt, builder, b"onnx", "images", (3, 32, 32), BatchProfile(1, 4, 16), precision, typing,
                             1 << 30, 4, b"cache")


def test_builder_strong_typing_per_version():
    trt10 = fake_tensorrt("10.13.0.35")
    network, config, _ = _configure(trt10)
    assert network.flags == 1 << 5  # STRONGLY_TYPED requested explicitly on TensorRT 10
    assert trt10.BuilderFlag.TF32 in config.cleared and not config.flags
    assert config.profiles[0].shape == ("images", (1, 3, 32, 32), (4, 3, 32, 32), (16, 3, 32, 32))
    assert config.pool == {trt10.MemoryPoolType.WORKSPACE: 1 << 30}
    assert config.builder_optimization_level == 4 and config.cache.data == b"cache"
    trt11 = fake_tensorrt("11.2.0")
    network, config, _ = _configure(trt11, precision="fp16")
    assert network.flags == 0 and not config.flags  # strongly typed is the only kind: precision is in the graph


def test_builder_weak_typing_pins_attention_to_fp32():
    trt = fake_tensorrt("10.9.0")
    network, config, _ = _configure(trt, precision="int8", typing="weak")
    assert network.flags == 0
    assert {trt.BuilderFlag.FP16, trt.BuilderFlag.INT8, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS} <= config.flags
    pinned = {layer.type for layer in network.layers if layer.precision == "float32"}
    assert pinned == {trt.LayerType.SOFTMAX, trt.LayerType.REDUCE, trt.LayerType.NORMALIZATION}


def test_parser_errors_are_reported():
    trt = fake_tensorrt("10.9.0", parse_ok=False)
    with pytest.raises(ExportError, match="rejected the graph: Unsupported operator FancyOp"):
        _configure(trt)


# ------------------------------------------------------------------- runner against a stand-in engine


def fake_engine_module(profile, shapes: dict, dtypes: dict) -> types.ModuleType:
    """The stand-in ``tensorrt`` module with a runtime that deserializes to an engine of one input
    (``images``, optimization profile 0 = ``profile``) and the outputs in ``shapes`` (engine order), each of
    the TensorRT type named in ``dtypes`` (float32 when not named)."""
    trt = fake_tensorrt("10.13.0.35")
    trt.float16, trt.int32 = "float16", "int32"
    trt.TensorIOMode = enum.Enum("TensorIOMode", ["INPUT", "OUTPUT"])
    names = ["images", *shapes]

    class Engine:
        num_io_tensors = len(names)

        def get_tensor_name(self, i):
            return names[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "images" else trt.TensorIOMode.OUTPUT

        def get_tensor_profile_shape(self, name, index):
            assert (name, index) == ("images", 0)
            return profile

        def get_tensor_shape(self, name):
            return shapes[name]

        def get_tensor_dtype(self, name):
            return getattr(trt, dtypes.get(name, "float32"))

        def create_execution_context(self):
            return object()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return Engine()

    trt.Runtime = Runtime
    return trt


@pytest.mark.parametrize("profile,input_shape,batch_range", [
    (((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32)), ("batch", 3, 32, 32), (1, 8)),
    (((2, 3, 32, 32), (2, 3, 32, 32), (2, 3, 32, 32)), (2, 3, 32, 32), (2, 2)),  # one batch size: a fixed axis
    (((1, 3, 32, 32), (4, 3, 48, 48), (8, 3, 64, 64)), ("batch", 3, "height", "width"), (1, 8)),  # dynamic H, W
])
def test_trt_runner_specs_come_from_the_engine(tmp_path, monkeypatch, profile, input_shape, batch_range):
    """TrtRunner's specs (no TensorRT or GPU here): the input and batch range from optimization profile 0,
    the outputs in the sidecar's order with the engine's shapes; float16 outputs are returned (so described)
    as float32, integer outputs as they are.  Bad batches are refused before anything touches the GPU."""
    from types import SimpleNamespace

    from acmix_deploy.errors import InputShapeError
    from acmix_deploy.runtime import TensorSpec, TrtRunner
    from acmix_deploy.runtime import tensorrt as trt_runtime

    trt = fake_engine_module(profile, {"boxes": (-1, 96, 6), "logits": (-1, 5)}, {"boxes": "float16", "logits": "int32"})
    monkeypatch.setattr(trt_runtime, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_runtime, "current_gpu", lambda index=0: GpuInfo("NVIDIA H200", "9.0"))
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"PLAN")
    runner = TrtRunner(engine, check=False, sidecar=SimpleNamespace(all_output_names=["logits", "boxes"]))
    assert (runner.name, runner.backend, runner.device) == ("tensorrt:NVIDIA H200", "tensorrt", "cuda")
    assert runner.input_specs == (TensorSpec("images", input_shape, np.float32),)
    batch = input_shape[0]
    assert runner.output_specs == (TensorSpec("logits", (batch, 5), np.int32),
                                   TensorSpec("boxes", (batch, 96, 6), np.float32))
    assert runner.batch_range == batch_range
    with pytest.raises(InputShapeError, match=r"batch 9 is outside the engine's optimization profile"):
        runner.infer_outputs(np.zeros((9, 3, 32, 32), np.float32))
    with pytest.raises(InputShapeError, match="takes images of shape"):
        runner.infer_outputs(np.zeros((batch_range[0], 1, 32, 32), np.float32))
    with pytest.raises(AcmixDeployError, match="2 outputs"):
        runner.infer(np.zeros((batch_range[0], 3, 32, 32), np.float32))
    if input_shape[2] == "height":  # the size must lie in the profile too
        with pytest.raises(InputShapeError, match=r"size 16x48 is outside the engine's optimization profile "
                                                  r"32x32\.\.64x64"):
            runner.infer_outputs(np.zeros((1, 3, 16, 48), np.float32))


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(trt_export, "current_gpu", lambda index=0: GpuInfo("NVIDIA H200", "9.0"))


def test_build_engine_writes_plan_sidecar_and_cache(tmp_path, fake_gpu):
    trt = fake_tensorrt("10.13.0.35")
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"graph")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    seen = {}

    def validate(tmp, sidecar):
        seen["tmp"], seen["bytes"], seen["precision"] = tmp, tmp.read_bytes(), sidecar.precision

    res = build_engine(onnx_path, tmp_path / "m.engine", (3, 32, 32), BatchProfile(1, 2, 8), precision="fp16",
                       timing_cache=cache, workspace_gb=0.5, validate=validate, trt=trt, output_shape=[-1, 10])
    assert (tmp_path / "m.engine").read_bytes() == b"PLAN-BYTES"
    assert seen["bytes"] == b"PLAN-BYTES" and seen["tmp"] != tmp_path / "m.engine" and seen["precision"] == "fp16"
    side = read_sidecar(tmp_path / "m.engine")
    assert (side.gpu_name, side.compute_capability, side.tensorrt_version) == ("NVIDIA H200", "9.0", "10.13.0.35")
    assert side.profiles == [{"min": [1, 3, 32, 32], "opt": [2, 3, 32, 32], "max": [8, 3, 32, 32]}]
    assert side.output_shape == [-1, 10]
    assert side.workspace_bytes == 1 << 29 and len(side.engine_sha256) == 64 and len(side.onnx_sha256) == 64
    assert cache.read_bytes() == b"old+tuned"  # read before, written back after the build
    assert res.timing_cache == cache


def test_build_engine_replaces_the_sidecar_and_survives_an_unwritable_cache(tmp_path, fake_gpu):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"graph")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"old plan")
    write_sidecar(engine, _sidecar(gpu_name="an old GPU"))

    def fail_midway(tmp, sidecar):
        raise AcmixDeployError("outputs differ")

    with pytest.raises(AcmixDeployError):
        build_engine(onnx_path, engine, (3, 32, 32), BatchProfile(1, 1, 4), timing_cache=tmp_path / "c",
                     validate=fail_midway, trt=fake_tensorrt("10.13.0.35"))
    assert not sidecar_path(engine).exists()  # no sidecar left that could vouch for another plan
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.warns(UserWarning, match="could not save the TensorRT timing cache"):
        res = build_engine(onnx_path, engine, (3, 32, 32), BatchProfile(1, 1, 4), timing_cache=blocker / "cache",
                           trt=fake_tensorrt("10.13.0.35"))
    assert res.timing_cache is None and read_sidecar(engine).gpu_name == "NVIDIA H200"
    with pytest.raises(ConfigError, match="is a directory"):
        build_engine(onnx_path, engine, (3, 32, 32), BatchProfile(1, 1, 4), timing_cache=tmp_path,
                     trt=fake_tensorrt("10.13.0.35"))


def test_build_engine_failure_leaves_nothing(tmp_path, fake_gpu):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"graph")

    def reject(tmp, sidecar):
        raise AcmixDeployError("outputs differ")

    with pytest.raises(AcmixDeployError, match="outputs differ"):
        build_engine(onnx_path, tmp_path / "m.engine", (3, 32, 32), BatchProfile(1, 1, 4),
                     timing_cache=tmp_path / "c", validate=reject, trt=fake_tensorrt("10.13.0.35"))
    with pytest.raises(ExportError, match="could not build an engine"):
        build_engine(onnx_path, tmp_path / "m.engine", (3, 32, 32), BatchProfile(1, 1, 4),
                     timing_cache=tmp_path / "c", trt=fake_tensorrt("10.13.0.35", build_ok=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_build_engine_refuses_bad_requests(tmp_path, fake_gpu):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"graph")
    args = (onnx_path, tmp_path / "m.engine", (3, 32, 32), BatchProfile(1, 1, 4))
    with pytest.raises(ConfigError, match="strongly typed networks only"):
        build_engine(*args, typing="weak", trt=fake_tensorrt("11.0.0"))
    with pytest.raises(AcmixDeployError, match="needs TensorRT >= 10"):
        build_engine(*args, trt=fake_tensorrt("8.6.1"))
    with pytest.raises(ConfigError, match="opt_level must be 0..5"):
        build_engine(*args, opt_level=7, trt=fake_tensorrt("10.0.0"))
    with pytest.raises(ConfigError, match="workspace_gb must be positive"):
        build_engine(*args, workspace_gb=0, trt=fake_tensorrt("10.0.0"))


# ---------------------------------------------------------------------------------------------- CLI


@pytest.mark.skipif(HAVE_TRT, reason="checks the message shown where TensorRT or a GPU is missing")
def test_cli_trt_without_tensorrt_or_gpu(train_ckpt, tmp_path):
    path, _ = train_ckpt
    result = runner.invoke(app, ["export", str(path), "--trt", "-o", str(tmp_path / "m.engine")])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert out.startswith("error:") and "Traceback" not in out
    assert 'pip install "acmix-deploy[trt]"' in out or "needs a CUDA GPU" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.pth"]  # nothing half-written


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trt", "--min-batch", "8", "--opt-batch", "4"], "impossible batch range"),
        (["--trt", "--static", "--batch", "2", "--max-batch", "8"], "--static builds for exactly --batch 2"),
        (["--format", "aoti", "--min-batch", "2"], "--min-batch does not apply to --format aoti (--min-batch applies to --format engine)"),
        (["--format", "aoti", "--trt"], "--trt is --format engine"),
        (["--trt", "--opt-level", "9"], "--opt-level must be 0..5"),
        (["--trt", "--workspace", "0"], "--workspace must be positive"),
        (["--trt-weak-typing"], "--trt-weak-typing does not apply to --format onnx"),
        (["--trt", "-o", "/nonexistent-dir/m.engine"], "does not exist"),
        (["--trt", "-o", "m.onnx"], "written to a .engine or .plan file"),
        (["--trt", "--device", "tpu"], "--device must be cpu or cuda"),
        (["--instances", "2"], "--instances does not apply to --format onnx (--instances applies to --format triton)"),
        (["--format", "triton", "--fp16"], "--fp16 does not apply to --format triton"),
        (["--calib", "digits"], "add --int8"),
    ],
)
def test_cli_trt_argument_errors(train_ckpt, args, message):
    path, _ = train_ckpt
    result = runner.invoke(app, ["export", str(path), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_formats_table_lists_engine():
    result = runner.invoke(app, ["formats"])
    assert result.exit_code == 0
    assert "engine" in result.output and "--trt" in result.output and ".engine" in result.output


@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT and a CUDA GPU (pip install 'acmix-deploy[trt]' on a GPU machine)")
def test_real_engine_matches_torch(train_ckpt, tmp_path):
    from acmix_deploy.runtime.tensorrt import TrtRunner

    path, _ = train_ckpt
    out = tmp_path / "m.engine"
    result = runner.invoke(app, ["export", str(path), "--trt", "-o", str(out), "--max-batch", "4",
                                 "--timing-cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    trt_runner = TrtRunner(out)
    deploy = ad.reparameterize_model(ad.load_checkpoint(path))
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    ref = deploy(torch.from_numpy(x)).detach()
    diff = ad.compare_outputs(ref, torch.from_numpy(trt_runner.infer(x)))
    assert diff.rel <= 1e-4
