"""ONNX export, ONNX Runtime runner, comparator, and the export/compare CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

import acmix_deploy as ad
from acmix_deploy.errors import AcmixDeployError, ConfigError, ExportError, MissingDependencyError
from acmix_deploy.modules.acmix import ACmix, ACmixDeploy, merged_conv_groups
from acmix_deploy.modules.window_attention import TRANSPOSE_BY_PRODUCT_MAX_DIM
from acmix_deploy.testing import randomize_model

from tests.helpers import rel_error

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'acmix-deploy[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'acmix-deploy[onnx]')")
pytest.importorskip("onnxslim", reason="onnxslim is not installed (pip install 'acmix-deploy[onnx]')")

from acmix_deploy.cli import app  # noqa: E402
from acmix_deploy.compare import compare_runners, random_inputs  # noqa: E402
from acmix_deploy.exporters import export_onnx, unsupported_ops  # noqa: E402
from acmix_deploy.exporters.trt_ops import TENSORRT_ONNX_OPS  # noqa: E402
from acmix_deploy.exporters import ExportOptions  # noqa: E402
from acmix_deploy.exporters.driver import cpu_target_for  # noqa: E402
from acmix_deploy.exporters.onnx import conv_group_merge  # noqa: E402
from acmix_deploy.util import detect_cpu, require  # noqa: E402
from acmix_deploy.runtime import OrtRunner, TorchRunner  # noqa: E402

runner = CliRunner()
# ONNX Runtime fuses and reorders differently from torch; 1e-4 relative is the export tolerance.
TOL_ORT = 1e-4


@pytest.mark.parametrize("name,size", [("acmix_resnet_tiny", 32), ("resnet_tiny", 32), ("acmix_resnet_tiny", 48)])
def test_onnx_matches_training_form_with_dynamic_batch(tmp_path, name, size):
    train = randomize_model(ad.create_model(name), 1).eval()
    deploy = ad.reparameterize_model(train)
    res = export_onnx(deploy, tmp_path / "m.onnx", (3, size, size), metadata={"arch": name})
    proto = onnx.load(res.path)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not unsupported_ops(proto)
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["acmix_deploy.arch"] == name and json.loads(meta["acmix_deploy.input_shape"]) == ["batch", 3, size, size]
    rows = compare_runners(TorchRunner(train), [OrtRunner(res.path)], random_inputs((3, size, size), (1, 3)))
    assert [r.batch for r in rows] == [1, 3]
    assert all(r.diff.rel <= TOL_ORT and r.diff.top1_agreement == 1.0 for r in rows)


def test_deploy_graph_has_no_unfold_and_only_tensorrt_ops(tmp_path):
    deploy = ad.reparameterize_model(randomize_model(ad.create_model("acmix_resnet_tiny"), 0).eval())
    res = export_onnx(deploy, tmp_path / "m.onnx", (3, 32, 32))
    assert set(res.op_histogram) <= TENSORRT_ONNX_OPS
    assert "BatchNormalization" not in res.op_histogram and "Pad" not in res.op_histogram
    # 4 ACmix blocks, each with one Softmax and two MatMuls per group of attention tiles (>= 1 group),
    # plus the product that transposes q/k/v in blocks with small heads.
    by_product = sum(isinstance(m, ACmixDeploy) and m.head_dim <= TRANSPOSE_BY_PRODUCT_MAX_DIM for m in deploy.modules())
    assert by_product >= 1
    assert res.op_histogram["Softmax"] >= 4
    assert res.op_histogram["MatMul"] == 2 * res.op_histogram["Softmax"] + by_product


@pytest.mark.parametrize("heads,head_dim,avx512,avx2", [(4, 16, 4, 2), (4, 8, 4, 2), (4, 6, 1, 2), (8, 4, 2, 1),
                                                         (2, 16, 1, 4), (16, 2, 1, 1), (2, 2, 1, 1), (1, 8, 1, 1)])
def test_conv_group_merge_rule(heads, head_dim, avx512, avx2):
    # Merged groups have whole NCHWc blocks of output channels (h per original group): 16 with AVX-512, 8 with
    # AVX2, at most 4 groups per merge; none for generic CPUs and GPUs (None).
    assert conv_group_merge(heads, head_dim, "avx512") == avx512
    assert conv_group_merge(heads, head_dim, "avx2") == avx2
    assert conv_group_merge(heads, head_dim, "generic") == conv_group_merge(heads, head_dim, None) == 1


def _conv_path_node(proto):
    grouped = [n for n in proto.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(grouped) <= 1  # the conv path (a merge down to one group has no group attribute)
    return grouped


def test_plain_torch_onnx_export_gives_the_compact_groups():
    # No export policy in the module: outside merged_conv_groups (what a user calling torch.onnx.export gets)
    # the conv path keeps its head_dim groups; inside, the merge the caller asks for.
    import io
    import warnings

    deploy = randomize_model(ACmix(16, 32, kernel_att=3, head=4), 0).eval().fuse()
    x = torch.randn(1, 16, 9, 9)

    def groups(proto):
        return [a.i for n in _conv_path_node(proto) for a in n.attribute if a.name == "group"]

    def export():
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about the index tables entering as constants
            torch.onnx.export(deploy, (x,), buf, dynamo=False, opset_version=17)
        return onnx.load_from_string(buf.getvalue())

    assert groups(export()) == [8]
    with merged_conv_groups(lambda h, d: 2):
        assert groups(export()) == [4]
        with torch.inference_mode():  # eager runs the merged weights too: the same function
            assert rel_error(deploy.conv_path(deploy.qkv(x)), deploy._conv_path(deploy.qkv(x))) < 1e-6
    assert groups(export()) == [8]  # the setting does not leak out of the block


@pytest.mark.parametrize("heads,out_planes,stride,isa,merged_groups",
                         [(4, 32, 1, "avx512", 2), (4, 32, 2, "avx512", 2), (8, 64, 1, "avx512", 4),
                          (4, 32, 1, "avx2", 4), (4, 32, 2, "avx2", 4)])
def test_export_merges_the_conv_path_groups(tmp_path, heads, out_planes, stride, isa, merged_groups):
    train = randomize_model(ACmix(24, out_planes, kernel_att=5, head=heads, stride=stride), 3).eval()
    deploy = train.fuse()
    d = out_planes // heads
    assert deploy.conv_path.groups == d and d // conv_group_merge(heads, d, isa) == merged_groups
    size = (13, 11) if stride == 1 else (14, 10)  # odd sizes; the official stride 2 needs even ones
    x = torch.randn(3, 24, *size)
    with torch.inference_mode():
        ref = train(x)
        eager = deploy(x)  # eager torch keeps the compact groups
    assert rel_error(ref, eager) < 1e-5
    block = {"avx512": 16, "avx2": 8}[isa]
    for merge, groups in ((None, d), (isa, merged_groups)):  # compact first: the setting must not leak
        res = export_onnx(deploy, tmp_path / f"b{merge}.onnx", (24, *size), cpu_isa=merge)
        proto = onnx.load(res.path)
        inits = {t.name: t for t in proto.graph.initializer}
        grouped = [n for n in proto.graph.node if n.op_type == "Conv"
                   and any(a.name == "group" and a.i > 1 for a in n.attribute)]
        assert len(grouped) == 1  # the conv path; its weight is a constant of the graph, merged or compact
        assert [a.i for a in grouped[0].attribute if a.name == "group"] == [groups]
        assert list(inits[grouped[0].input[1]].dims) == [out_planes, 3 * out_planes // groups, 3, 3]
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["acmix_deploy.conv_path_groups"] == (f"merged into {block}-channel groups" if merge else "compact")
        assert meta.get("acmix_deploy.cpu_isa") == merge
        assert meta.get("acmix_deploy.softmax_floor") == ("row max - 30" if merge else None)
        if merge:
            assert json.loads(meta["acmix_deploy.export_cpu"])["isa"] in ("avx512", "avx2", "generic")
        out = torch.from_numpy(OrtRunner(res.path).infer(x.numpy()))
        assert rel_error(ref, out) < 1e-5
    assert deploy.conv_path.groups == d  # the module itself is untouched by the export


@pytest.mark.parametrize("fmt,device,target", [("onnx", "cpu", "auto"), ("onnx", "cuda", None), ("engine", "cuda", None),
                                               ("aoti", "cpu", None)])
def test_conv_groups_are_merged_only_for_onnx_runtime_on_the_cpu(fmt, device, target):
    # The TensorRT engine (and the ONNX file kept beside it) and ONNX files for a GPU keep the compact groups.
    assert cpu_target_for(ExportOptions(fmt=fmt, device=device)) == target


def test_export_onnx_refuses_an_unknown_cpu_isa(tmp_path):
    deploy = ad.create_model("resnet_tiny", deploy=True)
    with pytest.raises(ConfigError, match="cpu_isa"):
        export_onnx(deploy, tmp_path / "m.onnx", (3, 32, 32), cpu_isa="sse9")
    assert list(tmp_path.iterdir()) == []


class _UsesDet(nn.Module):  # Det is "N" in TensorRT 10's ONNX operator matrix (IsInf, refused by 8.4, is "Y")
    def forward(self, x):
        return torch.linalg.det(x[:, 0, :4, :4])


def test_unsupported_operator_is_refused_for_tensorrt_and_nothing_written(tmp_path):
    model = _UsesDet()
    model.register_parameter("p", nn.Parameter(torch.zeros(1)))
    with pytest.raises(ExportError, match="Det"):
        export_onnx(model, tmp_path / "m.onnx", (3, 4, 4), simplify=False, for_tensorrt=True)
    assert list(tmp_path.iterdir()) == []
    with pytest.warns(UserWarning, match="Det"):  # for ONNX Runtime it is written, with a warning
        export_onnx(model, tmp_path / "m.onnx", (3, 4, 4), simplify=False)


def test_static_batch(tmp_path):
    deploy = ad.create_model("resnet_tiny", deploy=True)
    res = export_onnx(deploy, tmp_path / "m.onnx", (3, 32, 32), batch=2, dynamic=False)
    dim = onnx.load(res.path).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 2 and not res.dynamic_batch


def test_validation_failure_leaves_nothing(tmp_path):
    deploy = ad.create_model("resnet_tiny", deploy=True)

    def reject(path):
        raise AcmixDeployError("rejected")

    with pytest.raises(AcmixDeployError, match="rejected"):
        export_onnx(deploy, tmp_path / "m.onnx", (3, 32, 32), validate=reject)
    assert list(tmp_path.iterdir()) == []


def test_require_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r'pip install "acmix-deploy\[trt\]"'):
        require("surely_not_an_installed_module", "trt")


@pytest.fixture
def train_ckpt_args():
    """This module's training checkpoint (conftest's train_ckpt): 6 classes, seed 3 (output shapes are asserted)."""
    return {"num_classes": 6, "seed": 3}


def test_cli_export_and_compare(train_ckpt, tmp_path):
    path, model = train_ckpt
    out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "onnxruntime:CPU" in result.output and f"wrote {out}" in result.output
    proto = onnx.load(out)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["acmix_deploy.source"] == "train.pth" and len(meta["acmix_deploy.source_sha256"]) == 64
    isa = detect_cpu().isa  # an ONNX file for the CPU is shaped for the exporting machine's by default
    assert meta["acmix_deploy.cpu_isa"] == isa
    assert meta["acmix_deploy.conv_path_groups"] == {"avx512": "merged into 16-channel groups",
                                                     "avx2": "merged into 8-channel groups"}.get(isa, "compact")
    result = runner.invoke(app, ["compare", str(path), str(out), "--batch", "1", "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert "torch:training" in result.output and "torch:deploy" in result.output and "model.onnx" in result.output
    result = runner.invoke(app, ["compare", str(path), str(out), "--tol", "1e-12"])
    assert result.exit_code == 1 and "comparison failed" in result.output


def test_cli_export_default_output_name(train_ckpt):
    path, _ = train_ckpt
    result = runner.invoke(app, ["export", str(path), "--static", "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert path.with_suffix(".onnx").exists()
    # A batch the static graph cannot take: refused by the runner before ONNX Runtime sees it, one line, exit 2.
    result = runner.invoke(app, ["compare", str(path), str(path.with_suffix(".onnx")), "--batch", "3"])
    out = " ".join(result.output.split())
    assert result.exit_code == 2 and "batch 3 is outside the ONNX model's batch range 2..2" in out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    "args,message,code",
    [
        (["export", "{tmp}/missing.pth"], "does not exist", 2),
        (["export", "{ckpt}", "--format", "tflite"], "unknown format 'tflite'; available: onnx, aoti", 2),
        (["export", "{ckpt}", "--opset", "9"], "--opset 9 is not supported", 2),
        (["export", "{ckpt}", "--batch", "0"], "--batch must be positive", 2),
        (["export", "{ckpt}", "-o", "{tmp}/no/dir/m.onnx"], "does not exist", 2),
        (["export", "{bare}", "--arch", "acmix_resnet26"], "does not match architecture acmix_resnet26", 2),
        (["export", "{ckpt}", "--tol", "1e-12"], "above --tol", 1),
        (["compare", "{ckpt}", "{tmp}/missing.onnx"], "does not exist", 2),
    ],
)
def test_cli_export_bad_input(train_ckpt, tmp_path, args, message, code):
    path, model = train_ckpt
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, [a.format(tmp=tmp_path, ckpt=path, bare=bare) for a in args])
    assert result.exit_code == code, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_export_aoti_and_compare(train_ckpt, tmp_path):
    """AOTInductor on CPU (compiles C++: ~45 s for this tiny model on 2 cores)."""
    path, _ = train_ckpt
    out = tmp_path / "model.pt2"
    result = runner.invoke(app, ["export", str(path), "--format", "aoti", "-o", str(out), "--max-batch", "8"])
    assert result.exit_code == 0, result.output
    assert "aoti:cpu" in result.output and "batch 1..8" in result.output and out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    result = runner.invoke(app, ["compare", str(path), str(out), "--batch", "1", "--batch", "5"])
    assert result.exit_code == 0, result.output
    assert result.output.count("aoti:cpu") == 2
    # The package records what a server needs: input size, batch range, device (no --arch).
    from acmix_deploy.runtime.loader import open_runner

    spec = open_runner(out)
    assert (spec.input_spec.shape, spec.batch_range, spec.output_spec.shape) == (("batch", 3, 32, 32), (1, 8), ("batch", 6))
    assert spec.backend == "aoti" and spec.device == "cpu"
    with pytest.raises(AcmixDeployError, match="was compiled for cpu; it cannot run on cuda"):
        from acmix_deploy.runtime import AotiRunner

        AotiRunner(out, "cuda")
    # A batch the package cannot take is one clear error in compare, not a traceback.
    result = runner.invoke(app, ["compare", str(path), str(out), "--batch", "9"])
    assert result.exit_code == 2 and "batch 9 is outside the package's batch range 1..8" in " ".join(result.output.split())


@pytest.mark.parametrize(
    "args,message",
    [
        (["--format", "aoti", "--batch", "9", "--max-batch", "8"], "must lie in 1..--max-batch (8)"),
        (["--format", "aoti", "--device", "tpu"], "--device must be cpu or cuda"),
    ],
)
def test_cli_export_aoti_bad_arguments(train_ckpt, tmp_path, args, message):
    path, _ = train_ckpt
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["export", str(path), *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_fp16_keeps_attention_in_fp32_and_stays_close(tmp_path):
    from onnx import TensorProto, numpy_helper, shape_inference

    deploy = ad.reparameterize_model(randomize_model(ad.create_model("acmix_resnet_tiny"), 5).eval())
    f32 = export_onnx(deploy, tmp_path / "f32.onnx", (3, 32, 32))
    f16 = export_onnx(deploy, tmp_path / "f16.onnx", (3, 32, 32), fp16=True)
    proto = shape_inference.infer_shapes(onnx.load(f16.path))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in proto.graph.value_info}
    softmaxes = [n for n in proto.graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) >= 4  # at least one per ACmix block
    for n in softmaxes:
        assert types[n.input[0]] == TensorProto.FLOAT and types[n.output[0]] == TensorProto.FLOAT
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    inits = {i.name: i for i in proto.graph.initializer}
    assert all(numpy_helper.to_array(inits[w]).dtype == "float16" for w in conv_weights if w in inits)
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # I/O stay float32
    x = random_inputs((3, 32, 32), (8,), seed=1)
    rows = compare_runners(OrtRunner(f32.path), [OrtRunner(f16.path)], x)
    assert rows[0].diff.rel <= 1e-2 and rows[0].diff.top1_agreement == 1.0
    assert f16.size_bytes < 0.6 * f32.size_bytes



def test_fp16_keeps_the_floored_attention_in_fp32(tmp_path):
    # With the softmax floor (graphs for a CPU) the Softmax reads Max(L, ReduceMax(L) - m): the float32 block
    # list must still reach the logits Add and MatMul behind it, and add the floor's own nodes.
    from onnx import TensorProto, shape_inference

    from acmix_deploy.exporters.precision import attention_nodes

    deploy = ad.reparameterize_model(randomize_model(ad.create_model("acmix_resnet_tiny"), 5).eval())
    plain = export_onnx(deploy, tmp_path / "plain.onnx", (3, 32, 32))
    floored = export_onnx(deploy, tmp_path / "floor.onnx", (3, 32, 32), cpu_isa="avx512")
    graphs = {k: onnx.load(e.path) for k, e in (("plain", plain), ("floor", floored))}
    kept = {k: set(attention_nodes(g)) for k, g in graphs.items()}
    ops = {n.name: n.op_type for n in graphs["floor"].graph.node}
    softmaxes = sum(op == "Softmax" for op in ops.values())
    assert kept["plain"] and kept["plain"] <= kept["floor"]  # the same attention nodes (names match)
    extra = [ops[name] for name in kept["floor"] - kept["plain"]]
    assert sorted(extra) == sorted(["Max", "Sub", "ReduceMax"] * softmaxes)
    f16 = export_onnx(deploy, tmp_path / "f16.onnx", (3, 32, 32), fp16=True, cpu_isa="avx512")
    proto = shape_inference.infer_shapes(onnx.load(f16.path))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in proto.graph.value_info}
    floor_max = [n for n in proto.graph.node if n.op_type == "Max" and n.name in kept["floor"]]
    assert len(floor_max) == softmaxes
    for n in floor_max:  # the floor, its operands and the Softmax after it are all float32
        assert all(types[i] == TensorProto.FLOAT for i in n.input) and types[n.output[0]] == TensorProto.FLOAT
    x = random_inputs((3, 32, 32), (8,), seed=1)
    rows = compare_runners(OrtRunner(floored.path), [OrtRunner(f16.path)], x)
    assert rows[0].diff.rel <= 1e-2 and rows[0].diff.top1_agreement == 1.0  # the fp16 tolerance used above

def test_cli_export_fp16(train_ckpt, tmp_path):
    path, _ = train_ckpt
    result = runner.invoke(app, ["export", str(path), "--fp16"])
    assert result.exit_code == 0, result.output
    assert "fp16 (attention fp32)" in result.output and path.with_name("train.fp16.onnx").exists()
    result = runner.invoke(app, ["export", str(path), "--fp16", "--format", "aoti"])
    assert result.exit_code == 2 and "--fp16 does not apply to --format aoti" in " ".join(result.output.split())


def test_calibration_sources(tmp_path):
    from acmix_deploy.errors import ConfigError
    from acmix_deploy.exporters.calibration import load_calibration

    digits = load_calibration("digits", (3, 16, 16), limit=10)
    assert digits.shape == (10, 3, 16, 16) and digits.dtype == np.float32
    assert abs(float(digits.mean())) < 0.1  # standardised
    arr = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "c.npy", arr)
    assert np.array_equal(load_calibration(tmp_path / "c.npy", (1, 8, 8)), arr)
    np.save(tmp_path / "bad.npy", arr[:, :, :4])
    with pytest.raises(ConfigError, match=r"expected \(N, 1, 8, 8\)"):
        load_calibration(tmp_path / "bad.npy", (1, 8, 8))
    np.save(tmp_path / "ints.npy", np.zeros((2, 1, 8, 8), dtype=np.int64))
    with pytest.raises(ConfigError, match="dtype"):
        load_calibration(tmp_path / "ints.npy", (1, 8, 8))
    with pytest.raises(ConfigError, match="does not exist"):
        load_calibration(tmp_path / "none.npy", (1, 8, 8))
    from PIL import Image

    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 60 * i, dtype=np.uint8)).save(img_dir / f"{i}.png")
    imgs = load_calibration(img_dir, (3, 8, 8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert imgs.shape == (3, 3, 8, 8) and np.allclose(imgs[0], -1.0) and np.allclose(imgs[2], 120 / 255 * 2 - 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no images"):
        load_calibration(tmp_path / "empty", (3, 8, 8))


def test_cli_export_int8_with_cache(train_ckpt, tmp_path):
    """The thresholds are loosened: a random-weight model has near-tied logits, so its top-1 flips
    under any quantization; the defaults (0.25 relative, 90% top-1) are meant for trained models."""
    path, _ = train_ckpt
    out = tmp_path / "q.onnx"
    result = runner.invoke(app, ["export", str(path), "--int8", "--calib", "digits", "--calib-limit", "32",
                                 "-o", str(out), "--min-top1", "0", "--tol", "1"])
    assert result.exit_code == 0, result.output
    assert "int8 Q/DQ" in result.output and "QuantizeLinear" in result.output
    proto = onnx.load(out)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Softmax"} <= ops and not unsupported_ops(proto)
    zero_points = [i for i in proto.graph.initializer if i.name.endswith("_zero_point")]
    assert zero_points and all(not np.any(onnx.numpy_helper.to_array(z)) for z in zero_points)  # TensorRT needs 0
    assert out.with_suffix(".calib.json").exists()
    result = runner.invoke(app, ["export", str(path), "--int8", "-o", str(tmp_path / "r.onnx")])
    assert result.exit_code == 2 and "--int8 needs calibration data" in result.output
    assert not (tmp_path / "r.onnx").exists()


def test_normalisation_metadata_only_where_it_is_known(tmp_path):
    """ImageNet's mean/std are recorded for RGB models only: a 1-channel model (the demo's digits) has no known
    normalisation, and 3-channel values in its metadata (what exports wrote before) would mislead a client."""
    from acmix_deploy import export_model
    from acmix_deploy.artifacts.onnx import read_onnx_metadata

    for chans, expected in [(1, None), (3, [0.485, 0.456, 0.406])]:
        model = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=3, in_chans=chans), 4).eval()
        assert model.default_cfg.get("mean") == (None if expected is None else tuple(expected))
        ckpt = ad.save_checkpoint(model, tmp_path / f"c{chans}.pth")
        export_model(ckpt, ExportOptions(output=tmp_path / f"c{chans}.onnx"), lambda _: None)
        meta = read_onnx_metadata(tmp_path / f"c{chans}.onnx")
        mean = meta.get("mean")
        assert (json.loads(mean) if isinstance(mean, str) else mean) == expected and ("std" in meta) == (expected is not None)
    assert "mean" not in ad.create_model("acmix_swin_tiny", in_chans=1).default_cfg
