"""ACmix (Pan et al., arXiv 2111.14556), convolution-backbone form, and its deploy form.

:class:`ACmix` is the training form with the official parameter names, shapes
and forward semantics, so state dicts trained with the official code load with
``strict=True``.  :meth:`ACmix.fuse` returns :class:`ACmixDeploy`, the folded
form (optionally absorbing a following BatchNorm), which computes the same
function with

1. one 1x1 convolution producing q', k and v' (q/k/v fused, the scaling
   ``d ** -0.5`` in q', ``rate1`` and the BatchNorm scale in v'), its rows
   in head-dimension-major order (the order the convolution path reads),
2. the window-attention core (softmax over each pixel's ``ka x ka``
   reflection-padded neighbourhood, computed as blocked matrix products, see
   :mod:`acmix_deploy.modules.window_attention`; the positional term is an
   offset ``-W_p loc`` of the keys, ``W_p`` being ``conv_p``'s weight),
3. one grouped ``kc x kc`` convolution for the whole convolution path
   (``fc``, ``dep_conv``, ``rate2`` and the BatchNorm folded), reading q/k/v
   (an exporter may ask for neighbouring groups merged into one, the same
   function with zeros added, see ``merged_conv_groups``),
4. an add.

The softmax attention itself is data dependent and is *not* turned into a
static convolution; it is computed exactly as in the training form.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import fold
from ..errors import CheckpointError, ConfigError, InputShapeError
from ..kernels.window_attention_triton import triton_window_attention, use_triton
from ..util import scoped_value
from .dynamic_halo import dynamic_halo_attention, dynamic_halo_tables, make_dynamic_halo_spec
from .window_attention import HaloPlan, _recording, grouped_conv_channels_last, halo_attention, make_halo_plan

__all__ = ["ACmix", "ACmixDeploy", "coordinate_grid", "DEPLOY_LAYOUT", "check_deploy_layout", "dynamic_spatial_export",
           "merged_conv_groups"]


def coordinate_grid(height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """ACmix's ``loc``: ``(1, 2, H, W)``, channel 0 the width coordinate in [-1, 1], channel 1 the height."""
    lw = torch.linspace(-1.0, 1.0, width, dtype=dtype, device=device)
    lh = torch.linspace(-1.0, 1.0, height, dtype=dtype, device=device)
    return torch.stack([lw.expand(height, width), lh[:, None].expand(height, width)])[None]


def _validate_hparams(in_planes, out_planes, kernel_att, head, kernel_conv, stride, dilation):
    for name, value in (
        ("in_planes", in_planes),
        ("out_planes", out_planes),
        ("kernel_att", kernel_att),
        ("head", head),
        ("kernel_conv", kernel_conv),
        ("stride", stride),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"ACmix: {name} must be a positive integer, got {value!r}")
    if out_planes % head:
        raise ConfigError(
            f"ACmix: out_planes ({out_planes}) must be divisible by head ({head}) "
            "so that every head gets the same head_dim"
        )
    if kernel_att % 2 == 0:
        raise ConfigError(f"ACmix: kernel_att must be odd (a window centred on the pixel), got {kernel_att}")
    if kernel_conv % 2 == 0:
        raise ConfigError(f"ACmix: kernel_conv must be odd, got {kernel_conv}")
    if dilation != 1:
        raise ConfigError(
            f"ACmix: dilation={dilation} is not supported; the official operator pads for a dilated "
            "window but unfolds an undilated one, so only dilation=1 gives consistent shapes"
        )


def _check_input(x: torch.Tensor, in_planes: int, kernel_att: int, stride: int, name: str) -> None:
    if x.dim() != 4:
        raise InputShapeError(f"{name}: expected a 4-D input (batch, channels, height, width), got shape {tuple(x.shape)}")
    if x.shape[1] != in_planes:
        raise InputShapeError(f"{name}: expected {in_planes} input channels, got {x.shape[1]}")
    hh, ww = x.shape[-2:]
    pad = (kernel_att - 1) // 2
    if min(hh, ww) <= pad:
        raise InputShapeError(
            f"{name}: input {hh}x{ww} is too small for kernel_att={kernel_att}: reflection padding "
            f"by {pad} needs height and width of at least {pad + 1}"
        )
    if stride > 1 and (hh % stride or ww % stride):
        raise InputShapeError(
            f"{name}: input {hh}x{ww} is not divisible by stride {stride}; the official operator "
            "produces (H // stride, W // stride) outputs and needs H and W divisible by the stride"
        )


class ACmix(nn.Module):
    """Training form of ACmix, with the official parameter names.

    Parameters: ``conv1``/``conv2``/``conv3`` (1x1, query/key/value),
    ``conv_p`` (1x1, 2 -> head_dim, positional encoding), ``fc`` (1x1,
    3*head -> kernel_conv**2, no bias), ``dep_conv`` (grouped kernel_conv
    convolution, groups head_dim, no bias), ``rate1``/``rate2`` (scalars).

    ``forward(x)`` returns ``rate1 * attention + rate2 * convolution`` of size
    ``(H // stride, W // stride)``; H and W must be divisible by ``stride`` and
    larger than the reflection padding ``(kernel_att - 1) // 2``.
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_att: int = 7,
        head: int = 4,
        kernel_conv: int = 3,
        stride: int = 1,
        dilation: int = 1,
    ):
        super().__init__()
        _validate_hparams(in_planes, out_planes, kernel_att, head, kernel_conv, stride, dilation)
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.head = head
        self.kernel_att = kernel_att
        self.kernel_conv = kernel_conv
        self.stride = stride
        self.dilation = dilation
        self.head_dim = out_planes // head

        self.rate1 = nn.Parameter(torch.empty(1))
        self.rate2 = nn.Parameter(torch.empty(1))
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=1)
        self.conv2 = nn.Conv2d(in_planes, out_planes, kernel_size=1)
        self.conv3 = nn.Conv2d(in_planes, out_planes, kernel_size=1)
        self.conv_p = nn.Conv2d(2, self.head_dim, kernel_size=1)
        self.padding_att = (dilation * (kernel_att - 1) + 1) // 2
        self.fc = nn.Conv2d(3 * head, kernel_conv * kernel_conv, kernel_size=1, bias=False)
        self.dep_conv = nn.Conv2d(
            kernel_conv * kernel_conv * self.head_dim,
            out_planes,
            kernel_size=kernel_conv,
            groups=self.head_dim,
            padding=kernel_conv // 2,
            stride=stride,
            bias=False,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official initialisation: rates 0.5, dep_conv as kc*kc one-hot shift kernels."""
        with torch.no_grad():
            self.rate1.fill_(0.5)
            self.rate2.fill_(0.5)
            kc = self.kernel_conv
            shift = torch.zeros(kc * kc, kc, kc)
            for j in range(kc * kc):
                shift[j, j // kc, j % kc] = 1.0
            self.dep_conv.weight.copy_(shift.repeat(self.out_planes, 1, 1, 1))

    def extra_repr(self) -> str:
        return (
            f"{self.in_planes}, {self.out_planes}, kernel_att={self.kernel_att}, head={self.head}, "
            f"kernel_conv={self.kernel_conv}, stride={self.stride}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_planes, self.kernel_att, self.stride, "ACmix")
        q, k, v = self.conv1(x), self.conv2(x), self.conv3(x)
        b, c, hh, ww = q.shape
        heads, d, s, ka = self.head, self.head_dim, self.stride, self.kernel_att
        h_out, w_out = hh // s, ww // s
        kk = ka * ka

        # Attention path.  The official code builds loc in the default dtype;
        # here it follows x so that the module also runs in float64.
        pe = self.conv_p(coordinate_grid(hh, ww, dtype=x.dtype, device=x.device))
        q_att = q.view(b * heads, d, hh, ww) * d**-0.5
        k_att = k.view(b * heads, d, hh, ww)
        v_att = v.view(b * heads, d, hh, ww)
        q_pe = pe
        if s > 1:
            q_att = q_att[:, :, ::s, ::s]
            q_pe = pe[:, :, ::s, ::s]
        pad = (self.padding_att,) * 4
        k_nbr = F.unfold(F.pad(k_att, pad, mode="reflect"), ka, stride=s).view(b * heads, d, kk, h_out, w_out)
        pe_nbr = F.unfold(F.pad(pe, pad, mode="reflect"), ka, stride=s).view(1, d, kk, h_out, w_out)
        att = (q_att.unsqueeze(2) * (k_nbr + q_pe.unsqueeze(2) - pe_nbr)).sum(1)
        att = torch.softmax(att, dim=1)
        v_nbr = F.unfold(F.pad(v_att, pad, mode="reflect"), ka, stride=s).view(b * heads, d, kk, h_out, w_out)
        out_att = (att.unsqueeze(1) * v_nbr).sum(2).view(b, c, h_out, w_out)

        # Convolution path: fc mixes the 3h head maps of every head-dim index,
        # dep_conv (groups = head_dim) shifts and sums them.
        qkv = torch.cat(
            [q.view(b, heads, d, hh * ww), k.view(b, heads, d, hh * ww), v.view(b, heads, d, hh * ww)], 1
        )
        f_all = self.fc(qkv)
        f_conv = f_all.permute(0, 2, 1, 3).reshape(b, -1, hh, ww)
        out_conv = self.dep_conv(f_conv)
        return self.rate1 * out_att + self.rate2 * out_conv

    def attention_macs(self, x_shape) -> int:
        """Multiply-accumulates of the attention core per batch (logits, positional term, aggregation)."""
        b, _, hh, ww = x_shape
        kk = self.kernel_att**2
        pix = (hh // self.stride) * (ww // self.stride)
        # q * (k + pe_c - pe_n) summed over d, then att * v summed over the window.
        return b * pix * kk * self.out_planes * 2

    @torch.no_grad()
    def fuse(self, bn: nn.modules.batchnorm._BatchNorm | None = None) -> "ACmixDeploy":
        """Return the deploy form, equal to ``self`` (followed by ``bn`` if given) in inference mode."""
        if bn is not None and bn.num_features != self.out_planes:
            raise ConfigError(
                f"BatchNorm has {bn.num_features} channels, ACmix has {self.out_planes} outputs"
            )
        deploy = ACmixDeploy(
            self.in_planes, self.out_planes, self.kernel_att, self.head, self.kernel_conv, self.stride
        ).to(device=self.conv1.weight.device, dtype=self.conv1.weight.dtype)
        params = acmix_deploy_params(self, bn)
        deploy.qkv.weight.copy_(params["qkv.weight"])
        deploy.qkv.bias.copy_(params["qkv.bias"])
        deploy.conv_path.weight.copy_(params["conv_path.weight"])
        deploy.conv_path.bias.copy_(params["conv_path.bias"])
        deploy.pos_weight.copy_(params["pos_weight"])
        deploy.att_scale.copy_(params["att_scale"])
        deploy.refresh_mode()
        return deploy


# The smallest |rate1 * g| still folded into v.  Scaling a float32 value by a
# and its reading weight by 1 / a costs one rounding each, whatever the size of
# a, as long as neither result leaves the normal range; 1e-12 keeps a wide
# margin to that edge (float32 normals start at 1.2e-38).
_MIN_FOLDED_SCALE = 1e-12


def acmix_deploy_params(m: ACmix, bn: nn.modules.batchnorm._BatchNorm | None = None) -> dict[str, torch.Tensor]:
    """All deploy-form tensors of one ACmix block (float64), see :class:`ACmixDeploy`."""
    c, heads, d = m.out_planes, m.head, m.head_dim
    if bn is not None:
        g, beta = fold.batchnorm_affine(bn)
    else:
        g = torch.ones(c, dtype=torch.float64)
        beta = torch.zeros(c, dtype=torch.float64)
    rate1 = float(m.rate1.detach().double().item())
    rate2 = float(m.rate2.detach().double().item())
    att_coef = g * rate1  # the attention output is scaled by rate1, then by g
    fold_v = bool(torch.all(att_coef.abs() >= _MIN_FOLDED_SCALE))
    q_scale = d**-0.5
    w_qkv, b_qkv = fold.fuse_qkv(
        m.conv1.weight, m.conv1.bias, m.conv2.weight, m.conv2.bias, m.conv3.weight, m.conv3.bias,
        q_scale, att_coef if fold_v else None,
    )
    in_scale = torch.ones(3 * c, dtype=torch.float64)
    in_scale[:c] = q_scale
    if fold_v:
        in_scale[2 * c:] = att_coef
    w_conv = fold.fold_conv_path(m.fc.weight, m.dep_conv.weight, heads, in_scale, g * rate2)
    b_conv = beta.clone()
    if m.dep_conv.bias is not None:
        b_conv += g * rate2 * m.dep_conv.bias.detach().double()
    if fold_v:
        att_scale = torch.ones(c, dtype=torch.float64)
    else:  # rate1 == 0 or a zero BatchNorm scale: keep v as is and scale the attention output
        att_scale = att_coef
    order = fold.head_dim_major_order(3 * c, heads)  # the rows the conv path and the core read
    return {
        "qkv.weight": w_qkv[order],
        "qkv.bias": b_qkv[order],
        "pos_weight": m.conv_p.weight.detach().double().reshape(d, 2),
        "conv_path.weight": w_conv,
        "conv_path.bias": b_conv,
        "att_scale": att_scale,
    }


# Version of ACmixDeploy's parameter layout.  Layout 1 (acmix-deploy 0.1) had
# ``qkv`` with 3C + 2h rows ``[q'; k; v'; -W_p^T q']`` in head-major order;
# layout 2 has 3C rows in head-dimension-major order and the buffer ``pos_weight``.
DEPLOY_LAYOUT = 2

# Set only inside ``merged_conv_groups``: how many neighbouring conv-path groups to run as one.
_GROUP_MERGE: contextvars.ContextVar[Callable[[int, int], int] | None] = contextvars.ContextVar(
    "acmix_conv_group_merge", default=None)


@contextlib.contextmanager
def merged_conv_groups(merge: Callable[[int, int], int] | None):
    """Inside this block, ``ACmixDeploy`` runs its convolution path with ``merge(head, head_dim)`` groups as one.

    The convolution path is a grouped convolution of ``head_dim`` groups of ``3h -> h`` channels; merging
    ``m`` neighbouring groups gives ``head_dim / m`` groups of ``3hm -> hm`` channels with a block-diagonal
    weight (:func:`acmix_deploy.fold.merge_conv_groups`): the same function, ``m`` times the multiply-adds,
    the added ones with exact zeros.  Some backends run the wider groups faster; which merge suits which
    backend and CPU is the exporter's decision (``acmix_deploy.exporters.onnx``).  Outside such a block, and
    with ``merge=None`` or a merge of 1, the compact groups run: a plain ``torch.onnx.export`` of a deploy
    model gives the compact graph.
    """
    with scoped_value(_GROUP_MERGE, merge):
        yield


# None, or (during a dynamic export) the tables computed so far, by block input size at the traced size.
_DYNAMIC_HW: contextvars.ContextVar[dict | None] = contextvars.ContextVar("acmix_dynamic_hw", default=None)


@contextlib.contextmanager
def dynamic_spatial_export(enabled: bool):
    """Whether a graph recorded inside this block keeps height and width dynamic (default: no).

    When on, :class:`ACmixDeploy` computes the attention core's index tables from the input's shape in
    the graph (:func:`~acmix_deploy.modules.dynamic_halo.dynamic_halo_attention`) instead of taking
    them as constants of the traced size; the tile and the number of block groups are still chosen at
    the traced size.  Eager execution is unaffected.

    Blocks with the same input size at the traced size (and the same window, stride, tile and groups)
    share one set of tables, computed from the first one's shape: every block's input is the image
    divided by a fixed factor (``exporters.dynamic_hw.derive_spatial_rule`` checks that at two sizes),
    so sizes equal at one valid size are equal at all.  Record one graph per ``with`` block.  Only the
    ONNX exporter's tracer is supported (sizes as tensors on the graph's ``Shape``); AOTInductor refuses
    dynamic height and width (``exporters.aoti``).
    """
    with scoped_value(_DYNAMIC_HW, {} if enabled else None):
        yield


def check_deploy_layout(state_dict, source: str = "state dict") -> None:
    """Refuse ACmix deploy tensors written with an older layout, with a clear message.

    Layout 1 is recognised by an ACmix deploy block (``.qkv.weight`` next to
    ``.att_scale``) that has no ``.pos_weight``; its positional rows cannot be
    turned back into ``conv_p``'s weight exactly, so it is not converted.
    """
    for name in state_dict:
        if name == "att_scale" or name.endswith(".att_scale"):
            prefix = name[: -len("att_scale")]
            if prefix + "qkv.weight" in state_dict and prefix + "pos_weight" not in state_dict:
                raise CheckpointError(
                    f"{source} holds an ACmix deploy block ({prefix or 'top level'}) in deploy layout 1 "
                    f"(acmix-deploy 0.1); this version reads deploy layout {DEPLOY_LAYOUT}. Re-create the "
                    "deploy form from the training checkpoint (acmix-deploy reparam)"
                )


def _refresh_after_load(module: "ACmixDeploy", _keys) -> None:
    """Load-state-dict hook (a module-level function, so that ``torch.save(model)`` can pickle the module)."""
    module.refresh_mode()


class ACmixDeploy(nn.Module):
    """Deploy form of :class:`ACmix`: one 1x1 conv, the attention core, one grouped conv, an add.

    State (deploy layout 2): ``qkv`` (1x1 conv ``C_in -> 3C``: q', k, v',
    rows in head-dimension-major order ``i * 3h + t``), ``conv_path``
    (``kc x kc`` conv ``3C -> C``, groups ``d``, reading those rows), and the
    buffers ``pos_weight`` (``(d, 2)``, ``conv_p``'s weight: the keys are offset
    by ``-pos_weight @ loc``) and ``att_scale`` (``(C,)``).
    ``att_scale`` is all ones when ``rate1`` and the BatchNorm scale were folded
    into v (the normal case): the output is then ``attention + conv_path``.
    When they could not be folded (``rate1 == 0`` or a zero BatchNorm scale)
    it holds the per-channel factor applied to the attention output; if it is
    all zeros the attention core is skipped (it would be multiplied by zero).
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_att: int = 7,
        head: int = 4,
        kernel_conv: int = 3,
        stride: int = 1,
    ):
        super().__init__()
        _validate_hparams(in_planes, out_planes, kernel_att, head, kernel_conv, stride, 1)
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.head = head
        self.head_dim = out_planes // head
        self.kernel_att = kernel_att
        self.kernel_conv = kernel_conv
        self.stride = stride
        self.qkv = nn.Conv2d(in_planes, 3 * out_planes, kernel_size=1)
        self.conv_path = nn.Conv2d(
            3 * out_planes, out_planes, kernel_size=kernel_conv, stride=stride,
            padding=kernel_conv // 2, groups=self.head_dim,
        )
        self.register_buffer("pos_weight", torch.zeros(self.head_dim, 2))
        self.register_buffer("att_scale", torch.ones(out_planes))
        self.register_load_state_dict_post_hook(_refresh_after_load)
        self._plans: dict[tuple, HaloPlan] = {}
        self.mode = "folded"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        check_deploy_layout({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)},
                            "the state dict")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def refresh_mode(self) -> None:
        """Derive how the attention output is combined from ``att_scale``."""
        scale = self.att_scale
        if bool(torch.all(scale == 1)):
            self.mode = "folded"
        elif bool(torch.all(scale == 0)):
            self.mode = "conv_only"
        else:
            self.mode = "scaled"

    def extra_repr(self) -> str:
        return (
            f"{self.in_planes}, {self.out_planes}, kernel_att={self.kernel_att}, head={self.head}, "
            f"kernel_conv={self.kernel_conv}, stride={self.stride}, mode={self.mode}"
        )

    def halo_plan(self, height: int, width: int, dtype, device) -> HaloPlan:
        """Index tables and mask of the attention core, computed once per input size."""
        key = (height, width, dtype, str(device))
        plan = self._plans.get(key)
        if plan is None:
            plan = make_halo_plan(height, width, self.kernel_att, self.stride, self.head, self.head_dim,
                                  dtype=dtype, device=device)
            if not torch.jit.is_tracing():
                self._plans[key] = plan
        return plan

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_plans"] = {}  # index tables are rebuilt on demand; never pickled with the model
        return state

    def _apply(self, fn, recurse=True):
        self._plans = {}  # plans follow the module's device and dtype
        return super()._apply(fn, recurse)

    def attention_macs(self, x_shape) -> int:
        """MACs the blocked core performs (masked halo slots included), per batch."""
        if self.mode == "conv_only":
            return 0
        b, _, hh, ww = x_shape
        plan = self.halo_plan(hh, ww, torch.float32, "cpu")
        per_head = plan.tiles * plan.tile_pixels * plan.halo_pixels * 2 * self.head_dim
        return b * self.head * per_head

    def _conv_path(self, qkv: torch.Tensor) -> torch.Tensor:
        """The convolution path; with its groups merged inside :func:`merged_conv_groups`."""
        conv = self.conv_path
        rule = _GROUP_MERGE.get()
        merge = 1 if rule is None else rule(self.head, self.head_dim)
        if merge == 1:
            if grouped_conv_channels_last(qkv):
                # Output left channels-last: ``att + out`` reads it as it is and writes att's layout.
                return conv(qkv.contiguous(memory_format=torch.channels_last))
            return conv(qkv)
        weight = fold.merge_conv_groups(conv.weight, conv.groups, merge)  # folded into a constant by the export
        return F.conv2d(qkv, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups // merge)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_planes, self.kernel_att, self.stride, "ACmixDeploy")
        qkv = self.qkv(x)
        out = self._conv_path(qkv)
        if self.mode == "conv_only":
            return out.contiguous()  # the conv path may have run channels-last; callers get the usual layout
        # Static spatial size: the plan's index tables are constants of the graph (the traced size); with
        # dynamic_spatial_export they are computed in the graph from the shape, and only the tile and the
        # number of groups come from the traced size.
        shared = _DYNAMIC_HW.get()
        hh, ww = int(x.shape[-2]), int(x.shape[-1])
        if shared is not None and _recording():
            spec = make_dynamic_halo_spec(self.halo_plan(hh, ww, x.dtype, x.device), self.kernel_att, self.stride,
                                          self.head_dim)
            key = (hh, ww, spec.kernel, spec.stride, spec.tile, spec.groups, x.dtype)
            if key not in shared:
                shared[key] = dynamic_halo_tables(qkv, spec)
            att = dynamic_halo_attention(qkv, self.pos_weight, spec, shared[key])
        elif use_triton(qkv):  # opt-in fused CUDA kernel (kernels/window_attention_triton.py); never while exporting
            att = triton_window_attention(qkv, self.pos_weight, self.head, self.kernel_att, self.stride)
        else:
            att = halo_attention(qkv, self.pos_weight, self.halo_plan(hh, ww, x.dtype, x.device))
        if self.mode == "scaled":
            att = att * self.att_scale.view(1, -1, 1, 1)
        return att + out
