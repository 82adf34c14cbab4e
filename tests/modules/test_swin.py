"""Swin-form ACmix: official layout, each fold on its own, whole-model equivalence, files, CLI, ONNX.

The reference for the training form is :func:`official_forward` below: a
functional transcription of the official ``swin_transformer_acmix.py``
forward (window partition by view/permute, shift mask from slices, patch
merging by strided slicing), reading a state dict by the official names.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from typer.testing import CliRunner

import acmix_deploy as ad
from acmix_deploy import fold, fold_swin
from acmix_deploy.errors import ConfigError, InputShapeError
from acmix_deploy.models.swin import stage_windows
from acmix_deploy.modules.swin_acmix import (
    WindowAttentionACmix,
    WindowAttentionACmixDeploy,
    factored_conv_path,
    merged_conv_path,
    relative_position_index,
    shifted_window_mask,
)
from acmix_deploy.testing import randomize_model

from tests.helpers import TOL_F32, TOL_F64, rel_error as _rel

runner = CliRunner()
TOL_ORT = 1e-4
MICRO = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), patch=4)



# ---------------------------------------------------------------- the official layout, written out


def official_index(w: int) -> torch.Tensor:
    """The official recipe: coordinates, pairwise differences, shift, row stride 2w-1, sum."""
    coords = torch.stack(torch.meshgrid([torch.arange(w), torch.arange(w)], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += w - 1
    rel[:, :, 1] += w - 1
    rel[:, :, 0] *= 2 * w - 1
    return rel.sum(-1)


def official_mask(res: int, w: int, s: int) -> torch.Tensor:
    img = torch.zeros(1, res, res, 1)
    cnt = 0
    for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = img.view(1, res // w, w, res // w, w, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def official_keys(img=224, patch=4, in_chans=3, classes=1000, embed_dim=96, depths=(2, 2, 6, 2),
                  num_heads=(3, 6, 12, 24), window=7) -> dict[str, tuple]:
    """Every state-dict key of the official SwinTransformer_acmix (ape=False, patch_norm=True), with shapes."""
    keys = {"patch_embed.proj.weight": (embed_dim, in_chans, patch, patch), "patch_embed.proj.bias": (embed_dim,),
            "patch_embed.norm.weight": (embed_dim,), "patch_embed.norm.bias": (embed_dim,)}
    res = img // patch
    for s, (depth, nh) in enumerate(zip(depths, num_heads)):
        c = embed_dim * 2**s
        w = min(res, window) if res <= window else window
        for b in range(depth):
            p = f"layers.{s}.blocks.{b}."
            if b % 2 == 1 and res > window:
                keys[p + "attn_mask"] = ((res // w) ** 2, w * w, w * w)
            keys.update({
                p + "norm1.weight": (c,), p + "norm1.bias": (c,),
                p + "attn.relative_position_bias_table": ((2 * w - 1) ** 2, nh),
                p + "attn.relative_position_index": (w * w, w * w),
                p + "attn.qkv.weight": (3 * c, c), p + "attn.qkv.bias": (3 * c,),
                p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
                p + "attn.fc.weight": (9, 3 * nh, 1, 1), p + "attn.fc.bias": (9,),
                p + "attn.dep_conv.weight": (c, 9, 3, 3),
                p + "attn.rate1": (1,), p + "attn.rate2": (1,),
                p + "norm2.weight": (c,), p + "norm2.bias": (c,),
                p + "mlp.fc1.weight": (4 * c, c), p + "mlp.fc1.bias": (4 * c,),
                p + "mlp.fc2.weight": (c, 4 * c), p + "mlp.fc2.bias": (c,),
            })
        if s < len(depths) - 1:
            keys.update({f"layers.{s}.downsample.reduction.weight": (2 * c, 4 * c),
                         f"layers.{s}.downsample.norm.weight": (4 * c,), f"layers.{s}.downsample.norm.bias": (4 * c,)})
            res //= 2
    c = embed_dim * 2 ** (len(depths) - 1)
    keys.update({"norm.weight": (c,), "norm.bias": (c,), "head.weight": (classes, c), "head.bias": (classes,)})
    return keys


def official_forward(sd, x, embed_dim, depths, num_heads, window, patch):
    """The official forward, functionally (eval mode: dropouts and drop-path are identity)."""
    ln = lambda t, p: F.layer_norm(t, t.shape[-1:], sd[p + ".weight"], sd[p + ".bias"])  # noqa: E731
    lin = lambda t, p: F.linear(t, sd[p + ".weight"], sd.get(p + ".bias"))  # noqa: E731
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    res = t.shape[-1]
    t = ln(t.flatten(2).transpose(1, 2), "patch_embed.norm")
    for s, (depth, nh) in enumerate(zip(depths, num_heads)):
        c = t.shape[-1]
        d = c // nh
        for b in range(depth):
            p = f"layers.{s}.blocks.{b}."
            w, shift = (res, 0) if res <= window else (window, window // 2 if b % 2 else 0)
            B = t.shape[0]
            y = ln(t, p + "norm1").view(B, res, res, c)
            if shift:
                y = torch.roll(y, (-shift, -shift), (1, 2))
            qkv = lin(y, p + "attn.qkv")
            f = qkv.reshape(B, res * res, 3 * nh, -1).permute(0, 2, 1, 3)
            f = F.conv2d(f, sd[p + "attn.fc.weight"], sd[p + "attn.fc.bias"])
            f = f.permute(0, 3, 1, 2).reshape(B, 9 * d, res, res)
            conv = F.conv2d(f, sd[p + "attn.dep_conv.weight"], None, padding=1, groups=d).permute(0, 2, 3, 1)
            win = qkv.view(B, res // w, w, res // w, w, 3 * c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, 3 * c)
            q, k, v = win.reshape(-1, w * w, 3, nh, d).permute(2, 0, 3, 1, 4)
            att = (q * d**-0.5) @ k.transpose(-2, -1)
            idx = sd[p + "attn.relative_position_index"]
            bias = sd[p + "attn.relative_position_bias_table"][idx.view(-1)].view(w * w, w * w, -1).permute(2, 0, 1)
            att = att + bias.unsqueeze(0)
            if shift:
                mask = sd[p + "attn_mask"]
                att = att.view(-1, mask.shape[0], nh, w * w, w * w) + mask.unsqueeze(1).unsqueeze(0)
                att = att.view(-1, nh, w * w, w * w)
            o = (att.softmax(-1) @ v).transpose(1, 2).reshape(-1, w * w, c)
            o = lin(o, p + "attn.proj").view(-1, w, w, c)
            o = o.view(B, res // w, res // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(B, res, res, c)
            y = sd[p + "attn.rate1"] * o + sd[p + "attn.rate2"] * conv
            if shift:
                y = torch.roll(y, (shift, shift), (1, 2))
            t = t + y.reshape(B, res * res, c)
            t = t + lin(F.gelu(lin(ln(t, p + "norm2"), p + "mlp.fc1")), p + "mlp.fc2")
        if s < len(depths) - 1:
            g = t.view(t.shape[0], res, res, c)
            g = torch.cat([g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]], -1)
            g = ln(g.view(g.shape[0], -1, 4 * c), f"layers.{s}.downsample.norm")
            t = lin(g, f"layers.{s}.downsample.reduction")
            res //= 2
    return lin(ln(t, "norm").mean(1), "head")


def micro(seed=0, dtype=torch.float64, **kw):
    return randomize_model(ad.create_model("acmix_swin_micro", **kw), seed).to(dtype).eval()


# ---------------------------------------------------------------- layout and official buffers


@pytest.mark.parametrize("name,depths", [("acmix_swin_tiny", (2, 2, 6, 2)), ("acmix_swin_small", (2, 2, 18, 2))])
def test_state_dict_keys_and_shapes_are_the_official_ones(name, depths):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = ad.create_model(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_keys(depths=depths)
    if name == "acmix_swin_tiny":  # Swin-T's 28,288,354 plus fc, dep_conv and rates in 12 blocks
        assert sum(p.numel() for p in model.parameters()) == 28_649_908


@pytest.mark.parametrize("w", [2, 3, 4, 7])
def test_relative_position_index_matches_official_recipe(w):
    assert torch.equal(relative_position_index(w), official_index(w))


@pytest.mark.parametrize("res,w", [(8, 4), (12, 3), (14, 7), (16, 4)])
def test_shift_mask_matches_official_slices(res, w):
    mask = shifted_window_mask(res, res, w, w // 2)
    assert torch.equal(mask, official_mask(res, w, w // 2))
    assert mask.min() == -100 and mask[0].max() == 0  # the first window is never split


def test_buffers_of_micro_model_match_official():
    sd = ad.create_model("acmix_swin_micro").state_dict()
    assert torch.equal(sd["layers.0.blocks.1.attn_mask"], official_mask(8, 4, 2))
    assert "layers.0.blocks.0.attn_mask" not in sd and "layers.1.blocks.1.attn_mask" not in sd
    assert torch.equal(sd["layers.1.blocks.1.attn.relative_position_index"], official_index(4))


def test_stage_window_rule():
    assert stage_windows(56, 7) == (7, 3) and stage_windows(7, 7) == (7, 0) and stage_windows(4, 7) == (4, 0)


@pytest.mark.parametrize("kw,depths_heads,window", [
    ({}, ((2, 2), (2, 4)), 4),
    ({"img_size": 48, "window_size": 3}, ((2, 2), (2, 4)), 3),    # 12x12 and 6x6 maps, both shifted
    ({"img_size": 32, "window_size": 8}, ((2, 2), (2, 4)), 8),    # 8 = window, then 4 < window
])
def test_training_form_matches_official_forward(kw, depths_heads, window):
    model = micro(3, **kw)
    size = kw.get("img_size", 32)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    ref = official_forward(model.state_dict(), x, 16, *depths_heads, window, 4)
    assert _rel(ref, model(x)) < TOL_F64


def test_official_state_dict_loads_strictly_and_released_format_reads(tmp_path):
    src = micro(1, dtype=torch.float32)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    assert set(sd) == set(official_keys(img=32, classes=10, **{k: v for k, v in MICRO.items() if k != "patch"},
                                        window=4, patch=4))
    fresh = ad.create_model("acmix_swin_micro")
    fresh.load_state_dict(sd, strict=True)
    path = tmp_path / "swin_acmix_micro.pth"
    torch.save({"model": sd, "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]},
                "lr_scheduler": {"last_epoch": 299}, "epoch": 299}, path)
    loaded = ad.read_checkpoint(path, "acmix_swin_micro")
    assert loaded.source_format == "wrapped:model" and not loaded.deploy
    assert any("optimizer" in n for n in loaded.notes)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.model(x), src(x))


def test_arch_args_inferred_from_a_released_style_file(tmp_path):
    src = ad.create_model("acmix_swin_micro", num_classes=7, in_chans=1, img_size=48, window_size=3)
    path = tmp_path / "m.pth"
    torch.save({"model": src.state_dict(), "epoch": 3}, path)
    loaded = ad.read_checkpoint(path, "acmix_swin_micro")
    assert loaded.arch_args == {"num_classes": 7, "in_chans": 1, "window_size": 3, "img_size": 48}
    # The deploy form records the resolution in its bias map.
    deploy = ad.reparameterize_model(src)
    torch.save(deploy.state_dict(), path)
    again = ad.read_checkpoint(path, "acmix_swin_micro")
    assert again.deploy and again.arch_args["img_size"] == 48 and again.arch_args["window_size"] == 3


# ---------------------------------------------------------------- each fold on its own (float64)


def _ln(c, seed):
    g = torch.Generator().manual_seed(seed)
    ln = nn.LayerNorm(c).double()
    with torch.no_grad():
        ln.weight.copy_(torch.rand(c, generator=g) + 0.5)
        ln.bias.copy_(torch.randn(c, generator=g))
    return ln


@pytest.mark.parametrize("bias", [True, False])
def test_fold_layernorm_into_linear(bias):
    ln, lin = _ln(6, 0), nn.Linear(6, 5, bias=bias).double()
    w, b = fold_swin.fold_layernorm_into_linear(lin.weight, lin.bias, ln.weight, ln.bias)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    plain = F.layer_norm(x, (6,))
    assert _rel(lin(ln(x)), F.linear(plain, w, b)) < TOL_F64
    # with a token average in between (final norm -> mean -> head)
    assert _rel(lin(ln(x).mean(1)), F.linear(plain.mean(1), w, b)) < TOL_F64
    with pytest.raises(ConfigError, match="channels"):
        fold_swin.fold_layernorm_into_linear(lin.weight, lin.bias, torch.ones(4), torch.zeros(4))


def test_scale_query_rows():
    c, scale = 6, 0.37
    w, b = torch.randn(3 * c, 4, dtype=torch.float64), torch.randn(3 * c, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    ws, bs = fold_swin.scale_query_rows(w, b, c, scale)
    qkv, qkv_s = F.linear(x, w, b), F.linear(x, ws, bs)
    assert _rel(qkv[:, :c] * scale, qkv_s[:, :c]) < TOL_F64 and torch.equal(qkv[:, c:], qkv_s[:, c:])


@pytest.mark.parametrize("shifted", [False, True])
def test_attention_bias_is_table_gather_plus_mask(shifted):
    w, nh = 3, 2
    table = torch.randn((2 * w - 1) ** 2, nh, dtype=torch.float64)
    mask = official_mask(6, w, 1).double() if shifted else None
    a = fold_swin.attention_bias(table, official_index(w), mask)
    assert a.shape == ((4 if shifted else 1), nh, 9, 9)
    for win in range(a.shape[0]):
        for h in range(nh):
            for n in range(9):
                for m in (0, 4, 8):
                    (yn, xn), (ym, xm) = divmod(n, w), divmod(m, w)
                    expect = table[(yn - ym + w - 1) * (2 * w - 1) + xn - xm + w - 1, h]
                    expect = expect + (mask[win, n, m] if shifted else 0)
                    assert float(a[win, h, n, m]) == float(expect)


def test_fold_output_rate_including_zero():
    w, b, a = torch.randn(4, 4), torch.randn(4), torch.randn(2, 4)
    for rate in (0.7, -1.3, 0.0):
        wr, br = fold_swin.fold_output_rate(w, b, rate)
        assert _rel(rate * F.linear(a.double(), w.double(), b.double()) + 1, F.linear(a.double(), wr, br) + 1) < TOL_F64


def _official_conv_path(qkv, fc_w, fc_b, dep_w, nh):
    b, hh, ww, c3 = qkv.shape
    d = c3 // 3 // nh
    f = F.conv2d(qkv.reshape(b, hh * ww, 3 * nh, d).permute(0, 2, 1, 3), fc_w, fc_b)
    f = f.permute(0, 3, 1, 2).reshape(b, 9 * d, hh, ww)
    return F.conv2d(f, dep_w, None, padding=1, groups=d)


@pytest.mark.parametrize("hw", [(5, 5), (4, 7)])
def test_conv_path_bias_map_reproduces_the_border_effect_of_fc_bias(hw):
    nh, d = 3, 2
    c = nh * d
    fc_w, fc_b = torch.randn(9, 3 * nh, 1, 1, dtype=torch.float64), torch.randn(9, dtype=torch.float64)
    dep = torch.randn(c, 9, 3, 3, dtype=torch.float64)
    zero = torch.zeros(1, *hw, 3 * c, dtype=torch.float64)
    expect = _official_conv_path(zero, fc_w, fc_b, dep, nh)[0] * 0.6  # only the bias reaches the output
    got = fold_swin.conv_path_bias_map(fc_b, dep, *hw, 0.6)
    assert _rel(expect, got) < TOL_F64
    assert not torch.allclose(got[:, 0, 0], got[:, 2, 2])  # the border really differs from the interior


@pytest.mark.parametrize("form", ["merged", "factored"])
def test_conv_path_folds_alone(form):
    """fc + dep_conv + rate2 (+ the query scale carried by qkv) against the official path."""
    nh, d, hw, rate2, scale = 2, 3, (5, 6), -0.8, 0.41
    c = nh * d
    fc_w, fc_b = torch.randn(9, 3 * nh, 1, 1, dtype=torch.float64), torch.randn(9, dtype=torch.float64)
    dep = torch.randn(c, 9, 3, 3, dtype=torch.float64)
    qkv = torch.randn(2, *hw, 3 * c, dtype=torch.float64)
    expect = rate2 * _official_conv_path(qkv, fc_w, fc_b, dep, nh)
    carried = qkv.clone()
    carried[..., :c] *= scale  # the deploy qkv carries the scale on its query rows
    regrouped = carried.reshape(2, *hw, 3 * nh, d).permute(0, 4, 3, 1, 2)  # (B, d, 3nh, H, W)
    in_scale = torch.ones(3 * c, dtype=torch.float64)
    in_scale[:c] = scale
    if form == "merged":
        w = fold.fold_conv_path(fc_w, dep, nh, in_scale, torch.full((c,), rate2, dtype=torch.float64))
        got = F.conv2d(regrouped.reshape(2, 3 * c, *hw), w, None, padding=1, groups=d)
        got = got + fold_swin.conv_path_bias_map(fc_b, dep, *hw, rate2)
    else:
        slot = torch.ones(3 * nh, dtype=torch.float64)
        slot[:nh] = scale
        w_fc, b_fc = fold_swin.factored_fc_weight(fc_w, fc_b, slot)
        slots = carried.reshape(2, -1, 3 * nh, d).permute(0, 2, 1, 3).reshape(2, 3 * nh, -1)
        f = (w_fc @ slots + b_fc[:, None]).reshape(2, 9, -1, d).permute(0, 3, 1, 2).reshape(2, d * 9, *hw)
        got = F.conv2d(f, dep * rate2, None, padding=1, groups=d)
    assert _rel(expect, got) < TOL_F64


@pytest.mark.parametrize("dtype,tol", [(torch.float64, TOL_F64), (torch.float32, TOL_F32)])
@pytest.mark.parametrize("form", ["merged", "factored"])
def test_conv_path_spellings_agree(form, dtype, tol):
    """Eager float32 CPU runs the conv path on channels-last memory, an exported graph channels-first: same values.

    Odd batch, non-square map, random weights and bias map; only the convolution's summation order may differ.
    """
    torch.manual_seed(3)
    nh, d, hw, b = 3, 4, (5, 7), 3
    c = nh * d
    qkv = torch.randn(b, *hw, 3 * c, dtype=dtype)
    if form == "merged":
        conv = nn.Conv2d(3 * c, c, 3, padding=1, groups=d, bias=False).to(dtype)
        bias = torch.randn(c, *hw, dtype=dtype)
        run = lambda cl: merged_conv_path(conv, bias, qkv, nh, channels_last=cl)  # noqa: E731
    else:
        fc = nn.Conv2d(3 * nh, 9, 1).to(dtype)
        dep = nn.Conv2d(9 * d, c, 3, padding=1, groups=d, bias=False).to(dtype)
        run = lambda cl: factored_conv_path(fc, dep, qkv, nh, channels_last=cl)  # noqa: E731
    with torch.no_grad():
        last, first = run(True), run(False)
    assert last.shape == first.shape == (b, *hw, c)
    assert _rel(first, last) < tol
    assert last.is_contiguous() and not first.is_contiguous()  # already in the (B, H, W, C) memory it is added to


@pytest.mark.parametrize("form", ["merged", "factored"])
@pytest.mark.parametrize("shifted", [False, True])
def test_attention_module_fuse(form, shifted):
    torch.manual_seed(0)
    res, w, c, nh = 8, 4, 12, 3
    attn = randomize_model(WindowAttentionACmix(c, w, nh, (res, res)), 2).double()
    with torch.no_grad():
        attn.fc.bias.normal_(0, 1.0)
    norm = _ln(c, 3)
    mask = official_mask(res, w, 2).double() if shifted else None
    deploy = attn.fuse(norm, mask, form)
    assert isinstance(deploy, WindowAttentionACmixDeploy) and deploy.conv_fold == form
    x = torch.randn(3, res, res, c, dtype=torch.float64)
    assert _rel(attn(norm(x), mask), deploy(F.layer_norm(x, (c,)))) < TOL_F64


# ---------------------------------------------------------------- whole models


@pytest.mark.parametrize("kw", [
    {"conv_fold": "merged"}, {"conv_fold": "factored"}, {"conv_fold": "merged", "img_size": 48, "window_size": 3},
    {"img_size": 32, "window_size": 8}, {"num_classes": 5, "in_chans": 1},
])
def test_whole_model_float64_and_float32(kw):
    train = micro(4, **kw)
    with torch.no_grad():
        for m in train.modules():
            if isinstance(m, WindowAttentionACmix):
                m.fc.bias.normal_(0, 0.5)
    deploy = ad.reparameterize_model(train)
    assert ad.is_deploy(deploy) and not ad.is_deploy(train)
    c, size = kw.get("in_chans", 3), kw.get("img_size", 32)
    for b in (1, 3):
        x = torch.randn(b, c, size, size, dtype=torch.float64)
        assert _rel(train(x), deploy(x)) < TOL_F64
    train32, deploy32 = train.float(), ad.reparameterize_model(train.float())
    for b in (1, 3):
        x = torch.randn(b, c, size, size)
        assert _rel(train32(x), deploy32(x)) <= TOL_F32


def test_rate1_zero_and_reparam_idempotent():
    train = micro(5)
    with torch.no_grad():
        train.layers[0].blocks[1].attn.rate1.zero_()
    deploy = ad.reparameterize_model(train)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert _rel(train(x), deploy(x)) < TOL_F64
    again = ad.reparameterize_model(deploy)
    assert torch.equal(again(x), deploy(x))


def test_deploy_structure_builds_directly_and_loads_alone(tmp_path):
    train = micro(6, dtype=torch.float32)
    deploy = ad.reparameterize_model(train)
    built = ad.create_model("acmix_swin_micro", deploy=True)
    assert set(built.state_dict()) == set(deploy.state_dict())
    assert not any(isinstance(m, WindowAttentionACmix) for m in built.modules())
    assert not any(k.endswith(("rate1", "attn_mask", "relative_position_index")) for k in built.state_dict())
    ad.save_checkpoint(deploy, tmp_path / "d.pth")
    loaded = ad.read_checkpoint(tmp_path / "d.pth")
    assert loaded.deploy
    x = torch.randn(2, 3, 32, 32)
    assert _rel(train(x), loaded.model(x)) <= TOL_F32


@pytest.mark.parametrize("form", ["factored", "merged"])
def test_deploy_folds_norm_affines_and_counts(form):
    deploy = ad.reparameterize_model(micro(7, conv_fold=form))
    norms = {n: m for n, m in deploy.named_modules() if isinstance(m, nn.LayerNorm)}
    affine = sorted(n for n, m in norms.items() if m.weight is not None)
    assert affine == ["patch_embed.norm"]  # feeds the residual stream: nothing to fold it into
    blk = deploy.layers[0].blocks[1]
    assert blk.attn.attn_bias.shape == (4, 2, 16, 16) and deploy.layers[0].blocks[0].attn.attn_bias.shape[0] == 1
    if form == "merged":
        assert blk.attn.conv_bias.shape == (16, 8, 8) and blk.attn.conv_path.groups == 8
    else:
        assert not hasattr(blk.attn, "conv_bias") and blk.attn.fc.weight.shape == (9, 6, 1, 1)


@pytest.mark.parametrize("kw,match", [
    ({"img_size": 30}, "not divisible by patch_size"),
    ({"img_size": 48, "window_size": 5}, "not divisible into 5x5 windows"),
    ({"img_size": 36, "window_size": 3}, "cannot be patch-merged"),
    ({"conv_fold": "fused"}, "conv_fold must be one of"),
])
def test_bad_configs(kw, match):
    with pytest.raises(ConfigError, match=match):
        ad.create_model("acmix_swin_micro", **kw)


def test_tiny_and_small_accept_other_windows_where_they_divide():
    ad.create_model("acmix_swin_tiny", img_size=256, window_size=8, deploy=True)
    ad.create_model("acmix_swin_tiny", img_size=384, window_size=12, deploy=True)
    with pytest.raises(ConfigError, match="224/7, 256/8, 384/12"):
        ad.create_model("acmix_swin_tiny", img_size=384, window_size=7, deploy=True)


@pytest.mark.parametrize("deploy", [False, True])
def test_other_input_size_is_refused_clearly(deploy):
    model = ad.create_model("acmix_swin_micro", deploy=deploy)
    with pytest.raises(InputShapeError, match="takes \\(batch, 3, 32, 32\\) inputs.*img_size=48"):
        model(torch.randn(1, 3, 48, 48))


# ---------------------------------------------------------------- CLI and ONNX


def test_cli_reparam_on_released_format_file(tmp_path):
    from acmix_deploy.cli import app

    src = micro(8, dtype=torch.float32, num_classes=7)
    path = tmp_path / "swin_acmix_micro.pth"
    torch.save({"model": src.state_dict(), "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]},
                "max_accuracy": 81.9}, path)
    out = tmp_path / "deploy.pth"
    result = runner.invoke(app, ["reparam", str(path), "--arch", "acmix_swin_micro", "-o", str(out), "--batch", "3"])
    assert result.exit_code == 0, result.output
    assert "ignored top-level entries: optimizer, max_accuracy" in result.output
    assert "num_classes=7" in result.output
    loaded = ad.read_checkpoint(out)
    assert loaded.deploy and loaded.arch == "acmix_swin_micro" and loaded.arch_args["num_classes"] == 7
    x = torch.randn(2, 3, 32, 32)
    assert _rel(src(x), loaded.model(x)) <= TOL_F32
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and re.search(r"ACmix blocks\s*│\s*4\s", info.output), info.output
    bad = runner.invoke(app, ["reparam", str(path), "--arch", "acmix_swin_micro", "-o", str(tmp_path / "x.pth"),
                              "--imgsz", "48"])
    assert bad.exit_code == 2 and "img_size=48" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "x.pth").exists()


def test_onnx_export_matches_torch_and_profiles(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxslim")
    from acmix_deploy.cli import app
    from acmix_deploy.compare import compare_runners, random_inputs
    from acmix_deploy.exporters import export_onnx
    from acmix_deploy.exporters.trt_ops import TENSORRT_ONNX_OPS
    from acmix_deploy.runtime import OrtRunner, TorchRunner

    train = micro(9, dtype=torch.float32)
    deploy = ad.reparameterize_model(train)
    res = export_onnx(deploy, tmp_path / "m.onnx", (3, 32, 32))
    assert set(res.op_histogram) <= TENSORRT_ONNX_OPS
    assert res.op_histogram["Softmax"] == 4 and "LayerNormalization" in res.op_histogram
    rows = compare_runners(TorchRunner(train), [OrtRunner(res.path)], random_inputs((3, 32, 32), (1, 3)))
    assert [r.batch for r in rows] == [1, 3] and all(r.diff.rel <= TOL_ORT for r in rows)
    report = tmp_path / "p.json"
    result = runner.invoke(app, ["profile", str(res.path), "--backend", "onnxruntime", "--iters", "2",
                                 "--warmup", "1", "--json", str(report)])
    assert result.exit_code == 0, result.output
    rep = json.loads(report.read_text())
    assert rep["results"] and all(math.isfinite(r["p50_ms"]) for r in rep["results"])


def test_onnx_for_a_cpu_floors_the_softmax_of_shifted_blocks_only(tmp_path):
    # Graphs for ONNX Runtime on a CPU raise the logits of shifted blocks (the -100 shift mask) to
    # (row max - 30): the result moves by at most 2 (N - 1) e^-30 max|v| (9.0e-12 max|v| for 7x7 windows).
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxslim")
    from acmix_deploy.exporters import export_onnx
    from acmix_deploy.runtime import OrtRunner

    train = micro(4, dtype=torch.float32)
    deploy = ad.reparameterize_model(train)
    shifted = sum(m.attn_bias.shape[0] > 1 for m in deploy.modules() if isinstance(m, WindowAttentionACmixDeploy))
    assert shifted >= 1
    x = torch.randn(3, 3, 32, 32)  # odd batch
    with torch.no_grad():
        ref = train(x).double()
        eager = deploy(x)
    outs = {}
    for isa in (None, "avx512"):
        res = export_onnx(deploy, tmp_path / f"{isa}.onnx", (3, 32, 32), cpu_isa=isa)
        assert res.op_histogram.get("ReduceMax", 0) == (shifted if isa else 0)
        outs[isa] = torch.from_numpy(OrtRunner(res.path).infer(x.numpy())).double()
        assert float((outs[isa] - ref).abs().max() / ref.abs().max()) <= 1e-5
    assert float((outs["avx512"] - outs[None]).abs().max() / ref.abs().max()) <= 1e-6
    with torch.no_grad():
        assert torch.equal(deploy(x), eager)  # eager torch never takes the floor


def test_folded_foreign_attention_floors_the_softmax_when_given_a_mask(tmp_path):
    # A user's Swin copy gets the shift mask (0 / -100) at run time: in a graph for a CPU the folded attention
    # floors the masked softmax like the deploy form's shifted blocks, and leaves unmasked calls plain.
    pytest.importorskip("onnxruntime")
    from acmix_deploy.exporters import export_onnx
    from acmix_deploy.modules.swin_acmix import WindowAttentionACmixFolded
    from acmix_deploy.runtime import OrtRunner

    dim, w, heads, size = 16, 4, 2, (8, 12)
    attn = randomize_model(WindowAttentionACmixFolded(dim, w, heads), 4).eval()
    nw, n = (size[0] // w) * (size[1] // w), w * w
    gen = torch.Generator().manual_seed(2)
    mask = torch.where(torch.rand(nw, n, n, generator=gen) < 0.5, -100.0, 0.0)
    mask[:, range(n), range(n)] = 0.0  # each token sees itself, as in the official shift mask

    class Call(nn.Module):
        def __init__(self, masked: bool):
            super().__init__()
            self.attn = attn
            self.register_buffer("mask", mask if masked else None)

        def forward(self, x):
            return self.attn(x) if self.mask is None else self.attn(x, self.mask)

    x = torch.randn(3, *size, dim)  # odd batch
    for masked in (True, False):
        model = Call(masked).eval()
        with torch.no_grad():
            ref = model(x).double()
        outs = {}
        for isa in (None, "avx512"):
            res = export_onnx(model, tmp_path / f"{masked}{isa}.onnx", (*size, dim), cpu_isa=isa, simplify=False)
            assert res.op_histogram.get("ReduceMax", 0) == (1 if isa and masked else 0)
            outs[isa] = torch.from_numpy(OrtRunner(res.path).infer(x.numpy())).double()
            assert float((outs[isa] - ref).abs().max() / ref.abs().max()) <= 1e-5
        # both graphs round in float32 alike; the floor's own shift (<= 2 (N - 1) e^-30 max|v|) is far smaller
        assert float((outs["avx512"] - outs[None]).abs().max() / ref.abs().max()) <= 1e-6
