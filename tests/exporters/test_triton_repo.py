"""Triton model repositories: layout, atomic writing, and config.pbtxt parsed with Triton's own protobuf schema.

The schema is ``model_config.proto`` as generated Python (``model_config_pb2``),
shipped inside ``tritonclient/grpc``.  Importing ``tritonclient.grpc`` would pull
grpcio, which the HTTP client does not need, so the generated module is loaded
from its file; it needs only ``protobuf``.

With a real ``tritonserver`` binary (``$TRITONSERVER_BIN`` or on ``PATH``), the
generated repositories are also put through Triton's own repository poll.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import acmix_deploy as ad
from acmix_deploy.cli import app
from acmix_deploy.errors import ConfigError, ExportError
from acmix_deploy.exporters import FORMATS
from acmix_deploy.exporters.triton_repository import (
    TritonModelConfig,
    model_config_text,
    write_engine_repository,
    write_model_dir,
)
from acmix_deploy.exporters.onnx import NCHWC_BLOCK, conv_group_merge
from acmix_deploy.modules.acmix import ACmixDeploy
from acmix_deploy.testing import randomize_model
from acmix_deploy.util import detect_cpu

pytest.importorskip("onnxruntime", reason="the ONNX repository is validated with ONNX Runtime")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'acmix-deploy[onnx]')")
text_format = pytest.importorskip("google.protobuf.text_format", reason="protobuf is needed to parse config.pbtxt")
tritonclient = pytest.importorskip("tritonclient", reason="tritonclient ships Triton's model_config.proto")

from tests.helpers.fakes import fake_engine  # noqa: E402
from tests.helpers.triton_config import load_model_config_pb2, parse  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def pb2():
    return load_model_config_pb2()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=6), 7).eval()
    path = ad.save_checkpoint(model, tmp_path_factory.mktemp("triton") / "tiny.pth")
    return path, model


@pytest.fixture(scope="module")
def onnx_repo(tiny):
    path, _ = tiny
    repo = path.parent / "repo"
    res = runner.invoke(app, ["export", str(path), "--format", "triton", "-o", str(repo), "--name", "acmix",
                              "--max-batch", "4", "--instances", "2"])
    assert res.exit_code == 0, res.output
    assert re.search(r"vs torch .*relative error \d", res.output)
    return repo


def test_format_table_lists_triton():
    assert "triton" in FORMATS and FORMATS["triton"].extra == "onnx"


def test_onnx_repository_layout_and_config(onnx_repo, tiny, pb2):
    _, model = tiny
    assert sorted(p.relative_to(onnx_repo).as_posix() for p in onnx_repo.rglob("*")) == [
        "acmix", "acmix/1", "acmix/1/model.onnx", "acmix/config.pbtxt"]
    cfg = parse(pb2, (onnx_repo / "acmix" / "config.pbtxt").read_text())
    assert cfg.name == "acmix" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 4
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("images", pb2.TYPE_FP32, [3, 32, 32])]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [("logits", pb2.TYPE_FP32, [6])]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 1000
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, pb2.ModelInstanceGroup.KIND_CPU)]
    assert not cfg.cc_model_filenames

    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_repo / "acmix" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)  # max_batch_size rows
    with torch.no_grad():
        ref = ad.reparameterize_model(model)(torch.from_numpy(x)).numpy()
    y = sess.run(None, {"images": x})[0]
    assert float(np.abs(y - ref).max() / np.abs(ref).max()) <= 1e-4


def test_conv_path_groups_follow_the_instance_kind(onnx_repo, tiny, tmp_path, pb2):
    # CPU instances (ONNX Runtime's CPU kernels) get conv-path groups merged for the exporting machine's ISA;
    # GPU instances the compact ones.
    def groups(model_onnx):  # what the metadata says, and the conv path groups the graph has
        proto = onnx.load(model_onnx)
        conv_groups = {a.i for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute
                       if a.name == "group" and a.i > 1}
        return {p.key: p.value for p in proto.metadata_props}["acmix_deploy.conv_path_groups"], conv_groups

    path, model = tiny
    blocks = [m for m in ad.reparameterize_model(model).modules() if isinstance(m, ACmixDeploy)]
    compact = {m.head_dim for m in blocks} - {1}  # a conv of 1 group has no group attribute above 1
    isa = detect_cpu().isa
    merged = {m.head_dim // conv_group_merge(m.head, m.head_dim, isa) for m in blocks} - {1}
    if isa in NCHWC_BLOCK:
        assert merged != compact
        assert groups(onnx_repo / "acmix" / "1" / "model.onnx") == (f"merged into {NCHWC_BLOCK[isa]}-channel groups",
                                                                     merged)
    else:
        assert groups(onnx_repo / "acmix" / "1" / "model.onnx") == ("compact", compact)
    res = runner.invoke(app, ["export", str(path), "--format", "triton", "-o", str(tmp_path / "gpu"),
                              "--name", "acmix", "--device", "cuda"])
    assert res.exit_code == 0, res.output
    cfg = parse(pb2, (tmp_path / "gpu" / "acmix" / "config.pbtxt").read_text())
    assert [g.kind for g in cfg.instance_group] == [pb2.ModelInstanceGroup.KIND_GPU]
    assert groups(tmp_path / "gpu" / "acmix" / "1" / "model.onnx") == ("compact", compact)


def test_existing_model_dir_is_refused(onnx_repo, tiny):
    path, _ = tiny
    config = onnx_repo / "acmix" / "config.pbtxt"
    before = config.read_text()
    res = runner.invoke(app, ["export", str(path), "--format", "triton", "-o", str(onnx_repo), "--name", "acmix"])
    assert res.exit_code == 2 and "--force" in res.output
    assert config.read_text() == before and sorted(p.name for p in onnx_repo.iterdir()) == ["acmix"]


def test_force_replaces_a_model_dir_whole(tmp_path, pb2):
    first = write_engine_repository(fake_engine(tmp_path / "e1", "a", "8.6"), tmp_path / "repo", "m", max_batch=4)
    (first.model_dir / "1" / "stale.txt").write_text("from the old version")
    with pytest.raises(ConfigError, match="pass force to replace it"):
        write_engine_repository(fake_engine(tmp_path / "e2", "b", "9.0"), tmp_path / "repo", "m")
    second = write_engine_repository(tmp_path / "e2" / "b.engine", tmp_path / "repo", "m", max_batch=2, force=True)
    assert parse(pb2, second.config_text).max_batch_size == 2
    assert sorted(p.name for p in (second.model_dir / "1").iterdir()) == ["engines.json", "model.plan"]
    assert (second.model_dir / "1" / "model.plan").read_bytes() == b"plan for sm9.0"
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["m"]  # no temporary directories left


def test_failed_write_leaves_nothing(tmp_path):
    def fill(version_dir: Path):
        (version_dir / "model.onnx").write_bytes(b"partial")
        raise ExportError("validation failed")

    with pytest.raises(ExportError):
        write_model_dir(tmp_path / "repo", "m", "name: \"m\"\n", fill)
    assert list((tmp_path / "repo").iterdir()) == []


@pytest.mark.parametrize("args,fragment", [
    (["--engine", "tensorflow"], "--engine"),
    (["--instances", "0"], "--instances"),
    (["--name", "a/b"], "model name"),
    (["--max-batch", "0"], "--max-batch"),
])
def test_cli_triton_bad_arguments(tiny, tmp_path, args, fragment):
    path, _ = tiny
    res = runner.invoke(app, ["export", str(path), "--format", "triton", "-o", str(tmp_path / "r"), *args])
    assert res.exit_code == 2 and fragment in res.output, res.output
    assert not (tmp_path / "r" / "tiny").exists()


# -- TensorRT plans (fake engine bytes: the repository writer copies them; no TensorRT needed) -----------------------

def test_engines_for_several_gpus_map_compute_capability_to_plan(tmp_path, pb2):
    engines = tmp_path / "engines"
    fake_engine(engines, "tiny_a100", "8.0")
    fake_engine(engines, "tiny_h100", "9.0", profiles=[{"min": [1, 3, 32, 32], "opt": [16, 3, 32, 32],
                                                        "max": [64, 3, 32, 32]}])
    res = runner.invoke(app, ["export", str(engines), "--format", "triton", "--engine", "trt",
                              "-o", str(tmp_path / "repo"), "--name", "tiny"])
    assert res.exit_code == 0, res.output
    model_dir = tmp_path / "repo" / "tiny"
    cfg = parse(pb2, (model_dir / "config.pbtxt").read_text())
    assert cfg.platform == "tensorrt_plan"
    assert dict(cfg.cc_model_filenames) == {"8.0": "model.sm80.plan", "9.0": "model.sm90.plan"}
    assert cfg.max_batch_size == 32  # every engine must take it: the smaller profile's max
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, pb2.ModelInstanceGroup.KIND_GPU)]
    assert list(cfg.input[0].dims) == [3, 32, 32] and list(cfg.output[0].dims) == [6]
    assert (model_dir / "1" / "model.sm80.plan").read_bytes() == b"plan for sm8.0"
    assert (model_dir / "1" / "model.sm90.plan").read_bytes() == b"plan for sm9.0"
    recorded = json.loads((model_dir / "1" / "engines.json").read_text())
    assert recorded["model.sm90.plan"]["source"] == "tiny_h100.engine"


def test_single_engine_is_model_plan_and_max_batch_caps(tmp_path, pb2):
    engine = fake_engine(tmp_path / "e", "tiny", "8.6")
    res = write_engine_repository(engine, tmp_path / "repo", "tiny", max_batch=4, instances=3)
    cfg = parse(pb2, res.config_text)
    assert cfg.max_batch_size == 4 and not cfg.cc_model_filenames
    assert [g.count for g in cfg.instance_group] == [3]
    assert (res.model_dir / "1" / "model.plan").read_bytes() == b"plan for sm8.6"


def test_output_shape_from_source_onnx_next_to_engine(tmp_path, pb2, onnx_repo):
    src = onnx_repo / "acmix" / "1" / "model.onnx"
    folder = tmp_path / "e"
    folder.mkdir()
    shutil.copyfile(src, folder / "tiny.onnx")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    fake_engine(folder, "tiny", "8.9", output_shape=None, onnx_sha256=digest)
    res = write_engine_repository(folder / "tiny.engine", tmp_path / "repo", "tiny")
    assert list(parse(pb2, res.config_text).output[0].dims) == [6]


@pytest.mark.parametrize("setup,error,fragment", [
    ("same_cc", ConfigError, "compute capability 9.0"),
    ("no_sidecar", ad.AcmixDeployError, "sidecar"),
    ("min_batch_2", ConfigError, "batch 1"),
    ("no_output_shape", ExportError, "output shape"),
    ("names_differ", ConfigError, "input_name"),
    ("bad_profiles", ad.AcmixDeployError, "profiles"),
])
def test_engine_repository_errors(tmp_path, setup, error, fragment):
    folder = tmp_path / "e"
    if setup == "same_cc":
        fake_engine(folder, "a", "9.0")
        fake_engine(folder, "b", "9.0")
    elif setup == "no_sidecar":
        fake_engine(folder, "a", "9.0").with_name("a.engine.json").unlink()
    elif setup == "min_batch_2":
        fake_engine(folder, "a", "9.0", profiles=[{"min": [2, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [8, 3, 32, 32]}])
    elif setup == "no_output_shape":
        fake_engine(folder, "a", "9.0", output_shape=None)
    elif setup == "names_differ":
        fake_engine(folder, "a", "9.0")
        fake_engine(folder, "b", "8.0", input_name="pixels")
    elif setup == "bad_profiles":
        fake_engine(folder, "a", "9.0", profiles=[{"min": [1, 3, 32], "opt": [1, 3, 32, 32], "max": [1, 3, 32, 32]}])
    with pytest.raises(error, match=fragment):
        write_engine_repository(folder, tmp_path / "repo", "m")
    assert not (tmp_path / "repo" / "m").exists()


def test_config_text_validates_and_static_model_has_no_batching(pb2):
    cfg = TritonModelConfig(name="m", platform="onnxruntime_onnx", input_name="images", output_name="logits",
                            input_dims=(1, 3, 32, 32), output_dims=(1, 6), max_batch_size=0)
    parsed = parse(pb2, model_config_text(cfg))
    assert parsed.max_batch_size == 0 and not parsed.HasField("dynamic_batching")
    with pytest.raises(ConfigError):
        model_config_text(TritonModelConfig(**{**cfg.__dict__, "instance_kind": "KIND_TPU"}))
    with pytest.raises(ConfigError):
        model_config_text(TritonModelConfig(**{**cfg.__dict__, "name": "../m"}))


# -- the real Triton server -------------------------------------------------------------------------------------------

def tritonserver_binary() -> Path | None:
    found = os.environ.get("TRITONSERVER_BIN") or shutil.which("tritonserver")
    return Path(found) if found and Path(found).is_file() else None


def test_real_tritonserver_accepts_the_generated_configs(onnx_repo, tmp_path):
    """Triton 2.51's repository poll validates each config.pbtxt (dims, batching, instance groups).

    The bundled server of nvidia-pytriton has only the Python backend, so our models then stop
    at "unable to find backend library" -- which is reached only after the config passed.  A
    broken config (preferred batch above max_batch_size) is rejected by the poll itself, showing
    that the check can fail.
    """
    binary = tritonserver_binary()
    if binary is None:
        pytest.skip("no tritonserver binary (set TRITONSERVER_BIN, e.g. the one bundled in nvidia-pytriton)")
    repo = tmp_path / "repo"
    shutil.copytree(onnx_repo, repo)
    write_engine_repository(fake_engine(tmp_path / "e", "t", "9.0"), repo, "plans")
    shutil.copytree(repo / "acmix", repo / "broken")
    text = (repo / "broken" / "config.pbtxt").read_text().replace('name: "acmix"', 'name: "broken"')
    (repo / "broken" / "config.pbtxt").write_text(text.replace("max_batch_size: 4", "max_batch_size: 2"))
    ports = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s)
    http, grpc, metrics = (s.getsockname()[1] for s in ports)
    for s in ports:
        s.close()
    cmd = [str(binary), "--model-repository", str(repo), "--http-address", "127.0.0.1", "--http-port", str(http),
           "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc), "--metrics-port", str(metrics),
           "--allow-metrics", "false", "--exit-timeout-secs", "5"]
    backends = binary.parent.parent / "backends"
    if backends.is_dir():
        cmd += ["--backend-directory", str(backends)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0  # not every model loads here: no onnxruntime / tensorrt backend
    assert "Poll failed for model directory 'broken'" in log and "preferred size" in log
    assert "Poll failed for model directory 'acmix'" not in log
    assert "Poll failed for model directory 'plans'" not in log
    assert "failed to load 'acmix' version 1: Invalid argument: unable to find backend library for backend 'onnxruntime'" in log
    assert "failed to load 'plans' version 1: Invalid argument: unable to find backend library for backend 'tensorrt'" in log


def test_repository_from_an_existing_onnx_file(onnx_repo, tiny, tmp_path, pb2):
    src = tmp_path / "exported.onnx"
    shutil.copyfile(onnx_repo / "acmix" / "1" / "model.onnx", src)
    res = runner.invoke(app, ["export", str(src), "--format", "triton", "-o", str(tmp_path / "repo"), "--max-batch", "3"])
    assert res.exit_code == 0, res.output
    cfg = parse(pb2, (tmp_path / "repo" / "exported" / "config.pbtxt").read_text())
    assert (cfg.max_batch_size, list(cfg.input[0].dims), list(cfg.output[0].dims)) == (3, [3, 32, 32], [6])
    assert (tmp_path / "repo" / "exported" / "1" / "model.onnx").read_bytes() == src.read_bytes()

    from acmix_deploy.exporters import export_onnx

    static = tmp_path / "static.onnx"
    export_onnx(ad.reparameterize_model(tiny[1]), static, (3, 32, 32), batch=2, dynamic=False)
    res = runner.invoke(app, ["export", str(static), "--format", "triton", "-o", str(tmp_path / "repo")])
    assert res.exit_code == 0, res.output
    cfg = parse(pb2, (tmp_path / "repo" / "static" / "config.pbtxt").read_text())
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [2, 3, 32, 32] and list(cfg.output[0].dims) == [2, 6]
    assert not cfg.HasField("dynamic_batching")

    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    res = runner.invoke(app, ["export", str(tmp_path / "broken.onnx"), "--format", "triton", "-o", str(tmp_path / "repo")])
    assert res.exit_code == 2 and "broken.onnx" in res.output and not (tmp_path / "repo" / "broken").exists()


# -- the same requests against a real Triton and against our server ---------------------------------------------------

PROBE_MODEL_PY = '''\
import sys
sys.path[:0] = {site_packages!r}  # numpy of the environment the server came with
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "images").as_numpy()
            y = x.mean(axis=(2, 3)).astype(np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("logits", y)]))
        return responses
'''

PROBE_CONFIG = '''\
name: "probe"
backend: "python"
max_batch_size: 8
input [ { name: "images" data_type: TYPE_FP32 dims: [ 3, 4, 4 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 3 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
'''


def mean_runner():
    """The probe model in our server: per-channel mean, the same function as the Python-backend model in Triton."""
    from acmix_deploy.runtime import Runner, TensorSpec

    class MeanRunner(Runner):
        backend = "python"  # served with Triton's platform name of the probe model

        def _infer_impl(self, x):
            return [x.mean(axis=(2, 3)).astype(np.float32)]

    return MeanRunner("numpy:mean", "cpu", [TensorSpec("images", ("batch", 3, 4, 4), np.float32)],
                      [TensorSpec("logits", ("batch", 3), np.float32)])


def python_backend_dir(binary: Path, tmp_path: Path) -> tuple[Path, list[str]] | None:
    """A backend folder whose python backend has its stub, and the site-packages the stub should see."""
    root = binary.parent.parent
    if (root / "backends" / "python" / "triton_python_backend_stub").is_file():
        return root / "backends", []
    lib = root / "backends" / "python" / "libtriton_python.so"
    site = root.parents[1]  # nvidia-pytriton: <site-packages>/pytriton/tritonserver
    stubs = sorted((root / "python_backend_stubs").glob("*/triton_python_backend_stub"))
    if not lib.is_file() or not stubs or site.name != "site-packages":
        return None
    version = site.parent.name.removeprefix("python")  # the stub must match that environment's Python
    stub = next((s for s in stubs if s.parent.name == version), None)
    if stub is None:
        return None
    backends = tmp_path / "backends"
    (backends / "python").mkdir(parents=True)
    for f in (root / "backends" / "python").iterdir():
        if f.is_file():
            (backends / "python" / f.name).symlink_to(f)
    (backends / "python" / "triton_python_backend_stub").symlink_to(stub)  # a link keeps the stub's rpath
    return backends, [str(site)]


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_same_requests_against_real_triton_and_our_server(tmp_path):
    """Protocol conformance: tritonclient.http and ServingClient get the same answers, in the same
    response format, from a real Triton 2.51 (Python backend) and from our server, for one model."""
    tritonhttp = pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed")
    httpx = pytest.importorskip("httpx", reason="httpx not installed")
    pytest.importorskip("fastapi", reason="our server needs fastapi")
    import threading
    import time

    from acmix_deploy.serving import ServeSettings, ServingClient, bind_socket, build_server, create_app

    binary = tritonserver_binary()
    if binary is None:
        pytest.skip("no tritonserver binary (set TRITONSERVER_BIN, e.g. the one bundled in nvidia-pytriton)")
    found = python_backend_dir(binary, tmp_path)
    if found is None:
        pytest.skip(f"no usable Python backend (with its stub) next to {binary}")
    backends, site_packages = found
    repo = tmp_path / "repo"
    (repo / "probe" / "1").mkdir(parents=True)
    (repo / "probe" / "config.pbtxt").write_text(PROBE_CONFIG)
    (repo / "probe" / "1" / "model.py").write_text(PROBE_MODEL_PY.format(site_packages=site_packages))
    http, grpc = free_ports(2)
    log = tmp_path / "triton.log"
    with open(log, "w") as log_file:
        triton = subprocess.Popen(
            [str(binary), "--model-repository", str(repo), "--backend-directory", str(backends),
             "--http-address", "127.0.0.1", "--http-port", str(http), "--grpc-address", "127.0.0.1",
             "--grpc-port", str(grpc), "--allow-metrics", "false", "--exit-timeout-secs", "5"],
            stdout=log_file, stderr=subprocess.STDOUT)
    model = mean_runner()
    sock = bind_socket("127.0.0.1", 0)
    ours = build_server(create_app(model, ServeSettings(name="probe", port=0)), sock, log_level="warning")
    thread = threading.Thread(target=ours.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    urls = {"triton": f"127.0.0.1:{http}", "ours": f"127.0.0.1:{sock.getsockname()[1]}"}
    try:
        ServingClient("http://" + urls["ours"]).wait_ready(timeout_s=20)
        deadline = time.monotonic() + 60
        while not ServingClient("http://" + urls["triton"]).ready():
            if triton.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Triton did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

        x = np.random.default_rng(0).standard_normal((3, 3, 4, 4)).astype(np.float32)
        ref = x.mean(axis=(2, 3))
        meta, raw_json, raw_bin, errors = {}, {}, {}, {}
        for server, address in urls.items():
            meta[server] = ServingClient("http://" + address).metadata("probe")
            client = tritonhttp.InferenceServerClient(address)
            try:
                for binary_in in (True, False):
                    for binary_out in (True, False):
                        inp = tritonhttp.InferInput("images", list(x.shape), "FP32")
                        inp.set_data_from_numpy(x, binary_data=binary_in)
                        out = tritonhttp.InferRequestedOutput("logits", binary_data=binary_out)
                        got = client.infer("probe", [inp], outputs=[out], request_id="r1")
                        assert np.allclose(got.as_numpy("logits"), ref, rtol=1e-6, atol=1e-7), server
                        assert got.get_response()["id"] == "r1"
            finally:
                client.close()
            for use_binary in (True, False):
                got = ServingClient("http://" + address).infer("probe", x, binary=use_binary)
                assert np.allclose(got, ref, rtol=1e-6, atol=1e-7), server
            body = {"id": "j", "inputs": [{"name": "images", "datatype": "FP32", "shape": [3, 3, 4, 4],
                                           "data": x.reshape(-1).tolist()}]}
            raw_json[server] = httpx.post(f"http://{address}/v2/models/probe/infer", json=body).json()
            r = httpx.post(f"http://{address}/v2/models/probe/infer",
                           json={**body, "parameters": {"binary_data_output": True}})
            header = int(r.headers["Inference-Header-Content-Length"])
            raw_bin[server] = (json.loads(r.content[:header]), len(r.content) - header)
            errors[server] = [httpx.post(f"http://{address}/v2/models/{name}/infer", content=content)
                              for name, content in (("nope", b"{}"), ("probe", b"{not json"))]
    finally:
        ours.should_exit = True
        thread.join(10)
        sock.close()
        triton.terminate()
        try:
            triton.wait(timeout=20)
        except subprocess.TimeoutExpired:
            triton.kill()
            triton.wait()

    # the same metadata (Triton reports its platform "python" for this backend)
    assert meta["triton"] == meta["ours"]
    # the same JSON response, value for value, and the same binary response header
    for server in urls:
        data = raw_json[server]["outputs"][0].pop("data")
        assert np.allclose(data, ref.reshape(-1), rtol=1e-6, atol=1e-7)
    assert raw_json["triton"] == raw_json["ours"]
    assert raw_bin["triton"] == raw_bin["ours"]
    assert raw_bin["ours"][0]["outputs"][0]["parameters"] == {"binary_data_size": ref.nbytes}
    # errors: JSON {"error": ...}; unknown model is 4xx on both (Triton answers bad JSON with a 4xx or 5xx too)
    for server in urls:
        unknown, bad_json = errors[server]
        assert 400 <= unknown.status_code < 500 and set(unknown.json()) == {"error"}, server
        assert bad_json.status_code >= 400 and set(bad_json.json()) == {"error"}, server
