"""The reparameterization walker, compatible with timm's conventions.

One verb for users: ``reparameterize_model(model)``.  It honours the three
conventions found in the wild, on the root and on every descendant:

* ``fuse()`` returns a replacement module (ACmix -> ACmixDeploy, timm's
  ConvNorm-style modules), which takes the child's place in its parent;
* ``reparameterize()`` mutates the module in place (our ResNet blocks,
  MobileOne/FastViT in timm);
* ``switch_to_deploy()`` mutates in place (RepVGG-style code).

Parents are visited before their children, so a block can fold a child
together with its neighbour (an ACmix with the BatchNorm after it) before the
child is visited alone.  Inside ``nn.Sequential`` containers, a Conv2d, ACmix
or XVolution directly followed by a BatchNorm2d is folded generically.
"""

from __future__ import annotations

import copy

import torch.nn as nn

from .fold import fuse_conv_bn
from .modules import ACmix, WindowAttentionACmix, XVolution

__all__ = ["reparameterize_model", "foldable_leftovers", "is_deploy"]


def _method(module: nn.Module, name: str):
    """A method defined on the module's class (never a submodule that happens to have that name)."""
    fn = getattr(type(module), name, None)
    return getattr(module, name) if callable(fn) else None


def _fuse_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules)
    for a, b in zip(names, names[1:]):
        op, bn = seq._modules[a], seq._modules[b]
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        if isinstance(op, nn.Conv2d):
            seq._modules[a] = fuse_conv_bn(op, bn)
        elif isinstance(op, (ACmix, XVolution)):
            seq._modules[a] = op.fuse(bn)
        else:
            continue
        seq._modules[b] = nn.Identity()


def _reparameterize_in_place(module: nn.Module) -> None:
    for name in ("reparameterize", "switch_to_deploy"):
        fn = _method(module, name)
        if fn is not None:
            fn()
            return


def _walk(parent: nn.Module) -> None:
    if isinstance(parent, nn.Sequential):
        _fuse_sequential(parent)
    for name, child in list(parent.named_children()):
        fuse = _method(child, "fuse")
        if fuse is not None:
            new = fuse()
            if isinstance(new, nn.Module) and new is not child:
                setattr(parent, name, new)
                child = new
        _reparameterize_in_place(child)
        _walk(child)


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return the deploy form of ``model``: every foldable part folded.

    The input model is left untouched unless ``inplace=True``.  Calling it on
    a deploy model changes nothing (the walk is idempotent).  BatchNorms are
    folded with their running statistics, i.e. the result equals the input
    model in ``eval()`` mode.
    """
    if not inplace:
        model = copy.deepcopy(model)
    fuse = _method(model, "fuse")
    if fuse is not None:
        new = fuse()
        if isinstance(new, nn.Module):
            for attr in ("arch_name", "arch_args"):
                if hasattr(model, attr) and not hasattr(new, attr):
                    setattr(new, attr, getattr(model, attr))
            model = new
    _reparameterize_in_place(model)
    _walk(model)
    return model


def foldable_leftovers(model: nn.Module) -> list[str]:
    """Names (and types) of modules that a deploy model should no longer contain."""
    left = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, ACmix, WindowAttentionACmix, XVolution)):
            left.append(f"{name or '<root>'} ({type(m).__name__})")
    return left


def is_deploy(model: nn.Module) -> bool:
    """True when nothing foldable is left (no BatchNorm, no training-form ACmix of either form or XVolution)."""
    return not foldable_leftovers(model)
