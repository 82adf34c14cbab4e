"""Find the BatchNorms that can fold into the operator before them, from the network's traced graph.

``torch.fx`` symbolic tracing records which module's output feeds which module, whatever the Python
structure: a pair ``self.bn(self.conv(x))`` inside a user block is found as well as one inside an
``nn.Sequential`` (torch's own ``torch.fx.experimental.optimization.fuse`` works the same way).  The pairs are
then folded on the *original* module tree, by path, so the user's classes and forward code stay as they are
(a pickled model keeps working with the user's own tools); fx is only the eyes.

Leaves of the trace: torch's own layers, this package's operators (ACmix, X-volution, Swin-form window
attention, their deploy forms), this package's blocks that fold themselves, and modules with the official ACmix
structure.  Where a module does not trace (control flow on tensor values or shapes, as detection heads have),
its children are traced one by one and a note says so.

A BatchNorm2d folds into its producer when: the producer is an ``nn.Conv2d`` (exactly, not a subclass with
its own forward), an ACmix or an X-volution in training form; the BatchNorm's only input is the producer's
output and nothing else reads that output; each of the two modules is called once in the traced code; the
BatchNorm has running statistics and as many channels as the producer has outputs.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import torch.fx as fx
import torch.nn as nn

from .foreign import is_ours, looks_like_acmix, looks_like_swin_attention
from .modules import (ACmix, ACmixDeploy, WindowAttentionACmix, WindowAttentionACmixDeploy, WindowAttentionACmixFolded,
                      XVolution, XVolutionDeploy)

__all__ = ["BnPairs", "find_bn_pairs"]

_OPERATORS = (ACmix, ACmixDeploy, WindowAttentionACmix, WindowAttentionACmixDeploy, WindowAttentionACmixFolded,
              XVolution, XVolutionDeploy)
_FOLDING_METHODS = ("fuse", "reparameterize", "switch_to_deploy")


@dataclass
class BnPairs:
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (producer path, batchnorm path)
    skipped: dict[str, str] = field(default_factory=dict)  # batchnorm path -> why it cannot fold
    untraced: dict[str, str] = field(default_factory=dict)  # module path -> the tracing error
    notes: list[str] = field(default_factory=list)


def _is_leaf(m: nn.Module) -> bool:
    if isinstance(m, _OPERATORS):
        return True
    if is_ours(m) and any(callable(getattr(type(m), n, None)) for n in _FOLDING_METHODS):
        return True  # this package's blocks fold themselves (step 4 of the pass)
    return not is_ours(m) and (looks_like_acmix(m) or looks_like_swin_attention(m))


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _is_leaf(m) or super().is_leaf_module(m, module_qualified_name)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _out_channels(m: nn.Module) -> int | None:
    if type(m) is nn.Conv2d:
        return m.out_channels
    if isinstance(m, ACmix):
        return m.out_planes
    if isinstance(m, XVolution):
        return getattr(m, "out_channels", None)
    return None


def _analyse(root: nn.Module, graph: fx.Graph, prefix: str, found: BnPairs) -> None:
    calls = collections.Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        bn = root.get_submodule(node.target)
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        path = _join(prefix, node.target)
        src = node.args[0] if node.args else None
        if len(node.args) != 1 or node.kwargs or not isinstance(src, fx.Node) or src.op != "call_module":
            what = getattr(src, "target", src)
            found.skipped[path] = f"its input is not a module's output ({what})"
            continue
        op = root.get_submodule(src.target)
        op_path = _join(prefix, src.target)
        if type(op) is not nn.Conv2d and not isinstance(op, (ACmix, XVolution)):
            found.skipped[path] = f"follows {op_path} ({type(op).__name__}), which cannot absorb a BatchNorm"
            continue
        if len(src.users) != 1:
            others = ", ".join(str(u.target) for u in src.users if u is not node)
            found.skipped[path] = f"the output of {op_path} is also used elsewhere ({others})"
            continue
        if calls[node.target] != 1 or calls[src.target] != 1:
            found.skipped[path] = f"{path} or {op_path} is called more than once (shared module)"
            continue
        if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
            found.skipped[path] = "has no running statistics (track_running_stats=False)"
            continue
        if _out_channels(op) != bn.num_features:
            found.skipped[path] = f"has {bn.num_features} channels, {op_path} has {_out_channels(op)} outputs"
            continue
        found.pairs.append((op_path, path))


def _scan(module: nn.Module, prefix: str, found: BnPairs) -> None:
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):  # containers are not called: look inside
        for name, child in module.named_children():
            if child is not None:
                _scan(child, _join(prefix, name), found)
        return
    if _is_leaf(module) or (type(module).__module__.startswith("torch.nn") and not isinstance(module, nn.Sequential)):
        return
    try:
        graph = _Tracer().trace(module)
    except Exception as exc:  # user code fx cannot follow: trace the children instead
        first = (str(exc).strip().split(". ")[0].splitlines() or [type(exc).__name__])[0]
        found.untraced[prefix] = f"{type(exc).__name__}: {first[:160]}"
        found.notes.append(f"{prefix or '<root>'} ({type(module).__name__}) does not trace with torch.fx "
                           f"({found.untraced[prefix]}); its children were traced one by one")
        for name, child in module.named_children():
            if child is not None:
                _scan(child, _join(prefix, name), found)
        return
    _analyse(module, graph, prefix, found)


def find_bn_pairs(model: nn.Module) -> BnPairs:
    """Every ``(producer, batchnorm)`` pair of ``model`` that folds exactly (see the module docstring)."""
    found = BnPairs()
    _scan(model, "", found)
    # a BatchNorm skipped in one traced region may be folded from none; keep the first reason only
    folded = {bn for _, bn in found.pairs}
    found.skipped = {k: v for k, v in found.skipped.items() if k not in folded}
    return found
