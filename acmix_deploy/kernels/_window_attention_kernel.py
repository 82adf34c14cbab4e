"""The Triton source of :mod:`acmix_deploy.kernels.window_attention_triton` (imported only when the kernel is used).

No ``from __future__ import annotations`` here: Triton reads the
``tl.constexpr`` annotations of the kernel's parameters.

The key offset ``W_p loc`` is computed in the kernel from ``conv_p``'s
``(d, 2)`` weight and the (reflected) coordinates, two multiply-adds per
element, instead of being read from a table.  Tiles are ``(BLOCK_D, BLOCK_P)``: head dimensions by output pixels, pixels
on the fast (last) axis, so that the lanes of a warp read consecutive pixels
of one channel plane, which lie next to each other in the NCHW map (every
second one at stride 2); the channel planes themselves are ``H*W`` floats
apart.  The window's rows are a runtime loop and its columns are unrolled,
which keeps the compiled kernel small (a fully unrolled 7x7 window is 147
load sites).
"""

import triton.language as tl


def window_attention_kernel(
    qkv_ptr, pw_ptr, out_ptr, height, width, out_h, out_w, heads, head_dim, pixel_blocks, step_x, step_y,
    KA: tl.constexpr, STRIDE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)  # one-dimensional grid: (image, head, block of output pixels)
    pid_bh = pid // pixel_blocks
    b = pid_bh // heads
    t = pid_bh % heads
    hw = height * width
    offs_p = (pid % pixel_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    in_p = offs_p < out_h * out_w
    in_d = offs_d < head_dim
    both = in_d[:, None] & in_p[None, :]
    cy = (offs_p // out_w) * STRIDE
    cx = (offs_p % out_w) * STRIDE
    base = qkv_ptr + b.to(tl.int64) * (3 * heads * head_dim) * hw
    # Head-dimension-major channels: dimension i of map t is channel i * 3h + t (q: t, k: h + t, v: 2h + t).
    ch_q = (offs_d * (3 * heads) + t) * hw
    ch_k = ch_q + heads * hw
    ch_v = ch_q + 2 * heads * hw
    q = tl.load(base + ch_q[:, None] + (cy * width + cx)[None, :], mask=both, other=0.0).to(tl.float32)
    # conv_p's weight (d, 2): the key offset of position (y, x) is w_x * loc_x(x) + w_y * loc_y(y), with
    # loc = linspace(-1, 1, size) (step_x = 2 / (W - 1), 0 for a one-pixel axis), as in the blocked core.
    w_x = tl.load(pw_ptr + offs_d * 2, mask=in_d, other=0.0).to(tl.float32)
    w_y = tl.load(pw_ptr + offs_d * 2 + 1, mask=in_d, other=0.0).to(tl.float32)

    m_i = tl.full([BLOCK_P], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_P], tl.float32)
    acc = tl.zeros([BLOCK_D, BLOCK_P], tl.float32)
    pad = (KA - 1) // 2
    for dy in range(KA):
        ny = cy - pad + dy
        ny = tl.where(ny < 0, -ny, ny)
        ny = tl.where(ny > height - 1, 2 * (height - 1) - ny, ny)
        ny = tl.minimum(tl.maximum(ny, 0), height - 1)
        loc_y = ny.to(tl.float32) * step_y - 1.0
        for dx in tl.static_range(KA):
            nx = cx - pad + dx
            nx = tl.where(nx < 0, -nx, nx)
            nx = tl.where(nx > width - 1, 2 * (width - 1) - nx, nx)
            nx = tl.minimum(tl.maximum(nx, 0), width - 1)
            pos = (ny * width + nx)[None, :]
            k = tl.load(base + ch_k[:, None] + pos, mask=both, other=0.0).to(tl.float32)
            pe = w_x[:, None] * (nx.to(tl.float32) * step_x - 1.0)[None, :] + w_y[:, None] * loc_y[None, :]
            logit = tl.sum(q * (k - pe), axis=0)
            m_new = tl.maximum(m_i, logit)
            alpha = tl.exp(m_i - m_new)
            e = tl.exp(logit - m_new)
            v = tl.load(base + ch_v[:, None] + pos, mask=both, other=0.0).to(tl.float32)
            acc = acc * alpha[None, :] + e[None, :] * v
            l_i = l_i * alpha + e
            m_i = m_new
    out = acc / l_i[None, :]
    out_base = out_ptr + b.to(tl.int64) * (heads * head_dim) * (out_h * out_w)
    dst = out_base + ((t * head_dim + offs_d) * (out_h * out_w))[:, None] + offs_p[None, :]
    tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=both)
