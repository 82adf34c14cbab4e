"""The blocked ("halo") attention core against the official unfold formulation."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn as nn

from acmix_deploy.modules import halo_attention, make_halo_plan
from acmix_deploy.modules.window_attention import TRANSPOSE_BY_PRODUCT_MAX_DIM, choose_tile, softmax_floor

from tests.helpers import TOL_F32, TOL_F64
from tests.helpers.window_attention import CASES, attention_inputs, head_dim_major, unfold_reference


@pytest.mark.parametrize("heads,d,ka,stride,size,batch,tile", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, TOL_F64), (torch.float32, TOL_F32)])
def test_halo_attention_equals_unfold_form(heads, d, ka, stride, size, batch, tile, dtype, tol):
    q, k, v, conv_p = attention_inputs(heads, d, size, batch, dtype, heads * 100 + ka + stride + (tile or 0))
    with torch.no_grad():
        ref = unfold_reference(q.double(), k.double(), v.double(), copy.deepcopy(conv_p).double(), heads, ka, stride)
        plan = make_halo_plan(*size, ka, stride, heads, d, tile=tile, dtype=dtype)
        qkv = head_dim_major(q, k, v, heads)
        out = halo_attention(qkv, conv_p.weight.reshape(d, 2), plan)  # eager spelling
        graph = halo_attention(qkv, conv_p.weight.reshape(d, 2), plan, graph=True)  # the ONNX-tuned spelling
    assert out.shape == ref.shape and out.dtype == dtype
    assert float((out.double() - ref).abs().max() / ref.abs().max()) <= tol
    # The two spellings gather and multiply the same numbers in the same order: bit-identical.
    assert torch.equal(out, graph)


def test_plan_mask_keeps_exactly_the_window():
    for stride in (1, 2):
        plan = make_halo_plan(12, 12, 7, stride, tile=4)
        kept = torch.isfinite(plan.mask).sum(1)
        assert torch.all(kept == 49)


def test_plan_reflection_counts_a_key_twice_at_the_border():
    """At the top-left pixel with ka = 3, reflection brings row/col 1 in twice: the window holds it twice."""
    plan = make_halo_plan(5, 5, 3, 1, tile=5)
    keys = plan.key_index[0]
    window = keys[torch.isfinite(plan.mask[0])]  # query (0, 0)
    # window rows -1, 0, 1 -> reflected 1, 0, 1; same for columns.
    expected = torch.tensor([r * 5 + c for r in (1, 0, 1) for c in (1, 0, 1)])
    assert torch.equal(window, expected)


def test_every_output_pixel_maps_to_its_own_query():
    plan = make_halo_plan(9, 11, 7, 1, tile=4)
    q_of_out = plan.query_index.reshape(-1)[plan.output_index]
    assert torch.equal(q_of_out, torch.arange(9 * 11))
    plan2 = make_halo_plan(10, 6, 5, 2, tile=3)
    oy, ox = torch.meshgrid(torch.arange(5), torch.arange(3), indexing="ij")
    assert torch.equal(plan2.query_index.reshape(-1)[plan2.output_index], (2 * oy * 6 + 2 * ox).reshape(-1))


def test_choose_tile_on_the_resnet50_maps():
    # (H, stride, head_dim) of ACmix-ResNet-50's blocks -> tile picked by the traffic count.
    picked = {(h, s, d): choose_tile(h, h, 7, s, d) for h, s, d in
              [(56, 1, 16), (28, 1, 32), (14, 1, 64), (7, 1, 128), (56, 2, 32), (28, 2, 64), (14, 2, 128)]}
    assert picked == {(56, 1, 16): 4, (28, 1, 32): 4, (14, 1, 64): 7, (7, 1, 128): 7,
                      (56, 2, 32): 4, (28, 2, 64): 7, (14, 2, 128): 7}


def test_block_groups_give_the_same_result():
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(3, 24, 13, 9, generator=gen, dtype=torch.float64)
    pos = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    whole = make_halo_plan(13, 9, 7, 1, heads=2, head_dim=4, tile=3, dtype=torch.float64, chunk_bytes=1 << 40)
    split = make_halo_plan(13, 9, 7, 1, heads=2, head_dim=4, tile=3, dtype=torch.float64, chunk_bytes=1)
    assert len(whole.query_chunks) == 1 and len(split.query_chunks) == split.tiles == 15  # one block per group
    assert torch.equal(torch.cat(split.key_chunks), whole.key_index)
    out_whole, out_split = halo_attention(qkv, pos, whole), halo_attention(qkv, pos, split)
    assert float((out_whole - out_split).abs().max() / out_whole.abs().max()) <= TOL_F64


def test_groups_bound_the_logits_per_image():
    plan = make_halo_plan(56, 56, 7, 1, heads=4, head_dim=16)  # ACmix-ResNet-50 stage 1: 196 blocks of 4x4
    per_tile = 4 * plan.tile_pixels * plan.halo_pixels * 4
    sizes = [len(c) for c in plan.query_chunks]
    assert sum(sizes) == plan.tiles and max(sizes) * per_tile <= 2 * (256 << 10)
    assert len(make_halo_plan(7, 7, 7, 1, heads=4, head_dim=128).query_chunks) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transposition_by_identity_product_is_bit_exact(dtype):
    # Every output of the identity product is one input times 1 plus products with 0.
    heads, d = 4, 16
    q, k, v, conv_p = attention_inputs(heads, d, (11, 13), 2, dtype, 7)
    plan = make_halo_plan(11, 13, 7, 1, heads, d, tile=4, dtype=dtype)
    assert plan.row_identity is not None and d <= TRANSPOSE_BY_PRODUCT_MAX_DIM
    qkv = head_dim_major(q * 50, k, v, heads)  # large logits: any rounding would show
    with torch.no_grad():
        # The product is part of the graph spelling (the one exported to ONNX).
        by_product = halo_attention(qkv, conv_p.weight.reshape(d, 2), plan, graph=True)
        by_transpose = halo_attention(qkv, conv_p.weight.reshape(d, 2), dataclasses.replace(plan, row_identity=None),
                                      graph=True)
    assert torch.equal(by_product, by_transpose)


def test_export_records_the_graph_spelling(tmp_path, monkeypatch):
    # ONNX export must trace the spelling tuned for ONNX Runtime, eager calls the other one.
    pytest.importorskip("onnx")
    import acmix_deploy.modules.acmix as acmix_module
    from acmix_deploy.exporters import export_onnx
    from acmix_deploy.modules import window_attention
    from acmix_deploy.modules.acmix import ACmix
    from acmix_deploy.testing import randomize_model

    seen = []
    original = acmix_module.halo_attention

    def recording(*args, **kwargs):
        seen.append(window_attention._recording())
        return original(*args, **kwargs)

    monkeypatch.setattr(acmix_module, "halo_attention", recording)
    block = nn.Sequential(randomize_model(ACmix(16, 16, 7, 4, 3, 1), 2).eval().fuse().eval())
    with torch.no_grad():
        block(torch.randn(1, 16, 8, 8))
    assert seen == [False]
    seen.clear()
    export_onnx(block, tmp_path / "b.onnx", (16, 8, 8))
    assert True in seen  # the traced call (the exporter's eager reference and validation calls are False)


@pytest.mark.parametrize("heads,d,ka,stride,size,batch,tile", [CASES[1], CASES[3], CASES[8], CASES[11]])
def test_softmax_floor_stays_within_its_bound(heads, d, ka, stride, size, batch, tile):
    # The floor raises logits to (row max - m): the output moves by at most 2 (n - 1) e^-m max|v| for rows of
    # n logits.  Large logits (scaled queries) give rows whose small terms the floor really raises.
    q, k, v, conv_p = attention_inputs(heads, d, size, batch, torch.float64, 11)
    plan = make_halo_plan(*size, ka, stride, heads, d, tile=tile, dtype=torch.float64)
    qkv = head_dim_major(q * 20, k, v, heads)
    w = conv_p.weight.reshape(d, 2)
    with torch.no_grad():
        plain = halo_attention(qkv, w, plan, graph=True)
        with softmax_floor(30.0):
            floored = halo_attention(qkv, w, plan, graph=True)
            eager = halo_attention(qkv, w, plan)  # eager torch never takes the floor
            with softmax_floor(2.0):  # a margin this small must show: the test can fail
                coarse = halo_attention(qkv, w, plan, graph=True)
        assert torch.equal(eager, halo_attention(qkv, w, plan))
    bound = 2 * (plan.halo_pixels - 1) * math.exp(-30.0) * float(v.abs().max())
    assert float((floored - plain).abs().max()) <= bound
    assert float((coarse - plain).abs().max()) > 1e-3 * float(plain.abs().max())
    with pytest.raises(ValueError, match="positive"):
        with softmax_floor(0.0):
            pass


def test_softmax_floor_bound_is_reached():
    # The worst case: a 1x1 kernel leaves each row of the 13x13 tile's 169 slots with one finite logit (its own
    # pixel) and 168 masked ones, which the floor raises to (row max - 30), each to weight e^-30 / (1 + 168 e^-30).
    # With v = +1 at one pixel and -1 elsewhere that pixel's output drops from 1 by 2 * 168 e^-30 / (1 + 168 e^-30),
    # a factor 1 + 168 e^-30 below the bound 2 (n - 1) e^-30 max|v| and about twice n e^-30: a bound that is too
    # small fails here.
    size, n, margin = (13, 13), 169, 30.0
    plan = make_halo_plan(*size, 1, 1, 1, 1, tile=13, dtype=torch.float64)
    assert plan.halo_pixels == n
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.randn(1, 1, *size, generator=gen, dtype=torch.float64) for _ in range(2))
    v = -torch.ones(1, 1, *size, dtype=torch.float64)
    v[..., 5, 8] = 1.0
    qkv = head_dim_major(q, k, v, 1)
    w = torch.zeros(1, 2, dtype=torch.float64)
    with torch.no_grad():
        plain = halo_attention(qkv, w, plan, graph=True)
        with softmax_floor(margin):
            floored = halo_attention(qkv, w, plan, graph=True)
    assert float(plain[0, 0, 5, 8]) == 1.0  # one finite logit: the plain softmax is one-hot
    moved = float((floored - plain).abs().max())
    bound = 2 * (n - 1) * math.exp(-margin)
    exact = bound / (1 + (n - 1) * math.exp(-margin))
    # The only slack is float64 rounding over the 169-term sum near 1 (ulp 2.2e-16): 1e-14, 3e-4 of the bound.
    assert moved <= bound + 1e-14 and abs(moved - exact) <= 1e-14
    assert moved > 1.9 * n * math.exp(-margin)


def test_onnx_for_a_cpu_takes_the_softmax_floor(tmp_path):
    # The exporter asks for the floor in graphs for ONNX Runtime's CPU kernels (cpu_isa), never otherwise,
    # and the floored graph matches the training form as tightly as the plain one.
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from acmix_deploy.exporters import export_onnx
    from acmix_deploy.modules.acmix import ACmix
    from acmix_deploy.runtime import OrtRunner
    from acmix_deploy.testing import randomize_model

    train = randomize_model(ACmix(16, 32, 7, 4, 3, 2), 5).eval()
    deploy = train.fuse()
    x = torch.randn(3, 16, 14, 18)
    with torch.no_grad():
        ref = train(x).double()
    for isa, floored in ((None, False), ("generic", True), ("avx512", True)):
        res = export_onnx(deploy, tmp_path / f"{isa}.onnx", (16, 14, 18), cpu_isa=isa)
        ops = {n.op_type for n in onnx.load(res.path).graph.node}
        assert ("ReduceMax" in ops) is floored
        out = torch.from_numpy(OrtRunner(res.path).infer(x.numpy())).double()
        assert float((out - ref).abs().max() / ref.abs().max()) <= 1e-5
