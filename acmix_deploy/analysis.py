"""Model statistics (parameters, MACs) and output comparison.

Error metric used across the project: for a reference output ``a`` and a
candidate ``b``, ``max_abs = max|a - b|`` and ``rel = max_abs / max|a|``
(the largest error relative to the output's scale).  An element-wise relative
error is meaningless where ``a`` crosses zero, which logits do all the time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .errors import AcmixDeployError, InputShapeError
from .outputs import flatten_outputs, output_names

__all__ = ["count_parameters", "count_macs", "OutputDiff", "compare_outputs", "compare_all_outputs", "check_equivalence"]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, ...], batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass at ``(batch, *input_size)``.

    Counts convolutions and linear layers exactly, and the attention cores of
    ACmix modules through their ``attention_macs`` method; element-wise ops,
    pooling and normalisation are not counted.
    """
    total = 0
    hooks = []

    def conv_hook(m: nn.Conv2d, inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    def attention_hook(m, inp, out):
        nonlocal total
        total += m.attention_macs(inp[0].shape)

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        if callable(getattr(type(m), "attention_macs", None)):
            hooks.append(m.register_forward_hook(attention_hook))
    param = next(model.parameters(), None)
    x = torch.zeros(batch, *input_size, dtype=param.dtype if param is not None else torch.float32)
    was_training = model.training
    model.eval()
    try:
        _run(model, x, "the")
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total


@dataclass
class OutputDiff:
    max_abs: float
    rel: float
    ref_max: float
    top1_agreement: float | None  # fraction of rows with the same argmax (2-D outputs)
    output: str | None = None  # which output (models with several: the one with the largest relative error)
    per_output: dict[str, float] | None = None  # relative error of every output (models with several)

    def as_dict(self) -> dict:
        return asdict(self)


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
            "Choose an input size the network takes (imgsz; CLI: --imgsz N or --imgsz H W)") from None


@torch.no_grad()
def check_equivalence(
    reference: nn.Module,
    candidate: nn.Module,
    input_size: tuple[int, ...],
    batch: int = 2,
    seed: int = 0,
) -> OutputDiff:
    """Run both models (``eval()``) on the same random normal input and compare every output."""
    gen = torch.Generator().manual_seed(seed)
    param = next(reference.parameters())
    x = torch.randn(batch, *input_size, generator=gen, dtype=param.dtype)
    modes = reference.training, candidate.training
    reference.eval()
    candidate.eval()
    try:
        return compare_all_outputs(_run(reference, x, "the reference"), _run(candidate, x, "the candidate"))
    finally:
        reference.train(modes[0])
        candidate.train(modes[1])
