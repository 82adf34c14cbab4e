"""Users' own networks, as YOLO forks write them: pasted ACmix copies, Conv-BN-SiLU attribute blocks, three outputs.

Nothing here imports acmix_deploy: the classes are what a user's repository holds.  ``OfficialACmix`` is a
transcription of the official ``ACmix`` class (same attribute names, ``nn.Unfold``, ``ReflectionPad2d``,
``dep_conv`` bias replaced by ``None`` in the initialisation); ``SameWidthACmix`` is the fork signature
``ACmix(in_planes, kernel_att, head, ...)`` with the positional grid cast to the input's dtype and device (the
AMP fix) and an ``out % head`` assert; ``ZeroPadLookAlike`` has the same state but zero-pads the attention
window (a different function that must be left alone).  Used by tests/test_user_model.py and by
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
