"""The official unfold formulation of the window attention and the cases the blocked core is checked on."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from acmix_deploy import fold
from acmix_deploy.modules.acmix import coordinate_grid


def unfold_reference(q, k, v, conv_p, heads, ka, stride):
    """Official computation: reflection pad + unfold, positional term from pe = conv_p(loc) with bias."""
    b, c, hh, ww = k.shape
    d = c // heads
    pad = (ka - 1) // 2
    h_out, w_out = hh // stride, ww // stride
    pe = conv_p(coordinate_grid(hh, ww, dtype=k.dtype))

    def nbr(t, n):
        return F.unfold(F.pad(t, (pad,) * 4, mode="reflect"), ka, stride=stride).view(n, d, ka * ka, h_out, w_out)

    q_s = q.reshape(b * heads, d, hh, ww)[:, :, ::stride, ::stride]
    pe_c = pe[:, :, ::stride, ::stride].unsqueeze(2)
    logits = (q_s.unsqueeze(2) * (nbr(k.reshape(b * heads, d, hh, ww), b * heads) + pe_c - nbr(pe, 1))).sum(1)
    att = torch.softmax(logits, dim=1)
    out = (att.unsqueeze(1) * nbr(v.reshape(b * heads, d, hh, ww), b * heads)).sum(2)
    return out.reshape(b, c, h_out, w_out)


def head_dim_major(q, k, v, heads):
    """The fused conv's output order that the core reads: channel i * 3h + t."""
    return fold.regroup_by_head_dim(torch.cat([q, k, v], 1), heads)


CASES = [
    # heads, d, ka, stride, (H, W), batch, tile
    (4, 4, 7, 1, (14, 14), 1, 7),   # whole tiles
    (4, 4, 7, 1, (9, 11), 2, 7),    # partial last tiles, odd sizes
    (2, 3, 7, 2, (10, 12), 3, 7),   # stride 2
    (2, 3, 7, 2, (18, 14), 2, 4),   # stride 2, several 4x4 tiles
    (1, 5, 5, 2, (8, 6), 1, 3),
    (8, 2, 3, 1, (5, 7), 2, 4),
    (2, 6, 3, 1, (13, 9), 1, None),  # chosen tile
    (3, 4, 5, 1, (11, 15), 2, None),
    (4, 4, 7, 1, (4, 4), 1, 7),     # smallest size for ka = 7: most keys are reflected
    (2, 4, 7, 1, (17, 6), 1, 2),    # tile much smaller than the map
    (3, 2, 7, 2, (4, 8), 2, 7),     # tile larger than the output
    (2, 20, 5, 1, (9, 10), 2, None),  # head_dim above TRANSPOSE_BY_PRODUCT_MAX_DIM: transposed, not multiplied
]


def attention_inputs(heads, d, size, batch, dtype, seed):
    """Random q, k, v of ``heads * d`` channels and a random positional conv (``conv_p``), from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    c = heads * d
    q, k, v = (torch.randn(batch, c, *size, generator=gen, dtype=dtype) for _ in range(3))
    conv_p = nn.Conv2d(2, d, 1).to(dtype)
    with torch.no_grad():
        conv_p.weight.copy_(torch.randn(d, 2, 1, 1, generator=gen) * 2)
        conv_p.bias.copy_(torch.randn(d, generator=gen) * 5)  # cancels in pe(centre) - pe(nbr)
    return q, k, v, conv_p
