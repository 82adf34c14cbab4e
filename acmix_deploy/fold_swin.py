"""The weight algebra of the Swin-form ACmix fold, as pure functions.

Notation (see ``docs/swin_acmix.md``): ``C`` channels, ``nh`` heads,
``d = C / nh`` head dimension, ``w`` window, ``N = w * w`` tokens per window.
The fused ``qkv`` Linear has ``3C`` output rows; in the official layout row
``t * d + i`` belongs to slot ``t = s * nh + head`` (``s`` = 0, 1, 2 for q, k,
v) and head-dimension index ``i``.  ``LN(x) = gamma * n(x) + beta`` where
``n`` is the normalisation without affine.

Every function takes and returns tensors (float64 results) and touches no
module; the modules in :mod:`acmix_deploy.modules.swin_acmix` assemble them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ConfigError

__all__ = [
    "fold_layernorm_into_linear",
    "scale_query_rows",
    "relative_position_bias",
    "attention_bias",
    "fold_output_rate",
    "conv_path_bias_map",
    "factored_fc_weight",
]


def _f64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().double()


def fold_layernorm_into_linear(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a LayerNorm's affine into the Linear that reads it.

    ``W (gamma * n + beta) + b = (W diag(gamma)) n + (W beta + b)``, so
    ``W' = W * gamma[None, :]`` and ``b' = b + W @ beta`` (``b = 0`` when the
    Linear has no bias, ``gamma = 1`` / ``beta = 0`` when the LayerNorm has no
    affine).  The same holds with a token average between the two (the
    classifier after the final norm): averaging is linear and ``gamma``,
    ``beta`` are per channel.  Returns float64 ``(W' (out, in), b' (out,))``.
    """
    w = _f64(weight)
    b = _f64(bias) if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    gamma = _f64(ln_weight) if ln_weight is not None else torch.ones(w.shape[1], dtype=torch.float64)
    beta = _f64(ln_bias) if ln_bias is not None else torch.zeros(w.shape[1], dtype=torch.float64)
    if gamma.numel() != w.shape[1] or beta.numel() != w.shape[1]:
        raise ConfigError(f"LayerNorm has {gamma.numel()} channels, the Linear after it reads {w.shape[1]}")
    return w * gamma[None, :], b + w @ beta


def scale_query_rows(
    weight: torch.Tensor, bias: torch.Tensor, dim: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the attention scaling into the query rows of ``qkv``.

    ``(scale * q) . k = (scale * W_q x + scale * b_q) . k``: rows ``[0, C)``
    of weight and bias are multiplied by ``scale`` (``d ** -0.5``); k and v rows
    are unchanged.  Returns float64 copies.
    """
    w, b = _f64(weight).clone(), _f64(bias).clone()
    w[:dim] *= scale
    b[:dim] *= scale
    return w, b


def relative_position_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather Swin's relative position bias once: ``B[h, n, m] = table[index[n, m], h]``.

    ``table`` is ``((2w-1)^2, nh)``, ``index`` ``(N, N)``; returns ``(nh, N, N)`` float64.
    """
    n = index.shape[0]
    return _f64(table)[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1).contiguous()


def attention_bias(
    table: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The constant added to every window's logits: position bias plus shift mask.

    ``A[w, h, n, m] = table[index[n, m], h] + mask[w, n, m]``; shape
    ``(nW, nh, N, N)`` with the ``(nW, N, N)`` mask of a shifted block
    (0 / -100), ``(1, nh, N, N)`` without one (the same for every window).
    """
    rel = relative_position_bias(table, index)[None]
    return rel if mask is None else rel + _f64(mask)[:, None]


def fold_output_rate(weight: torch.Tensor, bias: torch.Tensor, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``rate * (W a + b) = (rate W) a + rate b``: ``rate1`` moved into ``proj``.

    Exact for every rate, zero included (no compensation elsewhere is needed).
    """
    return _f64(weight) * rate, _f64(bias) * rate


def conv_path_bias_map(
    fc_bias: torch.Tensor, dep_weight: torch.Tensor, height: int, width: int, out_scale: float = 1.0
) -> torch.Tensor:
    """The convolution path's contribution of ``fc.bias``, per output channel and pixel.

    ``fc`` adds ``b[j]`` to every pixel of its map ``j``; ``dep_conv`` then
    zero-pads those maps, so near the border some taps read 0 instead of ``b``:

        ``M[o, y, x] = s * sum_{j, u, v} dep[o, j, u, v] * b[j] * [0 <= y+u-1 < H] * [0 <= x+v-1 < W]``

    (``s`` = ``rate2``).  Inside the image this is the constant
    ``s * sum_{j,u,v} dep[o, j, u, v] b[j]``; on the one-pixel border ring it
    differs.  Computed as ``dep_conv`` of the constant maps.  ``dep_weight`` is
    ``(C, kc*kc, kc, kc)`` with groups ``C / nh``; returns ``(C, H, W)`` float64.
    """
    dep = _f64(dep_weight)
    b = _f64(fc_bias).reshape(-1)
    kk = dep.shape[1]
    if b.numel() != kk:
        raise ConfigError(f"fc has {b.numel()} outputs, dep_conv reads {kk} per group")
    c = dep.shape[0]
    # Per output channel only the sum over its own group's kk inputs matters,
    # and every group sees the same constant maps b[j]: one conv of groups C.
    per_out = torch.einsum("ojuv,j->ouv", dep, b)[:, None]  # (C, 1, kc, kc)
    ones = torch.ones(1, c, height, width, dtype=torch.float64)
    kc = dep.shape[-1]
    return F.conv2d(ones, per_out, padding=kc // 2, groups=c)[0] * out_scale


def factored_fc_weight(
    fc_weight: torch.Tensor, fc_bias: torch.Tensor | None, in_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fc`` reading a ``qkv`` whose query rows carry the attention scale.

    The official ``f[j, i] = sum_t fc[j, t] * qkv[t * d + i] + b[j]``.  When the
    deploy ``qkv`` carries a per-slot factor ``in_scale[t]`` (``d ** -0.5`` on
    the query slots), ``W'[j, t] = fc[j, t] / in_scale[t]`` undoes it.  Applied
    as ``W' @ F`` to ``F = qkv`` arranged ``(B, d, 3nh, H*W)`` it gives
    ``(B, d, 9, H*W)``, i.e. channel ``i * 9 + j``, the order ``dep_conv`` reads.
    Returns ``(W' (9, 3nh), b (9,))`` float64.
    """
    fc = _f64(fc_weight).reshape(fc_weight.shape[0], fc_weight.shape[1])  # (kk, 3nh)
    s = _f64(in_scale).reshape(-1)
    if fc.shape[1] != s.numel():
        raise ConfigError(f"fc has {fc.shape[1]} inputs, in_scale has {s.numel()} entries")
    b = _f64(fc_bias) if fc_bias is not None else torch.zeros(fc.shape[0], dtype=torch.float64)
    return fc / s[None, :], b
