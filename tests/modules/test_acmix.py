"""ACmix: faithfulness to the official operator, and exactness of the deploy form."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn

from acmix_deploy import ACmix, ACmixDeploy
from acmix_deploy.errors import CheckpointError, ConfigError, InputShapeError
from acmix_deploy.testing import randomize_model

from tests.helpers import TOL_F32, TOL_F64


def official_forward(m: ACmix, x: torch.Tensor) -> torch.Tensor:
    """The official ACmix forward, step by step with torch's modules (nn.Unfold, ReflectionPad2d).

    Written independently of ACmix.forward from the semantics in BRIEF section 1:
    a second transcription, so that a slip in either shows up as a difference.
    """
    q, k, v = m.conv1(x), m.conv2(x), m.conv3(x)
    b, c, h, w = q.shape
    s, ka, heads, d = m.stride, m.kernel_att, m.head, m.head_dim
    h_out, w_out = h // s, w // s
    loc_w = torch.linspace(-1.0, 1.0, w, dtype=x.dtype).unsqueeze(0).repeat(h, 1)
    loc_h = torch.linspace(-1.0, 1.0, h, dtype=x.dtype).unsqueeze(1).repeat(1, w)
    loc = torch.cat([loc_w.unsqueeze(0), loc_h.unsqueeze(0)], 0).unsqueeze(0)
    pe = m.conv_p(loc)
    pad = nn.ReflectionPad2d((ka - 1) // 2)
    unfold = nn.Unfold(kernel_size=ka, padding=0, stride=s)
    q_att = q.view(b * heads, d, h, w) * (float(d) ** -0.5)
    k_att = k.view(b * heads, d, h, w)
    v_att = v.view(b * heads, d, h, w)
    if s > 1:
        q_att = q_att[:, :, ::s, ::s]
        q_pe = pe[:, :, ::s, ::s]
    else:
        q_pe = pe
    unfold_k = unfold(pad(k_att)).view(b * heads, d, ka * ka, h_out, w_out)
    unfold_rpe = unfold(pad(pe)).view(1, d, ka * ka, h_out, w_out)
    att = (q_att.unsqueeze(2) * (unfold_k + q_pe.unsqueeze(2) - unfold_rpe)).sum(1)
    att = torch.softmax(att, dim=1)
    out_att = unfold(pad(v_att)).view(b * heads, d, ka * ka, h_out, w_out)
    out_att = (att.unsqueeze(1) * out_att).sum(2).view(b, c, h_out, w_out)
    f_all = m.fc(torch.cat([q.view(b, heads, d, h * w), k.view(b, heads, d, h * w), v.view(b, heads, d, h * w)], 1))
    f_conv = f_all.permute(0, 2, 1, 3).reshape(b, -1, h, w)
    return m.rate1 * out_att + m.rate2 * m.dep_conv(f_conv)


OFFICIAL_KEYS = {
    "rate1": (1,), "rate2": (1,),
    "conv1.weight": ("C", "Cin", 1, 1), "conv1.bias": ("C",),
    "conv2.weight": ("C", "Cin", 1, 1), "conv2.bias": ("C",),
    "conv3.weight": ("C", "Cin", 1, 1), "conv3.bias": ("C",),
    "conv_p.weight": ("d", 2, 1, 1), "conv_p.bias": ("d",),
    "fc.weight": (9, "3h", 1, 1),
    "dep_conv.weight": ("C", 9, 3, 3),
}


def test_state_dict_has_the_official_names_and_shapes():
    m = ACmix(24, 32, 7, 4, 3, 2)
    dims = {"C": 32, "Cin": 24, "d": 8, "3h": 12}
    expected = {k: tuple(dims.get(s, s) for s in shape) for k, shape in OFFICIAL_KEYS.items()}
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == expected
    # A state dict in the official layout loads strictly into a fresh module.
    sd = {k: torch.randn(v) for k, v in expected.items()}
    fresh = ACmix(24, 32, 7, 4, 3, 2)
    fresh.load_state_dict(sd, strict=True)
    assert torch.equal(fresh.dep_conv.weight, sd["dep_conv.weight"])


def test_official_initialisation():
    m = ACmix(8, 8, 7, 2, 3)
    assert m.rate1.item() == 0.5 and m.rate2.item() == 0.5 and m.dep_conv.bias is None
    w = m.dep_conv.weight  # (C, 9, 3, 3): slot j is a one-hot at (j // 3, j % 3)
    for j in range(9):
        one_hot = torch.zeros(3, 3)
        one_hot[j // 3, j % 3] = 1
        assert torch.equal(w[0, j], one_hot) and torch.equal(w[-1, j], one_hot)


@pytest.mark.parametrize("stride,size,heads,ka", [(1, (9, 11), 4, 7), (2, (8, 12), 2, 5), (1, (5, 7), 1, 3), (2, (6, 10), 8, 7)])
def test_forward_matches_official_transcription(stride, size, heads, ka):
    m = randomize_model(ACmix(6, 16, ka, heads, 3, stride), seed=stride + heads).double().eval()
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    with torch.no_grad():
        assert float((m(x) - official_forward(m, x)).abs().max()) < 1e-12


def _random_bn(c: int, seed: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    randomize_model(bn, seed)
    return bn.eval()


CASES = [
    # (in, out, ka, heads, stride, (H, W), batch)
    *[(8, 16, ka, h, 1, (9, 11), 1) for ka, h in itertools.product((3, 5, 7), (1, 2, 4, 8))],
    *[(8, 16, ka, h, 2, (10, 12), 3) for ka, h in itertools.product((3, 7), (2, 4))],
    (5, 8, 7, 4, 1, (4, 4), 3),     # smallest size reflection allows for ka = 7
    (12, 24, 5, 4, 1, (7, 13), 3),  # odd sizes, in != out
    (16, 16, 7, 4, 2, (14, 6), 1),
    (8, 16, 7, 4, 1, (17, 23), 2),  # several tiles, partial last ones
    (8, 16, 7, 2, 2, (18, 26), 2),
]


@pytest.mark.parametrize("cin,cout,ka,heads,stride,size,batch", CASES)
@pytest.mark.parametrize("with_bn", [True, False])
def test_deploy_form_equals_training_form(cin, cout, ka, heads, stride, size, batch, with_bn):
    seed = hash((cin, cout, ka, heads, stride, size, batch)) % 1000
    m = randomize_model(ACmix(cin, cout, ka, heads, 3, stride), seed).eval()
    bn = _random_bn(cout, seed + 1) if with_bn else None
    x = torch.randn(batch, cin, *size, generator=torch.Generator().manual_seed(seed))

    def reference(mod, b, inp):
        y = mod(inp)
        return b(y) if b is not None else y

    with torch.no_grad():
        deploy = m.fuse(bn)
        assert isinstance(deploy, ACmixDeploy) and deploy.mode == "folded"
        ref, out = reference(m, bn, x), deploy(x)
        assert out.shape == (batch, cout, size[0] // stride, size[1] // stride)
        assert float((ref - out).abs().max() / ref.abs().max()) <= TOL_F32
        # float64: the fold is exact algebra, only rounding remains.
        m64, bn64 = m.double(), (bn.double() if bn is not None else None)
        ref64, out64 = reference(m64, bn64, x.double()), m64.fuse(bn64)(x.double())
        assert float((ref64 - out64).abs().max() / ref64.abs().max()) <= TOL_F64


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_path_reads_channels_last_in_eager_float32_only(stride, monkeypatch):
    """Eager float32 on the CPU runs the grouped conv path on channels-last memory; same values as channels-first."""
    from acmix_deploy.modules import conv_path_layout
    from acmix_deploy.modules.window_attention import CONV_LAYOUT_ENV, grouped_conv_channels_last

    monkeypatch.delenv(CONV_LAYOUT_ENV, raising=False)
    deploy = randomize_model(ACmix(8, 16, 7, 4, 3, stride), 7).eval().fuse(_random_bn(16, 8))
    qkv = torch.randn(3, 48, 11, 9)
    with torch.no_grad():
        out = deploy._conv_path(qkv)
        ref = deploy.conv_path(qkv)  # channels-first
    assert grouped_conv_channels_last(qkv) and not grouped_conv_channels_last(qkv.double())
    assert out.is_contiguous(memory_format=torch.channels_last) and ref.is_contiguous()
    assert float((out - ref).abs().max() / ref.abs().max()) <= TOL_F32
    with torch.no_grad():
        assert deploy.double()._conv_path(qkv.double()).is_contiguous()  # float64 keeps channels-first
        with conv_path_layout("channels_first"):
            assert torch.equal(deploy.float()._conv_path(qkv), ref)
        with conv_path_layout("channels_last"):
            assert deploy.double()._conv_path(qkv.double()).is_contiguous(memory_format=torch.channels_last)
    assert grouped_conv_channels_last(qkv)  # the default rule is back after the block
    with conv_path_layout("channels_last"):  # a recorded graph stays channels-first, whatever is asked
        traced = torch.jit.trace(lambda t: t + float(grouped_conv_channels_last(t)), torch.zeros(1))
    assert traced(torch.zeros(1)).item() == 0.0
    with pytest.raises(ConfigError, match="channels_last, channels_first or None"):
        with conv_path_layout("nhwc"):
            pass


def test_rate1_zero_drops_the_attention_core():
    m = randomize_model(ACmix(8, 16, 7, 4, 3, 1), 3).eval()
    bn = _random_bn(16, 4)
    with torch.no_grad():
        m.rate1.zero_()
        deploy = m.fuse(bn)
        assert deploy.mode == "conv_only"
        assert torch.all(torch.isfinite(deploy.qkv.weight)) and torch.all(torch.isfinite(deploy.conv_path.weight))
        x = torch.randn(2, 8, 9, 10)
        ref = bn(m(x))
        assert float((ref - deploy(x)).abs().max() / ref.abs().max()) <= TOL_F32


def test_zero_batchnorm_scale_on_some_channels_keeps_exactness():
    """A BN gamma of exactly zero cannot be folded into v (the conv path would need 1/0)."""
    m = randomize_model(ACmix(8, 16, 5, 4, 3, 2), 5).eval()
    bn = _random_bn(16, 6)
    with torch.no_grad():
        bn.weight[[0, 7]] = 0.0
        deploy = m.fuse(bn)
        assert deploy.mode == "scaled"
        assert torch.all(torch.isfinite(deploy.conv_path.weight))
        x = torch.randn(3, 8, 10, 6)
        ref = bn(m(x))
        assert float((ref - deploy(x)).abs().max() / ref.abs().max()) <= TOL_F32


def test_deploy_structure_is_one_1x1_conv_and_one_grouped_conv():
    m = randomize_model(ACmix(8, 16, 7, 4, 3, 1), 0).eval()
    deploy = m.fuse(_random_bn(16, 1))
    convs = [mod for mod in deploy.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 2
    qkv, conv_path = deploy.qkv, deploy.conv_path
    assert qkv.kernel_size == (1, 1) and qkv.out_channels == 3 * 16
    assert conv_path.kernel_size == (3, 3) and conv_path.groups == 16 // 4 and conv_path.in_channels == 48
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in deploy.modules())
    assert set(deploy.state_dict()) == {
        "qkv.weight", "qkv.bias", "conv_path.weight", "conv_path.bias", "pos_weight", "att_scale"
    }
    assert torch.equal(deploy.pos_weight, m.conv_p.weight.reshape(4, 2))


def test_deploy_qkv_rows_are_head_dim_major():
    """Row i * 3h + t of the fused conv is dimension i of map t (q heads, k heads, v heads)."""
    m = randomize_model(ACmix(8, 16, 7, 4, 3, 1), 2).eval()
    deploy = m.fuse()
    heads, d = 4, 4
    w = deploy.qkv.weight.detach().reshape(d, 3 * heads, 8)
    for t, conv, scale in ((1, m.conv1, d**-0.5), (5, m.conv2, 1.0)):  # q of head 1, k of head 1
        head = t % heads
        expected = conv.weight.detach().reshape(16, 8)[head * d : (head + 1) * d] * scale
        assert torch.allclose(w[:, t], expected, rtol=1e-6, atol=0)


def test_old_deploy_layout_is_refused_with_a_clear_message():
    fresh = ACmixDeploy(8, 16, 7, 4, 3, 1)
    old = {k: v for k, v in fresh.state_dict().items() if k != "pos_weight"}
    old["qkv.weight"] = torch.zeros(3 * 16 + 2 * 4, 8, 1, 1)
    old["qkv.bias"] = torch.zeros(3 * 16 + 2 * 4)
    with pytest.raises(CheckpointError, match="deploy layout 1"):
        fresh.load_state_dict(old)


def test_old_deploy_layout_checkpoint_file_is_refused(tmp_path):
    import acmix_deploy as ad

    model = ad.reparameterize_model(randomize_model(ad.create_model("acmix_resnet_tiny", num_classes=5), 0).eval())
    path = ad.save_checkpoint(model, tmp_path / "d.pth")
    raw = torch.load(path, weights_only=True)
    sd = raw["state_dict"]
    for name in [k for k in sd if k.endswith(".pos_weight")]:  # rebuild the layout-1 tensors' shapes
        prefix = name[: -len("pos_weight")]
        heads = ad.create_model("acmix_resnet_tiny").layer1[0].conv2.head
        del sd[name]
        sd[prefix + "qkv.weight"] = torch.cat([sd[prefix + "qkv.weight"], sd[prefix + "qkv.weight"][: 2 * heads]])
        sd[prefix + "qkv.bias"] = torch.cat([sd[prefix + "qkv.bias"], sd[prefix + "qkv.bias"][: 2 * heads]])
    torch.save(raw, tmp_path / "old.pth")
    with pytest.raises(CheckpointError, match="deploy layout 1.*reparam"):
        ad.load_checkpoint(tmp_path / "old.pth")
    torch.save(sd, tmp_path / "old_bare.pth")
    with pytest.raises(CheckpointError, match="deploy layout 1"):
        ad.load_checkpoint(tmp_path / "old_bare.pth", arch="acmix_resnet_tiny")


def test_deploy_state_dict_round_trip_restores_mode():
    m = randomize_model(ACmix(8, 16, 7, 4, 3, 1), 0).eval()
    with torch.no_grad():
        m.rate1.zero_()
    deploy = m.fuse()
    fresh = ACmixDeploy(8, 16, 7, 4, 3, 1)
    assert fresh.mode == "folded"
    fresh.load_state_dict(deploy.state_dict())
    assert fresh.mode == "conv_only"


def test_attention_plan_is_cached_per_size_and_follows_dtype():
    deploy = randomize_model(ACmix(4, 8, 3, 2, 3, 1), 0).eval().fuse()
    deploy(torch.randn(1, 4, 6, 6))
    deploy(torch.randn(2, 4, 6, 6))
    deploy(torch.randn(1, 4, 5, 7))
    assert len(deploy._plans) == 2
    deploy.double()
    assert deploy._plans == {}
    assert deploy(torch.randn(1, 4, 6, 6, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_planes=8, out_planes=10, head=4), "divisible by head"),
        (dict(in_planes=8, out_planes=8, kernel_att=6), "kernel_att must be odd"),
        (dict(in_planes=8, out_planes=8, kernel_conv=4), "kernel_conv must be odd"),
        (dict(in_planes=8, out_planes=8, dilation=2), "dilation"),
        (dict(in_planes=0, out_planes=8), "in_planes must be a positive integer"),
        (dict(in_planes=8, out_planes=8, stride=0), "stride must be a positive integer"),
    ],
)
def test_invalid_hyper_parameters(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ACmix(**kwargs)


@pytest.mark.parametrize("module", ["train", "deploy"])
@pytest.mark.parametrize(
    "shape,match",
    [
        ((1, 8, 9, 10), "not divisible by stride 2"),
        ((1, 8, 2, 2), "too small for kernel_att=7"),
        ((1, 5, 8, 8), "expected 8 input channels"),
        ((8, 8, 8), "4-D input"),
    ],
)
def test_invalid_inputs(module, shape, match):
    m = ACmix(8, 8, 7, 4, 3, 2).eval()
    if module == "deploy":
        m = m.fuse()
    with pytest.raises(InputShapeError, match=match):
        m(torch.randn(*shape))


def test_batchnorm_width_mismatch_is_refused():
    with pytest.raises(ConfigError, match="BatchNorm has 4 channels"):
        ACmix(8, 8, 7, 4).fuse(nn.BatchNorm2d(4))


def test_conv_path_layout_from_the_environment(monkeypatch):
    """ACMIX_DEPLOY_CONV_LAYOUT reaches every thread of a process; a context manager still wins; typos refused."""
    from acmix_deploy.modules import conv_path_layout
    from acmix_deploy.modules.window_attention import CONV_LAYOUT_ENV, grouped_conv_channels_last

    x32, x64 = torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    monkeypatch.setenv(CONV_LAYOUT_ENV, "channels_first")
    assert not grouped_conv_channels_last(x32)
    with conv_path_layout("channels_last"):
        assert grouped_conv_channels_last(x32)
    monkeypatch.setenv(CONV_LAYOUT_ENV, " Channels_Last ")
    assert grouped_conv_channels_last(x64)
    monkeypatch.setenv(CONV_LAYOUT_ENV, "auto")
    assert grouped_conv_channels_last(x32) and not grouped_conv_channels_last(x64)
    monkeypatch.setenv(CONV_LAYOUT_ENV, "channels_last")
    with conv_path_layout(None):  # None: back to the environment, not to the built-in rule
        assert grouped_conv_channels_last(x64)
    traced = torch.jit.trace(lambda t: t + float(grouped_conv_channels_last(t)), torch.zeros(1))
    assert traced(torch.zeros(1)).item() == 0.0  # recorded graphs ignore the variable
    monkeypatch.setenv(CONV_LAYOUT_ENV, "NHWC")
    with pytest.raises(ConfigError, match="LAYOUT='NHWC': expected auto, channels_last, channels_first"):
        grouped_conv_channels_last(x32)


def test_deploy_models_run_their_conv_paths_channels_last_by_default(monkeypatch):
    """The default reaches the convolutions of whole deploy models (ACmix-ResNet, Swin); conv_only stays NCHW."""
    import acmix_deploy as ad
    from acmix_deploy.modules.window_attention import CONV_LAYOUT_ENV

    monkeypatch.delenv(CONV_LAYOUT_ENV, raising=False)
    for name, path in (("acmix_resnet_tiny", "conv_path"), ("acmix_swin_micro", "dep_conv")):
        model = ad.reparameterize_model(randomize_model(ad.create_model(name), 2).eval())
        seen = []

        def record(_module, args):
            seen.append(args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous())

        for mod in model.modules():
            conv = getattr(mod, path, None)
            if isinstance(conv, nn.Conv2d):
                conv.register_forward_pre_hook(record)
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 32))
        assert seen and all(seen), (name, seen)
    deploy = randomize_model(ACmix(8, 16, 7, 4, 3, 1), 3).eval()
    with torch.no_grad():
        deploy.rate1.zero_()
        conv_only = deploy.fuse(_random_bn(16, 4))
        assert conv_only.mode == "conv_only" and conv_only(torch.randn(2, 8, 9, 10)).is_contiguous()
