"""X-volution: the training form against a second transcription, and exactness of the deploy form."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from acmix_deploy import reparameterize_model
from acmix_deploy.errors import ConfigError, InputShapeError
from acmix_deploy.modules import XVolution, XVolutionDeploy
from acmix_deploy.modules.xvolution import default_shifts, shift2d, shifted_products
from acmix_deploy.testing import randomize_model

from tests.helpers import TOL_F32, TOL_F64, rel_error as rel

# (kernel_size, dilation, stride, shifts, include_centre, (H, W), batch)
CONFIGS = [
    (3, 1, 1, None, False, (9, 9), 1),
    (3, 1, 2, None, True, (11, 7), 3),
    (3, 2, 1, None, False, (13, 10), 3),
    (3, 2, 2, None, False, (9, 13), 1),
    (5, 1, 1, [(0, 2), (-2, 0), (1, 1), (2, -1)], False, (7, 9), 3),
    (5, 1, 2, [(0, 1), (0, -1), (1, 0), (-1, 0)], False, (10, 11), 1),
    (5, 2, 3, None, True, (17, 8), 3),
    (1, 1, 1, [(0, 0)], False, (5, 6), 3),
]
IDS = [
    f"k{k}-L{dil}-s{s}-{'default' if sh is None else len(sh)}{'+c' if c else ''}-{h}x{w}-b{b}"
    for k, dil, s, sh, c, (h, w), b in CONFIGS
]


def make(cfg, dtype=torch.float64, seed=0, cin=5, cout=6):
    k, dil, s, shifts, centre, _, _ = cfg
    m = XVolution(cin, cout, kernel_size=k, dilation=dil, stride=s, shifts=shifts, include_centre=centre)
    return randomize_model(m, seed).eval().to(dtype)


def reference_forward(m: XVolution, x: torch.Tensor) -> torch.Tensor:
    """The training form written out from the formulas (BatchNorm by hand, products by indexing).

    ``BN_c(W_c * x) + BN_a(sum_d M_d (x * x(. + d)))``, each pixel ``p = s*o`` of
    the output grid, zero outside the image.  A second transcription, independent
    of ``XVolution.forward`` (which uses nn.BatchNorm2d, shift2d and a strided 1x1 conv).
    """

    def bn(y, b):
        g = b.weight / torch.sqrt(b.running_var + b.eps)
        return (y - b.running_mean.view(1, -1, 1, 1)) * g.view(1, -1, 1, 1) + b.bias.view(1, -1, 1, 1)

    B, C, H, W = x.shape
    s = m.stride
    conv = F.conv2d(x, m.conv.weight, None, s, m.padding, m.dilation)
    ho, wo = conv.shape[-2:]
    R = max(max(abs(a), abs(b)) for a, b in m.shifts)
    xp = torch.zeros(B, C, H + 2 * R, W + 2 * R, dtype=x.dtype)
    xp[:, :, R : R + H, R : R + W] = x
    rows = torch.arange(ho) * s
    cols = torch.arange(wo) * s
    centre = x[:, :, rows][:, :, :, cols]
    mix = m.pssa.weight.reshape(m.out_channels, len(m.shifts), C)
    att = torch.zeros(B, m.out_channels, ho, wo, dtype=x.dtype)
    for i, (dy, dx) in enumerate(m.shifts):
        nb = xp[:, :, rows + R + dy][:, :, :, cols + R + dx]
        att += torch.einsum("oc,bchw->bohw", mix[:, i], centre * nb)
    return bn(conv, m.bn_conv) + bn(att, m.bn_pssa)



# --------------------------------------------------------------------------- training form


def test_shift_direction_and_zero_fill():
    x = torch.arange(1.0, 13.0).view(1, 1, 3, 4)
    out = shift2d(x, 1, -1)  # out(p) = x(p + (1, -1))
    assert out[0, 0, 0, 1] == x[0, 0, 1, 0]
    assert out[0, 0, 2].abs().sum() == 0 and out[0, 0, :, 0].abs().sum() == 0
    assert default_shifts(2) == ((-2, -2), (-2, 0), (-2, 2), (0, -2), (0, 2), (2, -2), (2, 0), (2, 2))
    assert (0, 0) in default_shifts(1, include_centre=True)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_training_form_matches_formula(cfg):
    m = make(cfg, seed=1)
    x = torch.randn(cfg[6], 5, *cfg[5], dtype=torch.float64)
    with torch.no_grad():
        assert rel(reference_forward(m, x), m(x)) <= TOL_F64


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_strided_products_are_the_full_products_subsampled(stride):
    x = torch.randn(2, 3, 10, 7, dtype=torch.float64)
    shifts = default_shifts(1, include_centre=True)
    full = torch.cat([x * shift2d(x, dy, dx) for dy, dx in shifts], 1)
    assert torch.equal(shifted_products(x, shifts, stride), full[..., ::stride, ::stride])


def test_output_size_is_ceil_of_input_over_stride():
    m = XVolution(2, 3, stride=2)
    assert m(torch.randn(1, 2, 7, 8)).shape == (1, 3, 4, 4)


# --------------------------------------------------------------------------- deploy form


@pytest.mark.parametrize("dtype,tol", [(torch.float32, TOL_F32), (torch.float64, TOL_F64)])
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_deploy_equals_training_form(cfg, dtype, tol):
    m = make(cfg, dtype, seed=2)
    d = m.fuse()
    assert isinstance(d, XVolutionDeploy)
    assert not any(isinstance(t, nn.modules.batchnorm._BatchNorm) for t in d.modules())
    g = torch.Generator().manual_seed(3)
    x = torch.randn(cfg[6], 5, *cfg[5], generator=g, dtype=torch.float64).to(dtype)
    with torch.no_grad():
        assert rel(m(x), d(x)) <= tol


@pytest.mark.parametrize("dtype,tol", [(torch.float32, TOL_F32), (torch.float64, TOL_F64)])
def test_fuse_absorbs_a_following_batchnorm(dtype, tol):
    m = make(CONFIGS[1], dtype, seed=4)
    bn = randomize_model(nn.BatchNorm2d(6), 5).eval().to(dtype)
    d = m.fuse(bn)
    x = torch.randn(3, 5, 11, 7, dtype=dtype)
    with torch.no_grad():
        assert rel(bn(m(x)), d(x)) <= tol


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[3], CONFIGS[4], CONFIGS[6]], ids=[IDS[0], IDS[3], IDS[4], IDS[6]])
def test_deploy_is_one_dynamic_convolution(cfg):
    """The merged form: y(o) = sum_taps K_p[tap] x(p + d) + b' with K_p = W' + M'_d diag(x(p))."""
    d = make(cfg, seed=6).fuse()
    x = torch.randn(cfg[6], 5, *cfg[5], dtype=torch.float64)
    kern = d.dynamic_kernel(x)  # (B, H', W', C_out, C_in, k, k)
    b, ho, wo = kern.shape[:3]
    cols = F.unfold(x, d.kernel_size, dilation=d.dilation, padding=d.padding, stride=d.stride)
    cols = cols.view(b, -1, ho, wo).permute(0, 2, 3, 1)  # (B, H', W', C_in*k*k)
    y = torch.einsum("bhwoj,bhwj->bohw", kern.flatten(-3), cols) + d.conv.bias.view(1, -1, 1, 1)
    with torch.no_grad():
        assert rel(d(x), y) <= TOL_F64


def test_deploy_state_dict_loads_without_training_module():
    cfg = CONFIGS[6]
    m = make(cfg, torch.float32, seed=7)
    d = m.fuse()
    assert set(d.state_dict()) == {"conv.weight", "conv.bias", "mix.weight"}
    fresh = XVolutionDeploy(5, 6, kernel_size=5, dilation=2, stride=3, include_centre=True)
    fresh.load_state_dict(d.state_dict(), strict=True)
    assert fresh.hparams() == d.hparams() == m.hparams()
    x = torch.randn(2, 5, 17, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), d(x))


def test_fuse_uses_running_statistics_in_training_mode():
    m = make(CONFIGS[0], torch.float64, seed=8).train()
    d = m.fuse()
    x = torch.randn(1, 5, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        assert rel(m.eval()(x), d(x)) <= TOL_F64


@pytest.mark.parametrize("zero", ["bn_gamma", "mix_weight"])
def test_static_case_fuses_to_a_plain_conv(zero):
    m = make(CONFIGS[2], torch.float32, seed=9)
    with torch.no_grad():
        if zero == "bn_gamma":
            m.bn_pssa.weight.zero_()
        else:
            m.pssa.weight.zero_()
    d = m.fuse()
    assert type(d) is nn.Conv2d and d.dilation == (2, 2) and d.bias is not None
    x = torch.randn(3, 5, 13, 10)
    with torch.no_grad():
        assert rel(m(x), d(x)) <= TOL_F32


def test_reparameterize_model_replaces_xvolution_blocks():
    model = nn.Sequential(
        XVolution(5, 6), nn.ReLU(), XVolution(6, 4, dilation=2, stride=2), nn.ReLU(), XVolution(4, 4, 5)
    )
    model = randomize_model(model, 10).eval()
    deploy = reparameterize_model(model)
    assert [type(c).__name__ for c in deploy][::2] == ["XVolutionDeploy"] * 3
    assert not any(isinstance(t, (nn.BatchNorm2d, XVolution)) for t in deploy.modules())
    x = torch.randn(3, 5, 15, 14)
    with torch.no_grad():
        assert rel(model(x), deploy(x)) <= TOL_F32


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_channels=0, out_channels=4), "in_channels"),
        (dict(in_channels=4, out_channels=2.0), "out_channels"),
        (dict(in_channels=4, out_channels=4, kernel_size=4), "odd"),
        (dict(in_channels=4, out_channels=4, kernel_size=1), "kernel_size >= 3"),
        (dict(in_channels=4, out_channels=4, dilation=0), "dilation"),
        (dict(in_channels=4, out_channels=4, stride=True), "stride"),
        (dict(in_channels=4, out_channels=4, shifts=[]), "empty"),
        (dict(in_channels=4, out_channels=4, shifts="up"), "sequence"),
        (dict(in_channels=4, out_channels=4, shifts=[(0, 1), (0, 1)]), "duplicates"),
        (dict(in_channels=4, out_channels=4, shifts=[(0, 1.5)]), "pair of integers"),
        (dict(in_channels=4, out_channels=4, shifts=[(0, 2)]), "footprint"),
        (dict(in_channels=4, out_channels=4, dilation=2, shifts=[(0, 1)]), "footprint"),
        (dict(in_channels=4, out_channels=4, include_centre=1), "include_centre"),
    ],
)
def test_invalid_hyper_parameters(kwargs, match):
    for cls in (XVolution, XVolutionDeploy):
        with pytest.raises(ConfigError, match=match):
            cls(**kwargs)


@pytest.mark.parametrize(
    "shape,match", [((4, 9, 9), "4-D"), ((1, 3, 9, 9), "4 input channels"), ((1, 4, 0, 9), "empty")]
)
def test_invalid_inputs(shape, match):
    m = XVolution(4, 4)
    d = m.fuse()
    for mod in (m, d):
        with pytest.raises(InputShapeError, match=match):
            mod(torch.zeros(shape))


def test_fuse_rejects_mismatched_or_statless_batchnorm():
    m = XVolution(4, 6)
    with pytest.raises(ConfigError, match="6 outputs"):
        m.fuse(nn.BatchNorm2d(4))
    with pytest.raises(ConfigError, match="running statistics"):
        m.fuse(nn.BatchNorm2d(6, track_running_stats=False))


# --------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("stride", [1, 2])
def test_onnx_export_matches_torch(tmp_path, stride):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from acmix_deploy.exporters.trt_ops import TENSORRT_ONNX_OPS

    m = XVolution(5, 6, kernel_size=3, dilation=2 if stride == 1 else 1, stride=stride, include_centre=stride == 2)
    d = randomize_model(m, 11).eval().fuse().eval()
    path = tmp_path / "xvolution.onnx"
    torch.onnx.export(
        d, (torch.randn(1, 5, 12, 12),), str(path), dynamo=False, opset_version=17,
        input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "batch", 2: "h", 3: "w"}, "y": {0: "batch", 2: "ho", 3: "wo"}},
    )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    ops = [n.op_type for n in proto.graph.node]
    assert set(ops) <= TENSORRT_ONNX_OPS and "BatchNormalization" not in ops
    assert ops.count("Conv") == 2 and ops.count("Pad") == 1
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 5, 12, 12), (3, 5, 15, 9)]:  # a size other than the exported one
        x = torch.randn(shape)
        with torch.no_grad():
            ref = d(x)
        out = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
        assert rel(ref, out) <= 1e-4
