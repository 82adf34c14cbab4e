"""ACmix's window attention as blocked ("halo") matrix products.

The official operator unfolds keys and values into ``ka*ka``-fold copies
(``nn.Unfold``), multiplies element-wise and sums; that is memory bound and
costs 88% of an ACmix-ResNet-50's time.  Here the output is tiled into blocks
of ``T x T`` pixels; each block gathers the ``K x K`` halo of keys and values
that its pixels' windows cover (``K = (T - 1) * stride + ka``) once, computes
all logits of the block with one matrix product, masks the positions outside
each pixel's own window, and aggregates the values with a second product.

Exactness, by construction:

* **Reflection padding.**  The halo is gathered with precomputed indices into
  the *unpadded* map, the reflection built into the indices.  Every slot of a
  pixel's window is a distinct halo slot, so a key that the reflection brings
  in twice is counted twice, as in the unfold form.
* **Positional term.**  ACmix adds ``sum_c r_c(p) * (loc_c(p) - loc_c(n))`` to
  the logit of neighbour ``n`` of pixel ``p`` (``r = W_p^T q'`` per head, see
  :func:`acmix_deploy.fold.positional_rows`).  The first part is the same for
  all neighbours of ``p`` and softmax is invariant to it, so the term is
  exactly ``[-r] . [loc(n)]``: two more query channels (``-r``, produced by
  the fused 1x1 convolution) and two more key channels (the coordinates of
  the key, a constant gathered with the same indices).
* **Masking.**  Each query row of a block keeps exactly the ``ka*ka`` halo
  slots of its window (additive ``-inf`` elsewhere), so the softmax sees the
  same set of logits as the unfold form; only the summation order differs.

Only standard operators are used (Gather, MatMul, Add, Softmax, Reshape,
Transpose, Concat), so the graph exports to ONNX and parses in TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["HaloPlan", "make_halo_plan", "halo_attention"]



def default_tile(kernel: int) -> int:
    """Block size by window size, as measured on CPU (torch eager, 2 threads).

    The halo costs ``((T - 1) * s + ka)^2`` keys per query instead of
    ``ka^2``; small tiles waste less but launch more, smaller products.  With
    a 7x7 window, 7x7 tiles were fastest at 56/28/14/7 (e.g. 1.61 ms vs 1.69 ms
    for 4x4 tiles at 28x28, C=128); with 3x3 and 5x5 windows, 4x4 tiles were
    (2.15 ms vs 3.04 ms for 7x7 tiles at 56x56, C=64, ka=3).
    """
    return 7 if kernel >= 7 else 4

# Eager execution splits the batch so that one chunk's logits stay within this
# many bytes: the logits, softmax and second product then run in cache.  On the
# 2-core CI machine this made a batch of 8 at 56x56 (C=64) 2.6x faster.
CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class HaloPlan:
    """Index tables for one input size (all depend only on H, W, ka, stride and the tile)."""

    out_size: tuple[int, int]
    tiles: int  # number of blocks
    tile_pixels: int  # T_y * T_x queries per block
    halo_pixels: int  # K_y * K_x keys per block
    query_index: torch.Tensor  # (tiles * tile_pixels,) flat input position of each query slot
    key_index: torch.Tensor  # (tiles * halo_pixels,) flat input position of each key slot
    output_index: torch.Tensor  # (H_out * W_out,) query slot of each output pixel
    mask: torch.Tensor  # (tile_pixels, halo_pixels): 0 inside the window, -inf outside
    coords: torch.Tensor  # (1, 1, 2, H*W): loc of every input position (width, height coordinate)


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Reflection-pad semantics (edge not repeated), then clamp what lies beyond any window."""
    idx = np.where(idx < 0, -idx, idx)
    idx = np.where(idx > n - 1, 2 * (n - 1) - idx, idx)
    return np.clip(idx, 0, n - 1)


def make_halo_plan(
    height: int, width: int, kernel: int, stride: int = 1, tile: int | None = None,
    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
) -> HaloPlan:
    """Build the index tables for one input size.

    Computed with NumPy on purpose: when a model is traced (ONNX export), the
    tables must enter the graph as constants, not as traced index arithmetic.
    """
    pad = (kernel - 1) // 2
    tile = tile or default_tile(kernel)
    h_out, w_out = (height - 1) // stride + 1, (width - 1) // stride + 1
    ty, tx = min(tile, h_out), min(tile, w_out)
    nty, ntx = -(-h_out // ty), -(-w_out // tx)
    ky, kx = (ty - 1) * stride + kernel, (tx - 1) * stride + kernel
    ar = np.arange

    # Rows/cols of the halo of block (a, b): input positions s*T*a - pad + k.
    rows = _reflect(stride * ty * ar(nty)[:, None] - pad + ar(ky)[None], height)
    cols = _reflect(stride * tx * ar(ntx)[:, None] - pad + ar(kx)[None], width)
    key_index = (rows[:, None, :, None] * width + cols[None, :, None, :]).reshape(-1)

    # Queries: output pixel (a*T + p) reads input position stride * (a*T + p); slots past
    # the output edge (partial last block) repeat the last pixel and are discarded.
    qr = np.minimum(ty * ar(nty)[:, None] + ar(ty)[None], h_out - 1) * stride
    qc = np.minimum(tx * ar(ntx)[:, None] + ar(tx)[None], w_out - 1) * stride
    query_index = (qr[:, None, :, None] * width + qc[None, :, None, :]).reshape(-1)

    oy, ox = ar(h_out), ar(w_out)
    slot_y = (oy // ty)[:, None] * ntx * ty * tx + (oy % ty)[:, None] * tx
    slot_x = (ox // tx)[None, :] * ty * tx + (ox % tx)[None, :]
    output_index = (slot_y + slot_x).reshape(-1)

    # Query (py, px) sees halo slot (hy, hx) iff 0 <= hy - s*py < ka and 0 <= hx - s*px < ka.
    dy = ar(ky)[None, :] - stride * ar(ty)[:, None]
    dx = ar(kx)[None, :] - stride * ar(tx)[:, None]
    inside = ((dy >= 0) & (dy < kernel))[:, None, :, None] & ((dx >= 0) & (dx < kernel))[None, :, None, :]
    mask = np.where(inside.reshape(ty * tx, ky * kx), 0.0, -np.inf)

    loc_w = np.linspace(-1.0, 1.0, width)
    loc_h = np.linspace(-1.0, 1.0, height)
    loc = np.stack([np.broadcast_to(loc_w, (height, width)).reshape(-1),
                    np.broadcast_to(loc_h[:, None], (height, width)).reshape(-1)], 1)

    def index(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)

    def values(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    return HaloPlan(
        out_size=(h_out, w_out), tiles=nty * ntx, tile_pixels=ty * tx, halo_pixels=ky * kx,
        query_index=index(query_index), key_index=index(key_index), output_index=index(output_index),
        mask=values(mask), coords=values(loc.T.reshape(1, 1, 2, height * width)),
    )


def halo_attention(
    q: torch.Tensor, r_neg: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: HaloPlan, heads: int,
    chunk_bytes: int = CHUNK_BYTES,
) -> torch.Tensor:
    """Window attention of ACmix.

    ``q`` (scaled), ``k``, ``v``: ``(b, C, H, W)`` head-major; ``r_neg``:
    ``(b, 2h, H, W)``, minus the positional channels ``W_p^T q`` per head.
    Returns ``(b, C, H_out, W_out)``::

        out_i(p) = sum_n softmax_n(q(sp) . k(n) - r(sp) . loc(n)) v_i(n)

    over the ``ka x ka`` reflection-padded window of input position ``s * p``.
    In eager mode the batch is processed in chunks of at most ``chunk_bytes``
    of logits; traced, exported or compiled graphs take the batch whole (the
    batch axis stays dynamic).
    """
    if _capturing():  # checked first: comparing the batch size would specialise a symbolic batch
        return _halo_attention(q, r_neg, k, v, plan, heads)
    b = k.shape[0]
    per_image = heads * plan.tiles * plan.tile_pixels * plan.halo_pixels * k.element_size()
    step = max(1, chunk_bytes // per_image)
    if b > step:
        return torch.cat([
            _halo_attention(q[i : i + step], r_neg[i : i + step], k[i : i + step], v[i : i + step], plan, heads)
            for i in range(0, b, step)
        ])
    return _halo_attention(q, r_neg, k, v, plan, heads)


def _capturing() -> bool:
    """True while torch traces, exports or compiles (a Python loop over the batch would be baked in)."""
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


def _halo_attention(
    q: torch.Tensor, r_neg: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: HaloPlan, heads: int
) -> torch.Tensor:
    b, c, hh, ww = k.shape
    d = c // heads
    bh = b * heads
    n_t, t_pix, k_pix = plan.tiles, plan.tile_pixels, plan.halo_pixels
    # Channels-last rows so that each gathered index copies one contiguous vector.
    qe = torch.cat([q.reshape(b, heads, d, hh * ww), r_neg.reshape(b, heads, 2, hh * ww)], 2)
    qe = qe.reshape(bh, d + 2, hh * ww).transpose(1, 2)
    q_t = qe[:, plan.query_index].reshape(bh, n_t, t_pix, d + 2)
    # Keys gain their coordinates as two more channels before the gather (the small tensor).
    ke = torch.cat([k.reshape(b, heads, d, hh * ww), plan.coords.expand(b, heads, 2, hh * ww)], 2)
    k_t = ke.reshape(bh, d + 2, hh * ww).transpose(1, 2)[:, plan.key_index].reshape(bh, n_t, k_pix, d + 2)
    v_t = v.reshape(bh, d, hh * ww).transpose(1, 2)[:, plan.key_index].reshape(bh, n_t, k_pix, d)
    logits = torch.matmul(q_t, k_t.transpose(2, 3)) + plan.mask
    out = torch.matmul(torch.softmax(logits, dim=-1), v_t)  # (bh, tiles, T*T, d)
    out = out.reshape(bh, n_t * t_pix, d)[:, plan.output_index]  # (bh, Ho*Wo, d)
    h_out, w_out = plan.out_size
    return out.transpose(1, 2).reshape(b, c, h_out, w_out)
