"""The reparameterization pass: fold everything foldable in any network, and say what was not.

One verb for users: ``reparameterize_model(model)`` (timm's name); ``reparameterize(model)`` returns the
same model together with a :class:`ReparamReport`.  The pass runs in four steps:

1. **Foreign operators** (:mod:`acmix_deploy.foreign`): modules with the official ACmix structure (forks'
   renamed copies) become this package's :class:`~acmix_deploy.modules.ACmix` once a probe proved them equal.
2. **The user's own methods**: ``fuse()`` returning a replacement module (timm's ConvNorm style),
   ``reparameterize()`` or ``switch_to_deploy()`` (RepVGG, MobileOne) on modules of other packages, parents
   before children.
3. **BatchNorm pairs found in the graph** (:mod:`acmix_deploy.graph_fold`): ``torch.fx`` traces the network
   (subtree by subtree where the whole does not trace) with the ACmix / X-volution operators as leaves; a
   BatchNorm2d whose only input is a Conv2d, an ACmix or an X-volution whose output nothing else reads is
   folded into it, whether the two sit in an ``nn.Sequential`` or are attributes of a user block
   (``self.conv``, ``self.bn``, ``self.act``).
4. **This package's modules** fold themselves (``fuse``/``reparameterize``, parents before children, so a
   block folds a child together with its neighbour), and a Conv2d/ACmix/XVolution directly followed by a
   BatchNorm2d inside an ``nn.Sequential`` is folded generically.

Whatever could have been folded and was not is listed in :attr:`ReparamReport.leftovers` with the reason.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from dataclasses import dataclass, field

import torch.nn as nn

from .fold import fuse_conv_bn
from .foreign import (Adoption, acmix_resemblance, adopt_foreign_operators, carry_attributes, is_ours, looks_like_acmix,
                      looks_like_swin_attention, replace_everywhere)
from .graph_fold import BnPairs, find_bn_pairs
from .modules import ACmix, WindowAttentionACmix, XVolution

__all__ = ["reparameterize_model", "reparameterize", "ReparamReport", "Leftover", "foldable_leftovers",
           "leftover_report", "is_deploy", "FoldPlan"]

_METHODS = ("fuse", "reparameterize", "switch_to_deploy")


def _method(module: nn.Module, name: str):
    """A method defined on the module's class that can be called without arguments, else None.

    Never a submodule that happens to have that name; a user's ``fuse(other)`` that needs arguments is not
    this convention and is left alone.
    """
    fn = getattr(type(module), name, None)
    if not callable(fn):
        return None
    bound = getattr(module, name)
    try:
        inspect.signature(bound).bind()
    except TypeError:
        return None
    except ValueError:  # no signature (a builtin): assume the convention
        pass
    return bound


def _replace(parent: nn.Module, name: str, new: nn.Module) -> None:
    old = parent._modules[name]
    if old is not None:
        carry_attributes(old, new)
    setattr(parent, name, new)


def _absorb(op: nn.Module, bn: nn.BatchNorm2d) -> nn.Module | None:
    """``op`` followed by ``bn`` as one module (a convolution with bias, an ACmix / X-volution deploy form),
    or None when ``op`` cannot absorb a BatchNorm.  The one place that says which operator folds how."""
    if type(op) is nn.Conv2d:  # exactly: a subclass may have its own forward
        return fuse_conv_bn(op, bn)
    if isinstance(op, (ACmix, XVolution)):
        return op.fuse(bn)
    return None


def _fuse_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules)
    for a, b in zip(names, names[1:]):
        op, bn = seq._modules[a], seq._modules[b]
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        fused = _absorb(op, bn)
        if fused is not None:
            _replace(seq, a, fused)
            _replace(seq, b, nn.Identity())


def _reparameterize_in_place(module: nn.Module) -> None:
    for name in ("reparameterize", "switch_to_deploy"):
        fn = _method(module, name)
        if fn is not None:
            fn()
            return


def _walk(parent: nn.Module, ours: bool, done: dict[int, tuple[nn.Module, nn.Module]] | None = None) -> None:
    """Call the folding methods of ``parent``'s descendants that are (``ours``) or are not this package's.

    A module registered under several names (``self.b = self.a``) is folded once, and every name gets the
    same folded module (``done`` maps the id of each module already visited to that module, kept alive so that
    its id is not reused, and what replaced it).
    """
    done = {} if done is None else done
    if ours and isinstance(parent, nn.Sequential):
        _fuse_sequential(parent)
    for name, child in list(parent._modules.items()):  # every name: named_children() skips aliases
        if child is None:
            continue
        if id(child) in done:
            folded = done[id(child)][1]
            if folded is not child:
                _replace(parent, name, folded)
            continue
        old = child
        if is_ours(child) == ours:
            fuse = _method(child, "fuse")
            if fuse is not None:
                new = fuse()
                if isinstance(new, nn.Module) and new is not child:
                    _replace(parent, name, new)
                    child = new
            _reparameterize_in_place(child)
        done[id(old)] = (old, child)
        done[id(child)] = (child, child)
        _walk(child, ours, done)


def _root_methods(model: nn.Module, ours: bool) -> nn.Module:
    if is_ours(model) != ours:
        return model
    fuse = _method(model, "fuse")
    if fuse is not None:
        new = fuse()
        if isinstance(new, nn.Module):
            for attr in ("arch_name", "arch_args", "default_cfg"):
                if hasattr(model, attr) and not hasattr(new, attr):
                    setattr(new, attr, getattr(model, attr))
            model = new
    _reparameterize_in_place(model)
    return model


@dataclass
class Leftover:
    """A module that a deploy model should no longer contain, with the reason it is still there."""

    path: str
    kind: str
    reason: str

    def describe(self) -> str:
        return f"{self.path} ({self.kind}): {self.reason}"


@dataclass
class FoldPlan:
    """What the pass did to a network's structure, enough to redo it on a fresh copy of the same network.

    ``adopted``: paths of foreign ACmix modules that became ours; ``pairs``: ``(producer, batchnorm)`` paths
    folded through the graph.  Stored in checkpoints of users' own models (plain lists of strings).
    """

    adopted: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"adopted": list(self.adopted), "pairs": [list(p) for p in self.pairs]}

    @classmethod
    def from_dict(cls, data: dict) -> "FoldPlan":
        return cls(adopted=[str(p) for p in data.get("adopted", [])],
                   pairs=[(str(a), str(b)) for a, b in data.get("pairs", [])])


@dataclass
class ReparamReport:
    adopted: list[Adoption] = field(default_factory=list)
    rejected: list[Adoption] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (producer, batchnorm) folded through the graph
    leftovers: list[Leftover] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # modules that resemble the official ACmix without its structure, left as they are (a note, not a
    # leftover: the resemblance is a heuristic, and a block of another design must not stop the fold)
    unrecognised: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.leftovers

    @property
    def plan(self) -> FoldPlan:
        return FoldPlan([a.path for a in self.adopted], list(self.pairs))


def _fold_pairs(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Fold each ``(producer, batchnorm)`` pair; the folded modules replace the pair under every name they have.

    A pair registered under two paths (``self.features = nn.Sequential(*backbone.children())``) is found twice
    by the graph: it is folded once, and its second record finds the folded modules in place and is skipped.
    """
    folded: list[tuple[nn.Module, nn.Module]] = []  # kept (not only their ids) so that no id is reused
    for op_path, bn_path in pairs:
        op, bn = model.get_submodule(op_path), model.get_submodule(bn_path)
        if any(op is new and bn is ident for new, ident in folded):
            continue
        new = _absorb(op, bn)
        if new is None:  # a recorded plan that does not fit this model definition
            raise ValueError(f"{op_path} ({type(op).__name__}) cannot absorb the BatchNorm {bn_path}")
        carry_attributes(op, new)
        replace_everywhere(model, op, new)
        ident = nn.Identity()
        carry_attributes(bn, ident)
        replace_everywhere(model, bn, ident)
        folded.append((new, ident))


def reparameterize(model: nn.Module, inplace: bool = False, plan: FoldPlan | None = None
                   ) -> tuple[nn.Module, ReparamReport]:
    """Return ``(deploy model, report)``: every foldable part of ``model`` folded (see the module docstring).

    The input model is left untouched unless ``inplace=True``.  BatchNorms are folded with their running
    statistics, i.e. the result equals the input model in ``eval()`` mode.  ``plan`` (from an earlier
    report) redoes exactly the recorded adoptions and graph folds instead of searching for them; it is how a
    checkpoint of a user's model rebuilds the deploy structure before loading the folded weights.
    """
    if not inplace:
        model = copy.deepcopy(model)
    report = ReparamReport()
    adoption = adopt_foreign_operators(model, only=None if plan is None else plan.adopted)
    report.adopted, report.rejected = adoption.adopted, adoption.rejected
    if plan is not None and len(adoption.adopted) != len(plan.adopted):
        missing = sorted(set(plan.adopted) - {a.path for a in adoption.adopted})
        raise ValueError(f"the recorded ACmix module(s) {', '.join(missing)} are not official ACmix operators "
                         "in this model definition")
    model = _root_methods(model, ours=False)
    _walk(model, ours=False)
    if plan is None:
        found: BnPairs = find_bn_pairs(model)
        report.pairs, report.notes = found.pairs, found.notes
        skipped = found.skipped
    else:
        report.pairs, skipped = list(plan.pairs), {}
    _fold_pairs(model, report.pairs)
    model = _root_methods(model, ours=True)
    _walk(model, ours=True)
    rejected = {a.path: a for a in report.rejected}
    report.leftovers = leftover_report(model, skipped, rejected, found.untraced if plan is None else {})
    report.unrecognised = [f"{name or '<root>'} ({type(m).__qualname__}) resembles the official ACmix but was not "
                           f"recognised ({why}); left as it is, unfolded"
                           for name, m in model.named_modules() if (why := acmix_resemblance(m)) is not None]
    return model, report


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return the deploy form of ``model``: every foldable part folded (timm's ``reparameterize_model``).

    Warns (``UserWarning``) when something foldable is left; :func:`reparameterize` returns the full report.
    Calling it on a deploy model changes nothing (the pass is idempotent).
    """
    deploy, report = reparameterize(model, inplace=inplace)
    for line in report.unrecognised:
        warnings.warn(f"reparameterize_model: {line}", stacklevel=2)
    if report.leftovers:
        shown = "; ".join(x.describe() for x in report.leftovers[:3])
        more = f" (and {len(report.leftovers) - 3} more)" if len(report.leftovers) > 3 else ""
        warnings.warn(f"reparameterize_model: {len(report.leftovers)} foldable module(s) left unfolded: "
                      f"{shown}{more}", stacklevel=2)
    return deploy


def _kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return type(m).__name__
    if isinstance(m, (ACmix, WindowAttentionACmix, XVolution)):
        return type(m).__name__
    if not is_ours(m) and looks_like_acmix(m):
        return f"{type(m).__qualname__}, an official-ACmix look-alike"
    if not is_ours(m) and looks_like_swin_attention(m):
        return f"{type(m).__qualname__}, an official Swin-ACmix window-attention look-alike"
    return None


def leftover_report(model: nn.Module, skipped: dict[str, str] | None = None,
                    rejected: dict[str, Adoption] | None = None, untraced: dict[str, str] | None = None
                    ) -> list[Leftover]:
    """Every module that a deploy model should no longer contain, with the reason it is still there."""
    skipped, rejected, untraced = skipped or {}, rejected or {}, untraced or {}
    out: list[Leftover] = []
    inside_lookalike: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside_lookalike):
            continue
        kind = _kind(m)
        if kind is None:
            continue
        path = name or "<root>"
        if name in rejected:
            reason = rejected[name].reason
        elif name in skipped:
            reason = skipped[name]
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            around = [p for p in untraced if not p or name.startswith(p + ".")]
            inner = max(around, key=len) if around else None
            where = None if inner is None else f"{inner or '<root>'} does not trace ({untraced[inner]})"
            reason = ("not reached: " + where) if where else "does not follow a Conv2d, ACmix or X-volution"
        elif "look-alike" in kind:
            reason = "not converted"
        else:
            reason = "training-form operator not folded (its parent folds it, or nothing called its fuse())"
        if "look-alike" in kind:
            inside_lookalike.append(name)
        out.append(Leftover(path, kind, reason))
    return out


def foldable_leftovers(model: nn.Module) -> list[str]:
    """Names (and types) of modules that a deploy model should no longer contain, foreign ACmix copies included."""
    return [f"{x.path} ({x.kind})" for x in leftover_report(model)]


def is_deploy(model: nn.Module) -> bool:
    """True when nothing foldable is left (no BatchNorm, no training-form ACmix of either form, official copy or
    XVolution)."""
    return not foldable_leftovers(model)
