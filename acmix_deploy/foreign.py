"""ACmix operators pasted into users' own networks: recognised by structure, adopted when proven equal.

Forks copy the official ``ACmix`` class rather than import a package, often
renamed (``ACmixblock``, ``C2f_ACmix`` parts, ...), with the same-width
signature ``ACmix(in_planes, kernel_att, head, ...)`` or with the positional
grid cast to the input's dtype.  None of that changes the state dict or the
function, so recognition never looks at the class name or at ``isinstance``:

* **Structure** (:func:`acmix_structure`): children ``conv1``/``conv2``/``conv3``
  (1x1 convolutions ``C_in -> C``), ``conv_p`` (1x1, ``2 -> C / head``), ``fc``
  (1x1, ``3 head -> kc^2``, no bias), ``dep_conv`` (``kc x kc``, ``kc^2 d -> C``,
  groups ``d``, padding ``kc // 2``, with or without a bias), one-element
  parameters ``rate1``/``rate2``, and nothing else that holds state.  The
  hyper-parameters come from the module's attributes (``kernel_att``, ``head``,
  ``kernel_conv``, ``stride``, ``dilation``, or ``unfold``/``pad_att``) and are
  cross-checked against every weight shape.
* **Behaviour** (:func:`adopt`): this package's training-form :class:`ACmix` is
  built with those hyper-parameters and loads the module's state strictly; both
  then run on a probe input (batch 2, a non-square size valid for the stride
  and the reflection padding, small enough that most pixels are border pixels)
  in float32, and on scaled copies of it in float64 (:data:`PROBES`).  Only
  when they agree within :data:`PROBE_TOL` on every probe is the module
  swapped (everywhere it is registered).  A look-alike whose forward differs (other padding, a rewritten
  attention) is left as it is and reported with its path and the difference.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .modules import ACmix, ACmixDeploy, WindowAttentionACmix, WindowAttentionACmixDeploy, WindowAttentionACmixFolded
from .modules.swin_acmix import window_attention_deploy_params
from .util import default_dtype

__all__ = ["PROBE_TOL", "PROBES", "Adoption", "acmix_resemblance", "acmix_structure", "swin_attention_structure", "looks_like_acmix",
           "looks_like_swin_attention", "adopt", "adopt_swin_attention", "adopt_foreign_operators",
           "is_ours", "replace_everywhere", "carry_attributes"]

# The probe compares two float32 evaluations of the same formula (the official
# unfold form and ours, which matches a float64 transcription of the official
# code to 1e-12): they differ by rounding only, ~1e-6 of the output's scale.  A
# changed border rule or attention shows up at 1e-2 and above on the probe.
PROBE_TOL = 1e-4
# The probe inputs: (scale, offset, dtype) applied to :func:`probe_input`.  Unit-normal float32 in the dtype
# the fold works in; then larger inputs in float64 (where the fold and the official form agree to ~1e-13
# however large the logits), so that a copy whose difference only shows at another input scale (a clamp, a
# saturating activation) is not taken for the official operator.
PROBES = ((1.0, 0.0, torch.float32), (10.0, 3.0, torch.float64), (100.0, 0.0, torch.float64))

_ACMIX_CHILDREN = {"conv1", "conv2", "conv3", "conv_p", "fc", "dep_conv", "pad_att", "unfold", "softmax"}


def is_ours(module: nn.Module) -> bool:
    """True for this package's own classes (which know how to fold themselves)."""
    return type(module).__module__.split(".")[0] == "acmix_deploy"


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _int_attr(m: nn.Module, name: str) -> int | None:
    v = m.__dict__.get(name)
    if isinstance(v, (tuple, list)) and len(set(v)) == 1:
        v = v[0]
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


def _conv(m: nn.Module, name: str) -> nn.Conv2d | None:
    c = m._modules.get(name)
    return c if type(c) is nn.Conv2d else None


def acmix_structure(m: nn.Module) -> tuple[dict[str, Any] | None, str]:
    """``(hparams, "")`` when ``m`` has the official ACmix structure, else ``(None, why not)``.

    ``hparams``: ``in_planes, out_planes, kernel_att, head, kernel_conv, stride, dep_conv_bias``.
    """
    if isinstance(m, (ACmix, ACmixDeploy)):
        return None, "one of this package's own classes"
    convs = {n: _conv(m, n) for n in ("conv1", "conv2", "conv3", "conv_p", "fc", "dep_conv")}
    if any(c is None for c in convs.values()):
        missing = [n for n, c in convs.items() if c is None]
        return None, f"no nn.Conv2d {', '.join(missing)}"
    rates = [m._parameters.get(n) for n in ("rate1", "rate2")]
    if any(r is None or r.numel() != 1 for r in rates):
        return None, "no one-element parameters rate1/rate2"
    c1, c2, c3, cp, fc, dep = (convs[n] for n in ("conv1", "conv2", "conv3", "conv_p", "fc", "dep_conv"))
    c_in, c = c1.in_channels, c1.out_channels
    for cv in (c1, c2, c3):
        if (cv.in_channels, cv.out_channels) != (c_in, c) or _pair(cv.kernel_size) != (1, 1) or cv.groups != 1 \
                or _pair(cv.stride) != (1, 1) or _pair(cv.padding) != (0, 0):
            return None, "conv1/conv2/conv3 are not three 1x1 convolutions of the same shape"
    head = _int_attr(m, "head") or (fc.in_channels // 3 if fc.in_channels % 3 == 0 else None)
    if not head or c % head or fc.in_channels != 3 * head:
        return None, f"fc takes {fc.in_channels} channels, not 3 * head (head={head})"
    d = c // head
    if (cp.in_channels, cp.out_channels) != (2, d) or _pair(cp.kernel_size) != (1, 1):
        return None, f"conv_p is not a 1x1 convolution 2 -> head_dim ({d})"
    kc = math.isqrt(fc.out_channels)
    if kc * kc != fc.out_channels or _pair(fc.kernel_size) != (1, 1) or fc.bias is not None:
        return None, "fc is not a 1x1 convolution without bias to kernel_conv**2 channels"
    if _int_attr(m, "kernel_conv") not in (None, kc):
        return None, f"kernel_conv={m.kernel_conv} disagrees with fc's {kc * kc} outputs"
    stride = _int_attr(m, "stride")
    if stride is None:
        stride = _pair(dep.stride)[0]
    if (dep.in_channels, dep.out_channels, dep.groups) != (kc * kc * d, c, d) or _pair(dep.kernel_size) != (kc, kc):
        return None, "dep_conv is not the grouped kernel_conv convolution kc*kc*head_dim -> out_planes, groups head_dim"
    if _pair(dep.stride) != (stride, stride) or _pair(dep.dilation) != (1, 1) \
            or _pair(dep.padding) != (kc // 2, kc // 2) or dep.padding_mode != "zeros":
        return None, (f"dep_conv has stride {dep.stride}, padding {dep.padding}, dilation {dep.dilation}; "
                      f"ACmix needs stride {stride}, padding {kc // 2}, dilation 1, zero padding")
    unfold = m._modules.get("unfold")
    ka = _int_attr(m, "kernel_att")
    if ka is None and isinstance(unfold, nn.Unfold):
        ka = _int_attr(unfold, "kernel_size")
    if ka is None:
        return None, "no kernel_att attribute and no nn.Unfold to read it from"
    if isinstance(unfold, nn.Unfold) and (_int_attr(unfold, "kernel_size") != ka or _int_attr(unfold, "stride")
                                          not in (stride,) or _int_attr(unfold, "dilation") not in (1,)):
        return None, f"unfold ({unfold}) disagrees with kernel_att={ka}, stride={stride}"
    dilation = _int_attr(m, "dilation")
    if dilation not in (None, 1):
        return None, f"dilation={dilation}: only dilation 1 is consistent in the official operator"
    pad = (ka - 1) // 2
    pad_att = m._modules.get("pad_att")
    recorded = _int_attr(m, "padding_att")
    if isinstance(pad_att, nn.ReflectionPad2d):
        recorded = recorded if recorded is not None else _int_attr(pad_att, "padding")
    if recorded not in (None, pad):
        return None, f"reflection padding {recorded} disagrees with kernel_att={ka} (needs {pad})"
    extra = [n for n, child in m.named_children()
             if n not in _ACMIX_CHILDREN and any(True for _ in child.parameters())]
    extra += [n for n in m._parameters if n not in ("rate1", "rate2") and m._parameters[n] is not None]
    extra += [n for n in m._buffers if m._buffers[n] is not None]
    if extra:
        return None, f"holds state that ACmix does not have: {', '.join(extra)}"
    if ka % 2 == 0 or kc % 2 == 0 or stride < 1:
        return None, f"kernel_att={ka}, kernel_conv={kc}, stride={stride}: ACmix needs odd kernels"
    return {"in_planes": c_in, "out_planes": c, "kernel_att": ka, "head": head, "kernel_conv": kc,
            "stride": stride, "dep_conv_bias": dep.bias is not None}, ""


def looks_like_acmix(m: nn.Module) -> bool:
    return acmix_structure(m)[0] is not None


def acmix_resemblance(m: nn.Module) -> str | None:
    """Why ``m`` is not recognised as the official ACmix although it resembles one; None when it does not.

    A module resembles ACmix when it holds the official operator's attention window, an ``nn.Unfold`` with an
    ``nn.ReflectionPad2d`` or an ``nn.Softmax`` beside it, together with a grouped ``nn.Conv2d`` and at least
    two one-element parameters (ACmix's ``rate1``/``rate2``); or when its class is named after ACmix and holds
    an ``nn.Unfold`` itself (a container that merely holds an ACmix, ``C2f_ACmix``, does not).  These are
    the copies that renamed a part (``q_conv`` for ``conv1``, ``alpha`` for ``rate1``) or whose attributes
    disagree with their weights; a reflection-padded depthwise block with two scalar weights (no unfold) is
    not one.  The answer is the structural check's first complaint, so that such a copy is reported instead
    of passed over in silence.
    """
    if is_ours(m) or looks_like_swin_attention(m):
        return None
    hparams, why = acmix_structure(m)
    if hparams is not None:
        return None
    children = list(m.children())
    unfold = any(isinstance(c, nn.Unfold) for c in children)
    window = unfold and any(isinstance(c, (nn.ReflectionPad2d, nn.Softmax)) for c in children)
    grouped = any(isinstance(c, nn.Conv2d) and c.groups > 1 for c in children)
    scalars = sum(1 for p in m._parameters.values() if p is not None and p.numel() == 1)
    named = "acmix" in type(m).__name__.lower()
    if not ((window and grouped and scalars >= 2) or (named and unfold)):
        return None
    return why or "not the official structure"


_SWIN_CHILDREN = {"qkv", "proj", "fc", "dep_conv", "attn_drop", "proj_drop", "softmax"}


def swin_attention_structure(m: nn.Module) -> tuple[dict[str, Any] | None, str]:
    """``(hparams, "")`` when ``m`` has the official Swin-form ``WindowAttention_acmix`` structure.

    ``qkv`` (Linear ``C -> 3C``), ``proj`` (Linear ``C -> C``), ``fc`` (1x1 ``3nh -> 9``), ``dep_conv``
    (3x3 ``9d -> C``, groups ``d``, padding 1), ``rate1``/``rate2``, ``relative_position_bias_table``
    (``(2w-1)^2 x nh``), the buffer ``relative_position_index`` (``N x N``), attributes ``num_heads``,
    ``window_size`` (an int or a square pair) and ``scale``.
    """
    if isinstance(m, (WindowAttentionACmix, WindowAttentionACmixDeploy, WindowAttentionACmixFolded)):
        return None, "one of this package's own classes"
    qkv, proj = m._modules.get("qkv"), m._modules.get("proj")
    fc, dep = _conv(m, "fc"), _conv(m, "dep_conv")
    if type(qkv) is not nn.Linear or type(proj) is not nn.Linear or fc is None or dep is None:
        return None, "no Linear qkv/proj and Conv2d fc/dep_conv"
    rates = [m._parameters.get(n) for n in ("rate1", "rate2")]
    table = m._parameters.get("relative_position_bias_table")
    index = m._buffers.get("relative_position_index")
    if any(r is None or r.numel() != 1 for r in rates) or table is None or index is None:
        return None, "no rate1/rate2, relative_position_bias_table or relative_position_index"
    c = qkv.in_features
    nh = _int_attr(m, "num_heads")
    window = _int_attr(m, "window_size")
    scale = m.__dict__.get("scale")
    if nh is None or window is None or not isinstance(scale, float) or c % nh:
        return None, "no integer num_heads and square window_size, or no float scale"
    d = c // nh
    n = window * window
    if qkv.out_features != 3 * c or (proj.in_features, proj.out_features) != (c, c):
        return None, "qkv / proj do not map dim -> 3 dim / dim -> dim"
    if (fc.in_channels, fc.out_channels) != (3 * nh, 9) or _pair(fc.kernel_size) != (1, 1):
        return None, "fc is not a 1x1 convolution 3 num_heads -> 9"
    if (dep.in_channels, dep.out_channels, dep.groups) != (9 * d, c, d) or _pair(dep.kernel_size) != (3, 3) \
            or _pair(dep.padding) != (1, 1) or _pair(dep.stride) != (1, 1) or _pair(dep.dilation) != (1, 1) \
            or dep.padding_mode != "zeros":
        return None, "dep_conv is not the 3x3 grouped convolution 9 head_dim -> dim, groups head_dim, padding 1"
    if tuple(table.shape) != ((2 * window - 1) ** 2, nh) or tuple(index.shape) != (n, n):
        return None, "the relative position table or index does not fit the window"
    extra = [k for k, child in m.named_children() if k not in _SWIN_CHILDREN and any(True for _ in child.parameters())]
    extra += [k for k in m._parameters if k not in ("rate1", "rate2", "relative_position_bias_table")
              and m._parameters[k] is not None]
    extra += [k for k in m._buffers if k != "relative_position_index" and m._buffers[k] is not None]
    if extra:
        return None, f"holds state that the window attention does not have: {', '.join(extra)}"
    return {"dim": c, "num_heads": nh, "window_size": window, "qkv_bias": qkv.bias is not None,
            "dep_conv_bias": dep.bias is not None}, ""


def looks_like_swin_attention(m: nn.Module) -> bool:
    return swin_attention_structure(m)[0] is not None


@dataclass
class Adoption:
    """What happened to one module that has the official ACmix structure."""

    path: str
    source_class: str
    hparams: dict[str, Any]
    accepted: bool
    probe_rel: float | None  # relative difference on the probe (None when the probe could not run)
    probe_shape: tuple[int, ...] = ()
    reason: str = ""  # why it was left alone
    dtype: str = ""
    notes: list[str] = field(default_factory=list)  # probes that could not run (e.g. float64 in float32-only code)

    def describe(self) -> str:
        if self.accepted:
            target = "WindowAttentionACmixFolded" if "window_size" in self.hparams else "ACmix"
            probes = "probe" if "window_size" in self.hparams else f"{len(PROBES)} probes"
            return (f"{self.path} ({self.source_class}) -> {target}, {probes} {'x'.join(map(str, self.probe_shape))} "
                    f"agree to {self.probe_rel:.1e}" + (f" ({'; '.join(self.notes)})" if self.notes else ""))
        return f"{self.path} ({self.source_class}) left as it is: {self.reason}"


def build_acmix(hparams: dict[str, Any]) -> ACmix:
    """This package's training form for the recognised hyper-parameters (float32, CPU)."""
    ours = ACmix(hparams["in_planes"], hparams["out_planes"], hparams["kernel_att"], hparams["head"],
                 hparams["kernel_conv"], hparams["stride"])
    if hparams.get("dep_conv_bias"):
        ours.dep_conv.bias = nn.Parameter(torch.zeros(hparams["out_planes"]))
    return ours


def probe_input(hparams: dict[str, Any], seed: int = 0) -> torch.Tensor:
    """Batch 2, non-square, divisible by the stride, just above the reflection padding (mostly border)."""
    s, pad = hparams["stride"], (hparams["kernel_att"] - 1) // 2
    h = s * (pad + 3)
    w = h + s
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, hparams["in_planes"], h, w, generator=gen)


def _rel(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref64, out64 = ref.double(), out.double()
    scale = float(ref64.abs().max())
    err = float((ref64 - out64).abs().max())
    if not math.isfinite(err):
        return float("inf")
    return err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))


@torch.no_grad()
def adopt(module: nn.Module, path: str = "") -> tuple[ACmix | None, Adoption | None]:
    """Our :class:`ACmix` equal to ``module`` (same dtype and device), or None with the reason in the record.

    Returns ``(None, None)`` when ``module`` does not have the ACmix structure at all.
    """
    hparams, _why = acmix_structure(module)
    if hparams is None:
        return None, None
    param = module.conv1.weight
    record = Adoption(path or "<root>", type(module).__qualname__, hparams, False, None, dtype=str(param.dtype))
    try:
        ours = build_acmix(hparams)
    except Exception as exc:  # e.g. hyper-parameters our operator refuses
        record.reason = f"cannot build ACmix({hparams}): {exc}"
        return None, record
    state = {k: v.detach().to("cpu", torch.float32) for k, v in module.state_dict().items()}
    try:
        ours.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        record.reason = f"its state does not load into ACmix: {str(exc).splitlines()[0]}"
        return None, record
    x = probe_input(hparams)
    record.probe_shape = tuple(x.shape)
    theirs = copy.deepcopy(module).to("cpu", torch.float32).eval()
    ours.eval()
    worst = 0.0
    for scale, offset, dtype in PROBES:
        xp = (x.to(dtype) * scale + offset)
        m_theirs, m_ours = (theirs, ours) if dtype == torch.float32 else (copy.deepcopy(theirs).to(dtype),
                                                                          copy.deepcopy(ours).to(dtype))
        try:
            with default_dtype(dtype):  # their code's own tensors (the positional grid) in the probe's dtype
                ref = m_theirs(xp)
        except Exception as exc:
            if dtype == torch.float32:
                record.reason = f"its forward fails on the probe {tuple(x.shape)}: {type(exc).__name__}: {exc}"
                return None, record
            # code that only runs in float32 (a hard-coded .float()): the same scaled probe in float32, where
            # this package's training form computes the official formula step by step as well
            note = f"scaled probes in float32 (float64: {type(exc).__name__})"
            if note not in record.notes:
                record.notes.append(note)
            dtype, xp, m_theirs, m_ours = torch.float32, xp.float(), theirs, ours
            try:
                ref = m_theirs(xp)
            except Exception as exc32:
                record.reason = (f"its forward fails on the probe {tuple(x.shape)} at {scale:g} x: "
                                 f"{type(exc32).__name__}: {exc32}")
                return None, record
        out = m_ours(xp)
        if not isinstance(ref, torch.Tensor) or ref.shape != out.shape:
            shape = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
            record.reason = f"its output on the probe is {shape}, the official operator's is {tuple(out.shape)}"
            return None, record
        rel = _rel(ref, out)
        worst = max(worst, rel) if rel == rel else float("inf")
        if not rel <= PROBE_TOL:
            where = "" if (scale, offset) == (1.0, 0.0) else f" at {scale:g} x the probe" + (
                f" + {offset:g}" if offset else "")
            record.probe_rel = rel
            record.reason = (f"its forward differs from the official ACmix by {rel:.3g} (relative, probe "
                             f"{'x'.join(map(str, x.shape))}{where}, {str(dtype).replace('torch.', '')}, "
                             f"tolerance {PROBE_TOL:g})")
            return None, record
    record.probe_rel = worst
    record.accepted = True
    ours = ours.to(device=param.device, dtype=param.dtype).train(module.training)
    carry_attributes(module, ours)
    return ours, record


def _call_swin(m: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Call a window attention in its own convention: ``(x, H, W, mask=)`` (official) or ``(x, mask=)``."""
    try:
        params = [p for p in inspect.signature(m.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    takes_hw = len([p for p in params if p.name != "mask"]) >= 3
    return m(x, x.shape[1], x.shape[2], mask=mask) if takes_hw else m(x, mask=mask)


@torch.no_grad()
def adopt_swin_attention(module: nn.Module, path: str = "") -> tuple[nn.Module | None, Adoption | None]:
    """:class:`WindowAttentionACmixFolded` equal to a user's copy of the official Swin-form window attention.

    The official module runs at any resolution (a multiple of the window) with the caller's shift mask, and
    this package's training form is tied to one resolution, so the copy is folded straight into the
    size-agnostic deploy form, and the probe compares the copy with that deploy form: a ``2w x 3w`` map
    (six windows) without a mask and with a random 0 / -100 mask, in float32.
    """
    hp, _why = swin_attention_structure(module)
    if hp is None:
        return None, None
    param = module.qkv.weight
    record = Adoption(path or "<root>", type(module).__qualname__, hp, False, None, dtype=str(param.dtype))
    theirs = copy.deepcopy(module).to("cpu", torch.float32).eval()
    try:
        ours = WindowAttentionACmixFolded(hp["dim"], hp["window_size"], hp["num_heads"], hp["qkv_bias"],
                                          hp["dep_conv_bias"])
        params = window_attention_deploy_params(theirs, None, None, "factored")
        if hp["dep_conv_bias"]:
            params["dep_conv.bias"] = theirs.dep_conv.bias.double() * float(theirs.rate2)
        ours.load_state_dict({k: v.to(torch.float32) for k, v in params.items()}, strict=True)
    except Exception as exc:
        record.reason = f"cannot fold it into the window-attention deploy form: {type(exc).__name__}: {exc}"
        return None, record
    w, c = hp["window_size"], hp["dim"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2 * w, 3 * w, c, generator=gen)
    n = w * w
    mask = torch.where(torch.rand(6, n, n, generator=gen) < 0.3, -100.0, 0.0)
    record.probe_shape = tuple(x.shape)
    worst = 0.0
    ours.eval()
    for m in (None, mask):
        try:
            ref = _call_swin(theirs, x, m)
        except Exception as exc:
            record.reason = f"its forward fails on the probe {tuple(x.shape)}: {type(exc).__name__}: {exc}"
            return None, record
        out = ours(x, mask=m)
        if not isinstance(ref, torch.Tensor) or ref.shape != out.shape:
            record.reason = f"its output on the probe has shape {getattr(ref, 'shape', None)}, expected {tuple(out.shape)}"
            return None, record
        worst = max(worst, _rel(ref, out))
    record.probe_rel = worst
    if not worst <= PROBE_TOL:
        record.reason = (f"its forward differs from the official window attention by {worst:.3g} (relative, probe "
                         f"{'x'.join(map(str, x.shape))} with and without a mask, tolerance {PROBE_TOL:g})")
        return None, record
    record.accepted = True
    ours = ours.to(device=param.device, dtype=param.dtype)
    carry_attributes(module, ours)
    return ours, record


_SKIP_ATTRS = {"training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"}


def carry_attributes(old: nn.Module, new: nn.Module) -> None:
    """Copy the plain attributes a framework hung on ``old`` (Ultralytics: ``i``, ``f``, ``type``, ``np``) to ``new``.

    Only attributes ``new`` does not define itself are copied; parameters, buffers, submodules and hooks are not.
    """
    for key, value in old.__dict__.items():
        if key.startswith("_") or key in _SKIP_ATTRS or key in new.__dict__:
            continue
        if isinstance(value, (nn.Module, torch.Tensor)) or callable(value):
            continue
        try:
            setattr(new, key, value)
        except (AttributeError, TypeError):
            pass


def replace_everywhere(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is registered under ``root``: under every name (``self.b = self.a``)."""
    for parent in list(root.modules()):
        for name, child in list(parent._modules.items()):
            if child is old:
                setattr(parent, name, new)


@dataclass
class AdoptionReport:
    adopted: list[Adoption] = field(default_factory=list)
    rejected: list[Adoption] = field(default_factory=list)


def adopt_foreign_operators(model: nn.Module, only: list[str] | None = None) -> AdoptionReport:
    """Replace, in place, every module under ``model`` that is proven to be an official ACmix.

    ``only`` restricts the conversion to these paths (a rebuild from a recorded plan).  The root itself is
    never replaced (the caller holds it).
    """
    report = AdoptionReport()
    todo = [(name, m) for name, m in model.named_modules() if name and not is_ours(m)]
    done: set[str] = set()
    for name, m in todo:
        if any(name.startswith(p + ".") for p in done):
            continue
        if only is not None and name not in only:
            continue
        ours, record = adopt(m, name)
        if record is None:
            ours, record = adopt_swin_attention(m, name)
        if record is None:
            continue
        if ours is None:
            report.rejected.append(record)
            done.add(name)
            continue
        replace_everywhere(model, m, ours)  # one module under two names stays one module
        report.adopted.append(record)
        done.add(name)
    return report
