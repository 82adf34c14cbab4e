"""Swin Transformer with ACmix window attention (the variant with released ImageNet weights).

Module and parameter names are those of the official code
(``Swin-Transformer/models/swin_transformer_acmix.py``), so the released
Swin-T / Swin-S ACmix checkpoints (state dict under ``"model"``) load with
``strict=True``::

    patch_embed.proj (Conv2d p x p / p), patch_embed.norm
    absolute_pos_embed                                   (only with ape=True)
    layers.S.blocks.B.{norm1, attn.*, norm2, mlp.fc1, mlp.fc2}
    layers.S.blocks.B.attn_mask                          (only in shifted blocks)
    layers.S.downsample.{norm, reduction}                (all stages but the last)
    norm, head

Dropout and stochastic depth hold no parameters and are identity at
inference; they are left out (this package folds and deploys trained models).

Every block knows its deploy form: ``reparameterize()`` folds norm1's affine,
the attention scale, position bias + shift mask, ``rate1``/``rate2`` and the
convolution path into :class:`~acmix_deploy.modules.swin_acmix.WindowAttentionACmixDeploy`,
and norm2's affine into ``mlp.fc1``; folded LayerNorms stay as LayerNorms
without affine.  PatchMerging folds its norm's affine into ``reduction`` and
the model folds the final norm's affine into ``head``.  ``deploy=True`` builds
that structure directly.  The resolution of every block is fixed when the
model is built (``img_size``): the deploy form's constants depend on it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..errors import ConfigError, InputShapeError
from ..fold_swin import fold_layernorm_into_linear
from ..modules.swin_acmix import (
    WindowAttentionACmix,
    WindowAttentionACmixDeploy,
    choose_conv_fold,
    shifted_window_mask,
)
from .registry import ModelFamily, default_cfg, register_model

__all__ = ["SwinTransformerACmix", "SwinACmixBlock", "PatchMerging", "PatchEmbed", "stage_windows"]


def _plain_norm(dim: int) -> nn.LayerNorm:
    """A LayerNorm whose affine was folded away: normalisation only."""
    return nn.LayerNorm(dim, elementwise_affine=False)


@torch.no_grad()
def _linear_from(weight: torch.Tensor, bias: torch.Tensor, like: nn.Linear) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=True).to(device=like.weight.device, dtype=like.weight.dtype)
    lin.weight.copy_(weight)
    lin.bias.copy_(bias)
    return lin


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))``, GELU in its exact (erf) form."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def stage_windows(resolution: int, window_size: int) -> tuple[int, int]:
    """``(window, shift)`` of a stage: the official rule.

    A stage whose resolution is at most the window uses one window covering
    the whole map and no shift; otherwise the window is ``window_size`` and
    odd blocks shift by ``window_size // 2``.
    """
    if resolution <= window_size:
        return resolution, 0
    return window_size, window_size // 2


class SwinACmixBlock(nn.Module):
    """``x + attn(norm1(x))`` (cyclic shift around the attention), then ``x + mlp(norm2(x))``."""

    def __init__(
        self,
        dim: int,
        resolution: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float = 4.0,
        conv_fold: str = "factored",
        deploy: bool = False,
    ):
        super().__init__()
        self.dim = dim
        self.resolution = (resolution, resolution)
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.conv_fold = conv_fold
        self.deploy = deploy
        if not 0 <= shift_size < window_size:
            raise ConfigError(f"shift_size {shift_size} must be in [0, window_size={window_size})")
        hidden = int(dim * mlp_ratio)
        if deploy:
            self.norm1 = _plain_norm(dim)
            self.attn = WindowAttentionACmixDeploy(
                dim, window_size, num_heads, self.resolution, shifted=shift_size > 0,
                conv_fold=choose_conv_fold(conv_fold, num_heads),
            )
            self.norm2 = _plain_norm(dim)
            self.register_buffer("attn_mask", None)
        else:
            self.norm1 = nn.LayerNorm(dim)
            self.attn = WindowAttentionACmix(dim, window_size, num_heads, self.resolution)
            self.norm2 = nn.LayerNorm(dim)
            mask = shifted_window_mask(resolution, resolution, window_size, shift_size) if shift_size else None
            self.register_buffer("attn_mask", mask)
        self.mlp = Mlp(dim, hidden)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, resolution={self.resolution}, window_size={self.window_size}, shift_size={self.shift_size}"

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.deploy:
            return
        self.attn = self.attn.fuse(self.norm1, self.attn_mask, self.conv_fold)
        self.norm1 = _plain_norm(self.dim).to(self.attn.qkv.weight.device)
        w, b = fold_layernorm_into_linear(self.mlp.fc1.weight, self.mlp.fc1.bias, self.norm2.weight, self.norm2.bias)
        self.mlp.fc1 = _linear_from(w, b, self.mlp.fc1)
        self.norm2 = _plain_norm(self.dim).to(w.device)
        self.attn_mask = None
        self.deploy = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hh, ww = self.resolution
        if x.dim() != 3 or x.shape[1] != hh * ww or x.shape[2] != self.dim:
            raise InputShapeError(
                f"SwinACmixBlock: expected (batch, {hh * ww}, {self.dim}) tokens of a {hh}x{ww} map, "
                f"got {tuple(x.shape)}"
            )
        s = self.shift_size
        y = self.norm1(x).reshape(-1, hh, ww, self.dim)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = self.attn(y) if self.deploy else self.attn(y, self.attn_mask)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + y.reshape(-1, hh * ww, self.dim)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated in the order (row, col) = (0,0), (1,0), (0,1), (1,1); norm; reduction."""

    def __init__(self, resolution: int, dim: int, deploy: bool = False):
        super().__init__()
        if resolution % 2:
            raise ConfigError(f"PatchMerging needs an even resolution, got {resolution}x{resolution}")
        self.resolution = resolution
        self.dim = dim
        self.deploy = deploy
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=deploy)
        self.norm = _plain_norm(4 * dim) if deploy else nn.LayerNorm(4 * dim)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.deploy:
            return
        w, b = fold_layernorm_into_linear(self.reduction.weight, None, self.norm.weight, self.norm.bias)
        self.reduction = _linear_from(w, b, self.reduction)
        self.norm = _plain_norm(4 * self.dim).to(w.device)
        self.deploy = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, c = self.resolution, self.dim
        x = x.reshape(-1, r // 2, 2, r // 2, 2, c)  # (B, row, row offset, col, col offset, C)
        # Column offset outer, row offset inner: (0,0), (1,0), (0,1), (1,1).
        x = x.permute(0, 1, 3, 4, 2, 5).reshape(-1, (r // 2) ** 2, 4 * c)
        return self.reduction(self.norm(x))


class PatchEmbed(nn.Module):
    """Non-overlapping ``p x p`` patches to ``embed_dim`` tokens (``proj``), then ``norm``."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, patch_norm: bool = True):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        return x if self.norm is None else self.norm(x)


class BasicLayer(nn.Module):
    """One stage: ``blocks`` (even ones plain, odd ones shifted) and an optional ``downsample``."""

    def __init__(self, dim, resolution, depth, num_heads, window_size, mlp_ratio, downsample, conv_fold, deploy):
        super().__init__()
        window, shift = stage_windows(resolution, window_size)
        self.blocks = nn.ModuleList(
            SwinACmixBlock(dim, resolution, num_heads, window, 0 if i % 2 == 0 else shift,
                           mlp_ratio, conv_fold, deploy)
            for i in range(depth)
        )
        self.downsample = PatchMerging(resolution, dim, deploy) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


def _check_config(img_size, patch_size, embed_dim, depths, num_heads, window_size, num_classes, in_chans):
    for name, value in (("img_size", img_size), ("patch_size", patch_size), ("embed_dim", embed_dim),
                        ("window_size", window_size), ("num_classes", num_classes), ("in_chans", in_chans)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if len(depths) != len(num_heads) or not depths:
        raise ConfigError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} must have the same, non-zero length")
    if img_size % patch_size:
        raise ConfigError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
    res = img_size // patch_size
    for stage, heads in enumerate(num_heads):
        dim = embed_dim * 2**stage
        if dim % heads:
            raise ConfigError(f"stage {stage}: dim {dim} is not divisible by {heads} heads")
        window, _ = stage_windows(res, window_size)
        if res % window:
            fits = [w for w in range(2, window_size + 3) if res % w == 0]
            raise ConfigError(
                f"stage {stage}: the {res}x{res} token map (img_size {img_size} / patch {patch_size} / "
                f"2^{stage}) is not divisible into {window}x{window} windows; choose img_size and "
                f"window_size so that every stage's map is a multiple of the window "
                f"(e.g. 224/7, 256/8, 384/12){'; windows dividing ' + str(res) + ': ' + str(fits) if fits else ''}"
            )
        if stage < len(num_heads) - 1:
            if res % 2:
                raise ConfigError(
                    f"stage {stage}: the {res}x{res} token map is odd and cannot be patch-merged; "
                    f"img_size must be a multiple of patch_size * 2^{len(num_heads) - 1}"
                )
            res //= 2


class SwinTransformerACmix(nn.Module):
    """Swin Transformer with ACmix window attention (official layout, square inputs)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        ape: bool = False,
        patch_norm: bool = True,
        conv_fold: str = "factored",
        deploy: bool = False,
    ):
        super().__init__()
        _check_config(img_size, patch_size, embed_dim, depths, num_heads, window_size, num_classes, in_chans)
        choose_conv_fold(conv_fold, num_heads[0])  # validates the name
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_layers = len(depths)
        self.num_features = embed_dim * 2 ** (self.num_layers - 1)
        self.deploy = deploy
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        res = img_size // patch_size
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, res * res, embed_dim))
        self.ape = ape
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            self.layers.append(BasicLayer(embed_dim * 2**i, res >> i, depth, heads, window_size, mlp_ratio,
                                          i < self.num_layers - 1, conv_fold, deploy))
        self.norm = _plain_norm(self.num_features) if deploy else nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)
        self.default_cfg = default_cfg(in_chans, img_size)
        if not deploy:
            self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """The official initialisation: Linear N(0, 0.02) truncated, zero bias; LayerNorm 1 / 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.ape:
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the final norm's affine into ``head`` (token averaging in between is linear)."""
        if self.deploy:
            return
        w, b = fold_layernorm_into_linear(self.head.weight, self.head.bias, self.norm.weight, self.norm.bias)
        self.head = _linear_from(w, b, self.head)
        self.norm = _plain_norm(self.num_features).to(w.device)
        self.deploy = True

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_chans, self.img_size, self.img_size):
            form = "deploy form (its constants are computed for that size)" if self.deploy else "model"
            raise InputShapeError(
                f"this {form} takes (batch, {self.in_chans}, {self.img_size}, {self.img_size}) inputs, got "
                f"{tuple(x.shape)}; Swin fixes the resolution of every block when it is built: build it "
                f"with img_size={x.shape[-1] if x.dim() == 4 else '...'} (and a window that divides every stage)"
            )
        x = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _swin(deploy: bool, **kwargs) -> SwinTransformerACmix:
    return SwinTransformerACmix(deploy=deploy, **kwargs)


def infer_args(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Constructor arguments from a Swin-ACmix state dict's shapes (training or deploy form).

    Classes from ``head``, channels from ``patch_embed.proj``, the window from the largest relative
    position table ((2w-1)^2 rows) or deploy attention bias (N = w*w tokens), the image size from a
    stage-0 shift mask or deploy attention bias (nW windows of w*w tokens, times the patch size) or else
    a stage-0 deploy bias map (C, H, W).
    """
    proj = sd.get("patch_embed.proj.weight")
    if proj is None:
        return {}
    args: dict[str, Any] = {}
    head = sd.get("head.weight")
    if head is not None and head.dim() == 2:
        args["num_classes"] = int(head.shape[0])
    if proj.dim() != 4:
        return args
    args["in_chans"] = int(proj.shape[1])
    windows = [(math.isqrt(v.shape[0]) + 1) // 2 for k, v in sd.items()
               if k.endswith("attn.relative_position_bias_table") and v.dim() == 2]
    windows += [math.isqrt(v.shape[-1]) for k, v in sd.items() if k.endswith("attn.attn_bias") and v.dim() == 4]
    if windows:
        args["window_size"] = max(windows)
    # (nW, N, N) shift mask or (nW, nh, N, N) deploy attention bias of a shifted stage-0 block
    shifted = [v for k, v in sd.items() if k.startswith("layers.0.") and
               ((k.endswith(".attn_mask") and v.dim() == 3) or (k.endswith(".attn_bias") and v.dim() == 4))
               and v.shape[0] > 1]
    bias_map = sd.get("layers.0.blocks.0.attn.conv_bias")
    if shifted:
        res = math.isqrt(shifted[0].shape[0]) * math.isqrt(shifted[0].shape[-1])
        args["img_size"] = res * int(proj.shape[-1])
    elif bias_map is not None and bias_map.dim() == 3:
        args["img_size"] = int(bias_map.shape[-1]) * int(proj.shape[-1])
    return args


def is_deploy(sd: Mapping[str, torch.Tensor]) -> bool:
    """The deploy attention keeps ``qkv`` but has folded ``rate1``/``rate2`` away."""
    return any(k.endswith(".qkv.weight") for k in sd) and not any(k.endswith(".rate1") for k in sd)


FAMILY = ModelFamily("swin_acmix", infer_args=infer_args, is_deploy=is_deploy)


@register_model(family=FAMILY)
def acmix_swin_tiny(
    num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, window_size: int = 7,
    conv_fold: str = "factored", deploy: bool = False,
) -> SwinTransformerACmix:
    """Swin-T + ACmix (81.9% ImageNet top-1 released): embed 96, depths 2-2-6-2, heads 3-6-12-24, window 7."""
    return _swin(deploy, num_classes=num_classes, in_chans=in_chans, img_size=img_size, window_size=window_size,
                 embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), conv_fold=conv_fold)


@register_model(family=FAMILY)
def acmix_swin_small(
    num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, window_size: int = 7,
    conv_fold: str = "factored", deploy: bool = False,
) -> SwinTransformerACmix:
    """Swin-S + ACmix (83.5% ImageNet top-1 released): embed 96, depths 2-2-18-2, heads 3-6-12-24, window 7."""
    return _swin(deploy, num_classes=num_classes, in_chans=in_chans, img_size=img_size, window_size=window_size,
                 embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), conv_fold=conv_fold)


@register_model(family=FAMILY)
def acmix_swin_micro(
    num_classes: int = 10, in_chans: int = 3, img_size: int = 32, window_size: int = 4,
    conv_fold: str = "factored", deploy: bool = False,
) -> SwinTransformerACmix:
    """A small Swin-ACmix for tests: embed 16, depths 2-2, heads 2-4, patch 4, 32x32, window 4.

    Stage 0 (8x8 tokens) has four 4x4 windows and a shifted block; stage 1
    (4x4) is one window of its size, unshifted.
    """
    return _swin(deploy, num_classes=num_classes, in_chans=in_chans, img_size=img_size, window_size=window_size,
                 embed_dim=16, depths=(2, 2), num_heads=(2, 4), patch_size=4, conv_fold=conv_fold)
