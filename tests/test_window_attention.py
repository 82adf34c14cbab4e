"""The blocked ("halo") attention core against the official unfold formulation."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from acmix_deploy.modules import halo_attention, make_halo_plan
from acmix_deploy.modules.acmix import coordinate_grid

from .conftest import TOL_F64


def unfold_reference(q, k, v, conv_p, heads, ka, stride):
    """Official computation: reflection pad + unfold, positional term from pe = conv_p(loc) with bias."""
    b, c, hh, ww = k.shape
    d = c // heads
    pad = (ka - 1) // 2
    h_out, w_out = hh // stride, ww // stride
    pe = conv_p(coordinate_grid(hh, ww, dtype=k.dtype))

    def nbr(t, n):
        return F.unfold(F.pad(t, (pad,) * 4, mode="reflect"), ka, stride=stride).view(n, d, ka * ka, h_out, w_out)

    q_s = q.reshape(b * heads, d, hh, ww)[:, :, ::stride, ::stride]
    pe_c = pe[:, :, ::stride, ::stride].unsqueeze(2)
    logits = (q_s.unsqueeze(2) * (nbr(k.reshape(b * heads, d, hh, ww), b * heads) + pe_c - nbr(pe, 1))).sum(1)
    att = torch.softmax(logits, dim=1)
    out = (att.unsqueeze(1) * nbr(v.reshape(b * heads, d, hh, ww), b * heads)).sum(2)
    return out.reshape(b, c, h_out, w_out)


CASES = [
    # heads, d, ka, stride, (H, W), batch, tile
    (4, 4, 7, 1, (14, 14), 1, 7),   # whole tiles
    (4, 4, 7, 1, (9, 11), 2, 7),    # partial last tiles, odd sizes
    (2, 3, 7, 2, (10, 12), 3, 7),   # stride 2
    (1, 5, 5, 2, (8, 6), 1, 3),
    (8, 2, 3, 1, (5, 7), 2, 4),
    (4, 4, 7, 1, (4, 4), 1, 7),     # smallest size for ka = 7: most keys are reflected
    (2, 4, 7, 1, (17, 6), 1, 2),    # tile much smaller than the map
    (3, 2, 7, 2, (4, 8), 2, 7),     # tile larger than the output
]


@pytest.mark.parametrize("heads,d,ka,stride,size,batch,tile", CASES)
def test_halo_attention_equals_unfold_form(heads, d, ka, stride, size, batch, tile):
    gen = torch.Generator().manual_seed(heads * 100 + ka + stride + tile)
    c = heads * d
    q, k, v = (torch.randn(batch, c, *size, generator=gen, dtype=torch.float64) for _ in range(3))
    conv_p = nn.Conv2d(2, d, 1).double()
    with torch.no_grad():
        conv_p.weight.copy_(torch.randn(d, 2, 1, 1, generator=gen) * 2)
        conv_p.bias.copy_(torch.randn(d, generator=gen) * 5)  # cancels in pe(centre) - pe(nbr)
        ref = unfold_reference(q, k, v, conv_p, heads, ka, stride)
        # -r: minus W_p^T q per head (what the fused 1x1 conv produces).
        r_neg = -torch.einsum("ic,bhiyx->bhcyx", conv_p.weight.view(d, 2), q.view(batch, heads, d, *size))
        plan = make_halo_plan(*size, ka, stride, tile=tile, dtype=torch.float64)
        out = halo_attention(q, r_neg.reshape(batch, 2 * heads, *size), k, v, plan, heads)
    assert out.shape == ref.shape
    assert float((out - ref).abs().max() / ref.abs().max()) <= TOL_F64


def test_plan_mask_keeps_exactly_the_window():
    for stride in (1, 2):
        plan = make_halo_plan(12, 12, 7, stride, tile=4)
        kept = torch.isfinite(plan.mask).sum(1)
        assert torch.all(kept == 49)


def test_plan_reflection_counts_a_key_twice_at_the_border():
    """At the top-left pixel with ka = 3, reflection brings row/col 1 in twice: the window holds it twice."""
    plan = make_halo_plan(5, 5, 3, 1, tile=5)
    keys = plan.key_index.view(plan.tiles, plan.halo_pixels)[0]
    window = keys[torch.isfinite(plan.mask[0])]  # query (0, 0)
    # window rows -1, 0, 1 -> reflected 1, 0, 1; same for columns.
    expected = torch.tensor([r * 5 + c for r in (1, 0, 1) for c in (1, 0, 1)])
    assert torch.equal(window, expected)


def test_every_output_pixel_maps_to_its_own_query():
    plan = make_halo_plan(9, 11, 7, 1, tile=4)
    q_of_out = plan.query_index[plan.output_index]
    assert torch.equal(q_of_out, torch.arange(9 * 11))
    plan2 = make_halo_plan(10, 6, 5, 2, tile=3)
    oy, ox = torch.meshgrid(torch.arange(5), torch.arange(3), indexing="ij")
    assert torch.equal(plan2.query_index[plan2.output_index], (2 * oy * 6 + 2 * ox).reshape(-1))


def test_batch_chunking_gives_the_same_result():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 8, 9, 9, generator=gen) for _ in range(3))
    r_neg = torch.randn(5, 4, 9, 9, generator=gen)
    plan = make_halo_plan(9, 9, 7, 1)
    whole = halo_attention(q, r_neg, k, v, plan, heads=2, chunk_bytes=1 << 40)
    chunked = halo_attention(q, r_neg, k, v, plan, heads=2, chunk_bytes=1)  # one image per chunk
    assert torch.allclose(whole, chunked, rtol=0, atol=1e-6)
