"""Whole networks: registry, reparameterize_model conventions, and network-level exactness."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import acmix_deploy as ad
from acmix_deploy import ACmix, ACmixDeploy
from acmix_deploy.errors import ConfigError, UnknownArchitectureError
from acmix_deploy.testing import randomize_model

from tests.helpers import TOL_F32, TOL_F64, rel_error as _rel



def test_registry_lists_the_families():
    names = ad.list_models()
    for expected in ("acmix_resnet26", "acmix_resnet38", "acmix_resnet50", "resnet50", "acmix_resnet_tiny"):
        assert expected in names
    assert ad.list_models("acmix_resnet2*") == ["acmix_resnet26"]


def test_unknown_architecture_lists_known_ones():
    with pytest.raises(UnknownArchitectureError, match="Did you mean acmix_resnet50.*Known architectures: .*resnet50"):
        ad.create_model("acmix_resnet_50")


def test_unknown_argument_is_named():
    with pytest.raises(ConfigError, match="does not take argument.*depth"):
        ad.create_model("acmix_resnet_tiny", depth=3)


@pytest.mark.parametrize(
    "name,params,acmix_blocks",
    [("acmix_resnet50", 18_333_976, 16), ("resnet50", 25_557_032, 0), ("acmix_resnet26", None, 8), ("acmix_resnet38", None, 12)],
)
def test_official_layouts(name, params, acmix_blocks):
    model = ad.create_model(name)
    assert sum(isinstance(m, ACmix) for m in model.modules()) == acmix_blocks
    if params is not None:  # 25.56M is torchvision's ResNet-50; 18.3M the ACmix paper's ResNet-50
        assert ad.count_parameters(model) == params
    keys = model.state_dict().keys()
    assert "layer1.0.conv2.rate1" in keys if acmix_blocks else "layer1.0.conv2.weight" in keys
    assert "layer2.0.downsample.1.running_var" in keys and "fc.weight" in keys


def test_num_classes_and_in_chans():
    model = ad.create_model("acmix_resnet_tiny", num_classes=7, in_chans=1).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_each_family_reads_its_own_state_dicts():
    """Argument inference and deploy detection come from the model's family, filtered by what it takes."""
    from pathlib import Path

    from acmix_deploy.models import infer_model_args, is_deploy_state_dict, model_family

    tiny = _random_model("acmix_resnet_tiny", num_classes=7, in_chans=2)
    xvol = _random_model("xvolution_resnet_tiny", num_classes=4)
    swin = ad.create_model("acmix_swin_micro", num_classes=5, img_size=64, window_size=4).eval()
    assert [model_family(n).name for n in ("acmix_resnet_tiny", "resnet50", "acmix_swin_micro")] == \
        ["resnet", "resnet", "swin_acmix"]
    assert infer_model_args("acmix_resnet_tiny", tiny.state_dict()) == {"num_classes": 7, "in_chans": 2}
    assert infer_model_args("acmix_swin_micro", swin.state_dict()) == {"num_classes": 5, "in_chans": 3,
                                                                       "window_size": 4, "img_size": 64}
    assert infer_model_args("acmix_swin_micro", ad.reparameterize_model(swin).state_dict())["img_size"] == 64
    assert infer_model_args("resnet50", swin.state_dict()) == {}  # another family's keys mean nothing here
    for name, model in (("acmix_resnet_tiny", tiny), ("xvolution_resnet_tiny", xvol), ("acmix_swin_micro", swin)):
        assert not is_deploy_state_dict(name, model.state_dict())
        assert is_deploy_state_dict(name, ad.reparameterize_model(model).state_dict())
    source = (Path(ad.__file__).parent / "checkpoint.py").read_text()
    assert not any(key in source for key in ("patch_embed", "rate1", "bn_pssa", "fc.weight"))


def test_resnet_blocks_hold_no_folding_code_of_their_own():
    """The pass folds ResNets from the graph; a block's own fold would repeat its dispatch."""
    from acmix_deploy.models import resnet

    assert not hasattr(resnet, "fuse_pair")
    assert not any(hasattr(cls, m) for cls in (resnet.Bottleneck, resnet.ResNet)
                   for m in ("fuse", "reparameterize", "switch_to_deploy"))
    model = _random_model("acmix_resnet_tiny")
    assert not model.deploy and ad.reparameterize_model(model).deploy


def _random_model(name: str, seed: int = 0, **kw) -> nn.Module:
    return randomize_model(ad.create_model(name, **kw), seed).eval()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name,size", [("acmix_resnet_tiny", 32), ("acmix_resnet_tiny", 40), ("resnet_tiny", 33)])
def test_network_deploy_equals_training(name, size, batch):
    model = _random_model(name, seed=size + batch)
    deploy = ad.reparameterize_model(model)
    assert ad.foldable_leftovers(deploy) == []
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        assert _rel(model(x), deploy(x)) <= TOL_F32
        m64 = model.double()
        assert _rel(m64(x.double()), ad.reparameterize_model(m64)(x.double())) <= TOL_F64


def test_acmix_resnet26_deploy_equals_training_at_128():
    model = _random_model("acmix_resnet26", seed=3, num_classes=20)
    deploy = ad.reparameterize_model(model)
    assert sum(isinstance(m, ACmixDeploy) for m in deploy.modules()) == 8
    with torch.no_grad():
        x = torch.randn(2, 3, 128, 128)
        assert _rel(model(x), deploy(x)) <= TOL_F32


@pytest.mark.slow
def test_acmix_resnet50_deploy_equals_training_at_224():
    model = _random_model("acmix_resnet50", seed=1)
    deploy = ad.reparameterize_model(model)
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)
        assert _rel(model(x), deploy(x)) <= TOL_F32


def test_reparameterize_leaves_input_untouched_unless_inplace():
    model = _random_model("acmix_resnet_tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types_before = [type(m) for m in model.modules()]
    deploy = ad.reparameterize_model(model)
    assert deploy is not model
    assert [type(m) for m in model.modules()] == types_before
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    same = ad.reparameterize_model(model, inplace=True)
    assert same is model and ad.is_deploy(model)


def test_reparameterize_is_idempotent():
    deploy = ad.reparameterize_model(_random_model("acmix_resnet_tiny"))
    again = ad.reparameterize_model(deploy)
    assert [type(m) for m in again.modules()] == [type(m) for m in deploy.modules()]
    sd1, sd2 = deploy.state_dict(), again.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)


def test_deploy_model_built_directly_matches_folded_structure():
    folded = ad.reparameterize_model(_random_model("acmix_resnet_tiny"))
    direct = ad.create_model("acmix_resnet_tiny", deploy=True)
    assert [type(m) for m in direct.modules()] == [type(m) for m in folded.modules()]
    direct.load_state_dict(folded.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(direct.eval()(x), folded(x))


class _SwitchBlock(nn.Module):
    """A RepVGG-style block using switch_to_deploy()."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.switched = False

    def switch_to_deploy(self):
        self.conv = ad.fold.fuse_conv_bn(self.conv, self.bn)
        self.bn = nn.Identity()
        self.switched = True

    def forward(self, x):
        return self.bn(self.conv(x))


class _FuseBlock(nn.Module):
    """A timm ConvNorm-style block whose fuse() returns a replacement."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def fuse(self):
        return ad.fold.fuse_conv_bn(self.c, self.bn)

    def forward(self, x):
        return self.bn(self.c(x))


def test_walker_honours_timm_and_repvgg_conventions_and_sequential_pairs():
    model = nn.Sequential(
        _SwitchBlock(),
        _FuseBlock(),
        ACmix(4, 8, 5, 2, 3, 1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)),
        ACmix(8, 8, 3, 4, 3, 1),  # no BatchNorm after it: fused alone
    )
    randomize_model(model, 4).eval()
    deploy = ad.reparameterize_model(model)
    assert ad.foldable_leftovers(deploy) == []
    assert deploy[0].switched and isinstance(deploy[1], nn.Conv2d)
    assert isinstance(deploy[2], ACmixDeploy) and isinstance(deploy[3], nn.Identity)
    assert isinstance(deploy[6], ACmixDeploy)
    x = torch.randn(2, 4, 10, 12)
    with torch.no_grad():
        assert _rel(model(x), deploy(x)) <= TOL_F32


def test_root_module_with_fuse_is_replaced():
    m = randomize_model(ACmix(4, 8, 3, 2), 0).eval()
    deploy = ad.reparameterize_model(m)
    assert isinstance(deploy, ACmixDeploy) and isinstance(m, ACmix)
