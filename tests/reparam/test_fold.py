"""Each fold of acmix_deploy.fold, tested on its own against the unfolded computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from acmix_deploy import fold
from acmix_deploy.errors import ConfigError

from tests.helpers import TOL_F64, rel_error as _rel


def _random_bn(c: int, seed: int, affine: bool = True) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c, affine=affine).double()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
        if affine:
            bn.weight.copy_(torch.randn(c, generator=g))
            bn.bias.copy_(torch.randn(c, generator=g))
    return bn.eval()



@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_affine_matches_eval_batchnorm(affine):
    bn = _random_bn(7, 0, affine)
    x = torch.randn(3, 7, 5, 4, dtype=torch.float64)
    g, beta = fold.batchnorm_affine(bn)
    assert _rel(bn(x), x * g.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)) < TOL_F64


def test_batchnorm_without_running_stats_is_refused():
    with pytest.raises(ConfigError, match="running statistics"):
        fold.batchnorm_affine(nn.BatchNorm2d(4, track_running_stats=False))


@pytest.mark.parametrize(
    "cin,cout,k,stride,groups,bias,size",
    [(3, 8, 3, 1, 1, False, (9, 7)), (8, 8, 3, 2, 4, True, (11, 10)), (6, 12, 1, 2, 1, True, (5, 5)),
     (4, 4, 7, 2, 4, False, (13, 9))],
)
def test_fuse_conv_bn(cin, cout, k, stride, groups, bias, size):
    torch.manual_seed(1)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=bias).double()
    bn = _random_bn(cout, 2)
    fused = fold.fuse_conv_bn(conv, bn)
    assert fused.bias is not None and fused.stride == conv.stride and fused.groups == groups
    x = torch.randn(2, cin, *size, dtype=torch.float64)
    assert _rel(bn(conv(x)), fused(x)) < TOL_F64


def test_fold_batchnorm_channel_mismatch():
    with pytest.raises(ConfigError, match="channels"):
        fold.fold_batchnorm(torch.randn(4, 3, 1, 1), None, nn.BatchNorm2d(5))


def test_fuse_qkv_scales_query_and_value_rows():
    torch.manual_seed(0)
    ws = [torch.randn(6, 5, 1, 1, dtype=torch.float64) for _ in range(3)]
    bs = [torch.randn(6, dtype=torch.float64) for _ in range(3)]
    v_scale = torch.randn(6, dtype=torch.float64)
    w, b = fold.fuse_qkv(ws[0], bs[0], ws[1], bs[1], ws[2], bs[2], 0.25, v_scale)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    out = F.conv2d(x, w, b)
    q, k, v = (F.conv2d(x, wi, bi) for wi, bi in zip(ws, bs))
    assert _rel(out[:, :6], 0.25 * q) < TOL_F64
    assert _rel(out[:, 6:12], k) < TOL_F64
    assert _rel(out[:, 12:], v * v_scale.view(1, -1, 1, 1)) < TOL_F64


@pytest.mark.parametrize("heads,d", [(1, 4), (2, 3), (4, 2)])
def test_positional_rows_equal_projected_query(heads, d):
    torch.manual_seed(heads)
    c = heads * d
    wq = torch.randn(c, 5, 1, 1, dtype=torch.float64)
    bq = torch.randn(c, dtype=torch.float64)
    wp = torch.randn(d, 2, 1, 1, dtype=torch.float64)
    w_r, b_r = fold.positional_rows(wq, bq, wp, heads)
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    q = F.conv2d(x, wq, bq).view(2, heads, d, 4, 3)
    expected = torch.einsum("ic,bhiyx->bhcyx", wp.view(d, 2), q).reshape(2, 2 * heads, 4, 3)
    assert _rel(expected, F.conv2d(x, w_r, b_r)) < TOL_F64


@pytest.mark.parametrize("heads,d,kc,stride", [(4, 2, 3, 1), (2, 3, 3, 2), (1, 4, 5, 1), (8, 1, 3, 2)])
def test_fold_conv_path_equals_fc_then_dep_conv(heads, d, kc, stride):
    torch.manual_seed(heads * 10 + d)
    c = heads * d
    b, hh, ww = 2, 7, 6
    fc = torch.randn(kc * kc, 3 * heads, 1, 1, dtype=torch.float64)
    dep = torch.randn(c, kc * kc, kc, kc, dtype=torch.float64)
    qkv = torch.randn(b, 3 * c, hh, ww, dtype=torch.float64)
    in_scale = torch.rand(3 * c, dtype=torch.float64) + 0.5
    out_scale = torch.randn(c, dtype=torch.float64)
    # Official path on the unscaled q/k/v.
    f_all = F.conv2d(qkv.view(b, 3 * heads, d, hh * ww), fc)
    f_conv = f_all.permute(0, 2, 1, 3).reshape(b, -1, hh, ww)
    expected = F.conv2d(f_conv, dep, stride=stride, padding=kc // 2, groups=d) * out_scale.view(1, -1, 1, 1)
    # Folded path reads q/k/v that were already multiplied by in_scale.
    w = fold.fold_conv_path(fc, dep, heads, in_scale, out_scale)
    scaled = qkv * in_scale.view(1, -1, 1, 1)
    got = F.conv2d(fold.regroup_by_head_dim(scaled, heads), w, stride=stride, padding=kc // 2, groups=d)
    assert _rel(expected, got) < TOL_F64


def test_regroup_by_head_dim_order():
    heads, d = 2, 3
    x = torch.arange(3 * heads * d, dtype=torch.float64).view(1, -1, 1, 1)
    out = fold.regroup_by_head_dim(x, heads).flatten().tolist()
    # channel i * 3h + t holds original channel t * d + i
    assert out == [t * d + i for i in range(d) for t in range(3 * heads)]


def test_head_dim_major_order_is_the_regroup_as_a_row_permutation():
    heads, d = 3, 4
    w = torch.randn(3 * heads * d, 5, dtype=torch.float64)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    y = torch.einsum("oc,bchw->bohw", w, x)
    order = fold.head_dim_major_order(3 * heads * d, heads)
    assert torch.equal(torch.einsum("oc,bchw->bohw", w[order], x), fold.regroup_by_head_dim(y, heads))
    assert sorted(order.tolist()) == list(range(3 * heads * d))


@pytest.mark.parametrize("groups,factor,cin_g,cout_g,k,stride", [(16, 4, 12, 4, 3, 1), (8, 2, 3, 5, 3, 2),
                                                                  (6, 3, 2, 1, 5, 1), (4, 1, 12, 4, 3, 2),
                                                                  (4, 4, 12, 4, 1, 1)])
def test_merge_conv_groups_is_the_same_convolution(groups, factor, cin_g, cout_g, k, stride):
    torch.manual_seed(groups + factor)
    w = torch.randn(groups * cout_g, cin_g, k, k, dtype=torch.float64)
    bias = torch.randn(groups * cout_g, dtype=torch.float64)
    x = torch.randn(2, groups * cin_g, 9, 7, dtype=torch.float64)  # odd sizes, zero-padded borders
    merged = fold.merge_conv_groups(w, groups, factor)
    assert merged.shape == (groups * cout_g, factor * cin_g, k, k)
    # Block diagonal: each output row keeps its own group's weights, zeros for the merged neighbours.
    assert int((merged != 0).sum()) == int((w != 0).sum())
    expected = F.conv2d(x, w, bias, stride, k // 2, 1, groups)
    got = F.conv2d(x, merged, bias, stride, k // 2, 1, groups // factor)
    assert _rel(expected, got) < TOL_F64


def test_merge_conv_groups_refuses_a_factor_that_does_not_divide():
    with pytest.raises(ConfigError, match="cannot merge 6 convolution groups by a factor of 4"):
        fold.merge_conv_groups(torch.zeros(12, 2, 3, 3), 6, 4)
