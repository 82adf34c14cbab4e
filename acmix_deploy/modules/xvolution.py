"""X-volution (Chen, Wang, Ni, arXiv 2106.02253), training form and deploy form.

No official code for X-volution has been published; this module implements
the paper's description (see ``docs/xvolution.md`` for the sources, what
could and could not be verified, and every choice below).

What the paper describes
------------------------
* Convolution, Eq. (1): ``Y(p) = sum_{d in Delta_k} W_d X(p + d) + B``.
* Self-attention, Eq. (2): an output ``W_bar(X) X`` whose coefficient matrix
  ``W_bar(X)`` is a "dynamic, spatially varying convolution kernel".
* Approximation of global self-attention (Eq. (3) and the derivation that
  follows it; the later equation numbers could not be checked): the attention
  logit at ``x_0`` is approximated by a weighted sum of the *local* attention results
  ``<x_k, x_i>`` of its neighbours; stacking layers propagates the context to
  the whole image.  The resulting operator, **pixel shift self-attention
  (PSSA)**: shift the feature map by ``L`` pixels in given directions (left,
  right, up, ...), multiply the original map element-wise with each shifted
  copy (the "transformed features"), and take a weighted sum of the
  transformed features, "which can be implemented by a convolution".  Every
  step is ``O(n)``.  No softmax or other normalisation is described.
* Multi-branch training topology (the paper's figure of the X-volution
  block, Fig. 2 per BRIEF.md): PSSA followed by BatchNorm, and a convolution
  followed by BatchNorm, summed.
* Conditional conversion (the two equations of the "conditionally converting
  the multi-branch scheme into an atomic X-volution" part):
  BatchNorm is a per-channel affine (a 1x1 group convolution) and folds into
  either branch; the sum is then ``y_0 = sum_i (W_c[i] + w^A(x_0, x_i)) x_i``
  with static coefficients ``W_c`` (the trained convolution) plus
  content-dependent coefficients ``w^A`` from PSSA: one *dynamic* convolution.

Formulation implemented (the reading of BRIEF.md section 4)
-----------------------------------------------------------
With ``D`` the set of shifts (pixel offsets ``d = (dy, dx)``) and
``P_d(p) = x(p) * x(p + d)`` (element-wise over channels, zero outside the
image)::

    y = BN_c(W_c (*) x) + BN_a( sum_{d in D} M_d P_d )

``W_c (*)`` is a ``k x k`` convolution with dilation ``L`` and "same" zero
padding, ``M_d`` (``C_out x C_in``) the PSSA weighted sum, one 1x1 mixing per
offset, stored as a single bias-free 1x1 convolution over the stacked products
(input channel ``i * C_in + c`` is channel ``c`` of ``P_{D[i]}``).  With the
BatchNorms folded (``BN(y) = g y + beta``), ``W' = g_c W_c``,
``M'_d = g_a M_d``, ``b' = beta_c + beta_a``::

    y(p) = sum_{d in F} [ W'[d] + M'_d diag(x(p)) ] x(p + d) + b'

over the convolution's footprint ``F`` (``M'_d = 0`` for ``d`` not in ``D``):
at every pixel a ``k x k`` kernel, static part plus a part built from the
centre feature ``x(p)``, i.e. the paper's merged dynamic convolution.  It is
run factored, with standard ONNX ops::

    y = conv(x; W', b') + conv1x1( concat_d [x * shift_d(x)] ; M' )

which is the same algebra: one ``k x k`` Conv, one Pad, ``|D|`` strided
Slices (plus one for the centre when ``s > 1``), one Concat, one broadcast
Mul (between two Reshapes), one 1x1 Conv, one Add.

Choices where the paper is silent (also listed in ``docs/xvolution.md``)
------------------------------------------------------------------------
1. Shift set: the 8 neighbours at distance ``L = dilation`` (horizontal,
   vertical, diagonal); the centre (``x * x``) only with
   ``include_centre=True``; any other set may be passed as ``shifts``.
2. The convolution branch is ``k x k`` with dilation ``L`` so that the
   default shifts lie on its footprint; every shift must lie on that footprint
   (``ConfigError`` otherwise), which is what makes the merged operator a
   single ``k x k`` dynamic convolution.
3. No query/key/value projections: the paper's ``w^q w^k w^v`` are absorbed
   into the weighted sum ``M_d`` (a projection inside the product would make
   the PSSA term a different bilinear form; the paper describes products of
   the features themselves).  No value projection, no softmax, no sigmoid.
4. The weighted sum is a 1x1 convolution (per-offset channel mixing), no bias
   (BatchNorm follows).  The convolution branch has no bias either.
5. Shifted copies are zero-filled at the borders (as the convolution's zero
   padding), so products that reach outside the image are zero.
6. Stride ``s``: both branches sample the output grid ``p = s * o``; the PSSA
   weighted sum is a 1x1 convolution with stride ``s`` (the deploy form forms
   products at the sampled centres only); the output is
   ``ceil(H / s) x ceil(W / s)``.
7. BatchNorm sits after each branch (the paper's figure); both are folded in
   inference mode (running statistics).

Exactness and the static case
-----------------------------
The deploy form equals the training form in inference mode for every input
size, stride and shift set accepted here (the fold is algebra; only float
rounding differs).  The PSSA term is quadratic in ``x``, so the operator is a
*static* convolution only when the folded PSSA weights vanish (for example a
PSSA BatchNorm with ``gamma = 0``); :meth:`XVolution.fuse` then returns a plain
``nn.Conv2d``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import fold
from ..errors import ConfigError, InputShapeError

__all__ = [
    "XVolution",
    "XVolutionDeploy",
    "default_shifts",
    "shift2d",
    "shifted_products",
    "xvolution_deploy_params",
]

Shift = tuple[int, int]


def default_shifts(dilation: int = 1, include_centre: bool = False) -> tuple[Shift, ...]:
    """The 8 neighbours at distance ``dilation`` (row-major), plus ``(0, 0)`` if ``include_centre``."""
    step = dilation
    return tuple(
        (dy, dx)
        for dy in (-step, 0, step)
        for dx in (-step, 0, step)
        if include_centre or (dy, dx) != (0, 0)
    )


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"XVolution: {name} must be a positive integer, got {value!r}")


def _validate_hparams(
    in_channels, out_channels, kernel_size, dilation, stride, shifts, include_centre
) -> tuple[Shift, ...]:
    """Check the hyper-parameters; return the shift set as a tuple of ``(dy, dx)``."""
    for name, value in (
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("kernel_size", kernel_size),
        ("dilation", dilation),
        ("stride", stride),
    ):
        _positive_int(name, value)
    if kernel_size % 2 == 0:
        raise ConfigError(
            f"XVolution: kernel_size must be odd (a kernel centred on the pixel, as the "
            f"per-pixel kernel of the merged operator is), got {kernel_size}"
        )
    if not isinstance(include_centre, bool):
        raise ConfigError(f"XVolution: include_centre must be a bool, got {include_centre!r}")
    if shifts is None:
        if kernel_size == 1:
            raise ConfigError(
                "XVolution: the default shifts (the 8 neighbours at distance `dilation`) need "
                "kernel_size >= 3 so that they lie inside the convolution's footprint; pass "
                "kernel_size=3 or an explicit `shifts` set"
            )
        out = list(default_shifts(dilation, include_centre))
    else:
        if isinstance(shifts, (str, bytes)) or not isinstance(shifts, Sequence):
            raise ConfigError(f"XVolution: shifts must be a sequence of (dy, dx) pairs, got {shifts!r}")
        out = []
        for s in shifts:
            if (
                not isinstance(s, Sequence)
                or len(s) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in s)
            ):
                raise ConfigError(f"XVolution: every shift must be a pair of integers (dy, dx), got {s!r}")
            out.append((int(s[0]), int(s[1])))
        if include_centre and (0, 0) not in out:
            out.append((0, 0))
        if not out:
            raise ConfigError("XVolution: shifts is empty; PSSA needs at least one shift")
        if len(set(out)) != len(out):
            raise ConfigError(f"XVolution: shifts contains duplicates: {out}")
    reach = dilation * (kernel_size - 1) // 2
    for dy, dx in out:
        if max(abs(dy), abs(dx)) > reach or dy % dilation or dx % dilation:
            raise ConfigError(
                f"XVolution: shift {(dy, dx)} is not on the {kernel_size}x{kernel_size} convolution "
                f"footprint with dilation {dilation} (offsets that are multiples of {dilation} "
                f"within +-{reach}); the merged operator is a single {kernel_size}x{kernel_size} "
                "dynamic convolution only when every shift is one of its taps. Use a larger "
                "kernel_size or a matching dilation"
            )
    return tuple(out)


def _check_input(x: torch.Tensor, in_channels: int, name: str) -> None:
    if x.dim() != 4:
        raise InputShapeError(
            f"{name}: expected a 4-D input (batch, channels, height, width), got shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise InputShapeError(f"{name}: expected {in_channels} input channels, got {x.shape[1]}")
    if x.shape[-2] < 1 or x.shape[-1] < 1:
        raise InputShapeError(f"{name}: input has an empty spatial size {tuple(x.shape[-2:])}")


def shift2d(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out(p) = x(p + (dy, dx))``, zero where ``p + (dy, dx)`` is outside the image."""
    h, w = x.shape[-2:]
    pad = max(abs(dy), abs(dx))
    if pad == 0:
        return x
    xp = F.pad(x, (pad, pad, pad, pad))
    return xp[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def shifted_products(x: torch.Tensor, shifts: Sequence[Shift], stride: int = 1) -> torch.Tensor:
    """The PSSA "transformed features" at the output grid, stacked: ``(B, |D| * C, H', W')``.

    Channel ``i * C + c`` holds ``x_c(s*o) * x_c(s*o + D[i])`` (zero when the
    shifted position is outside the image) with ``H' = ceil(H / s)``.  Built
    from one Pad, one strided Slice per shift, one Concat and one broadcast
    Mul (between two Reshapes); the slice bounds are relative to the padded
    tensor's ends, so no input size is baked into an exported graph.
    """
    pad = max(max(abs(dy), abs(dx)) for dy, dx in shifts)
    xp = F.pad(x, (pad, pad, pad, pad)) if pad else x
    s = stride

    def window(dy: int, dx: int) -> torch.Tensor:
        # rows pad+dy, pad+dy+s, ... < pad+dy+H  (the end written relative to the padded end)
        r1 = pad - dy
        c1 = pad - dx
        return xp[..., pad + dy : (-r1 if r1 else None) : s, pad + dx : (-c1 if c1 else None) : s]

    centre = x[..., ::s, ::s] if s > 1 else x
    stacked = torch.cat([window(dy, dx) for dy, dx in shifts], 1)
    # One broadcast Mul against the centre; explicit sizes (not unflatten,
    # which exports with a Mod) keep the graph to Shape/Gather/Reshape.
    b, c, ho, wo = centre.shape
    n = len(shifts)
    return (stacked.reshape(b, n, c, ho, wo) * centre.unsqueeze(1)).reshape(b, n * c, ho, wo)


class _XVolutionHParams:
    """Hyper-parameters shared by the training and deploy forms."""

    def _set_hparams(self, in_channels, out_channels, kernel_size, dilation, stride, shifts, include_centre):
        self.shifts = _validate_hparams(
            in_channels, out_channels, kernel_size, dilation, stride, shifts, include_centre
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.stride = stride
        self.padding = dilation * (kernel_size - 1) // 2

    def hparams(self) -> dict:
        """The constructor arguments, enough to build either form."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "dilation": self.dilation,
            "stride": self.stride,
            "shifts": [list(s) for s in self.shifts],
        }

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"dilation={self.dilation}, stride={self.stride}, shifts={list(self.shifts)}"
        )


class XVolution(_XVolutionHParams, nn.Module):
    """Training form of X-volution: ``BN_c(conv(x)) + BN_a(PSSA(x))``.

    Submodules: ``conv`` (``k x k``, dilation ``L``, stride ``s``, zero
    padding ``L (k - 1) / 2``, no bias), ``bn_conv``, ``pssa`` (1x1 convolution
    ``|D| C_in -> C_out``, stride ``s``, no bias: the weighted sum of the
    transformed features ``x * shift_d(x)``), ``bn_pssa``.

    Args:
        in_channels, out_channels: channels.
        kernel_size: odd size ``k`` of the convolution branch (default 3).
        dilation: the shift distance ``L`` in pixels, also the dilation of the
            convolution branch so that the shifts are taps of its kernel.
        stride: output stride of both branches (output ``ceil(H / s)``).
        shifts: the PSSA offsets ``(dy, dx)`` in pixels; default the 8
            neighbours at distance ``L``.  Each must be a tap of the
            convolution (a multiple of ``L`` within ``+-L (k - 1) / 2``).
        include_centre: also use the centre product ``x * x``.

    See the module docstring for the paper's equations and the choices made.
    ``fuse(bn=None)`` returns the deploy form (:class:`XVolutionDeploy`, or a
    plain ``nn.Conv2d`` when the PSSA branch folds to a constant).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        stride: int = 1,
        shifts: Sequence[Shift] | None = None,
        include_centre: bool = False,
    ):
        super().__init__()
        self._set_hparams(in_channels, out_channels, kernel_size, dilation, stride, shifts, include_centre)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=self.padding,
            dilation=dilation, bias=False,
        )
        self.bn_conv = nn.BatchNorm2d(out_channels)
        self.pssa = nn.Conv2d(len(self.shifts) * in_channels, out_channels, 1, stride=stride, bias=False)
        self.bn_pssa = nn.BatchNorm2d(out_channels)

    def transformed_features(self, x: torch.Tensor) -> torch.Tensor:
        """``concat_d [x * shift_d(x)]`` at every input pixel: ``(B, |D| C_in, H, W)``."""
        return torch.cat([x * shift2d(x, dy, dx) for dy, dx in self.shifts], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, "XVolution")
        conv_branch = self.bn_conv(self.conv(x))
        pssa_branch = self.bn_pssa(self.pssa(self.transformed_features(x)))
        return conv_branch + pssa_branch

    def attention_macs(self, x_shape) -> int:
        """Element-wise products of the PSSA branch per forward (at every input pixel)."""
        b, c, hh, ww = x_shape
        return b * len(self.shifts) * c * hh * ww

    @torch.no_grad()
    def fuse(self, bn: nn.modules.batchnorm._BatchNorm | None = None) -> "XVolutionDeploy | nn.Conv2d":
        """Return the deploy form, equal to ``self`` (followed by ``bn`` if given) in inference mode.

        A plain ``nn.Conv2d`` (with bias) when the folded PSSA weights are all
        exactly zero, since the block is then a static convolution; otherwise
        an :class:`XVolutionDeploy`.
        """
        if bn is not None and bn.num_features != self.out_channels:
            raise ConfigError(
                f"BatchNorm has {bn.num_features} channels, XVolution has {self.out_channels} outputs"
            )
        params = xvolution_deploy_params(self, bn)
        ref = self.conv.weight
        if bool(torch.all(params["mix.weight"] == 0)):
            conv = nn.Conv2d(
                self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                padding=self.padding, dilation=self.dilation, bias=True,
            ).to(device=ref.device, dtype=ref.dtype)
            conv.weight.copy_(params["conv.weight"])
            conv.bias.copy_(params["conv.bias"])
            return conv
        deploy = XVolutionDeploy(**self.hparams()).to(device=ref.device, dtype=ref.dtype)
        deploy.conv.weight.copy_(params["conv.weight"])
        deploy.conv.bias.copy_(params["conv.bias"])
        deploy.mix.weight.copy_(params["mix.weight"])
        return deploy


def xvolution_deploy_params(
    m: XVolution, bn: nn.modules.batchnorm._BatchNorm | None = None
) -> dict[str, torch.Tensor]:
    """The deploy tensors of one X-volution block (float64), see :class:`XVolutionDeploy`.

    With ``BN_c(y) = g_c y + beta_c``, ``BN_a(y) = g_a y + beta_a`` (the two
    branch BatchNorms) and ``BN_o(y) = g_o y + beta_o`` (the optional
    following BatchNorm, identity when ``None``)::

        conv.weight = g_o g_c W_c                 (C_out, C_in, k, k)
        mix.weight  = g_o g_a M                   (C_out, |D| C_in, 1, 1)
        conv.bias   = g_o (beta_c + beta_a) + beta_o

    each ``g`` scaling output rows.  Exact because both branches are linear
    in their last step (a convolution followed by a per-channel affine) and
    the sum of the branches is linear.
    """
    w_c, b_c = fold.fold_batchnorm(m.conv.weight, None, m.bn_conv)
    w_m, b_m = fold.fold_batchnorm(m.pssa.weight, None, m.bn_pssa)
    bias = b_c + b_m
    if bn is not None:
        g_o, beta_o = fold.batchnorm_affine(bn)
        w_c = w_c * g_o.view(-1, 1, 1, 1)
        w_m = w_m * g_o.view(-1, 1, 1, 1)
        bias = g_o * bias + beta_o
    return {"conv.weight": w_c, "conv.bias": bias, "mix.weight": w_m}


class XVolutionDeploy(_XVolutionHParams, nn.Module):
    """Deploy form of :class:`XVolution`: the merged dynamic convolution, run factored.

    ``forward(x) = conv(x) + mix(shifted_products(x))`` where ``conv`` holds the
    static kernel ``W'`` and the whole bias ``b'`` (``k x k``, dilation ``L``,
    stride ``s``) and ``mix`` (1x1, no bias) the folded PSSA weights ``M'``.
    Per output pixel this is the ``k x k`` kernel
    ``K_p[d] = W'[d] + M'_d diag(x(p))`` applied to ``x`` (see
    :meth:`dynamic_kernel`), the paper's merged X-volution.

    Built from the hyper-parameters alone, so a deploy state dict
    (``conv.weight``, ``conv.bias``, ``mix.weight``) loads without the
    training module.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        stride: int = 1,
        shifts: Sequence[Shift] | None = None,
        include_centre: bool = False,
    ):
        super().__init__()
        self._set_hparams(in_channels, out_channels, kernel_size, dilation, stride, shifts, include_centre)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=self.padding,
            dilation=dilation, bias=True,
        )
        self.mix = nn.Conv2d(len(self.shifts) * in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, "XVolutionDeploy")
        return self.conv(x) + self.mix(shifted_products(x, self.shifts, self.stride))

    def attention_macs(self, x_shape) -> int:
        """Element-wise products per forward (only at the output grid)."""
        b, c, hh, ww = x_shape
        s = self.stride
        return b * len(self.shifts) * c * (-(-hh // s)) * (-(-ww // s))

    def tap_index(self, dy: int, dx: int) -> tuple[int, int]:
        """Kernel position ``(row, col)`` of the pixel offset ``(dy, dx)``."""
        r = (self.kernel_size - 1) // 2
        return dy // self.dilation + r, dx // self.dilation + r

    @torch.no_grad()
    def dynamic_kernel(self, x: torch.Tensor) -> torch.Tensor:
        """The per-pixel kernels of the merged operator: ``(B, H', W', C_out, C_in, k, k)``.

        ``K_p[:, :, tap(d)] = W'[:, :, tap(d)] + M'_d * x(p)[None, :]`` with
        ``p = s * o`` the centre of output pixel ``o``; then
        ``y(o) = sum_taps K_p x(p + d) + b'``.  For analysis and tests (it
        materialises ``C_out C_in k^2`` numbers per pixel).
        """
        _check_input(x, self.in_channels, "XVolutionDeploy")
        s, c_in, c_out = self.stride, self.in_channels, self.out_channels
        centre = x[..., ::s, ::s].permute(0, 2, 3, 1)  # (B, H', W', C_in)
        kern = self.conv.weight.expand(*centre.shape[:3], *self.conv.weight.shape).clone()
        m = self.mix.weight.reshape(c_out, len(self.shifts), c_in)
        for i, (dy, dx) in enumerate(self.shifts):
            ty, tx = self.tap_index(dy, dx)
            kern[..., ty, tx] += m[:, i, :] * centre[..., None, :]
        return kern
