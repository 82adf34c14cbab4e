"""X-volution backbones: layout, network-level exactness of the fold, checkpoints, CLI and demo."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

import acmix_deploy as ad
from acmix_deploy.cli import app
from acmix_deploy.models.resnet import Bottleneck, ResNet
from acmix_deploy.modules import XVolution, XVolutionDeploy
from acmix_deploy.reparam import reparameterize
from acmix_deploy.testing import randomize_model

from tests.helpers import TOL_F32, TOL_F64, rel_error as _rel

runner = CliRunner()



def _random(name: str, seed: int = 0, **kw) -> nn.Module:
    return randomize_model(ad.create_model(name, **kw), seed).eval()


def _xvolution_names(model: nn.Module, cls=(XVolution, XVolutionDeploy)) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, cls)]


# --------------------------------------------------------------------------- layouts


def test_xvolution_resnet50_replaces_the_stage3_convs_only():
    model = ad.create_model("xvolution_resnet50")
    assert model.mixers == ("conv", "conv", "xvolution", "conv")
    assert _xvolution_names(model) == [f"layer3.{i}.conv2" for i in range(6)]
    first = model.layer3[0]
    assert first.conv2.stride == 2 and first.conv2.in_channels == first.conv2.out_channels == 256
    assert all(isinstance(b.bn2, nn.Identity) for b in model.layer3)  # the branch BatchNorms replace bn2
    assert all(isinstance(b.bn2, nn.BatchNorm2d) for layer in (model.layer2, model.layer4) for b in layer)
    # ResNet-50 (25,557,032) - 6 x (bn2: 512) + 6 x (pssa 8*256*256 + bn_conv/bn_pssa affine 2*512)
    assert ad.count_parameters(model) == 25_557_032 - 6 * 512 + 6 * (8 * 256 * 256 + 1024)
    keys = model.state_dict().keys()
    assert "layer3.0.conv2.pssa.weight" in keys and "layer3.0.conv2.bn_pssa.running_var" in keys
    assert "layer3.0.bn2.weight" not in keys and "layer2.0.bn2.weight" in keys


def test_tiny_layout_has_a_stride2_and_a_stride1_xvolution():
    model = ad.create_model("xvolution_resnet_tiny")
    assert [model.layer3[i].conv2.stride for i in range(2)] == [2, 1]
    assert _xvolution_names(model) == ["layer3.0.conv2", "layer3.1.conv2"]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_per_stage_mixers_are_validated():
    with pytest.raises(ad.ConfigError, match="one operator per stage"):
        ResNet(layers=(1, 1), widths=(8, 16), mixers=("conv",))
    with pytest.raises(ad.ConfigError, match="unknown mixer.*'xvol'"):
        ResNet(layers=(1, 1), widths=(8, 16), mixers=("conv", "xvol"))


# --------------------------------------------------------------------------- exactness of the fold


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [32, 33])
def test_tiny_network_deploy_equals_training(size, batch):
    model = _random("xvolution_resnet_tiny", seed=size + batch)
    # every BatchNorm has random statistics, the X-volution branch ones included
    assert float(model.layer3[0].conv2.bn_pssa.running_mean.abs().sum()) > 0
    deploy = ad.reparameterize_model(model)
    assert ad.foldable_leftovers(deploy) == [] and ad.is_deploy(deploy)
    assert _xvolution_names(deploy, XVolutionDeploy) == ["layer3.0.conv2", "layer3.1.conv2"]
    assert deploy.layer3[0].conv2.stride == 2
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        assert _rel(model(x), deploy(x)) <= TOL_F32
        m64 = model.double()
        assert _rel(m64(x.double()), ad.reparameterize_model(m64)(x.double())) <= TOL_F64


def test_xvolution_resnet50_deploy_equals_training_odd_size():
    model = _random("xvolution_resnet50", seed=1, num_classes=20).double()
    x = torch.randn(1, 3, 33, 33, dtype=torch.float64)  # stage 3 sees 5x5 -> 3x3 in its stride-2 block
    with torch.no_grad():
        ref = model(x)
        deploy = ad.reparameterize_model(model, inplace=True)
        assert len(_xvolution_names(deploy, XVolutionDeploy)) == 6 and ad.is_deploy(deploy)
        assert _rel(ref, deploy(x)) <= TOL_F64


def test_a_wrong_fold_is_caught_at_network_level():
    """Guard for the test above: dropping one branch BatchNorm's shift is far above the tolerance."""
    model = _random("xvolution_resnet_tiny", seed=5).double()
    deploy = ad.reparameterize_model(model)
    bn = model.layer3[1].conv2.bn_pssa
    with torch.no_grad():
        deploy.layer3[1].conv2.conv.bias -= bn.bias - bn.running_mean * bn.weight / (bn.running_var + bn.eps).sqrt()
        x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
        assert _rel(model(x), deploy(x)) > 1e-6


class _XVolutionThenBn(nn.Module):
    """An X-volution followed by a BatchNorm held as attributes (a bn2 kept after it)."""

    def __init__(self):
        super().__init__()
        self.op = XVolution(6, 7, stride=2)
        self.bn = nn.BatchNorm2d(7)

    def forward(self, x):
        return self.bn(self.op(x))


def test_bottleneck_and_an_xvolution_with_a_following_batchnorm_fold_through_the_walker():
    torch.manual_seed(0)
    block = randomize_model(Bottleneck(32, 8, stride=2, mixer="xvolution",
                                       downsample=nn.Sequential(nn.Conv2d(32, 32, 1, 2, bias=False),
                                                                nn.BatchNorm2d(32))), 3).eval().double()
    x = torch.randn(2, 32, 11, 9, dtype=torch.float64)
    with torch.no_grad():
        ref = block(x)
        deploy = ad.reparameterize_model(block)  # the block alone, as the root of the pass
        assert isinstance(deploy.conv2, XVolutionDeploy) and ad.is_deploy(deploy)
        assert all(isinstance(getattr(deploy, n), nn.Identity) for n in ("bn1", "bn2", "bn3"))
        assert isinstance(deploy.downsample[1], nn.Identity) and deploy.downsample[0].bias is not None
        assert _rel(ref, deploy(x)) <= TOL_F64

    # The BatchNorm after an X-volution folds into the deploy form.
    parent = randomize_model(_XVolutionThenBn(), 4).eval().double()
    x = torch.randn(3, 6, 9, 10, dtype=torch.float64)
    with torch.no_grad():
        ref = parent(x)
        deploy, report = reparameterize(parent)
        assert report.pairs == [("op", "bn")]
        assert isinstance(deploy.op, XVolutionDeploy) and isinstance(deploy.bn, nn.Identity)
        assert _rel(ref, deploy(x)) <= TOL_F64


def test_sequential_walker_folds_xvolution_with_batchnorm():
    seq = randomize_model(nn.Sequential(XVolution(4, 6), nn.BatchNorm2d(6), nn.ReLU(), XVolution(6, 6, stride=2)), 6)
    seq = seq.eval()
    deploy = ad.reparameterize_model(seq)
    assert isinstance(deploy[0], XVolutionDeploy) and isinstance(deploy[1], nn.Identity)
    assert isinstance(deploy[3], XVolutionDeploy) and ad.foldable_leftovers(deploy) == []
    x = torch.randn(2, 4, 7, 8)
    with torch.no_grad():
        assert _rel(seq(x), deploy(x)) <= TOL_F32


def test_foldable_leftovers_reports_an_unfolded_xvolution():
    model = _random("xvolution_resnet_tiny")
    deploy = ad.reparameterize_model(model)
    deploy.layer3[1].conv2 = model.layer3[1].conv2  # a training-form X-volution left behind
    left = ad.foldable_leftovers(deploy)
    assert "layer3.1.conv2 (XVolution)" in left and not ad.is_deploy(deploy)
    assert all(name.startswith("layer3.1.conv2") for name in left)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_training_and_deploy(tmp_path):
    model = _random("xvolution_resnet_tiny", seed=7, num_classes=5)
    deploy = ad.reparameterize_model(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref_train, ref_deploy = model(x), deploy(x)

    train_loaded = ad.read_checkpoint(ad.save_checkpoint(model, tmp_path / "t.pth"))
    deploy_loaded = ad.read_checkpoint(ad.save_checkpoint(deploy, tmp_path / "d.pth"))
    assert not train_loaded.deploy and deploy_loaded.deploy
    assert train_loaded.arch == deploy_loaded.arch == "xvolution_resnet_tiny"
    assert _xvolution_names(deploy_loaded.model, XVolutionDeploy) == ["layer3.0.conv2", "layer3.1.conv2"]
    with torch.no_grad():
        assert torch.equal(train_loaded.model(x), ref_train)
        assert torch.equal(deploy_loaded.model(x), ref_deploy)

    # The deploy structure is built from the registry alone; a deploy state dict loads strictly,
    # also as a bare state dict (its form is recognised from the keys).
    direct = ad.create_model("xvolution_resnet_tiny", num_classes=5, deploy=True)
    direct.load_state_dict(deploy.state_dict(), strict=True)
    torch.save(deploy.state_dict(), tmp_path / "bare.pth")
    bare = ad.read_checkpoint(tmp_path / "bare.pth", arch="xvolution_resnet_tiny")
    assert bare.deploy
    with torch.no_grad():
        assert torch.equal(direct.eval()(x), ref_deploy) and torch.equal(bare.model(x), ref_deploy)
    with pytest.raises(ad.CheckpointError, match="does not match architecture acmix_resnet_tiny.*layer3.0.conv2.conv"):
        ad.read_checkpoint(tmp_path / "bare.pth", arch="acmix_resnet_tiny")


# --------------------------------------------------------------------------- CLI and demo


def test_cli_info_reparam_export_end_to_end(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    import onnx

    from acmix_deploy.exporters.onnx import unsupported_ops

    model = _random("xvolution_resnet_tiny", seed=8, num_classes=4)
    ckpt = ad.save_checkpoint(model, tmp_path / "train.pth")
    result = runner.invoke(app, ["info", str(ckpt)])
    assert result.exit_code == 0, result.output
    assert "xvolution_resnet_tiny" in result.output and "X-volution blocks" in result.output

    out = tmp_path / "deploy.pth"
    result = runner.invoke(app, ["reparam", str(ckpt), "-o", str(out), "--imgsz", "33", "--batch", "3"])
    assert result.exit_code == 0, result.output
    loaded = ad.read_checkpoint(out)
    assert loaded.deploy and loaded.meta["check_rel_error"] <= TOL_F32

    onnx_path = tmp_path / "deploy.onnx"
    result = runner.invoke(app, ["export", str(out), "-o", str(onnx_path)])
    assert result.exit_code == 0, result.output
    proto = onnx.load(onnx_path)
    ops = {n.op_type for n in proto.graph.node}
    assert {"Conv", "Mul", "Concat", "Slice", "Pad"} <= ops and "BatchNormalization" not in ops
    assert unsupported_ops(proto) == []  # every operator is in TensorRT's ONNX parser list
    from acmix_deploy.runtime import OrtRunner

    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    assert _rel(ref, torch.from_numpy(OrtRunner(onnx_path).infer(x.numpy()))) <= 1e-4


def test_demo_rejects_an_unknown_arch(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--arch", "xvolution_resnet50", "--out", str(out)])
    assert result.exit_code == 2
    assert "the demo trains one of" in result.output and "xvolution_resnet_tiny" in result.output
    assert "Traceback" not in result.output and not out.exists()
