"""The weight algebra of structural re-parameterization, as pure functions.

Each function takes tensors (or a BatchNorm module for its statistics) and
returns tensors; none touches a module's state.  The formulas are stated in
the docstrings with this notation:

* ``C``: output channels of an ACmix block, ``h``: heads, ``d = C / h``: head
  dimension, ``kc``: kernel of the convolution path, ``ka``: attention window.
* Channel ``c = head * d + i`` of q, k and v belongs to head ``head`` and
  head-dimension index ``i`` (the official, head-major layout).
* ``BN(y) = g * y + beta`` with ``g = gamma / sqrt(var + eps)`` and
  ``beta = bias - mean * g`` (inference mode, running statistics).

Callers should pass float64 tensors when they want the fold itself to add no
rounding (``acmix_deploy.modules`` does) and cast the result back.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .errors import ConfigError

__all__ = [
    "batchnorm_affine",
    "fold_batchnorm",
    "fuse_conv_bn",
    "fuse_qkv",
    "positional_rows",
    "fold_conv_path",
    "regroup_by_head_dim",
    "head_dim_major_order",
    "merge_conv_groups",
]


def batchnorm_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(g, beta)`` with ``BN(y) = g * y + beta`` in inference mode.

    ``g = gamma / sqrt(running_var + eps)``, ``beta = bias - running_mean * g``;
    ``gamma = 1`` and ``bias = 0`` when the BatchNorm has no affine parameters.
    Computed in float64.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ConfigError(
            f"{type(bn).__name__} has no running statistics (track_running_stats=False): "
            "its output depends on the batch, so it cannot be folded into a convolution"
        )
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    g = gamma / torch.sqrt(var + bn.eps)
    return g, bias - mean * g


def fold_batchnorm(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold ``BN(conv(x))`` into one convolution.

    ``W'[o] = g[o] * W[o]`` and ``b'[o] = g[o] * b[o] + beta[o]`` (``b = 0``
    when the convolution has no bias).  Returns float64 tensors.
    """
    g, beta = batchnorm_affine(bn)
    if g.numel() != weight.shape[0]:
        raise ConfigError(
            f"BatchNorm has {g.numel()} channels but the convolution before it has "
            f"{weight.shape[0]} outputs"
        )
    w = weight.detach().double() * g.view(-1, *([1] * (weight.dim() - 1)))
    b = bias.detach().double() if bias is not None else torch.zeros_like(g)
    return w, g * b + beta


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> nn.Conv2d:
    """A new ``nn.Conv2d`` (with bias) equal to ``bn(conv(x))`` in inference mode."""
    w, b = fold_batchnorm(conv.weight, conv.bias, bn)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(w)
        fused.bias.copy_(b)
    return fused


def fuse_qkv(
    wq: torch.Tensor,
    bq: torch.Tensor,
    wk: torch.Tensor,
    bk: torch.Tensor,
    wv: torch.Tensor,
    bv: torch.Tensor,
    q_scale: float,
    v_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack three 1x1 convolutions into one producing ``[q'; k; v']`` (3C rows).

    ``q' = q_scale * q`` (the attention scaling ``d ** -0.5`` folded into the
    query rows) and ``v' = v_scale[c] * v`` per channel (``rate1`` times a
    following BatchNorm's ``g``; omitted when ``None``).  Weights are
    ``(C, C_in)`` or ``(C, C_in, 1, 1)``; returns ``(W (3C, ...), b (3C,))``.
    """
    wq, wk, wv = (t.detach().double() for t in (wq, wk, wv))
    bq, bk, bv = (t.detach().double() for t in (bq, bk, bv))
    if v_scale is not None:
        s = v_scale.detach().double()
        wv = wv * s.view(-1, *([1] * (wv.dim() - 1)))
        bv = bv * s
    return (
        torch.cat([wq * q_scale, wk, wv], 0),
        torch.cat([bq * q_scale, bk, bv], 0),
    )


def positional_rows(
    wq: torch.Tensor, bq: torch.Tensor, w_p: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows computing ``r = W_p^T q`` per head, the relative positional term.

    ACmix adds ``sum_i q_i * (pe_i(centre) - pe_i(nbr))`` to each logit with
    ``pe = conv_p(loc) = W_p loc + b_p``.  The bias cancels, so the term is
    ``sum_c r_c * (loc_c(centre) - loc_c(nbr))`` with
    ``r[head, c] = sum_i W_p[i, c] * q[head * d + i]``: two channels per head,
    linear in the input, hence two more rows of the fused 1x1 convolution.

    ``wq (C, C_in[,1,1])``/``bq (C,)`` are the (already scaled) query rows and
    ``w_p (d, 2[,1,1])`` the weight of ``conv_p``.  Returns ``(W (2h, ...), b (2h,))``
    ordered ``head * 2 + c`` (c = 0: width coordinate, 1: height coordinate).
    """
    wq = wq.detach().double()
    bq = bq.detach().double()
    wp = w_p.detach().double().reshape(w_p.shape[0], 2)  # (d, 2)
    d = wp.shape[0]
    rest = wq.shape[1:]
    wq_h = wq.reshape(heads, d, -1)  # (h, d, C_in*...)
    w_r = torch.einsum("ic,hik->hck", wp, wq_h).reshape(heads * 2, *rest)
    b_r = torch.einsum("ic,hi->hc", wp, bq.reshape(heads, d)).reshape(heads * 2)
    return w_r, b_r


def fold_conv_path(
    fc_weight: torch.Tensor,
    dep_weight: torch.Tensor,
    heads: int,
    in_scale: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fold ``dep_conv(regroup(fc(q, k, v)))`` into one grouped convolution.

    The official convolution path mixes, for every head-dimension index ``i``,
    the ``3h`` maps ``t -> (q, k, v)[head t, dim i]`` with the bias-free 1x1
    ``fc`` (``3h -> kc*kc``), then applies ``dep_conv`` (groups ``d``, group
    ``i`` reading those ``kc*kc`` maps).  Both are linear, and zero padding of
    the fc output equals zero padding of its input because fc has no bias, so

        ``W'[o, t, y, x] = sum_j dep_weight[o, j, y, x] * fc_weight[j, t]``

    is the weight of a grouped ``kc x kc`` convolution (groups ``d``) that reads
    the q/k/v tensor regrouped by head-dimension index (input channel
    ``i * 3h + t``, see :func:`regroup_by_head_dim`).

    ``in_scale`` (shape ``(3C,)``, natural q/k/v order) divides the weight that
    reads each channel, compensating a scale already applied to that channel
    by the fused 1x1 convolution (``d ** -0.5`` on q, ``rate1 * g`` on v).
    ``out_scale`` (``(C,)``) multiplies each output row (``rate2 * g``).
    Returns the float64 weight ``(C, 3h, kc, kc)``.
    """
    fc = fc_weight.detach().double().reshape(fc_weight.shape[0], fc_weight.shape[1])  # (kc*kc, 3h)
    dep = dep_weight.detach().double()  # (C, kc*kc, kc, kc)
    if fc.shape[1] != 3 * heads:
        raise ConfigError(f"fc has {fc.shape[1]} inputs, expected 3 * heads = {3 * heads}")
    w = torch.einsum("ojyx,jt->otyx", dep, fc)  # (C, 3h, kc, kc)
    c_out = w.shape[0]
    d = c_out // heads
    if in_scale is not None:
        # Output o sits in group i = o // h; its input t reads natural channel t * d + i.
        s = in_scale.detach().double().reshape(3 * heads, d)  # [t, i]
        group_of_out = torch.arange(c_out) // heads
        w = w / s[:, group_of_out].t().reshape(c_out, 3 * heads, 1, 1)
    if out_scale is not None:
        w = w * out_scale.detach().double().view(-1, 1, 1, 1)
    return w


def regroup_by_head_dim(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder ``(b, 3C, H, W)`` from ``t * d + i`` to ``i * 3h + t`` (a channel transpose)."""
    b, c3, hh, ww = qkv.shape
    return qkv.reshape(b, 3 * heads, c3 // (3 * heads), hh, ww).transpose(1, 2).reshape(b, c3, hh, ww)


def head_dim_major_order(c3: int, heads: int) -> torch.Tensor:
    """Row permutation taking ``3C`` head-major q/k/v rows to head-dimension-major order.

    Entry ``i * 3h + t`` is ``t * d + i``: ``W[order]`` produces directly what
    :func:`regroup_by_head_dim` makes of ``W``'s output.
    """
    d = c3 // (3 * heads)
    return torch.arange(c3).reshape(3 * heads, d).t().reshape(-1)


def merge_conv_groups(weight: torch.Tensor, groups: int, factor: int) -> torch.Tensor:
    """Weight of the same convolution with ``factor`` neighbouring groups merged into one.

    A convolution with ``groups`` groups and weight ``(C_out, C_in / groups,
    k, k)`` equals one with ``groups / factor`` groups whose weight is block
    diagonal: merged group ``G`` holds the weights of groups ``G * factor + j``
    on its diagonal blocks and zeros elsewhere, so every output reads exactly
    the inputs it read before, and the added products are with exact zeros.
    Returns ``(C_out, factor * C_in / groups, k, k)``, for ``groups / factor``
    groups.  Built as a product with an identity so that a traced graph folds
    it into a constant.
    """
    if factor < 1 or groups % factor:
        raise ConfigError(f"cannot merge {groups} convolution groups by a factor of {factor}")
    c_out, c_in_group = weight.shape[:2]
    blocks = weight.reshape(groups // factor, factor, c_out // groups, 1, c_in_group, *weight.shape[2:])
    eye = torch.eye(factor, dtype=weight.dtype, device=weight.device)
    diagonal = eye.reshape(1, factor, 1, factor, *([1] * (weight.dim() - 1)))
    return (blocks * diagonal).reshape(c_out, factor * c_in_group, *weight.shape[2:])
