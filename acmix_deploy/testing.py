"""Helpers for equivalence tests and benchmarks: models with random, non-initial state.

A fold that is only checked on freshly initialised weights can hide mistakes
(ACmix's ``dep_conv`` starts as one-hot shift kernels, ``rate1 = rate2``,
BatchNorm statistics start at 0/1).  :func:`randomize_model` gives every
parameter and every BatchNorm statistic random values of a sensible scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .modules import ACmix, WindowAttentionACmix

__all__ = ["randomize_model"]


@torch.no_grad()
def randomize_model(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give all parameters and BatchNorm statistics random values (in place); returns the model.

    Weights are normal with a fan-in scaled standard deviation (activations keep
    their magnitude through deep networks); BatchNorm gets gamma in [0.5, 1.5],
    beta and running mean normal(0, 0.2), running var in [0.5, 2]; ACmix rates
    in [0.2, 1.0] with random sign for rate2.  Swin-form ACmix: LayerNorm gamma in
    [0.5, 1.5] and beta normal(0, 0.2), relative position tables normal(0, 0.5),
    rates as above, absolute position embeddings normal(0, 0.2).
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float64) * std)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=gen, dtype=torch.float64))

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            normal(m.weight, math.sqrt(1.0 / fan_in))
            if m.bias is not None:
                normal(m.bias, 0.1)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.weight is not None:
                uniform(m.weight, 0.5, 1.5)
                normal(m.bias, 0.2)
            if m.running_mean is not None:
                normal(m.running_mean, 0.2)
                uniform(m.running_var, 0.5, 2.0)
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            uniform(m.weight, 0.5, 1.5)
            normal(m.bias, 0.2)
        if isinstance(m, WindowAttentionACmix):
            normal(m.relative_position_bias_table, 0.5)
        if getattr(m, "absolute_pos_embed", None) is not None:
            normal(m.absolute_pos_embed, 0.2)
        if isinstance(m, (ACmix, WindowAttentionACmix)):
            uniform(m.rate1, 0.2, 1.0)
            uniform(m.rate2, 0.2, 1.0)
            if torch.rand((), generator=gen) < 0.5:
                m.rate2.neg_()
    return model
