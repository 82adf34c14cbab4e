"""ResNet backbones with ACmix or X-volution in place of the bottleneck's 3x3 convolution.

The layout is the official ACmix ResNet (torchvision v1.5 bottlenecks, stride
in the middle operator): stem ``conv1`` 7x7/2 + ``bn1`` + ReLU + 3x3/2 max
pool, four stages ``layer1..layer4``, global average pool, ``fc``.  Module
names are torchvision's, so official ACmix-ResNet state dicts load unchanged:
``layerN.M.conv2`` is the ACmix block and ``layerN.M.bn2`` the BatchNorm
after it.

X-volution (``mixer='xvolution'``) replaces the 3x3 convolution *and* its
BatchNorm: the X-volution block of the paper is two branches, convolution +
BatchNorm and pixel-shift self-attention + BatchNorm, summed, so its own
branch BatchNorms are the normalisation and ``bn2`` is ``nn.Identity`` (as in
RepVGG-style multi-branch blocks, the ReLU follows the sum).  In the first
block of a stage the X-volution carries the stride 2 itself (both branches
sample the output grid, see ``docs/xvolution.md`` choice 6).  ``mixers``
chooses the operator per stage, so a backbone states exactly which stages use
X-volution (the paper's best ImageNet setting: stage 3 only).

The blocks hold no folding code of their own: :func:`acmix_deploy.reparameterize_model` finds every
Conv+BatchNorm and ACmix+BatchNorm pair in the traced graph and folds it (into one convolution, into
:class:`~acmix_deploy.modules.ACmixDeploy`), and each X-volution folds its branch BatchNorms itself
(``fuse()``, into :class:`~acmix_deploy.modules.XVolutionDeploy`); folded BatchNorms become
``nn.Identity`` so that the remaining module names stay those of the training form.  ``deploy=True``
builds that structure directly.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..modules import ACmix, ACmixDeploy, XVolution, XVolutionDeploy
from .registry import ModelFamily, default_cfg, register_model

__all__ = ["Bottleneck", "ResNet", "MIXERS"]

MIXERS = ("acmix", "conv", "xvolution")


def _conv(cin: int, cout: int, k: int, stride: int = 1, deploy: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=deploy)


def _norm(c: int, deploy: bool) -> nn.Module:
    return nn.Identity() if deploy else nn.BatchNorm2d(c)


class Bottleneck(nn.Module):
    """torchvision v1.5 bottleneck; ``mixer`` chooses the operator in place of the 3x3 conv.

    ``'acmix'``: ACmix, then ``bn2``; ``'conv'``: the 3x3 conv, then ``bn2``;
    ``'xvolution'``: a 3x3 X-volution (8 shifts at distance 1), whose branch
    BatchNorms replace ``bn2`` (``nn.Identity``).
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        mixer: str = "acmix",
        k_att: int = 7,
        head: int = 4,
        k_conv: int = 3,
        deploy: bool = False,
    ):
        super().__init__()
        width = planes
        self.conv1 = _conv(inplanes, width, 1, deploy=deploy)
        self.bn1 = _norm(width, deploy)
        if mixer == "acmix":
            cls = ACmixDeploy if deploy else ACmix
            self.conv2 = cls(width, width, k_att, head, k_conv, stride)
        elif mixer == "conv":
            self.conv2 = _conv(width, width, 3, stride, deploy=deploy)
        elif mixer == "xvolution":
            cls = XVolutionDeploy if deploy else XVolution
            self.conv2 = cls(width, width, kernel_size=3, dilation=1, stride=stride)
        else:
            raise ConfigError(f"unknown mixer {mixer!r}; use one of {', '.join(MIXERS)}")
        self.bn2 = nn.Identity() if mixer == "xvolution" else _norm(width, deploy)
        self.conv3 = _conv(width, planes * self.expansion, 1, deploy=deploy)
        self.bn3 = _norm(planes * self.expansion, deploy)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with bottleneck blocks.

    ``stem='imagenet'``: 7x7/2 conv + 3x3/2 max pool (total stride 32);
    ``stem='small'``: one 3x3/1 conv, no pool (total stride 8, for 32x32 inputs).
    ``widths`` are the bottleneck widths of the four stages (outputs are 4x).
    ``mixer`` is the operator of every stage, unless ``mixers`` gives one per
    stage (e.g. ``("conv", "conv", "xvolution", "conv")``).
    """

    def __init__(
        self,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        mixer: str = "acmix",
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "imagenet",
        stem_width: int | None = None,
        k_att: int = 7,
        head: int = 4,
        k_conv: int = 3,
        deploy: bool = False,
        mixers: tuple[str, ...] | None = None,
    ):
        super().__init__()
        if len(layers) != len(widths) or not layers:
            raise ConfigError(f"layers {layers} and widths {widths} must have the same, non-zero length")
        mixers = tuple(mixers) if mixers is not None else (mixer,) * len(layers)
        if len(mixers) != len(layers):
            raise ConfigError(f"mixers {mixers} must give one operator per stage ({len(layers)} stages)")
        bad = [m for m in mixers if m not in MIXERS]
        if bad:
            raise ConfigError(f"unknown mixer(s) {', '.join(map(repr, bad))}; use one of {', '.join(MIXERS)}")
        for name, value in (("num_classes", num_classes), ("in_chans", in_chans)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        stem_width = stem_width or widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=deploy)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        elif stem == "small":
            self.conv1 = _conv(in_chans, stem_width, 3, deploy=deploy)
            self.maxpool = nn.Identity()
        else:
            raise ConfigError(f"unknown stem {stem!r}; use 'imagenet' or 'small'")
        self.bn1 = _norm(stem_width, deploy)
        self.relu = nn.ReLU(inplace=True)
        inplanes = stem_width
        block_args = dict(k_att=k_att, head=head, k_conv=k_conv, deploy=deploy)
        for idx, (n, width, stage_mixer) in enumerate(zip(layers, widths, mixers)):
            stride = 1 if idx == 0 else 2
            blocks = []
            for j in range(n):
                s = stride if j == 0 else 1
                downsample = None
                if j == 0 and (s != 1 or inplanes != width * Bottleneck.expansion):
                    downsample = nn.Sequential(
                        _conv(inplanes, width * Bottleneck.expansion, 1, s, deploy=deploy),
                        _norm(width * Bottleneck.expansion, deploy),
                    )
                blocks.append(Bottleneck(inplanes, width, s, downsample, mixer=stage_mixer, **block_args))
                inplanes = width * Bottleneck.expansion
            self.add_module(f"layer{idx + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.mixers = mixers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.default_cfg = default_cfg(in_chans, 224)
        if not deploy:
            self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ACmix):
                m.reset_parameters()  # rates 0.5 and the shift kernels of dep_conv

    @property
    def deploy(self) -> bool:
        """True when folded: no BatchNorm and no training-form ACmix or X-volution is left."""
        return not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, ACmix, XVolution)) for m in self.modules())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for idx in range(self.num_stages):
            x = getattr(self, f"layer{idx + 1}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.forward_features(x)).flatten(1)
        return self.fc(x)


def _resnet(layers, mixer="acmix", deploy=False, input_size=224, **kwargs) -> ResNet:
    model = ResNet(layers=layers, mixer=mixer, deploy=deploy, **kwargs)
    model.default_cfg["input_size"] = (model.in_chans, input_size, input_size)
    return model


def infer_args(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``num_classes`` from the classifier ``fc`` and ``in_chans`` from the stem ``conv1``."""
    args: dict[str, Any] = {}
    fc, stem = sd.get("fc.weight"), sd.get("conv1.weight")
    if fc is not None and fc.dim() == 2:
        args["num_classes"] = int(fc.shape[0])
    if stem is not None and stem.dim() == 4:
        args["in_chans"] = int(stem.shape[1])
    return args


def is_deploy(sd: Mapping[str, torch.Tensor]) -> bool:
    """The deploy form of ACmix blocks keeps ``qkv`` but not ``rate1``; that of X-volution blocks has the
    folded shift-product weights ``mix`` and no branch BatchNorm ``bn_pssa``."""
    acmix = any(k.endswith(".qkv.weight") for k in sd) and not any(k.endswith(".rate1") for k in sd)
    return acmix or (any(k.endswith(".mix.weight") for k in sd) and not any(".bn_pssa." in k for k in sd))


FAMILY = ModelFamily("resnet", infer_args=infer_args, is_deploy=is_deploy)


@register_model(family=FAMILY)
def acmix_resnet26(num_classes: int = 1000, in_chans: int = 3, deploy: bool = False) -> ResNet:
    """ACmix-ResNet-26: stages [1, 2, 4, 1] (the SASA ResNet-26 layout), 224x224."""
    return _resnet((1, 2, 4, 1), num_classes=num_classes, in_chans=in_chans, deploy=deploy)


@register_model(family=FAMILY)
def acmix_resnet38(num_classes: int = 1000, in_chans: int = 3, deploy: bool = False) -> ResNet:
    """ACmix-ResNet-38: stages [2, 3, 5, 2] (the SASA ResNet-38 layout), 224x224."""
    return _resnet((2, 3, 5, 2), num_classes=num_classes, in_chans=in_chans, deploy=deploy)


@register_model(family=FAMILY)
def acmix_resnet50(num_classes: int = 1000, in_chans: int = 3, deploy: bool = False) -> ResNet:
    """ACmix-ResNet-50: stages [3, 4, 6, 3], ACmix(width, width, 7, 4, 3, stride), 224x224."""
    return _resnet((3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans, deploy=deploy)


@register_model(family=FAMILY)
def resnet50(num_classes: int = 1000, in_chans: int = 3, deploy: bool = False) -> ResNet:
    """Plain ResNet-50 (torchvision v1.5 layout) with the same widths, for comparison."""
    return _resnet((3, 4, 6, 3), mixer="conv", num_classes=num_classes, in_chans=in_chans, deploy=deploy)


_TINY = dict(widths=(16, 32, 64, 128), stem="small", input_size=32)


@register_model(family=FAMILY)
def acmix_resnet_tiny(
    num_classes: int = 10, in_chans: int = 3, k_att: int = 7, head: int = 4, deploy: bool = False
) -> ResNet:
    """A small ACmix-ResNet for 32x32 inputs: stages [1, 1, 1, 1], widths 16-128, 3x3 stem (tests, demo)."""
    return _resnet((1, 1, 1, 1), num_classes=num_classes, in_chans=in_chans, k_att=k_att, head=head,
                   deploy=deploy, **_TINY)


@register_model(family=FAMILY)
def resnet_tiny(num_classes: int = 10, in_chans: int = 3, deploy: bool = False) -> ResNet:
    """The plain-convolution counterpart of :func:`acmix_resnet_tiny`."""
    return _resnet((1, 1, 1, 1), mixer="conv", num_classes=num_classes, in_chans=in_chans, deploy=deploy, **_TINY)


# X-volution in stage 3 only: the paper's best ImageNet setting (ResNet-50 +0.9 % top-1; stage 4 did worse).
_XVOLUTION_STAGE3 = ("conv", "conv", "xvolution", "conv")


@register_model(family=FAMILY)
def xvolution_resnet50(num_classes: int = 1000, in_chans: int = 3, deploy: bool = False) -> ResNet:
    """X-volution-ResNet-50: X-volution replaces the 3x3 conv+BN of all 6 stage-3 blocks, 224x224."""
    return _resnet((3, 4, 6, 3), mixers=_XVOLUTION_STAGE3, num_classes=num_classes, in_chans=in_chans, deploy=deploy)


@register_model(family=FAMILY)
def xvolution_resnet_tiny(num_classes: int = 10, in_chans: int = 3, deploy: bool = False) -> ResNet:
    """A small X-volution-ResNet for 32x32: stages [1, 1, 2, 1], X-volution in stage 3 (stride 2 and 1), widths 16-128."""
    return _resnet((1, 1, 2, 1), mixers=_XVOLUTION_STAGE3, num_classes=num_classes, in_chans=in_chans,
                   deploy=deploy, **_TINY)
