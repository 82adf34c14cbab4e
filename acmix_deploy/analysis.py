"""Model statistics (parameters, MACs, blocks) and output comparison.

Error metric used across the project: for a reference output ``a`` and a
candidate ``b``, ``max_abs = max|a - b|`` and ``rel = max_abs / max|a|``
(the largest error relative to the output's scale).  An element-wise relative
error is meaningless where ``a`` crosses zero, which logits do all the time.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import AcmixDeployError, InputShapeError
from .foreign import acmix_structure, build_acmix, is_ours
from .modules import (ACmix, ACmixDeploy, WindowAttentionACmix, WindowAttentionACmixDeploy, WindowAttentionACmixFolded,
                      XVolution, XVolutionDeploy)
from .outputs import flatten_outputs, output_names
from .util import default_dtype

__all__ = ["count_parameters", "count_macs", "ModelSummary", "summarize_model", "OutputDiff", "compare_outputs",
           "compare_all_outputs", "check_equivalence"]

# Block kind -> the classes that are one block of that kind, training and deploy forms alike.
BLOCK_KINDS: dict[str, tuple[type[nn.Module], ...]] = {
    "ACmix": (ACmix, ACmixDeploy, WindowAttentionACmix, WindowAttentionACmixDeploy, WindowAttentionACmixFolded),
    "X-volution": (XVolution, XVolutionDeploy),
}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class ModelSummary:
    """What :func:`summarize_model` counts in a network."""

    parameters: int
    blocks: dict[str, int]  # block kind (see BLOCK_KINDS) -> modules of that kind, every kind listed
    tensors: int  # entries of the state dict
    tensor_groups: dict[str, int]  # first component of the state-dict keys ("stem", "layer1", ...) -> entries
    input_size: tuple[int, ...] | None  # the recorded (C, H, W), when the model has a default_cfg


def summarize_model(model: nn.Module) -> ModelSummary:
    """Parameters, ACmix / X-volution blocks (either form), state-dict entries per top-level name, input size."""
    sd = model.state_dict()
    groups: dict[str, int] = {}
    for key in sd:
        groups[key.split(".")[0]] = groups.get(key.split(".")[0], 0) + 1
    blocks = {kind: sum(isinstance(m, classes) for m in model.modules()) for kind, classes in BLOCK_KINDS.items()}
    cfg = getattr(model, "default_cfg", None)
    size = tuple(cfg["input_size"]) if isinstance(cfg, dict) and cfg.get("input_size") else None
    return ModelSummary(count_parameters(model), blocks, len(sd), groups, size)


def _attention_counts(model: nn.Module) -> dict[nn.Module, Callable[[torch.Size], int]]:
    """Modules whose attention core FlopCounterMode cannot see, with the function that counts it.

    This package's operators state it (``attention_macs``); a foreign copy of the official ACmix
    (:func:`acmix_deploy.foreign.acmix_structure`) is counted as this package's ``ACmix`` with the same
    hyper-parameters, built on the meta device (no memory, no weights).
    """
    counts: dict[nn.Module, Callable[[torch.Size], int]] = {}
    for m in model.modules():
        if callable(getattr(type(m), "attention_macs", None)):
            counts[m] = m.attention_macs
        elif not is_ours(m):
            hparams, _ = acmix_structure(m)
            if hparams is not None:
                with torch.device("meta"):
                    counts[m] = build_acmix(hparams).attention_macs
    return counts


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, ...], batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass at ``(batch, *input_size)``.

    :class:`torch.utils.flop_counter.FlopCounterMode` counts the matrix products torch runs
    (convolutions, linear layers, ``matmul``/``bmm``, scaled-dot-product attention) at 2 FLOPs per
    multiply-accumulate; element-wise operations, pooling and normalisation are not counted.  It cannot see
    attention cores written as broadcast products and sums (ACmix's training form, X-volution's shift
    products), and it would count a deploy core's index-gathering matrix products as arithmetic.  So every
    attention operator (this package's, through ``attention_macs``, and pasted copies of the official ACmix)
    is counted as its sub-modules, as FlopCounterMode sees them, plus its attention count in place of the
    matrix products its own ``forward`` runs outside sub-modules.
    """
    attention = _attention_counts(model)
    counter = FlopCounterMode(display=False)
    frames: list[list[int]] = []  # per running attention operator: [total FLOPs at entry, FLOPs of its children]
    child_starts: list[int] = []
    replaced = 0  # FLOPs run by attention operators' own forward (outside children), replaced by their count
    attention_total = 0
    hooks = []

    def enter(m, args):
        frames.append([counter.get_total_flops(), 0])

    def leave(m, args, out):
        nonlocal replaced, attention_total
        start, children = frames.pop()
        replaced += counter.get_total_flops() - start - children
        attention_total += attention[m](args[0].shape)

    def child_enter(m, args):
        child_starts.append(counter.get_total_flops())

    def child_leave(m, args, out):
        if frames:
            frames[-1][1] += counter.get_total_flops() - child_starts[-1]
        child_starts.pop()

    for m in attention:
        hooks.append(m.register_forward_pre_hook(enter))
        hooks.append(m.register_forward_hook(leave))
        for child in m.children():
            hooks.append(child.register_forward_pre_hook(child_enter))
            hooks.append(child.register_forward_hook(child_leave))
    param = next(model.parameters(), None)
    x = torch.zeros(batch, *input_size, dtype=param.dtype if param is not None else torch.float32)
    was_training = model.training
    model.eval()
    try:
        with counter:
            _run(model, x, "the")
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return (counter.get_total_flops() - replaced) // 2 + attention_total


@dataclass
class OutputDiff:
    max_abs: float
    rel: float
    ref_max: float
    top1_agreement: float | None  # fraction of rows with the same argmax (2-D outputs)
    output: str | None = None  # which output (models with several: the one with the largest relative error)
    per_output: dict[str, float] | None = None  # relative error of every output (models with several)
    # check_equivalence(tol=...) only, when the float32 figure exceeds tol: the check redone in float64 (the
    # algebra, free of the network's own float32 rounding); how far each float32 form (reference, candidate)
    # is from the float64 reference's outputs; and, when the float64 check fails too, the first module (same
    # path in both forms) whose outputs differ.
    rel_float64: float | None = None
    rounding_float32: tuple[float, float] | None = None
    first_divergence: str | None = None
    # why the float64 re-check could not run (user code that only runs in float32, e.g. a hard-coded .float())
    float64_error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def within(self, tol: float) -> bool:
        """The check passes: the float32 figure is <= ``tol``; or else the float64 one is, and the float32
        candidate is no further from the float64 reference than twice the float32 reference's own distance."""
        if self.rel <= tol:
            return True
        if self.rel_float64 is None or not self.rel_float64 <= tol:
            return False
        return self.rounding_float32 is None or self.rounding_float32[1] <= 2 * self.rounding_float32[0] + tol

    def summary(self, tol: float | None = None) -> str:
        """One line: the float32 relative error, and the float64 one and the first diverging module when known."""
        text = f"relative error {self.rel:.3g} (float32)"
        if self.rel_float64 is not None:
            text += f", {self.rel_float64:.3g} in float64"
        if self.rounding_float32 is not None:
            text += (f" (float32 vs float64 reference: training form {self.rounding_float32[0]:.3g}, "
                     f"candidate {self.rounding_float32[1]:.3g})")
        if tol is not None:
            text += f" (tol {tol:g})"
        if self.first_divergence:
            text += f"; first diverging module: {self.first_divergence}"
        if self.float64_error:
            text += f"; the float64 re-check could not run ({self.float64_error})"
        return text


def compare_outputs(ref: torch.Tensor, out: torch.Tensor) -> OutputDiff:
    if ref.shape != out.shape:
        raise ValueError(f"output shapes differ: {tuple(ref.shape)} vs {tuple(out.shape)}")
    ref64, out64 = ref.detach().double(), out.detach().double()
    max_abs = float((ref64 - out64).abs().max()) if ref.numel() else 0.0
    ref_max = float(ref64.abs().max()) if ref.numel() else 0.0
    rel = max_abs / ref_max if ref_max > 0 else (0.0 if max_abs == 0 else float("inf"))
    top1 = None
    if ref.dim() == 2 and ref.shape[1] > 1:
        top1 = float((ref64.argmax(1) == out64.argmax(1)).double().mean())
    return OutputDiff(max_abs, rel, ref_max, top1)


def compare_all_outputs(ref_out, cand_out) -> OutputDiff:
    """Compare every output of two models (tensor, tuple/list or dict, see :mod:`acmix_deploy.outputs`).

    Returns the comparison of the output with the largest relative error, with ``output`` naming it and
    ``per_output`` giving every output's relative error when there are several.
    """
    names = output_names(ref_out)
    refs, cands = flatten_outputs(ref_out), flatten_outputs(cand_out)
    if len(refs) != len(cands):
        raise ValueError(f"the models return {len(refs)} and {len(cands)} output tensors")
    diffs = [compare_outputs(r, c) for r, c in zip(refs, cands)]
    worst = max(range(len(diffs)), key=lambda i: (diffs[i].rel != diffs[i].rel, diffs[i].rel))  # NaN first
    result = diffs[worst]
    if len(diffs) > 1:
        result.output = names[worst]
        result.per_output = {n: d.rel for n, d in zip(names, diffs)}
    return result


def _run(model: nn.Module, x: torch.Tensor, which: str):
    """``model(x)``; an error from inside the user's or torch's code becomes an ``InputShapeError`` naming the input."""
    try:
        return model(x)
    except AcmixDeployError:
        raise
    except (RuntimeError, ValueError, IndexError, AssertionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputShapeError(
            f"{which} model cannot run on an input of shape {tuple(x.shape)}: {type(exc).__name__}: {first[:300]}. "
            "Choose an input size the network takes ({imgsz}: N for N x N, or H W)", params=["imgsz"]) from None


@torch.no_grad()
def check_equivalence(
    reference: nn.Module,
    candidate: nn.Module,
    input_size: tuple[int, ...],
    batch: int = 2,
    seed: int = 0,
    tol: float | None = None,
    fold: Callable[[nn.Module], nn.Module] | None = None,
) -> OutputDiff:
    """Run both models (``eval()``) on the same random normal input and compare every output.

    With ``tol``: when the float32 relative error exceeds it, the algebra is checked in float64, because
    a badly conditioned network (default initialisation with BatchNorm statistics 0/1: activations of
    ~1e6 deep in an ACmix-ResNet-50) loses more to its own float32 rounding than any fold does.  A float64
    copy of ``reference`` is compared with ``fold`` applied to a second float64 copy of it (the fold
    redone in float64: the exact algebra) or, without ``fold``, with a float64 copy of ``candidate``
    (whose weights keep their float32 rounding).  ``rel_float64`` records that figure and
    ``OutputDiff.within(tol)`` accepts either; ``rounding_float32`` gives how far each float32 form is from
    the float64 reference.  When the float64 check fails too, ``first_divergence`` names the first module
    (same path and class in both forms, one with children) whose outputs differ.  ``max_abs`` and ``rel``
    are always the float32 figures.
    """
    gen = torch.Generator().manual_seed(seed)
    param = next(reference.parameters())
    x = torch.randn(batch, *input_size, generator=gen, dtype=param.dtype)
    modes = reference.training, candidate.training
    reference.eval()
    candidate.eval()
    try:
        out_ref, out_cand = _run(reference, x, "the reference"), _run(candidate, x, "the candidate")
        diff = compare_all_outputs(out_ref, out_cand)
        if tol is None or diff.rel <= tol or param.dtype == torch.float64 or not param.dtype.is_floating_point:
            return diff
        x64 = x.double()
        ref64 = copy.deepcopy(reference).double().eval()
        cand64 = (fold(copy.deepcopy(ref64)) if fold is not None else copy.deepcopy(candidate).double()).eval()
        # The float64 forms run with float64 as the default dtype: users' code (the official ACmix's positional
        # grid) creates tensors in the default dtype, which would meet float64 weights as float32.
        try:
            with default_dtype(torch.float64):
                truth = _run(ref64, x64, "the reference (float64)")
                diff.rel_float64 = compare_all_outputs(truth, _run(cand64, x64, "the candidate (float64)")).rel
        except InputShapeError as exc:  # it ran in float32 above: code that cannot run in float64, not the size
            diff.float64_error = str(exc).split(". Choose an input size")[0]
            return diff
        diff.rounding_float32 = (compare_all_outputs(truth, out_ref).rel, compare_all_outputs(truth, out_cand).rel)
        if not diff.within(tol):  # locate it on the candidate itself (float64 copy), as the user holds it
            cand_copy = cand64 if fold is None else copy.deepcopy(candidate).double().eval()
            with default_dtype(torch.float64):
                worst = compare_all_outputs(truth, _run(cand_copy, x64, "the candidate (float64)")).rel
                diff.first_divergence = _first_divergence(ref64, cand_copy, x64, max(tol, 0.1 * worst))
        return diff
    finally:
        reference.train(modes[0])
        candidate.train(modes[1])


def _first_divergence(reference: nn.Module, candidate: nn.Module, x: torch.Tensor, tol: float) -> str | None:
    """The first module, in the reference's execution order, whose outputs differ beyond ``tol`` in both forms.

    Only modules that have children and the same class at the same path in both forms are compared: a
    leaf (a convolution that took its BatchNorm in) or a module replaced by its deploy class legitimately
    computes something else.  Hooks fire when a module finishes, so an inner block is named before the
    stage that holds it.
    """
    cand_modules = dict(candidate.named_modules())
    outputs: dict[str, list] = {"ref": [], "cand": []}
    hooks = []
    for name, mod in reference.named_modules():
        other = cand_modules.get(name)
        if not name or other is None or type(other) is not type(mod) or not any(True for _ in mod.children()):
            continue
        hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: outputs["ref"].append((n, o))))
        hooks.append(other.register_forward_hook(lambda m, i, o, n=name: outputs["cand"].append((n, o))))
    try:
        reference(x)
        candidate(x)
    except Exception:  # both ran above without hooks; a failure here only loses the location
        return None
    finally:
        for h in hooks:
            h.remove()
    cand_out: dict[str, list] = {}
    for name, out in outputs["cand"]:
        cand_out.setdefault(name, []).append(out)
    seen: dict[str, int] = {}
    for name, out in outputs["ref"]:
        k = seen.get(name, 0)
        seen[name] = k + 1
        others = cand_out.get(name, [])
        if k >= len(others):
            continue
        try:
            rel = compare_all_outputs(out, others[k]).rel
        except (ValueError, TypeError, AttributeError):
            continue  # outputs of another structure or shape: not comparable
        if not rel <= tol:
            return f"{name} (relative error {rel:.3g})"
    return None
