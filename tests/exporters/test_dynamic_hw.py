"""Dynamic height and width: the in-graph halo tables, the exported graph at every valid size, the size rule.

Tolerances: float64 eager ``TOL_F64`` (the dynamic tables gather the same numbers as the unfold form;
only the summation order differs), float32 ``TOL_F32`` (1e-5 relative, as for every exported graph: see
tests/helpers).  Each exported graph is run in ONNX Runtime at several sizes (the traced one, the smallest
valid one, non-square ones, odd multiples of the strides) and batches, against the *training* form with
random weights and BatchNorm statistics.
"""

from __future__ import annotations

import time
import numpy as np
import pytest
import torch
import torch.nn as nn

import acmix_deploy as ad
from acmix_deploy.artifacts.onnx import read_onnx_metadata, spatial_rule
from acmix_deploy.artifacts.spatial import SpatialRule
from acmix_deploy.errors import AcmixDeployError, ConfigError, InputShapeError
from acmix_deploy.modules import make_halo_plan
from acmix_deploy.modules.acmix import ACmix
from acmix_deploy.modules.dynamic_halo import dynamic_halo_attention, dynamic_halo_tables, make_dynamic_halo_spec
from acmix_deploy.modules.window_attention import halo_attention
from acmix_deploy.testing import randomize_model

from tests.helpers import TOL_F32, TOL_F64, ort_optimized_nodes, rel_error
from tests.helpers.window_attention import attention_inputs, head_dim_major, unfold_reference

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from acmix_deploy.exporters.dynamic_hw import derive_spatial_rule  # noqa: E402
from acmix_deploy.exporters.onnx import export_onnx  # noqa: E402
from acmix_deploy.runtime import OrtRunner  # noqa: E402

# (heads, d, ka, stride, traced size, tile, groups-forcing chunk bytes), then the sizes run with those tables.
CORE_CASES = [
    ((4, 4, 7, 1, (14, 14), 7, None), [(14, 14), (4, 4), (9, 11), (21, 8), (30, 30)]),
    ((2, 3, 7, 2, (12, 12), 4, None), [(12, 12), (4, 4), (6, 10), (18, 14), (26, 8)]),
    ((3, 4, 5, 1, (13, 9), 3, 1), [(13, 9), (3, 3), (7, 16), (20, 5)]),  # one block per group at the traced size
    ((2, 20, 3, 2, (10, 10), None, None), [(10, 10), (2, 2), (4, 12)]),  # head_dim above the identity product
]


def _spec(heads, d, ka, stride, size, tile, chunk, dtype):
    kw = {} if chunk is None else {"chunk_bytes": chunk}
    plan = make_halo_plan(*size, ka, stride, heads, d, tile=tile, dtype=dtype, **kw)
    return make_dynamic_halo_spec(plan, ka, stride, d)


@pytest.mark.parametrize("case,sizes", CORE_CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, TOL_F64), (torch.float32, TOL_F32)])
def test_dynamic_core_equals_unfold_form_at_every_size(case, sizes, dtype, tol):
    heads, d, ka, stride, size, tile, chunk = case
    spec = _spec(heads, d, ka, stride, size, tile, chunk, dtype)
    for i, hw in enumerate(sizes):
        q, k, v, conv_p = attention_inputs(heads, d, hw, 1 + i % 3, dtype, 10 + i)
        with torch.no_grad():
            out = dynamic_halo_attention(head_dim_major(q, k, v, heads), conv_p.weight.reshape(d, 2), spec)
            ref = unfold_reference(q.double(), k.double(), v.double(), conv_p.double(), heads, ka, stride)
        assert out.shape == ref.shape, hw
        assert rel_error(ref, out) <= tol, hw


def test_dynamic_tables_reach_every_block_and_pad_the_last_run():
    """3 groups over 10 blocks: runs of 4, 12 slots, the last two copies of the last block (computed, never read)."""
    spec = _spec(1, 2, 3, 1, (6, 10), 3, None, torch.float32)
    spec = type(spec)(**{**spec.__dict__, "groups": 3})
    tables = dynamic_halo_tables(torch.zeros(1, 6, 6, 15), spec)  # 2 x 5 blocks of 3x3 -> 10 blocks, runs of 4
    static = make_halo_plan(6, 15, 3, 1, 1, 2, tile=3)
    assert [t.shape for t in tables.key_index] == [(1, 4, 25)] * 3
    keys, queries = torch.cat(tables.key_index, 1)[0], torch.cat(tables.query_index, 1)[0]
    assert torch.equal(keys[:10], static.key_index.long())
    assert torch.equal(keys[10], keys[9]) and torch.equal(keys[11], keys[9])
    assert torch.equal(queries[:10], static.query_index.long())  # every slot is an output pixel here
    assert torch.equal(tables.output_index, static.output_index.long())


@pytest.mark.parametrize("geometry", [(7, 1, 4, 4, 3), (7, 2, 4, 4, 2), (5, 1, 3, 5, 1), (3, 2, 7, 7, 4), (7, 1, 7, 7, 1)])
def test_dynamic_tables_agree_with_the_static_plan_at_every_size(geometry):
    """Halo and output tables equal the static plan's; query slots too wherever they are output pixels.

    Past the output edge (partial last blocks) the dynamic query table reads the halo centre, the static
    one a clamped pixel: both in bounds, neither read back (the output table never points there).
    """
    ka, s, ty, tx, groups = geometry
    spec = _spec(1, 2, ka, s, (4 * ty * s, 3 * tx * s), (ty, tx), None, torch.float32)
    spec = type(spec)(**{**spec.__dict__, "groups": groups})
    compared = 0
    for hh, ww in [(4, 4), (5, 9), (9, 5), (13, 13), (16, 30), (31, 17), (7 * s * ty, 5 * s * tx + 1)]:
        static = make_halo_plan(hh, ww, ka, s, 1, 2, tile=(ty, tx))
        if min(hh, ww) <= (ka - 1) // 2 or static.tile != (ty, tx):
            continue  # the static plan clips the tile to a smaller output; the dynamic graph keeps it
        compared += 1
        tables = dynamic_halo_tables(torch.zeros(1, 6, hh, ww), spec)
        n = static.tiles
        keys, queries = torch.cat(tables.key_index, 1)[0], torch.cat(tables.query_index, 1)[0]
        assert keys.shape[0] >= n and torch.equal(keys[:n], static.key_index.long()), (hh, ww)
        assert torch.equal(keys[n:], keys[n - 1:n].expand(keys.shape[0] - n, -1)), (hh, ww)
        (h_out, w_out), (ty_, tx_) = static.out_size, static.tile
        nty, ntx = -(-h_out // ty_), -(-w_out // tx_)
        ys = (torch.arange(nty)[:, None, None, None] * ty_ + torch.arange(ty_)[None, None, :, None]) < h_out
        xs = (torch.arange(ntx)[None, :, None, None] * tx_ + torch.arange(tx_)[None, None, None, :]) < w_out
        inside = (ys & xs).reshape(n, -1)
        assert torch.equal(queries[:n][inside], static.query_index.long()[inside]), (hh, ww)
        assert int(queries.max()) < hh * ww and int(queries.min()) >= 0
        assert torch.equal(tables.output_index, static.output_index.long()), (hh, ww)
        assert tables.out_shape.tolist() == [0, -1, *static.out_size]
        loc_h, loc_w = torch.linspace(-1, 1, hh), torch.linspace(-1, 1, ww)
        assert torch.allclose(tables.loc_h.flatten(), loc_h, atol=1e-6)
        assert torch.allclose(tables.loc_w.flatten(), loc_w, atol=1e-6)
    assert compared >= 2


class _Core(nn.Module):
    def __init__(self, spec, pos):
        super().__init__()
        self.spec = spec
        self.register_buffer("pos", pos)

    def forward(self, qkv):
        return dynamic_halo_attention(qkv, self.pos, self.spec)


class _Tables(nn.Module):
    """The tables of one spec as two flat outputs (the integer tables, the float coordinates)."""

    def __init__(self, spec):
        super().__init__()
        self.spec = spec

    def forward(self, qkv):
        t = dynamic_halo_tables(qkv, self.spec)
        ints = [*(k.flatten() for k in t.key_index), *(q.flatten() for q in t.query_index), t.output_index,
                t.out_shape]
        return torch.cat(ints), torch.cat([t.loc_w.flatten(), t.loc_h.flatten()])


@pytest.mark.parametrize("geometry", [(7, 1, 4, 4, 3), (7, 2, 4, 4, 2), (5, 1, 3, 5, 1), (3, 2, 7, 7, 4)])
def test_onnx_tables_equal_the_eager_tables_at_every_size(geometry):
    """The hand-written ONNX arithmetic (_HaloTablesOp's symbolic) against its NumPy twin, size by size.

    Integers exactly; the coordinates to float32 rounding (both do one division, a product and a difference).
    """
    import io

    ka, s, ty, tx, groups = geometry
    spec = _spec(1, 2, ka, s, (4 * ty * s, 3 * tx * s), (ty, tx), None, torch.float32)
    spec = type(spec)(**{**spec.__dict__, "groups": groups})
    buf = io.BytesIO()
    torch.onnx.export(_Tables(spec), (torch.zeros(1, 6, 4 * ty * s, 3 * tx * s),), buf, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["ints", "locs"],
                      dynamic_axes={"x": {2: "h", 3: "w"}, "ints": {0: "n"}, "locs": {0: "m"}})
    ops = {n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node}
    assert ops <= {"Shape", "Slice", "Gather", "Add", "Sub", "Mul", "Div", "Range", "Reshape", "Abs", "Max", "Min",
                   "Split", "Concat", "Cast", "Constant"}, ops
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for hh, ww in [(4, 4), (5, 9), (9, 5), (13, 13), (16, 30), (31, 17), (64, 40), (97, 3 * ka)]:
        x = torch.zeros(1, 6, hh, ww)
        ints, locs = sess.run(None, {"x": x.numpy()})
        want_ints, want_locs = (t.numpy() for t in _Tables(spec)(x))
        np.testing.assert_array_equal(ints, want_ints, err_msg=str((hh, ww)))
        np.testing.assert_allclose(locs, want_locs, rtol=0, atol=2e-7, err_msg=str((hh, ww)))


def test_dynamic_graph_fuses_like_the_fixed_one(tiny_dynamic, tmp_path):
    """ONNX Runtime fuses the attention + convolution path sum and the residual sums into the convolutions.

    It does only when both inputs of each Add have equal symbolic sizes; the exporter leaves the sizes that
    come out of the table arithmetic unnamed (name_symbolic_sizes names them).  Before, the dynamic graph ran
    4 more unfused Conv + Add + Relu triples than the fixed one.
    """
    train, path, _ = tiny_dynamic
    fixed = tmp_path / "fixed.onnx"
    export_onnx(ad.reparameterize_model(train), fixed, (3, 32, 32))

    def fused(p):
        nodes = ort_optimized_nodes(p, tmp_path / (p.stem + ".opt.onnx"))
        return sorted((n.domain, n.op_type, len(n.input)) for n in nodes if "Conv" in n.op_type or n.op_type == "Relu")

    want = fused(fixed)
    assert ("com.microsoft", "FusedConv", 4) in want  # the sum of the block fused into its convolution path
    assert fused(path) == want


@pytest.mark.parametrize("case,sizes", CORE_CASES[:2])
def test_dynamic_core_exports_one_graph_for_every_size(tmp_path, case, sizes):
    import io

    heads, d, ka, stride, size, tile, chunk = case
    spec = _spec(heads, d, ka, stride, size, tile, chunk, torch.float32)
    q, k, v, conv_p = attention_inputs(heads, d, size, 1, torch.float32, 0)
    pos = conv_p.weight.reshape(d, 2).detach()
    buf = io.BytesIO()
    torch.onnx.export(_Core(spec, pos), (head_dim_major(q, k, v, heads),), buf, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b", 2: "oh", 3: "ow"}})
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for i, hw in enumerate(sizes):
        q, k, v, conv_p = attention_inputs(heads, d, hw, 1 + i % 3, torch.float32, 20 + i)
        conv_p.weight.data.copy_(pos.reshape(d, 2, 1, 1))
        with torch.no_grad():
            ref = unfold_reference(q.double(), k.double(), v.double(), conv_p.double(), heads, ka, stride)
        out = sess.run(None, {"x": head_dim_major(q, k, v, heads).numpy()})[0]
        assert rel_error(ref, torch.from_numpy(out)) <= TOL_F32, hw


# --------------------------------------------------------------------------------------------- whole models


@pytest.fixture(scope="module")
def tiny_dynamic(tmp_path_factory):
    """acmix_resnet_tiny (random weights and BatchNorm statistics) exported once with dynamic H and W at 32x32."""
    train = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=7), 5).eval()
    path = tmp_path_factory.mktemp("dynhw") / "tiny.onnx"
    res = export_onnx(ad.reparameterize_model(train), path, (3, 32, 32), dynamic_hw=True)
    return train, path, res


def test_tiny_rule_is_the_total_stride_and_the_padding(tiny_dynamic):
    _, path, res = tiny_dynamic
    # acmix_resnet_tiny: 3x3/1 stem, one block per stage, stride-2 ACmix blocks at /1, /2, /4 -> multiples of
    # 8; the last of them (ka 7, reflection padding 3) sees the image at /4 and needs 4 pixels -> at least 16.
    rule = res.spatial_rule
    assert rule == SpatialRule((8, 8), (16, 16))
    assert rule == derive_spatial_rule(ad.reparameterize_model(tiny_dynamic[0]), (3, 32, 32))
    assert rule.multiple[0] == rule.multiple[1] and rule.minimum[0] == rule.minimum[1]
    meta = read_onnx_metadata(path)
    assert meta["dynamic_hw"] == "true" and spatial_rule(meta) == rule
    assert meta["valid_hw"]["rule"] == rule.describe()
    assert meta["input_shape"] == ["batch", 3, "height", "width"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    assert sess.get_outputs()[0].shape == ["batch", 7]


def test_tiny_graph_is_exact_at_every_kind_of_valid_size(tiny_dynamic):
    train, path, res = tiny_dynamic
    rule = res.spatial_rule
    m, lo = rule.multiple[0], rule.minimum[0]
    sizes = [(32, 32), (lo, lo), (lo, lo + 3 * m), (lo + 5 * m, lo + m), (lo + 3 * m, lo + 3 * m)]
    runner = OrtRunner(path)
    gen = torch.Generator().manual_seed(3)
    for i, (h, w) in enumerate(sizes):
        x = torch.randn((1, 3, 2)[i % 3], 3, h, w, generator=gen)
        with torch.no_grad():
            ref = train(x)
        out = runner.infer(x.numpy())
        assert out.shape == tuple(ref.shape)
        assert rel_error(ref, torch.from_numpy(out)) <= TOL_F32, (h, w)


def test_runner_refuses_sizes_outside_the_rule(tiny_dynamic):
    _, path, res = tiny_dynamic
    rule, runner = res.spatial_rule, OrtRunner(tiny_dynamic[1])
    m, lo = rule.multiple[0], rule.minimum[0]
    for h, w in [(lo + 1, lo), (lo, lo + m // 2), (lo - m, lo)]:
        with pytest.raises(InputShapeError, match="multiples of"):
            runner.infer(np.zeros((1, 3, h, w), np.float32))
    with pytest.raises(InputShapeError, match=r"takes images of shape \(N, 3, height, width\)"):
        runner.infer(np.zeros((3, lo, lo), np.float32))


def _without_guard(proto):
    """``proto`` with the size guard's nodes and constants removed and the input read directly."""
    from acmix_deploy.exporters.onnx import GUARD_NAME

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    prefix = GUARD_NAME + "/"
    keep = [n for n in out.graph.node if not any(o.startswith(prefix) for o in n.output)]
    assert len(keep) < len(out.graph.node)
    for node in keep:
        node.input[:] = ["images" if name == prefix + "images" else name for name in node.input]
    del out.graph.node[:]
    out.graph.node.extend(keep)
    inits = [t for t in out.graph.initializer if not t.name.startswith(prefix)]
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    onnx.checker.check_model(out)
    return out


def test_plain_onnxruntime_refuses_sizes_outside_the_rule(tiny_dynamic):
    """The graph's own guard: ONNX Runtime used directly (no acmix-deploy runner) raises at an invalid size
    and returns, at a valid size, exactly (bit for bit) what the graph without the guard returns."""
    _, path, res = tiny_dynamic
    proto = onnx.load(path)
    guarded = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(_without_guard(proto).SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    # each axis alone too small, not a multiple, both; 8x16 / 17x16 / 8x8 ran silently without the guard
    for h, w in [(8, 16), (17, 16), (8, 8), (16, 20), (16, 8), (40, 36)]:
        assert not res.spatial_rule.valid(h, w)
        x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        with pytest.raises(Exception, match="acmix_deploy.valid_hw: height and width multiples of 8, at least 16"):
            guarded.run(None, {"images": x})
    for b, (h, w) in [(1, (16, 16)), (2, (32, 32)), (3, (24, 40)), (1, (56, 16))]:
        x = rng.standard_normal((b, 3, h, w)).astype(np.float32)
        x[0, 0, 0, 0] = -0.0  # a Reshape keeps the sign of zero (x + 0 would not)
        a, u = guarded.run(None, {"images": x})[0], plain.run(None, {"images": x})[0]
        assert a.tobytes() == u.tobytes(), (b, h, w)


def test_static_graph_records_no_rule(onnx_model):
    assert OrtRunner(onnx_model).spatial_rule is None
    meta = read_onnx_metadata(onnx_model)
    assert "dynamic_hw" not in meta and meta["input_shape"] == ["batch", 3, 32, 32]


def test_resnet50_rule():
    deploy = ad.create_model("acmix_resnet50", deploy=True).eval()
    rule = derive_spatial_rule(deploy, (3, 224, 224))
    # Stride-2 ACmix blocks at /4, /8, /16 -> multiples of 32; the last stage at /32 with ka 7 needs 4 pixels.
    assert rule == SpatialRule((32, 32), (128, 128))
    with pytest.raises(InputShapeError):  # and the torch model itself refuses a size outside the rule
        deploy(torch.zeros(1, 3, 224 + 16, 224))


def test_xvolution_model_is_exact_at_other_sizes(tmp_path):
    train = randomize_model(ad.create_model("xvolution_resnet_tiny", num_classes=4), 2).eval()
    path = tmp_path / "xv.onnx"
    res = export_onnx(ad.reparameterize_model(train), path, (3, 32, 32), dynamic_hw=True)
    assert res.spatial_rule == SpatialRule()  # no ACmix block: X-volution and convolutions take every size
    runner = OrtRunner(path)
    for b, h, w in [(1, 32, 32), (2, 17, 45), (1, 8, 8)]:
        x = torch.randn(b, 3, h, w)
        with torch.no_grad():
            ref = train(x)
        assert rel_error(ref, torch.from_numpy(runner.infer(x.numpy()))) <= TOL_F32, (h, w)


def test_feature_map_outputs_get_dynamic_axes(tmp_path):
    """A backbone returning a feature map: its spatial axes follow the input's."""
    block = randomize_model(ACmix(8, 8, 5, 2, 3, 2), 4).eval()
    deploy = nn.Sequential(block.fuse()).eval()
    path = tmp_path / "fm.onnx"
    res = export_onnx(deploy, path, (8, 12, 12), dynamic_hw=True)
    assert res.spatial_rule == SpatialRule((2, 2), (4, 4))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_outputs()[0].shape == ["batch", 8, "logits_dim2", "logits_dim3"]
    for b, h, w in [(2, 4, 4), (1, 6, 14), (3, 22, 10)]:
        x = torch.randn(b, 8, h, w)
        with torch.no_grad():
            ref = block(x)
        out = sess.run(None, {"images": x.numpy()})[0]
        assert out.shape == (b, 8, h // 2, w // 2)
        assert rel_error(ref, torch.from_numpy(out)) <= TOL_F32, (h, w)


# ------------------------------------------------------------------------------------------------- refusals


def test_swin_refuses_dynamic_hw_with_the_reason(tmp_path):
    model = ad.create_model("acmix_swin_micro", deploy=True).eval()
    size = model.default_cfg.get("input_size", (3, 224, 224)) if hasattr(model, "default_cfg") else (3, 224, 224)
    with pytest.raises(ConfigError, match="window"):
        export_onnx(model, tmp_path / "s.onnx", tuple(size), dynamic_hw=True)
    assert not (tmp_path / "s.onnx").exists()


def test_dynamic_hw_needs_the_dynamic_batch(tmp_path):
    deploy = ad.create_model("acmix_resnet_tiny", deploy=True).eval()
    with pytest.raises(ConfigError, match=r"dynamic_hw makes batch, height and width dynamic; it cannot be combined with dynamic=False"):
        export_onnx(deploy, tmp_path / "t.onnx", (3, 32, 32), dynamic=False, dynamic_hw=True)


class _Unscaled(nn.Module):
    """A valid (unpadded) convolution before ACmix: the block sees H - 2, not a fixed fraction of H."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.acmix = ACmix(8, 8, 3, 2, 3, 1).fuse()

    def forward(self, x):
        return self.acmix(self.conv(x))


def test_models_whose_sizes_do_not_scale_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="whole fraction|scale"):
        export_onnx(_Unscaled().eval(), tmp_path / "u.onnx", (3, 10, 10), dynamic_hw=True)


def test_spatial_rule_messages_and_records():
    rule = SpatialRule((32, 32), (128, 128))
    assert rule.valid(128, 160) and not rule.valid(96, 160) and not rule.valid(144, 160)
    with pytest.raises(InputShapeError, match=r"got 230x224; nearest valid: 224x224 or 256x224"):
        rule.check(230, 224)
    with pytest.raises(InputShapeError, match="at least 128"):
        rule.check(64, 224)
    assert SpatialRule.from_json(rule.to_json()) == rule
    assert SpatialRule((8, 4), (16, 8)).describe() == "height a multiple of 8, at least 16; width a multiple of 4, at least 8"
    # The smallest height with a wider width, the smallest width with a taller height; never square, never
    # the export size.
    assert rule.examples(224, 224) == ((128, 160), (160, 128))
    assert SpatialRule((8, 8), (16, 16)).examples(16, 24) == ((16, 32), (24, 16))
    assert SpatialRule((8, 4), (16, 8)).examples(32, 32) == ((16, 12), (24, 8))
    for r, size in [(rule, (224, 224)), (SpatialRule((8, 4), (16, 8)), (16, 12)), (SpatialRule(), (1, 2))]:
        (h1, w1), (h2, w2) = r.examples(*size)
        assert h1 == r.minimum[0] and w2 == r.minimum[1] and r.valid(h1, w1) and r.valid(h2, w2)
        assert h1 != w1 and h2 != w2 and size not in ((h1, w1), (h2, w2))
    for bad in [((0, 1), (1, 1)), ((1,), (1, 1)), ((4, 4), (6, 4))]:
        with pytest.raises(AcmixDeployError):
            SpatialRule(*bad)
    with pytest.raises(AcmixDeployError):
        SpatialRule.from_json({"multiple": [2, 2]})


# ------------------------------------------------------------------------------------------ the export driver


def test_export_model_validates_a_second_size(tmp_path):
    from acmix_deploy import export_model  # checks every artifact against torch
    from acmix_deploy.exporters import ExportOptions

    model = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=3), 8).eval()
    ckpt = ad.save_checkpoint(model, tmp_path / "train.pth")
    said = []
    res = export_model(ckpt, ExportOptions(output=tmp_path / "m.onnx", dynamic_hw=True), said.append)
    # batch 1 and 3 at 32x32, batch 1 and 2 at the smallest height and a wider width, batch 1 at the
    # smallest width and a taller height
    assert sorted(r.batch for r in res.rows) == [1, 1, 1, 2, 3]
    assert any("dynamic height and width: height and width multiples of 8, at least 16; validated at 16x24, 24x16, 32x32"
               in line for line in said), said
    assert read_onnx_metadata(tmp_path / "m.onnx")["dynamic_hw"] == "true"
    with pytest.raises(ConfigError, match="combined with dynamic=False"):
        export_model(ckpt, ExportOptions(output=tmp_path / "s.onnx", dynamic_hw=True, dynamic=False))


def test_cli_export_dynamic_hw_and_its_errors(tmp_path):
    from typer.testing import CliRunner

    from acmix_deploy.cli import app

    cli = CliRunner()
    model = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=3), 9).eval()
    ckpt = ad.save_checkpoint(model, tmp_path / "train.pth")
    out = tmp_path / "m.onnx"
    result = cli.invoke(app, ["export", str(ckpt), "-o", str(out), "--dynamic-hw"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "input Nx3xHxW" in text and "height and width multiples of 8, at least 16" in text
    result = cli.invoke(app, ["export", str(ckpt), "-o", str(tmp_path / "s.onnx"), "--dynamic-hw", "--static"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "--dynamic-hw makes batch" in text and "combined with --static" in text
    assert "Traceback" not in result.output
    result = cli.invoke(app, ["export", str(ckpt), "--format", "aoti", "--dynamic-hw"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "AOTInductor packages keep a fixed height and width" in text
    assert "(--format onnx) with --dynamic-hw" in text
    result = cli.invoke(app, ["export", str(ckpt), "--format", "triton", "--dynamic-hw"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "--dynamic-hw does not apply to --format triton" in text


# ----------------------------------------------------------------------------- TensorRT profiles, sidecar, Triton


def test_shape_profiles_from_trtexec_spelling():
    from acmix_deploy.exporters.tensorrt import BatchProfile, ShapeProfile, parse_shape, shape_profile

    assert parse_shape("1x3x224x224", "min_shape") == (1, 3, 224, 224)
    assert parse_shape("images:8x3x640X384", "max_shape") == (8, 3, 640, 384)
    p = shape_profile(BatchProfile(1, 4, 8), (3, 224, 224), "1x3x128x128", None, "8x3x640x640", dynamic_hw=True)
    assert p == ShapeProfile((1, 3, 128, 128), (4, 3, 224, 224), (8, 3, 640, 640))
    assert (p.min, p.opt, p.max, p.dynamic_hw) == (1, 4, 8, True)
    assert p.covers((2, 3, 160, 608)) and not p.covers((2, 3, 672, 224)) and not p.covers((9, 3, 224, 224))
    # Without --dynamic-hw the shapes only give the batches (the batch profile already holds them).
    fixed = shape_profile(BatchProfile(2, 2, 16), (3, 32, 32), "2x3x32x32", None, "16x3x32x32")
    assert fixed.shapes() == ((2, 3, 32, 32), (2, 3, 32, 32), (16, 3, 32, 32)) and not fixed.dynamic_hw


@pytest.mark.parametrize("kwargs, message", [
    (dict(min_shape="1x3x224"), "NxCxHxW"),
    (dict(min_shape="1x3x224x224x1"), "NxCxHxW"),
    (dict(min_shape="1x3xax224"), "integers"),
    (dict(min_shape="0x3x224x224"), "positive"),
    (dict(min_shape="input:1x3x224x224"), "names input 'input'"),
    (dict(min_shape="1x1x128x128", max_shape="8x1x640x640", dynamic_hw=True), "has 1 channels; the model takes 3"),
    (dict(min_shape="1x3x640x640", max_shape="8x3x128x128", dynamic_hw=True), "height must satisfy min <= opt <= max"),
    (dict(min_shape="1x3x128x128", opt_shape="1x3x160x160", max_shape="8x3x160x160", dynamic_hw=True),
     "export size 224x224"),
    (dict(min_shape="1x3x128x128", dynamic_hw=True), "need the spatial range"),
    (dict(min_shape="1x3x128x128", max_shape="8x3x224x224"), "add dynamic_hw"),
])
def test_shape_profile_errors(kwargs, message):
    from acmix_deploy.exporters.tensorrt import BatchProfile, shape_profile

    with pytest.raises(ConfigError, match=message):
        shape_profile(BatchProfile(1, 1, 8), (3, 224, 224), **kwargs)


def test_given_shapes_are_checked_once_before_the_model_is_read():
    """given_shapes holds the checks that need no model; shape_profile reuses it (same messages) and the
    driver passes the parsed shapes on."""
    from acmix_deploy.exporters.tensorrt import BatchProfile, given_shapes, shape_profile

    assert given_shapes("images:1x3x128x128", None, (8, 3, 640, 640), dynamic_hw=True) == {
        "min": (1, 3, 128, 128), "max": (8, 3, 640, 640)}
    cases = [
        (dict(min_shape="2x3x224x224", batches=(1, None, None)), "says batch 2 and min_batch says 1"),
        (dict(min_shape="1x3x128x128", dynamic_hw=True), "need the spatial range"),
        (dict(min_shape="1x3x256x128", opt_shape="1x3x224x224"), "height must satisfy min <= opt <= max"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            given_shapes(**kwargs)
    with pytest.raises(ConfigError, match="says batch 2 and min_batch says 1"):
        shape_profile(BatchProfile(1, 1, 8), (3, 224, 224), "2x3x224x224", batch_given=(True, False, False))
    # parsed tuples pass through unchanged
    p = shape_profile(BatchProfile(1, 4, 8), (3, 224, 224), (1, 3, 128, 128), None, (8, 3, 640, 640), dynamic_hw=True)
    assert p.shapes() == ((1, 3, 128, 128), (4, 3, 224, 224), (8, 3, 640, 640))


def test_export_onnx_takes_the_rule_it_is_given(tmp_path, monkeypatch):
    from acmix_deploy.exporters import onnx as onnx_export

    model = ad.reparameterize_model(randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=3), 1).eval())
    rule = SpatialRule((8, 8), (16, 16))

    def refuse(*args):
        raise AssertionError("derived again")

    monkeypatch.setattr(onnx_export, "derive_spatial_rule", refuse)
    res = export_onnx(model, tmp_path / "m.onnx", (3, 32, 32), dynamic_hw=True, spatial_rule=rule, simplify=False)
    assert res.spatial_rule == rule and spatial_rule(read_onnx_metadata(tmp_path / "m.onnx")) == rule
    with pytest.raises(ConfigError, match="dynamic_hw"):
        export_onnx(model, tmp_path / "s.onnx", (3, 32, 32), spatial_rule=rule)


def test_profile_corners_must_be_valid_sizes():
    from acmix_deploy.exporters.tensorrt import ShapeProfile, check_profile_sizes

    rule = SpatialRule((32, 32), (128, 128))
    check_profile_sizes(ShapeProfile((1, 3, 128, 128), (1, 3, 224, 224), (8, 3, 640, 640)), rule)
    with pytest.raises(ConfigError, match=r"max_shape 8x3x650x640: .*multiples of 32"):
        check_profile_sizes(ShapeProfile((1, 3, 128, 128), (1, 3, 224, 224), (8, 3, 650, 640)), rule)
    with pytest.raises(ConfigError, match=r"min_shape 1x3x96x128"):
        check_profile_sizes(ShapeProfile((1, 3, 96, 128), (1, 3, 224, 224), (8, 3, 640, 640)), rule)


def test_engine_build_records_the_ranges_in_sidecar_and_triton_config(tmp_path, monkeypatch):
    from acmix_deploy.artifacts.tensorrt import GpuInfo, read_sidecar
    from acmix_deploy.exporters import tensorrt as trt_export
    from acmix_deploy.exporters.tensorrt import ShapeProfile, build_engine
    from acmix_deploy.exporters.triton_repository import write_engine_repository

    from tests.helpers.fakes import fake_tensorrt

    monkeypatch.setattr(trt_export, "current_gpu", lambda index=0: GpuInfo("NVIDIA H200", "9.0"))
    trt = fake_tensorrt("10.13.0.35")
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"graph")
    profile = ShapeProfile((1, 3, 128, 128), (4, 3, 224, 224), (8, 3, 640, 384))
    rule = SpatialRule((32, 32), (128, 128))
    build_engine(onnx_path, tmp_path / "m.engine", (3, 224, 224), profile, trt=trt, output_shape=[-1, 10],
                 timing_cache=tmp_path / "cache", valid_hw=rule.to_json())
    side = read_sidecar(tmp_path / "m.engine")
    assert side.profiles == [{"min": [1, 3, 128, 128], "opt": [4, 3, 224, 224], "max": [8, 3, 640, 384]}]
    assert side.dynamic_hw and SpatialRule.from_json(side.valid_hw) == rule
    res = write_engine_repository(tmp_path / "m.engine", tmp_path / "repo", "m")
    text = res.config_text
    assert "dims: [ 3, -1, -1 ]" in text
    assert ('parameters { key: "acmix_deploy.input_shapes" value: { string_value: '
            '"m.engine: 1x3x128x128 / 4x3x224x224 / 8x3x640x384" } }') in text
    assert 'key: "acmix_deploy.valid_hw" value: { string_value: "height and width multiples of 32, at least 128" }' in text
    try:
        from tests.helpers.triton_config import load_model_config_pb2, parse

        cfg = parse(load_model_config_pb2(), text)  # Triton's own schema reads it
    except (ImportError, OSError) as exc:  # the schema needs protobuf and the vendored .proto
        pytest.skip(f"Triton's config schema unavailable: {exc}")
    assert cfg.parameters["acmix_deploy.valid_hw"].string_value.startswith("height and width")


def test_onnx_triton_repository_records_the_rule(tiny_dynamic, tmp_path):
    from acmix_deploy.exporters.triton_repository import write_onnx_file_repository

    _, path, res = tiny_dynamic
    repo = write_onnx_file_repository(path, tmp_path / "repo", "tiny")
    assert "dims: [ 3, -1, -1 ]" in repo.config_text
    assert f'string_value: "{res.spatial_rule.describe()}"' in repo.config_text


@pytest.mark.parametrize("args, message", [
    (["--trt", "--dynamic-hw"], "give --min-shape and --max-shape"),
    (["--trt", "--dynamic-hw", "--min-shape", "1x3x64x64", "--max-shape", "8x3x32x32"], "impossible shape range"),
    (["--trt", "--min-shape", "1x3x64"], "NxCxHxW"),
    (["--trt", "--min-shape", "2x3x32x32", "--min-batch", "1"], "give the batch once"),
    (["--min-shape", "1x3x32x32"], "--min-shape does not apply to --format onnx"),
])
def test_cli_shape_range_errors(tmp_path, args, message):
    from typer.testing import CliRunner

    from acmix_deploy.cli import app

    model = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=3), 1).eval()
    ckpt = ad.save_checkpoint(model, tmp_path / "t.pth")
    result = CliRunner().invoke(app, ["export", str(ckpt), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------------ serving


def test_batcher_batches_only_requests_of_the_same_size():
    import asyncio

    from acmix_deploy.serving import DynamicBatcher

    seen = []

    def infer(x):
        seen.append(tuple(x.shape))
        return x.reshape(x.shape[0], -1).sum(axis=1, keepdims=True)

    async def scenario():
        # Every size's requests fill max_batch exactly, so no batch waits for the collection timeout: with a
        # long timeout the batches do not depend on the machine's speed.
        batcher = DynamicBatcher(infer, max_batch=4, timeout_s=60.0)
        await batcher.start()
        sizes = [(1, 16, 16), (1, 16, 24), (2, 16, 16), (3, 16, 24), (4, 24, 16), (1, 16, 16)]
        xs = [np.full((n, 1, h, w), i, np.float32) for i, (n, h, w) in enumerate(sizes)]
        outs = await asyncio.wait_for(asyncio.gather(*(batcher.submit(x) for x in xs)), 60.0)
        await batcher.stop()
        return xs, outs

    xs, outs = asyncio.run(scenario())
    for x, y in zip(xs, outs):  # every request gets its own rows back
        assert np.array_equal(y, x.reshape(x.shape[0], -1).sum(axis=1, keepdims=True))
    # The first batch takes every 16x16 request (set-aside others wait); then the oldest set-aside size.
    assert seen == [(4, 1, 16, 16), (4, 1, 16, 24), (4, 1, 24, 16)]


def test_batcher_merges_large_images_only_while_their_pixels_fit():
    """max_elements (serve --max-imgsz on a --dynamic-hw graph): 16x16 images merge four to a batch, 32x32 ones
    (four times the pixels) run one at a time, whatever max_batch allows."""
    import asyncio

    from acmix_deploy.serving import DynamicBatcher

    seen = []

    def infer(x):
        seen.append(tuple(x.shape))
        return x.reshape(x.shape[0], -1).sum(axis=1, keepdims=True)

    async def scenario():
        batcher = DynamicBatcher(infer, max_batch=8, timeout_s=60.0, max_elements=4 * 16 * 16)
        await batcher.start()
        xs = [np.full((1, 1, 32, 32), i, np.float32) for i in range(2)]
        xs += [np.full((1, 1, 16, 16), i, np.float32) for i in range(4)]
        outs = await asyncio.wait_for(asyncio.gather(*(batcher.submit(x) for x in xs)), 60.0)
        await batcher.stop()
        return xs, outs

    xs, outs = asyncio.run(scenario())
    for x, y in zip(xs, outs):
        assert np.array_equal(y, x.reshape(x.shape[0], -1).sum(axis=1, keepdims=True))
    assert seen == [(1, 1, 32, 32), (1, 1, 32, 32), (4, 1, 16, 16)]


def test_server_takes_every_valid_size_of_a_dynamic_graph(tiny_dynamic):
    """serve: one --dynamic-hw graph answers requests of several sizes, concurrently (batched by size),
    exactly; a size outside the rule is a 400 naming it; the metadata shows -1 for height and width."""
    pytest.importorskip("fastapi")
    import concurrent.futures

    httpx = pytest.importorskip("httpx")
    from acmix_deploy.runtime.loader import open_runner
    from acmix_deploy.serving import ServeSettings

    from tests.helpers.server import ServerThread

    train, path, res = tiny_dynamic
    runner = open_runner(path, threads=1, specialize=2, background=True)  # as serve opens it
    settings = ServeSettings(name="dyn", port=0, max_batch=8, batch_timeout_ms=80, workers=1)
    sizes = [(16, 16), (24, 40), (16, 16), (32, 32), (24, 40), (16, 16)]
    xs = [np.random.default_rng(i).standard_normal((1, 3, h, w)).astype(np.float32) for i, (h, w) in enumerate(sizes)]

    def post(url, x):
        body = {"inputs": [{"name": "images", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
        return httpx.post(url + "/v2/models/dyn/infer", json=body, timeout=60)

    with ServerThread(runner, settings) as srv:
        meta = httpx.get(srv.url + "/v2/models/dyn").json()
        assert meta["inputs"][0]["shape"] == [-1, 3, -1, -1]
        with concurrent.futures.ThreadPoolExecutor(len(xs)) as pool:
            replies = list(pool.map(lambda x: post(srv.url, x), xs))
        bad = post(srv.url, np.zeros((1, 3, 20, 16), np.float32))
        # a size requested again and again gets its own session, built in the background
        from acmix_deploy.runtime.per_size import SPECIALIZE_AFTER

        x = xs[3]
        for _ in range(SPECIALIZE_AFTER):
            replies.append(post(srv.url, x))
            xs.append(x)
        deadline = time.monotonic() + 60
        while (32, 32) not in runner.specialized_sizes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (32, 32) in runner.specialized_sizes
        replies.append(post(srv.url, x))
        xs.append(x)
    for x, r in zip(xs, replies):
        assert r.status_code == 200, r.text
        y = np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(1, -1)
        with torch.no_grad():
            ref = train(torch.from_numpy(x))
        assert rel_error(ref, torch.from_numpy(y)) <= TOL_F32
    assert bad.status_code == 400 and "multiples of 8" in bad.text and "20x16" in bad.text


# ------------------------------------------------------------------------------------------------ profiling


def test_profile_sweeps_sizes_on_one_dynamic_file(tiny_dynamic, tmp_path):
    from typer.testing import CliRunner

    from acmix_deploy.cli import app
    from acmix_deploy.profiling import ProfileSettings, profile_model

    _, path, _ = tiny_dynamic
    report = profile_model(path, ProfileSettings(batches=(1, 2), sizes=((16, 16), (24, 40)), warmup=1, iters=2))
    assert [(r["imgsz"], r["batch"]) for r in report["results"]] == [([16, 16], 1), ([16, 16], 2), ([24, 40], 1),
                                                                      ([24, 40], 2)]
    assert report["settings"]["imgsz"] == [[16, 16], [24, 40]]
    assert report["settings"]["specialize"] == 4 and any("fixed (specialize 4, a slot per size)" in n for n in report["notes"])
    with pytest.raises(ConfigError, match="multiples of 8"):
        profile_model(path, ProfileSettings(sizes=((16, 16), (20, 16)), warmup=0, iters=1))
    cli = CliRunner()
    result = cli.invoke(app, ["profile", str(path), "--imgsz", "16,24x40", "--warmup", "0", "--iters", "2",
                              "--csv", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    assert "24x40" in result.output and "size" in result.output
    assert "16x16" in (tmp_path / "p.csv").read_text()
    result = cli.invoke(app, ["profile", str(path), "--imgsz", "16,2y4"])
    assert result.exit_code == 2 and "is not a size" in result.output


def test_profile_sweep_on_a_checkpoint_exports_one_dynamic_graph(tmp_path, onnx_model):
    from acmix_deploy.profiling import ProfileSettings, profile_model

    model = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=3), 4).eval()
    ckpt = ad.save_checkpoint(model, tmp_path / "t.pth")
    report = profile_model(ckpt, ProfileSettings(backends=("torch", "onnxruntime"), sizes=((32, 32), (16, 24)),
                                                 warmup=0, iters=1))
    got = {(r["backend"], tuple(r["imgsz"])) for r in report["results"]}
    assert got == {(b, s) for b in ("torch", "onnxruntime") for s in ((32, 32), (16, 24))}
    assert any("dynamic height and width" in n for n in report["notes"])
    # A file with a fixed size still refuses another one, and says how to get a file that takes several.
    with pytest.raises(ConfigError, match="export it with dynamic_hw") as info:
        profile_model(onnx_model, ProfileSettings(sizes=((32, 32), (16, 16)), warmup=0, iters=1))
    assert "export it with --dynamic-hw" in info.value.spell(lambda p: "--" + p.replace("_", "-"))


def test_model_without_acmix_that_fails_small_is_refused_clearly(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 5), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(ConfigError, match=r"no ACmix block .* fails at 1x2"):
        export_onnx(model, tmp_path / "c.onnx", (3, 16, 16), dynamic_hw=True)
    assert not (tmp_path / "c.onnx").exists()


def test_fp16_graph_with_dynamic_hw_keeps_its_shape_arithmetic(tmp_path):
    """--fp16 --dynamic-hw: the halo tables' shape arithmetic stays as exported (it was converted to float16
    with Cast targets left float32, a graph ONNX Runtime refused to load); every validated size within fp16's
    tolerance."""
    import onnx

    from acmix_deploy import export_model
    from acmix_deploy.exporters import ExportOptions
    from acmix_deploy.exporters.precision import shape_nodes

    model = randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=3), 9).eval()
    ckpt = ad.save_checkpoint(model, tmp_path / "train.pth")
    res = export_model(ckpt, ExportOptions(output=tmp_path / "h.onnx", dynamic_hw=True, fp16=True), lambda _: None)
    assert sorted(r.batch for r in res.rows) == [1, 1, 1, 2, 3]  # three sizes validated
    proto = onnx.load(tmp_path / "h.onnx")
    assert len(shape_nodes(proto)) > 100  # the in-graph halo tables, kept as exported
    declared = {v.name: v.type.tensor_type.elem_type for v in proto.graph.value_info}
    # the symbolic sizes are named after the float16 conversion (which drops the annotations): none unnamed
    params = [d.dim_param for v in proto.graph.value_info for d in v.type.tensor_type.shape.dim if d.dim_param]
    assert len(params) > 100 and not [p for p in params if p.startswith("unk__")]
    producer = {out: node for node in proto.graph.node for out in node.output}
    to = {n.name: n.attribute[0].i for n in proto.graph.node if n.op_type == "Cast"}
    for node in proto.graph.node:
        if node.op_type == "Cast":
            # the refused graph: a Cast to float32 whose output was declared float16
            assert declared.get(node.output[0], to[node.name]) == to[node.name], node.name
            up = producer.get(node.input[0])
            # no float32 -> float16 -> float32 round trip (precision lost for nothing)
            assert not (to[node.name] == onnx.TensorProto.FLOAT and up is not None and up.op_type == "Cast"
                        and to[up.name] == onnx.TensorProto.FLOAT16), node.name
    runner = OrtRunner(tmp_path / "h.onnx")
    gen = torch.Generator().manual_seed(4)
    for b, h, w in [(1, 16, 16), (3, 24, 40), (1, 64, 72)]:
        x = torch.randn(b, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = model(x)
        assert rel_error(ref, torch.from_numpy(runner.infer(x.numpy()))) <= 5e-3, (b, h, w)


def test_round_trip_removal_follows_chains_and_keeps_shared_casts():
    """``drop_round_trips`` on a hand-made graph: two float32->float16->float32 round trips in a row collapse
    to the float32 source; a float16 cast that another node still reads stays; the graph stays valid."""
    import onnx
    from onnx import TensorProto, helper

    from acmix_deploy.exporters.precision import drop_round_trips

    def cast(name, src, dst, to):
        return helper.make_node("Cast", [src], [dst], name=name, to=to)

    nodes = [cast("c1", "a", "a16", TensorProto.FLOAT16), cast("c2", "a16", "b", TensorProto.FLOAT),
             cast("c3", "b", "b16", TensorProto.FLOAT16), cast("c4", "b16", "c", TensorProto.FLOAT),
             helper.make_node("Relu", ["c"], ["y"], name="relu"),
             helper.make_node("Neg", ["b16"], ["z16"], name="neg"),  # reads the second float16 cast
             cast("c5", "z16", "z", TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert drop_round_trips(model) == 2
    onnx.checker.check_model(model)
    by_name = {n.name: n for n in model.graph.node}
    assert list(by_name["relu"].input) == ["a"]  # the whole chain, not one level
    assert "c1" not in by_name and "c2" not in by_name and "c4" not in by_name
    assert list(by_name["c3"].input) == ["a"] and "neg" in by_name  # still read by Neg: kept, fed from a
    x = np.array([1.0, -2.0], dtype=np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, z = sess.run(None, {"a": x})
    assert np.array_equal(y, np.maximum(x, 0)) and np.array_equal(z, -x)


def test_size_counts_as_shape_arithmetic():
    """A float value computed from ``Size`` (like one from ``Shape``) is kept float32 by the fp16 conversion."""
    import onnx
    from onnx import TensorProto, helper

    from acmix_deploy.exporters.precision import convert_fp16

    nodes = [helper.make_node("Size", ["x"], ["n"], name="size"),
             helper.make_node("Cast", ["n"], ["nf"], name="tofloat", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "nf"], ["y"], name="mul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = convert_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.checker.check_model(model)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # refused before
    assert np.allclose(sess.run(None, {"x": x})[0], 6 * x)
