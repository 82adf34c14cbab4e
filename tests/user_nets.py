"""Users' own networks, as YOLO forks write them: pasted ACmix copies, Conv-BN-SiLU attribute blocks, three outputs.

Nothing here imports acmix_deploy: the classes are what a user's repository holds.  ``OfficialACmix`` is a
transcription of the official ``ACmix`` class (same attribute names, ``nn.Unfold``, ``ReflectionPad2d``,
``dep_conv`` bias replaced by ``None`` in the initialisation); ``SameWidthACmix`` is the fork signature
``ACmix(in_planes, kernel_att, head, ...)`` with the positional grid cast to the input's dtype and device (the
AMP fix) and an ``out % head`` assert; ``ZeroPadLookAlike`` has the same state but zero-pads the attention
window (a different function that must be left alone).  Used by tests/reparam/test_user_model.py and by
benchmarks/user_model_speed.py (as ``--model-def tests/user_nets.py:yolo_acmix``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def position(H, W, is_cuda=False):
    loc_w = torch.linspace(-1.0, 1.0, W).unsqueeze(0).repeat(H, 1)
    loc_h = torch.linspace(-1.0, 1.0, H).unsqueeze(1).repeat(1, W)
    if is_cuda:
        loc_w, loc_h = loc_w.cuda(), loc_h.cuda()
    return torch.cat([loc_w.unsqueeze(0), loc_h.unsqueeze(0)], 0).unsqueeze(0)


def stride(x, stride):
    return x[:, :, ::stride, ::stride]


def init_rate_half(tensor):
    if tensor is not None:
        tensor.data.fill_(0.5)


def init_rate_0(tensor):
    if tensor is not None:
        tensor.data.fill_(0.0)


class OfficialACmix(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_att=7, head=4, kernel_conv=3, stride=1, dilation=1):
        super().__init__()
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.head = head
        self.kernel_att = kernel_att
        self.kernel_conv = kernel_conv
        self.stride = stride
        self.dilation = dilation
        self.rate1 = torch.nn.Parameter(torch.Tensor(1))
        self.rate2 = torch.nn.Parameter(torch.Tensor(1))
        self.head_dim = self.out_planes // self.head

        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=1)
        self.conv2 = nn.Conv2d(in_planes, out_planes, kernel_size=1)
        self.conv3 = nn.Conv2d(in_planes, out_planes, kernel_size=1)
        self.conv_p = nn.Conv2d(2, self.head_dim, kernel_size=1)

        self.padding_att = (self.dilation * (self.kernel_att - 1) + 1) // 2
        self.pad_att = torch.nn.ReflectionPad2d(self.padding_att)
        self.unfold = nn.Unfold(kernel_size=self.kernel_att, padding=0, stride=self.stride)
        self.softmax = torch.nn.Softmax(dim=1)

        self.fc = nn.Conv2d(3 * self.head, self.kernel_conv * self.kernel_conv, kernel_size=1, bias=False)
        self.dep_conv = nn.Conv2d(self.kernel_conv * self.kernel_conv * self.head_dim, out_planes,
                                  kernel_size=self.kernel_conv, bias=True, groups=self.head_dim, padding=1,
                                  stride=stride)
        self.reset_parameters()

    def reset_parameters(self):
        init_rate_half(self.rate1)
        init_rate_half(self.rate2)
        kernel = torch.zeros(self.kernel_conv * self.kernel_conv, self.kernel_conv, self.kernel_conv)
        for i in range(self.kernel_conv * self.kernel_conv):
            kernel[i, i // self.kernel_conv, i % self.kernel_conv] = 1.0
        kernel = kernel.squeeze(0).repeat(self.out_planes, 1, 1, 1)
        self.dep_conv.weight = nn.Parameter(data=kernel, requires_grad=True)
        self.dep_conv.bias = init_rate_0(self.dep_conv.bias)

    def _pe(self, x, h, w):
        return self.conv_p(position(h, w, x.is_cuda))

    def _att_pad(self, t):
        return self.pad_att(t)

    def forward(self, x):
        q, k, v = self.conv1(x), self.conv2(x), self.conv3(x)
        scaling = float(self.head_dim) ** -0.5
        b, c, h, w = q.shape
        h_out, w_out = h // self.stride, w // self.stride
        pe = self._pe(x, h, w)
        q_att = q.view(b * self.head, self.head_dim, h, w) * scaling
        k_att = k.view(b * self.head, self.head_dim, h, w)
        v_att = v.view(b * self.head, self.head_dim, h, w)
        if self.stride > 1:
            q_att = stride(q_att, self.stride)
            q_pe = stride(pe, self.stride)
        else:
            q_pe = pe
        unfold_k = self.unfold(self._att_pad(k_att)).view(b * self.head, self.head_dim,
                                                          self.kernel_att * self.kernel_att, h_out, w_out)
        unfold_rpe = self.unfold(self._att_pad(pe)).view(1, self.head_dim, self.kernel_att * self.kernel_att,
                                                         h_out, w_out)
        att = (q_att.unsqueeze(2) * (unfold_k + q_pe.unsqueeze(2) - unfold_rpe)).sum(1)
        att = self.softmax(att)
        out_att = self.unfold(self._att_pad(v_att)).view(b * self.head, self.head_dim,
                                                         self.kernel_att * self.kernel_att, h_out, w_out)
        out_att = (att.unsqueeze(1) * out_att).sum(2).view(b, self.out_planes, h_out, w_out)
        f_all = self.fc(torch.cat([q.view(b, self.head, self.head_dim, h * w),
                                   k.view(b, self.head, self.head_dim, h * w),
                                   v.view(b, self.head, self.head_dim, h * w)], 1))
        f_conv = f_all.permute(0, 2, 1, 3).reshape(x.shape[0], -1, x.shape[-2], x.shape[-1])
        out_conv = self.dep_conv(f_conv)
        return self.rate1 * out_att + self.rate2 * out_conv


class SameWidthACmix(OfficialACmix):
    """The fork signature ``ACmix(in_planes, kernel_att, head, kernel_conv, stride, dilation)``; grid follows x."""

    def __init__(self, in_planes, kernel_att=7, head=4, kernel_conv=3, stride=1, dilation=1):
        assert in_planes % head == 0, "out_planes must be divisible by head"
        super().__init__(in_planes, in_planes, kernel_att, head, kernel_conv, stride, dilation)

    def _pe(self, x, h, w):
        return self.conv_p(position(h, w).to(dtype=x.dtype, device=x.device))


class ZeroPadLookAlike(OfficialACmix):
    """Same parameters as ACmix, but the attention window is zero padded: another function."""

    def _att_pad(self, t):
        return F.pad(t, (self.padding_att,) * 4)


def autopad(k, p=None):
    return k // 2 if p is None else p


class Conv(nn.Module):
    """Ultralytics' Conv: attributes conv, bn, act."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 3, 1)
        self.cv2 = Conv(c_, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=False, e=0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, e=1.0) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class ACmixBlock(nn.Module):
    """ACmix -> BatchNorm -> SiLU as attributes (the forks' ``ACmixblock``)."""

    def __init__(self, c1, c2, k_att=7, head=4, s=1):
        super().__init__()
        self.acmix = OfficialACmix(c1, c2, k_att, head, 3, s)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.acmix(x)))


class Detect(nn.Module):
    """Three output maps; a shape-dependent branch as YOLO heads have (fx cannot trace it)."""

    def __init__(self, nc, ch):
        super().__init__()
        self.no = nc + 4
        self.cv = nn.ModuleList(nn.Sequential(Conv(c, c, 3), nn.Conv2d(c, self.no, 1)) for c in ch)
        self.shape = None

    def forward(self, xs):
        out = [cv(x) for cv, x in zip(self.cv, xs)]
        if self.shape != out[0].shape:  # control flow on a shape: fx refuses it
            self.shape = out[0].shape
        return out


class YoloACmix(nn.Module):
    """A small YOLOv8-style detector with ACmix where forks put it.

    Backbone: stem Conv /2, Conv /2, C2f, a stride-2 ``ACmix(c, c, 7, 4, 3, 2)`` downsample, C2f, Conv /2,
    C2f, a same-width ACmix (grid cast to x's dtype) before SPPF, SPPF; neck: an ACmix-BN-SiLU block and an
    ``nn.Sequential(ACmix, BatchNorm2d, SiLU)`` with kernel_att 5 and 2 heads before the head; three
    outputs at strides 8, 16, 32 (a list; ``dict_outputs=True`` returns them as a dict).
    """

    def __init__(self, nc=3, width=16, dict_outputs=False):
        super().__init__()
        w = width
        self.stem = Conv(3, w, 3, 2)
        self.down1 = Conv(w, 2 * w, 3, 2)
        self.c2f1 = C2f(2 * w, 2 * w, 1, True)
        self.down2 = OfficialACmix(2 * w, 2 * w, 7, 4, 3, 2)  # stride-2 downsample (P3 -> /8)
        self.c2f2 = C2f(2 * w, 4 * w, 1, True)
        self.down3 = Conv(4 * w, 4 * w, 3, 2)  # /16
        self.c2f3 = C2f(4 * w, 4 * w, 1, True)
        self.down4 = Conv(4 * w, 8 * w, 3, 2)  # /32
        self.attn = SameWidthACmix(8 * w)  # before SPPF: [-1, 1, ACmix, [1024]]
        self.sppf = SPPF(8 * w, 8 * w)
        self.neck16 = ACmixBlock(4 * w, 4 * w)
        self.neck32 = nn.Sequential(OfficialACmix(8 * w, 8 * w, 5, 2), nn.BatchNorm2d(8 * w), nn.SiLU())
        self.detect = Detect(nc, (4 * w, 4 * w, 8 * w))
        self.dict_outputs = dict_outputs

    def forward(self, x):
        x = self.c2f1(self.down1(self.stem(x)))
        p3 = self.c2f2(self.down2(x))
        p4 = self.c2f3(self.down3(p3))
        p5 = self.sppf(self.attn(self.down4(p4)))
        out = self.detect([p3, self.neck16(p4), self.neck32(p5)])
        if self.dict_outputs:
            return {"p3": out[0], "p4": out[1], "p5": out[2]}
        return out


def yolo_acmix(nc: int = 3, width: int = 16, dict_outputs: bool = False) -> YoloACmix:
    """The factory named by ``--model-def tests/user_nets.py:yolo_acmix``."""
    return YoloACmix(nc, width, dict_outputs)


class WithLookAlike(nn.Module):
    """A network with one look-alike ACmix (zero-padded window) followed by a BatchNorm."""

    def __init__(self):
        super().__init__()
        self.stem = Conv(3, 16, 3, 1)
        self.odd = ZeroPadLookAlike(16, 16, 3, 4)
        self.bn = nn.BatchNorm2d(16)
        self.good = OfficialACmix(16, 16, 3, 4)

    def forward(self, x):
        return self.good(self.bn(self.odd(self.stem(x))))


class ClampedACmix(OfficialACmix):
    """A float16-overflow guard on the output: equal to ACmix only while every output is within +-4."""

    def forward(self, x):
        return super().forward(x).clamp(-4.0, 4.0)


class RenamedPartsACmix(OfficialACmix):
    """``conv1``/``conv2``/``conv3`` renamed ``q_conv``/``k_conv``/``v_conv``: the same function, another structure."""

    _ALIASES = {"conv1": "q_conv", "conv2": "k_conv", "conv3": "v_conv"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for old, new in self._ALIASES.items():
            setattr(self, new, self._modules.pop(old))

    def __getattr__(self, name):
        return super().__getattr__(self._ALIASES.get(name, name))


class TwoNames(nn.Module):
    """One ACmix registered under two names and applied twice (``self.att2 = self.att``)."""

    def __init__(self):
        super().__init__()
        self.stem = Conv(3, 16, 3, 2)
        self.att = OfficialACmix(16, 16, 5, 4)
        self.att2 = self.att
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(self.att2(F.silu(self.att(self.stem(x)))))


class StemDefinedLast(nn.Module):
    """A Focus (space-to-depth) stem, defined after the ACmix that runs behind it: the first Conv2d in module order
    takes 16 channels and the first one run takes 12, while the image has 3."""

    def __init__(self):
        super().__init__()
        self.att = OfficialACmix(16, 16, 3, 4)
        self.stem = Conv(12, 16, 3, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
        return self.head(self.att(self.stem(x)))


class Float32GridACmix(OfficialACmix):
    """The official formula with its grid hard-coded to float32 (an AMP workaround): runs in float32 only."""

    def _pe(self, x, h, w):
        return self.conv_p(position(h, w).float())


class Float32GridClamped(Float32GridACmix):
    """That, plus a float16-overflow guard on the output: another function, in float32 only."""

    def forward(self, x):
        return super().forward(x).clamp(-4.0, 4.0)


class SharedChildren(nn.Module):
    """torchvision's pattern: the backbone kept, and its children again as ``features`` (one conv + BN pair under
    two paths); the root's forward branches on the input's shape, so fx cannot trace it as a whole."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                      OfficialACmix(16, 16, 3, 4), nn.BatchNorm2d(16))
        self.features = nn.Sequential(*list(self.backbone.children()))
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        if x.shape[-1] > 64:
            x = F.avg_pool2d(x, 2)
        return self.head(self.features(x))


class PatchStemAfterACmix(nn.Module):
    """An ACmix defined before a patch-embedding stem that takes one input size only (timm's PatchEmbed assert)."""

    def __init__(self, size: int = 32):
        super().__init__()
        self.size = size
        self.att = OfficialACmix(16, 16, 3, 4)
        self.proj = nn.Conv2d(3, 16, 4, 4)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        assert x.shape[-2:] == (self.size, self.size), f"input size {tuple(x.shape[-2:])} != {self.size}"
        return self.head(self.att(self.proj(x)))


def renamed_parts_net():
    return nn.Sequential(Conv(3, 16, 3, 2), RenamedPartsACmix(16, 16, 5, 4), nn.Conv2d(16, 4, 1))


# ---------------------------------------------------------------------------- a user's own Swin-ACmix backbone

def window_partition(x, window_size):
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)


def window_reverse(windows, window_size, H, W):
    B = int(windows.shape[0] / (H * W / window_size / window_size))
    x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


class WindowAttention_acmix(nn.Module):
    """A transcription of the official Swin-form ACmix window attention (``forward(x, H, W, mask)``)."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None):
        super().__init__()
        self.dim = dim
        self.window_size = window_size  # Wh, Ww
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads))
        coords = torch.stack(torch.meshgrid([torch.arange(window_size[0]), torch.arange(window_size[1])],
                                            indexing="ij"))
        coords_flatten = torch.flatten(coords, 1)
        relative_coords = (coords_flatten[:, :, None] - coords_flatten[:, None, :]).permute(1, 2, 0).contiguous()
        relative_coords[:, :, 0] += window_size[0] - 1
        relative_coords[:, :, 1] += window_size[1] - 1
        relative_coords[:, :, 0] *= 2 * window_size[1] - 1
        self.register_buffer("relative_position_index", relative_coords.sum(-1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)
        self.softmax = nn.Softmax(dim=-1)
        self.fc = nn.Conv2d(3 * self.num_heads, 9, kernel_size=1, bias=True)
        self.dep_conv = nn.Conv2d(9 * dim // self.num_heads, dim, kernel_size=3, bias=True,
                                  groups=dim // self.num_heads, padding=1)
        self.rate1 = torch.nn.Parameter(torch.Tensor(1))
        self.rate2 = torch.nn.Parameter(torch.Tensor(1))
        self.rate1.data.fill_(0.5)
        self.rate2.data.fill_(0.5)
        kernel = torch.zeros(9, 3, 3)
        for i in range(9):
            kernel[i, i // 3, i % 3] = 1.0
        self.dep_conv.weight = nn.Parameter(data=kernel.repeat(self.dim, 1, 1, 1), requires_grad=True)
        self.dep_conv.bias = None

    def _logits_mask(self, attn, mask, B_, N):
        nW = mask.shape[0]
        attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
        return attn.view(-1, self.num_heads, N, N)

    def forward(self, x, H, W, mask=None):
        qkv = self.qkv(x)
        f_all = qkv.reshape(x.shape[0], H * W, 3 * self.num_heads, -1).permute(0, 2, 1, 3)
        f_conv = self.fc(f_all).permute(0, 3, 1, 2).reshape(x.shape[0], 9 * x.shape[-1] // self.num_heads, H, W)
        out_conv = self.dep_conv(f_conv).permute(0, 2, 3, 1)
        qkv = window_partition(qkv, self.window_size[0])
        B_, _, _, C = qkv.shape
        qkv = qkv.view(-1, self.window_size[0] * self.window_size[1], C)
        N = self.window_size[0] * self.window_size[1]
        C = C // 3
        qkv = qkv.reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            attn = self._logits_mask(attn, mask, B_, N)
        attn = self.attn_drop(self.softmax(attn))
        x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
        x = self.proj(x).view(-1, self.window_size[0], self.window_size[1], C)
        x = window_reverse(x, self.window_size[0], H, W)
        return self.proj_drop(self.rate1 * x + self.rate2 * out_conv)


class MaskIgnoringAttention(WindowAttention_acmix):
    """Same state as the official window attention, but it drops the shift mask: another function."""

    def _logits_mask(self, attn, mask, B_, N):
        return attn


class SwinBlock(nn.Module):
    """A user's Swin block around the copied attention (norm1, cyclic shift, attention, MLP)."""

    def __init__(self, dim, resolution, heads, window, shift, attn_cls=WindowAttention_acmix):
        super().__init__()
        self.resolution, self.window, self.shift = resolution, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn_cls(dim, (window, window), heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        if shift:
            H, W = resolution
            img = torch.zeros(1, H, W, 1)
            cnt = 0
            for h in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
                for w in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
                    img[:, h, w, :] = cnt
                    cnt += 1
            mw = window_partition(img, window).view(-1, window * window)
            mask = mw.unsqueeze(1) - mw.unsqueeze(2)
            mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        else:
            mask = None
        self.register_buffer("attn_mask", mask)

    def forward(self, x):
        H, W = self.resolution
        B, L, C = x.shape
        y = self.norm1(x).view(B, H, W, C)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(y, H, W, mask=self.attn_mask)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(B, H * W, C)
        return x + self.mlp(self.norm2(x))


class UserSwin(nn.Module):
    """Patch embedding (conv 4x4/4 + BatchNorm), two Swin-ACmix blocks (plain and shifted), a linear head."""

    def __init__(self, img=(32, 48), dim=32, heads=2, window=4, nc=5, attn_cls=WindowAttention_acmix):
        super().__init__()
        self.res = (img[0] // 4, img[1] // 4)
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.embed_bn = nn.BatchNorm2d(dim)
        self.blocks = nn.ModuleList([SwinBlock(dim, self.res, heads, window, 0, attn_cls),
                                     SwinBlock(dim, self.res, heads, window, window // 2, attn_cls)])
        self.head = nn.Linear(dim, nc)

    def forward(self, x):
        x = self.embed_bn(self.embed(x)).flatten(2).transpose(1, 2)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x.mean(1))


def user_swin(mask_ignoring: bool = False) -> UserSwin:
    return UserSwin(attn_cls=MaskIgnoringAttention if mask_ignoring else WindowAttention_acmix)
