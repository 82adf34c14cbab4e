"""ACmix window attention of the Swin form (Pan et al., arXiv 2111.14556), and its deploy form.

:class:`WindowAttentionACmix` keeps the official parameter names and buffers
(``qkv``, ``proj``, ``relative_position_bias_table``, ``relative_position_index``,
``fc``, ``dep_conv``, ``rate1``, ``rate2``) and the official forward, so the
released Swin-T/S ACmix state dicts load with ``strict=True``.  Its input is
the block's map after ``norm1`` and the cyclic shift, ``(B, H, W, C)``::

    qkv = Linear(C, 3C)(x)
    conv path: f = fc(qkv as (B, 3nh, HW, d))  -> (B, 9, HW, d) -> (B, d*9, H, W)
               out_conv = dep_conv(f)            (3x3, groups d, zero padding, no bias)
    attention: windows of w x w, softmax(scale q k^T + rel_bias [+ mask]) v, proj
    y = rate1 * attention + rate2 * out_conv

:meth:`WindowAttentionACmix.fuse` returns :class:`WindowAttentionACmixDeploy`,
the same function with the foldable parts folded (LayerNorm affine of
``norm1`` into ``qkv``, ``scale`` into the query rows, position bias and shift
mask into one constant, ``rate1`` into ``proj``, ``rate2`` into ``dep_conv``;
optionally ``fc``/``dep_conv``/``rate2`` merged into one grouped convolution
with the border effect of ``fc.bias`` as a constant map).  The softmax
attention stays: it is data dependent.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import fold, fold_swin
from ..errors import ConfigError, InputShapeError
from .window_attention import grouped_conv_channels_last, recorded_softmax_floor

__all__ = [
    "window_partition",
    "window_reverse",
    "relative_position_index",
    "shifted_window_mask",
    "WindowAttentionACmix",
    "WindowAttentionACmixDeploy",
    "WindowAttentionACmixFolded",
    "factored_conv_path",
    "merged_conv_path",
    "CONV_FOLDS",
    "choose_conv_fold",
]

CONV_FOLDS = ("factored", "merged")
MASK_VALUE = -100.0  # the official shift mask: 0 inside a region, -100 across regions


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B * nW, w, w, C)``, windows in row-major order per image."""
    b, hh, ww, c = x.shape
    x = x.reshape(b, hh // window, window, ww // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, w, w, C)`` -> ``(B, H, W, C)``."""
    c = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def factored_conv_path(fc: nn.Conv2d, dep_conv: nn.Conv2d, qkv: torch.Tensor, num_heads: int, *,
                       channels_last: bool | None = None) -> torch.Tensor:
    """The official convolution path ``dep_conv(fc(qkv))`` of a ``(B, H, W, 3C)`` qkv map, as ``(B, H, W, C)``.

    ``fc`` (1x1 over the ``3nh`` q/k/v-and-head slots, 9 outputs) reads qkv as ``(B, 3nh, HW, d)``; its
    output goes to ``dep_conv`` (3x3, zero padding 1, ``d`` groups of 9 channels, channel ``i * 9 + j``)
    through the one copy the path needs.  Two spellings of the same arithmetic (up to the convolution's
    summation order), as in :func:`~acmix_deploy.modules.window_attention.halo_attention`:

    * channels-last (``channels_last=True``; by default where
      :func:`~acmix_deploy.modules.window_attention.grouped_conv_channels_last` says so: eager float32 on
      the CPU): the copy writes channels-last memory and the grouped convolution reads and writes
      ``(B, H, W, channels)`` through permuted views.  oneDNN's grouped kernels ran it 1.5-2.8x faster than
      on channels-first maps with so few channels per group, and its output is already in the layout it
      is added to (Swin-T in torch eager, 1 thread: training / deploy 1.12x / 1.16x at batch 1 / 8, was
      1.00-1.04x; docs/swin_acmix.md);
    * channels-first (``channels_last=False``; by default while a graph is recorded, on other devices and in
      float64), as an ONNX ``Conv`` is.  Written channels-last, the graph would carry two more transposes
      that ONNX Runtime runs as copies (it keeps this convolution out of its blocked layout: 9 channels
      per group).
    """
    b, hh, ww, c3 = qkv.shape
    d = c3 // (3 * num_heads)
    f = fc(qkv.reshape(b, hh * ww, 3 * num_heads, d).permute(0, 2, 1, 3))  # (B, 9, HW, d)
    if not (grouped_conv_channels_last(qkv) if channels_last is None else channels_last):
        return dep_conv(f.permute(0, 3, 1, 2).reshape(b, 9 * d, hh, ww)).permute(0, 2, 3, 1)
    f = f.permute(0, 2, 3, 1).reshape(b, hh, ww, 9 * d)  # channels-last, channel i * 9 + j
    return dep_conv(f.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def merged_conv_path(conv_path: nn.Conv2d, conv_bias: torch.Tensor, qkv: torch.Tensor, num_heads: int, *,
                     channels_last: bool | None = None) -> torch.Tensor:
    """The convolution path with ``fc`` merged into ``dep_conv`` (one grouped 3x3 convolution), as ``(B, H, W, C)``.

    ``conv_path`` has ``d`` groups of ``3nh`` input channels (channel ``i * 3nh + t``, regrouped by
    head-dimension index from qkv's ``t * d + i``) and ``nh`` outputs each; ``conv_bias`` ``(C, H, W)`` is
    what fc's bias contributes through the zero-padded ``dep_conv`` (it differs at the border).  One copy
    does the regrouping, into channels-last or channels-first memory as in :func:`factored_conv_path`.
    """
    b, hh, ww, c3 = qkv.shape
    d = c3 // (3 * num_heads)
    if not (grouped_conv_channels_last(qkv) if channels_last is None else channels_last):
        f = qkv.reshape(b, hh, ww, 3 * num_heads, d).permute(0, 4, 3, 1, 2).reshape(b, c3, hh, ww)
        return (conv_path(f) + conv_bias).permute(0, 2, 3, 1)
    f = qkv.reshape(b, hh, ww, 3 * num_heads, d).transpose(3, 4).reshape(b, hh, ww, c3)
    return conv_path(f.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + conv_bias.permute(1, 2, 0)


def relative_position_index(window: int) -> torch.Tensor:
    """``(N, N)`` index into the ``(2w-1)^2`` table: ``(dy + w - 1) * (2w - 1) + (dx + w - 1)``.

    ``dy, dx`` are the row and column offsets of token ``n`` relative to token
    ``m`` (tokens in row-major order within the window).
    """
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """``(nW, N, N)`` mask of shifted windows: 0 between tokens of one region, -100 otherwise.

    After the cyclic shift by ``-shift``, the last ``window`` rows (columns)
    hold tokens from three bands of the original map: ``[0, H - w)``,
    ``[H - w, H - shift)`` and ``[H - shift, H)``; tokens of different bands
    (in either direction) must not attend to each other.
    """
    def bands(n: int) -> torch.Tensor:
        label = torch.zeros(n, dtype=torch.long)
        label[n - window: n - shift] = 1
        label[n - shift:] = 2
        return label

    region = (bands(height)[:, None] * 3 + bands(width)[None, :]).to(torch.float32)
    tokens = window_partition(region[None, :, :, None], window).reshape(-1, window * window)
    differ = tokens[:, None, :] != tokens[:, :, None]
    return torch.zeros(differ.shape).masked_fill(differ, MASK_VALUE)


def choose_conv_fold(conv_fold: str, heads: int | None = None) -> str:
    """Validate the deploy form of the convolution path (``heads`` is accepted for callers' symmetry).

    ``factored`` (default): the official ``fc`` (1x1, ``3nh -> 9``) then
    ``dep_conv``, weights folded: ``27 nh + 81 nh`` MACs per head-dimension
    group and pixel.  ``merged``: one grouped 3x3 convolution ``3nh -> nh`` per
    group plus a constant border-bias map: ``27 nh^2`` MACs, fewer while
    ``nh <= 4``, but it regroups all of ``qkv`` (the factored path copies only
    ``fc``'s output).  Measured on CPU it was not faster, whole or in stage 1 alone
    (torch eager and ONNX Runtime; docs/swin_acmix.md).
    """
    if conv_fold not in CONV_FOLDS:
        raise ConfigError(f"conv_fold must be one of {', '.join(CONV_FOLDS)}, got {conv_fold!r}")
    return conv_fold


def _check_dims(dim: int, num_heads: int, window: int, resolution: tuple[int, int]) -> None:
    for name, value in (("dim", dim), ("num_heads", num_heads), ("window_size", window)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"WindowAttentionACmix: {name} must be a positive integer, got {value!r}")
    if dim % num_heads:
        raise ConfigError(f"WindowAttentionACmix: dim {dim} is not divisible by num_heads {num_heads}")
    hh, ww = resolution
    if hh % window or ww % window:
        raise ConfigError(
            f"WindowAttentionACmix: the {hh}x{ww} map is not divisible into {window}x{window} windows"
        )


def _check_map(x: torch.Tensor, dim: int, resolution: tuple[int, int], name: str) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != (*resolution, dim):
        raise InputShapeError(
            f"{name}: expected a (batch, {resolution[0]}, {resolution[1]}, {dim}) map, got {tuple(x.shape)}; "
            "the resolution is fixed when the model is built"
        )


class WindowAttentionACmix(nn.Module):
    """Training form, official names.  ``forward(x (B, H, W, C), mask (nW, N, N) | None)``."""

    def __init__(self, dim: int, window_size: int, num_heads: int, resolution: tuple[int, int], qkv_bias: bool = True):
        super().__init__()
        _check_dims(dim, num_heads, window_size, resolution)
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.resolution = tuple(resolution)
        self.scale = self.head_dim**-0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.fc = nn.Conv2d(3 * num_heads, 9, kernel_size=1, bias=True)
        self.dep_conv = nn.Conv2d(9 * self.head_dim, dim, kernel_size=3, padding=1, groups=self.head_dim, bias=False)
        self.rate1 = nn.Parameter(torch.empty(1))
        self.rate2 = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation: rates 0.5, dep_conv one-hot shift kernels, table N(0, 0.02)."""
        self.rate1.fill_(0.5)
        self.rate2.fill_(0.5)
        shift = torch.zeros(9, 3, 3)
        for j in range(9):
            shift[j, j // 3, j % 3] = 1.0
        self.dep_conv.weight.copy_(shift.expand(self.dim, 9, 3, 3))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, resolution={self.resolution}"

    def relative_position_bias(self) -> torch.Tensor:
        """``(nh, N, N)``: the table gathered through the index."""
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(n, n, -1).permute(2, 0, 1)

    def attention_macs(self, x_shape) -> int:
        b, hh, ww, c = x_shape
        return 2 * b * hh * ww * self.window_size**2 * c  # q k^T and att v

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_map(x, self.dim, self.resolution, "WindowAttentionACmix")
        hh, ww = self.resolution
        nh, d, c, w = self.num_heads, self.head_dim, self.dim, self.window_size
        n = w * w
        qkv = self.qkv(x)

        f = qkv.reshape(-1, hh * ww, 3 * nh, d).permute(0, 2, 1, 3)  # (B, 3nh, HW, d)
        f = self.fc(f).permute(0, 3, 1, 2).reshape(-1, d * 9, hh, ww)  # channel i * 9 + j
        out_conv = self.dep_conv(f).permute(0, 2, 3, 1)

        t = window_partition(qkv, w).reshape(-1, n, 3, nh, d).permute(2, 0, 3, 1, 4)
        q, k, v = t[0] * self.scale, t[1], t[2]
        logits = q @ k.transpose(-2, -1) + self.relative_position_bias()[None]
        if mask is not None:
            nw = mask.shape[0]
            logits = (logits.reshape(-1, nw, nh, n, n) + mask[None, :, None]).reshape(-1, nh, n, n)
        att = logits.softmax(dim=-1)
        out = (att @ v).transpose(1, 2).reshape(-1, n, c)
        out = window_reverse(self.proj(out).reshape(-1, w, w, c), w, hh, ww)
        return self.rate1 * out + self.rate2 * out_conv

    @torch.no_grad()
    def fuse(
        self,
        norm: nn.LayerNorm | None = None,
        mask: torch.Tensor | None = None,
        conv_fold: str = "factored",
    ) -> "WindowAttentionACmixDeploy":
        """The deploy form of ``attn(norm(x), mask)`` minus the normalisation itself.

        ``norm`` (the block's ``norm1``) gives up its affine to ``qkv``; the
        caller keeps the normalisation as a LayerNorm without affine.
        """
        form = choose_conv_fold(conv_fold, self.num_heads)
        deploy = WindowAttentionACmixDeploy(
            self.dim, self.window_size, self.num_heads, self.resolution,
            shifted=mask is not None, conv_fold=form, qkv_bias=True,
        ).to(device=self.qkv.weight.device, dtype=self.qkv.weight.dtype)
        params = window_attention_deploy_params(self, norm, mask, form)
        for name, value in deploy.state_dict().items():
            value.copy_(params[name])
        return deploy


def window_attention_deploy_params(
    m: WindowAttentionACmix, norm: nn.LayerNorm | None, mask: torch.Tensor | None, form: str
) -> dict[str, torch.Tensor]:
    """All deploy tensors of one attention module (float64), see :class:`WindowAttentionACmixDeploy`."""
    c, nh = m.dim, m.num_heads
    qkv_b = m.qkv.bias if m.qkv.bias is not None else torch.zeros(3 * c)
    w_qkv, b_qkv = fold_swin.fold_layernorm_into_linear(
        m.qkv.weight, qkv_b,
        None if norm is None else norm.weight, None if norm is None else norm.bias,
    )
    w_qkv, b_qkv = fold_swin.scale_query_rows(w_qkv, b_qkv, c, m.scale)
    rate1 = float(m.rate1.detach().double().item())
    rate2 = float(m.rate2.detach().double().item())
    w_proj, b_proj = fold_swin.fold_output_rate(m.proj.weight, m.proj.bias, rate1)
    params = {
        "qkv.weight": w_qkv,
        "qkv.bias": b_qkv,
        "proj.weight": w_proj,
        "proj.bias": b_proj,
        "attn_bias": fold_swin.attention_bias(m.relative_position_bias_table, m.relative_position_index, mask),
    }
    in_scale = torch.ones(3 * c, dtype=torch.float64)
    in_scale[:c] = m.scale  # qkv's query rows now carry the scale; the conv path undoes it
    if form == "merged":
        params["conv_path.weight"] = fold.fold_conv_path(
            m.fc.weight, m.dep_conv.weight, nh, in_scale, torch.full((c,), rate2, dtype=torch.float64)
        )
        params["conv_bias"] = (
            fold_swin.conv_path_bias_map(m.fc.bias, m.dep_conv.weight, *m.resolution, rate2)
            if m.fc.bias is not None else torch.zeros(c, *m.resolution, dtype=torch.float64)
        )
    else:
        slot_scale = torch.ones(3 * nh, dtype=torch.float64)
        slot_scale[:nh] = m.scale
        w_fc, b_fc = fold_swin.factored_fc_weight(m.fc.weight, m.fc.bias, slot_scale)
        params["fc.weight"] = w_fc.reshape(9, 3 * nh, 1, 1)
        params["fc.bias"] = b_fc
        # Padding fc's output (its bias included) is then exactly the official one: no bias map.
        params["dep_conv.weight"] = m.dep_conv.weight.detach().double() * rate2
    return params


class WindowAttentionACmixDeploy(nn.Module):
    """Deploy form: one Linear, the window-attention core, the folded convolution path, an add.

    State: ``qkv`` (``C -> 3C``, norm1's affine and ``d ** -0.5`` folded,
    rows in the official order), ``proj`` (``rate1``
    folded), ``attn_bias`` (``(nW, nh, N, N)`` in a shifted block, else
    ``(1, nh, N, N)``: position bias plus shift mask) and the convolution path:

    * ``conv_fold='merged'``: ``conv_path`` (3x3, ``3C -> C``, groups ``d``,
      ``rate2 * dep_conv o fc``) plus ``conv_bias`` (``(C, H, W)``: ``rate2``
      times what ``fc.bias`` contributes through the zero-padded ``dep_conv``);
    * ``conv_fold='factored'``: the official ``fc`` (1x1, ``3nh -> 9``, with
      bias; the query scale undone in its weight) and ``dep_conv`` (``rate2``
      folded), applied exactly as in the official path; no bias map.

    Both paths read ``qkv`` through one regrouping copy (:func:`merged_conv_path`,
    :func:`factored_conv_path`: channels-last memory in eager float32 on the CPU,
    channels-first in an exported graph); the attention through the official window
    partition.

    ``y = proj(softmax(q k^T + attn_bias) v) + conv(qkv) + conv_bias``.
    """

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        resolution: tuple[int, int],
        shifted: bool = False,
        conv_fold: str = "merged",
        qkv_bias: bool = True,
    ):
        super().__init__()
        _check_dims(dim, num_heads, window_size, resolution)
        if conv_fold not in ("merged", "factored"):
            raise ConfigError(f"WindowAttentionACmixDeploy: conv_fold must be merged or factored, got {conv_fold!r}")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = d = dim // num_heads
        self.resolution = tuple(resolution)
        self.conv_fold = conv_fold
        hh, ww = resolution
        n = window_size**2
        windows = (hh // window_size) * (ww // window_size) if shifted else 1
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("attn_bias", torch.zeros(windows, num_heads, n, n))
        if conv_fold == "merged":
            self.conv_path = nn.Conv2d(3 * dim, dim, 3, padding=1, groups=d, bias=False)
            self.register_buffer("conv_bias", torch.zeros(dim, hh, ww))
        else:
            self.fc = nn.Conv2d(3 * num_heads, 9, kernel_size=1, bias=True)
            self.dep_conv = nn.Conv2d(9 * d, dim, 3, padding=1, groups=d, bias=False)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, "
                f"resolution={self.resolution}, conv_fold={self.conv_fold}")

    def attention_macs(self, x_shape) -> int:
        b, hh, ww, c = x_shape
        return 2 * b * hh * ww * self.window_size**2 * c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x, self.dim, self.resolution, "WindowAttentionACmixDeploy")
        hh, ww = self.resolution
        nh, d, c, w = self.num_heads, self.head_dim, self.dim, self.window_size
        n = w * w
        qkv = self.qkv(x)  # (B, H, W, 3C), channel (s * nh + head) * d + i as in the official layout

        if self.conv_fold == "merged":
            conv = merged_conv_path(self.conv_path, self.conv_bias, qkv, nh)
        else:
            conv = factored_conv_path(self.fc, self.dep_conv, qkv, nh)

        # Windows keep whole pixels (blocks of w * 3C values) together; then q|k|v, head, token, dim.
        t = window_partition(qkv, w).reshape(-1, n, 3, nh, d).permute(2, 0, 3, 1, 4)
        # In place: no second logits buffer to allocate and page in (the product's result is a fresh tensor).
        logits = (t[0] @ t[1].transpose(-2, -1)).reshape(-1, self.attn_bias.shape[0], nh, n, n).add_(self.attn_bias)
        floor = recorded_softmax_floor() if self.attn_bias.shape[0] > 1 else None
        if floor is not None:
            # Shifted blocks only: the -100 of the shift mask sends exp through subnormals, slow on Intel CPUs
            # in ONNX Runtime; raising logits to (row max - m) moves the result by at most 2 (N - 1) e^-m max|v|
            # (modules.window_attention.softmax_floor), 9.0e-12 max|v| for 7x7 windows and m = 30.
            logits = torch.maximum(logits, logits.amax(-1, keepdim=True) - floor)
        att = logits.softmax(dim=-1).reshape(-1, nh, n, n)
        out = (att @ t[2]).transpose(1, 2).reshape(-1, n, c)  # (B * nW, N, C), channel head * d + i
        out = window_reverse(self.proj(out).reshape(-1, w, w, c), w, hh, ww)  # a fresh tensor: added to in place
        return out.add_(conv)


class WindowAttentionACmixFolded(nn.Module):
    """Deploy form of a Swin-form ACmix window attention at any resolution, the shift mask given at run time.

    What a user's copy of the official ``WindowAttention_acmix`` becomes (see :mod:`acmix_deploy.foreign`):
    the official module takes any ``(B, H, W, C)`` map whose sides are multiples of the window and gets the
    shift mask from its caller, so this form keeps both: ``forward(x, [H, W,] [mask])`` with the official
    calling conventions.  Folded: ``scale`` into the query rows of ``qkv``, the relative position bias into
    the constant ``attn_bias`` ``(1, nh, N, N)``, ``rate1`` into ``proj``, ``rate2`` into ``dep_conv``
    (and its bias, when the copy kept one); ``fc`` reads the scaled query rows with the scale undone in its
    weight (the factored path of :class:`WindowAttentionACmixDeploy`, exact at every border because ``fc``'s
    bias is applied before ``dep_conv``'s zero padding, as in the official path).  The block's LayerNorm stays
    in the user's block.  ``y = proj(softmax(q k^T + attn_bias [+ mask]) v) + dep_conv(fc(qkv))``.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 dep_conv_bias: bool = False):
        super().__init__()
        _check_dims(dim, num_heads, window_size, (window_size, window_size))
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = d = dim // num_heads
        n = window_size**2
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("attn_bias", torch.zeros(1, num_heads, n, n))
        self.fc = nn.Conv2d(3 * num_heads, 9, kernel_size=1, bias=True)
        self.dep_conv = nn.Conv2d(9 * d, dim, 3, padding=1, groups=d, bias=dep_conv_bias)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, any resolution"

    def attention_macs(self, x_shape) -> int:
        b, hh, ww, c = x_shape
        return 2 * b * hh * ww * self.window_size**2 * c

    @staticmethod
    def _mask(args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The mask in the official conventions ``(x, mask)``, ``(x, H, W)``, ``(x, H, W, mask)``, ``mask=``."""
        if "mask" in kwargs:
            return kwargs["mask"]
        if len(args) in (1, 3):
            return args[-1]
        return None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        mask = self._mask(args, kwargs)
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise InputShapeError(f"WindowAttentionACmixFolded: expected a (batch, H, W, {self.dim}) map, "
                                  f"got {tuple(x.shape)}")
        b, hh, ww, c = x.shape
        nh, d, w = self.num_heads, self.head_dim, self.window_size
        if hh % w or ww % w:
            raise InputShapeError(f"WindowAttentionACmixFolded: the {hh}x{ww} map is not divisible into "
                                  f"{w}x{w} windows")
        n = w * w
        qkv = self.qkv(x)
        conv = factored_conv_path(self.fc, self.dep_conv, qkv, nh)
        t = window_partition(qkv, w).reshape(-1, n, 3, nh, d).permute(2, 0, 3, 1, 4)
        logits = t[0] @ t[1].transpose(-2, -1) + self.attn_bias
        if mask is not None:
            nw = mask.shape[0]
            logits = (logits.reshape(-1, nw, nh, n, n) + mask.to(logits.dtype)[None, :, None]).reshape(-1, nh, n, n)
            floor = recorded_softmax_floor()
            if floor is not None:  # the shift mask's -100, as in WindowAttentionACmixDeploy's shifted blocks
                logits = torch.maximum(logits, logits.amax(-1, keepdim=True) - floor)
        out = (logits.softmax(dim=-1) @ t[2]).transpose(1, 2).reshape(-1, n, c)
        out = window_reverse(self.proj(out).reshape(-1, w, w, c), w, hh, ww)
        return out + conv
