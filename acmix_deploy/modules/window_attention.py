"""ACmix's window attention as blocked ("halo") matrix products.

The official operator unfolds keys and values into ``ka*ka``-fold copies
(``nn.Unfold``), multiplies element-wise and sums; that is memory bound and
costs 88% of an ACmix-ResNet-50's time.  Here the output is tiled into blocks
of ``T x T`` pixels; each block gathers the ``K x K`` halo of keys and values
that its pixels' windows cover (``K = (T - 1) * stride + ka``) once, computes
all logits of the block with one matrix product, masks the positions outside
each pixel's own window, and aggregates the values with a second product.

Layout.  The core reads the fused 1x1 convolution's output ``(b, 3C, H, W)``
with channels in *head-dimension-major* order, channel ``i * 3h + t`` holding
dimension ``i`` of map ``t`` (``t < h``: the queries of head ``t``; then the
keys, then the values of each head).  That is the order the grouped
convolution path reads, and one transpose turns it into ``(b, 3h, H*W, d)``,
rows of ``d`` channels, split into queries, keys and values of shape
``(b, h, H*W, d)``.  Each is gathered by row (one index table of shape
``(tiles, pixels)`` for all heads and the batch) straight into the shape of
the matrix products, ``(b, h, tiles, pixels, d)``.

Exactness, by construction:

* **Reflection padding.**  The halo is gathered with precomputed indices into
  the *unpadded* map, the reflection built into the indices.  Every slot of a
  pixel's window is a distinct halo slot, so a key that the reflection brings
  in twice is counted twice, as in the unfold form.
* **Positional term.**  ACmix's logit of neighbour ``n`` of pixel ``p`` is
  ``q(p) . (k(n) + pe(p) - pe(n))`` with ``pe = conv_p(loc)``.  The term
  ``q(p) . pe(p)`` is the same for all neighbours of ``p`` and softmax is
  invariant to it (so is the bias of ``conv_p``), hence the logit is exactly
  ``q(p) . k'(n)`` with ``k' = k - W_p loc``: the keys are offset once, before
  the gather, by a map that depends only on the position.  Reflection maps
  ``k`` and ``pe`` alike, so the offset key of a reflected slot is right too.
* **Masking.**  Each query row of a block keeps exactly the ``ka*ka`` halo
  slots of its window (additive ``-inf`` elsewhere), so the softmax sees the
  same set of logits as the unfold form; only the summation order differs.

Only standard operators are used (Transpose, Split, Sub, Gather, MatMul, Add,
Softmax, Reshape), so the graph exports to ONNX and parses in TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["HaloPlan", "make_halo_plan", "halo_attention", "choose_tile"]

# Tile sizes considered by choose_tile (smaller tiles launch too many tiny products).
TILE_CANDIDATES = range(3, 9)


def choose_tile(height: int, width: int, kernel: int, stride: int, head_dim: int) -> int:
    """Tile size minimising the memory traffic of the core, by a count of elements moved.

    Per head, a ``T x T`` tiling of the ``H_o x W_o`` output has
    ``n = ceil(H_o/T) * ceil(W_o/T)`` blocks with ``K^2`` halo slots each.  The
    logits (``n T^2 K^2``) are written by the first product, read and written
    by the mask and by the softmax and read by the second product (6 passes);
    the gathered keys and values (``2 n K^2 d``) are written by the gather
    and read by a product (2 passes).  Minimising ``n K^2 (6 T^2 + 4 d)``
    gives 4x4 tiles for the 56x56 and 28x28 maps of ACmix-ResNet-50 and for
    its first stride-2 block, 7x7 tiles for 14x14 and 7x7 maps
    (docs/deploy_attention.md has the timings behind this choice).  Ties go to
    the larger tile (fewer, larger products).
    """
    h_out, w_out = (height - 1) // stride + 1, (width - 1) // stride + 1
    best, best_cost = None, None
    for t in TILE_CANDIDATES:
        ty, tx = min(t, h_out), min(t, w_out)
        blocks = -(-h_out // ty) * -(-w_out // tx)
        halo = ((ty - 1) * stride + kernel) * ((tx - 1) * stride + kernel)
        cost = blocks * halo * (6 * ty * tx + 4 * head_dim)
        if best_cost is None or cost <= best_cost:
            best, best_cost = t, cost
    return min(best, max(h_out, w_out))  # a tile beyond the output is the output


# Eager execution splits the batch so that one chunk's logits stay within this
# many bytes: the logits, softmax and second product then run in cache.  On the
# 2-core CI machine this made a batch of 8 at 56x56 (C=64) 2.6x faster.
CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class HaloPlan:
    """Index tables for one input size (all depend only on H, W, ka, stride and the tile).

    Indices are flat input positions ``y * W + x``; the same tables serve every
    head and image.
    """

    out_size: tuple[int, int]
    heads: int  # sizes the eager batch chunks
    tiles: int  # number of blocks
    tile_pixels: int  # T_y * T_x queries per block
    halo_pixels: int  # K_y * K_x keys per block
    query_index: torch.Tensor  # (tiles, tile_pixels): input position of each query slot
    key_index: torch.Tensor  # (tiles, halo_pixels): input position of each key/value slot
    output_index: torch.Tensor  # (H_out * W_out,) query slot of each output pixel
    mask: torch.Tensor  # (tile_pixels, halo_pixels): 0 inside the window, -inf outside
    coords: torch.Tensor  # (H*W, 2): loc of every input position (width, height coordinate)


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Reflection-pad semantics (edge not repeated), then clamp what lies beyond any window."""
    idx = np.where(idx < 0, -idx, idx)
    idx = np.where(idx > n - 1, 2 * (n - 1) - idx, idx)
    return np.clip(idx, 0, n - 1)


def make_halo_plan(
    height: int, width: int, kernel: int, stride: int = 1, heads: int = 1, head_dim: int = 1,
    tile: int | None = None, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
) -> HaloPlan:
    """Build the index tables for one input size (``tile`` defaults to :func:`choose_tile`).

    Computed with NumPy on purpose: when a model is traced (ONNX export), the
    tables must enter the graph as constants, not as traced index arithmetic.
    """
    pad = (kernel - 1) // 2
    tile = tile or choose_tile(height, width, kernel, stride, head_dim)
    h_out, w_out = (height - 1) // stride + 1, (width - 1) // stride + 1
    ty, tx = min(tile, h_out), min(tile, w_out)
    nty, ntx = -(-h_out // ty), -(-w_out // tx)
    ky, kx = (ty - 1) * stride + kernel, (tx - 1) * stride + kernel
    ar = np.arange

    # Rows/cols of the halo of block (a, b): input positions s*T*a - pad + k.
    rows = _reflect(stride * ty * ar(nty)[:, None] - pad + ar(ky)[None], height)
    cols = _reflect(stride * tx * ar(ntx)[:, None] - pad + ar(kx)[None], width)
    key_pos = (rows[:, None, :, None] * width + cols[None, :, None, :]).reshape(nty * ntx, ky * kx)

    # Queries: output pixel (a*T + p) reads input position stride * (a*T + p); slots past
    # the output edge (partial last block) repeat the last pixel and are discarded.
    qr = np.minimum(ty * ar(nty)[:, None] + ar(ty)[None], h_out - 1) * stride
    qc = np.minimum(tx * ar(ntx)[:, None] + ar(tx)[None], w_out - 1) * stride
    query_pos = (qr[:, None, :, None] * width + qc[None, :, None, :]).reshape(nty * ntx, ty * tx)

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
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32)).to(device)

    def values(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    return HaloPlan(
        out_size=(h_out, w_out), heads=heads, tiles=nty * ntx, tile_pixels=ty * tx, halo_pixels=ky * kx,
        query_index=index(query_pos), key_index=index(key_pos), output_index=index(output_index),
        mask=values(mask), coords=values(loc),
    )


def halo_attention(
    qkv: torch.Tensor, pos_weight: torch.Tensor, plan: HaloPlan, chunk_bytes: int = CHUNK_BYTES,
) -> torch.Tensor:
    """Window attention of ACmix.

    ``qkv``: ``(b, 3C, H, W)`` in head-dimension-major order (channel
    ``i * 3h + t``, see the module docstring), queries already scaled by
    ``d ** -0.5``; ``pos_weight``: ``(d, 2)``, the weight of ``conv_p``.
    Returns ``(b, C, H_out, W_out)`` in the usual head-major order::

        out_i(p) = sum_n softmax_n(q(sp) . (k(n) - W_p loc(n))) v_i(n)

    over the ``ka x ka`` reflection-padded window of input position ``s * p``.
    In eager mode the batch is processed in chunks of at most ``chunk_bytes``
    of logits; traced, exported or compiled graphs take the batch whole (the
    batch axis stays dynamic).
    """
    if _capturing():  # checked first: comparing the batch size would specialise a symbolic batch
        return _halo_attention(qkv, pos_weight, plan)
    b = qkv.shape[0]
    per_image = plan.heads * plan.tiles * plan.tile_pixels * plan.halo_pixels * qkv.element_size()
    step = max(1, chunk_bytes // per_image)
    if b > step:
        return torch.cat([_halo_attention(qkv[i : i + step], pos_weight, plan) for i in range(0, b, step)])
    return _halo_attention(qkv, pos_weight, plan)


def _capturing() -> bool:
    """True while torch traces, exports or compiles (a Python loop over the batch would be baked in)."""
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


def _halo_attention(qkv: torch.Tensor, pos_weight: torch.Tensor, plan: HaloPlan) -> torch.Tensor:
    _, c3, hh, ww = qkv.shape
    heads = plan.heads
    d = c3 // (3 * heads)
    n_t, t_pix = plan.tiles, plan.tile_pixels
    # One transpose to rows of d channels, (b, 3h, H*W, d), split into q, k, v.
    rows = qkv.reshape(-1, d, 3 * heads, hh * ww).permute(0, 2, 3, 1).contiguous()
    q, k, v = rows.split(heads, dim=1)
    k = k - torch.matmul(plan.coords, pos_weight.t())  # k - W_p loc
    q_t = q[:, :, plan.query_index]  # (b, h, tiles, T*T, d)
    k_t = k[:, :, plan.key_index]  # (b, h, tiles, K*K, d)
    v_t = v[:, :, plan.key_index]
    # In place: one large buffer fewer to allocate (and page in) per call in eager mode.
    logits = torch.matmul(q_t, k_t.transpose(-1, -2)).add_(plan.mask)
    out = torch.matmul(torch.softmax(logits, dim=-1), v_t)  # (b, h, tiles, T*T, d)
    out = out.reshape(-1, heads, n_t * t_pix, d)[:, :, plan.output_index]  # (b, h, Ho*Wo, d)
    h_out, w_out = plan.out_size
    return out.transpose(2, 3).reshape(-1, heads * d, h_out, w_out)
