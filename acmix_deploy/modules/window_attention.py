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
convolution path reads, and one transposition turns it into
``(b, 3h, H*W, d)``, rows of ``d`` channels (for small heads a product with
the ``d x d`` identity, which ONNX Runtime runs on all threads, where its
Transpose runs on one), split into queries, keys and values of shape
``(b, h, H*W, d)`` by three Gathers on the map axis (multi-threaded, unlike
Split).  Each is gathered by row (one index table of shape ``(tiles,
pixels)`` for all heads and the batch) straight into the shape of the matrix
products, ``(b, h, tiles, pixels, d)``; the queries of all blocks in one
Gather, cut into the groups by one Split.

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

Softmax floor (only when an exporter asks, :func:`softmax_floor`).  More than half of a block's logits
are masked (``-inf``), and ONNX Runtime's CPU softmax computes ``exp`` of every one of them through
subnormal intermediates, which Intel CPUs handle in slow microcode (an ``(8, 4, 10, 16, 100)`` softmax:
1.5 ms finite, 8.1 ms half masked).  In a graph recorded inside ``softmax_floor(m)`` every logit is first
raised to at least ``M - m``, ``M`` its row's largest.  Scaled by ``e^-M``, the normaliser is at least 1
(the largest term), so a raised logit's probability is at most ``e^-m`` after; at most ``n - 1`` of a row's
``n`` logits are raised, so they gain at most ``(n - 1) e^-m`` of probability in total and the others lose
exactly as much: the probabilities move by at most ``2 (n - 1) e^-m`` in sum, and the output by at most
``2 (n - 1) e^-m max|v|``.  The bound is reached when one logit is finite and the rest masked, with values
of opposite signs.  The halo has 100-169 slots in ACmix-ResNet-50: with ``m = 30``,
``2 * 168 e^-30 = 3.1e-11``, far below float32's rounding (6e-8).  No ``exp`` argument is then below ``-m``.

The blocks are processed in static groups of about ``CHUNK_BYTES`` of logits
per image, so that a group's logits stay in cache from the first product to
the second.

Only standard operators are used (Transpose, Split, Sub, Gather, MatMul, Add,
Softmax, Reshape; ReduceMax and Max with the floor), so the graph exports to ONNX and parses in TensorRT.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..util import scoped_value

__all__ = ["HaloPlan", "choose_tile", "conv_path_layout", "grouped_conv_channels_last", "halo_attention",
           "make_halo_plan", "recorded_softmax_floor", "softmax_floor"]

# Set only inside ``softmax_floor``: the margin below each row's largest logit that graph-spelled logits are
# raised to (None: the plain softmax).
_SOFTMAX_FLOOR: contextvars.ContextVar[float | None] = contextvars.ContextVar("acmix_softmax_floor", default=None)
# Set only inside ``conv_path_layout``: the memory layout eager convolution paths use (None: the default rule).
_CONV_LAYOUT: contextvars.ContextVar[str | None] = contextvars.ContextVar("acmix_conv_layout", default=None)
CONV_LAYOUTS = ("channels_last", "channels_first")
CONV_LAYOUT_ENV = "ACMIX_DEPLOY_CONV_LAYOUT"  # auto (default), channels_last or channels_first


@contextlib.contextmanager
def softmax_floor(margin: float | None):
    """Inside this block, graphs recorded from :func:`halo_attention` raise every logit to ``row max - margin``.

    The output moves by at most ``2 (n - 1) e^-margin max|v|`` for rows of ``n`` logits (see the module
    docstring); for
    backends whose ``exp`` is slow on the masked logits' subnormal intermediates.  Which backend gets it is
    the exporter's decision; eager torch never uses it, and ``None`` (the default) records the plain softmax.
    """
    if margin is not None and not margin > 0:
        raise ValueError(f"softmax floor margin must be positive, got {margin}")
    with scoped_value(_SOFTMAX_FLOOR, margin):
        yield


def recorded_softmax_floor() -> float | None:
    """The margin of the enclosing :func:`softmax_floor` while a graph is being recorded, else None."""
    return _SOFTMAX_FLOOR.get() if _recording() else None


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


# The blocks are processed in groups whose logits take at most this many bytes
# per image, so that the logits, mask, softmax and second product of a group
# stay in cache for a batch of a few images.  The grouping is static (part of
# the plan), so eager, traced and exported graphs share it and the batch axis
# stays dynamic.  ACmix-ResNet-50 block, ONNX Runtime, batch 8: 56x56 C=64
# 68.7 ms whole -> 59.4 ms in 14 groups; 28x28 C=128 33.7 -> 28.5 ms.
CHUNK_BYTES = 256 << 10

# Head dimensions up to this size turn the channel-first qkv map into rows of d
# channels with a product by the d x d identity instead of a Transpose: ONNX
# Runtime runs Transpose on one thread, a MatMul (with the transposition of
# its first operand fused, FusedMatMul transA) on all intra-op threads, and
# the product costs d multiply-adds per element.  It is exact: every output is
# one input times 1 plus products with 0.  ACmix-ResNet-50, ONNX Runtime, 2
# threads, batch 8, profile: a 56x56 block (d=16) Split + 3 Transposes 8.9 ms
# -> product + 3 Gathers 2.7 ms; a 28x28 block (d=32) 3 Transposes 0.9 ms
# against a 2.4 ms product; d=64 loses in isolation too (1.7 vs 3.1 ms).
TRANSPOSE_BY_PRODUCT_MAX_DIM = 16


@dataclass(frozen=True)
class HaloPlan:
    """Index tables for one input size (all depend only on H, W, ka, stride and the tile).

    Indices are flat input positions ``y * W + x``; the same tables serve every
    head and image.
    """

    out_size: tuple[int, int]
    heads: int
    tiles: int  # number of blocks
    tile_pixels: int  # T_y * T_x queries per block
    halo_pixels: int  # K_y * K_x keys per block
    query_index: torch.Tensor  # (tiles, tile_pixels): input position of each query slot
    key_index: torch.Tensor  # (tiles, halo_pixels): input position of each key/value slot
    output_index: torch.Tensor  # (H_out * W_out,) query slot of each output pixel
    mask: torch.Tensor  # (tile_pixels, halo_pixels): 0 inside the window, -inf outside
    coords: torch.Tensor  # (H*W, 2): loc of every input position (width, height coordinate)
    row_identity: torch.Tensor | None  # (d, d) identity when head_dim <= TRANSPOSE_BY_PRODUCT_MAX_DIM
    map_index: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (h,) maps of the queries, keys, values
    query_chunks: tuple[torch.Tensor, ...]  # query_index split into groups of blocks
    key_chunks: tuple[torch.Tensor, ...]  # key_index split the same way
    tile: tuple[int, int] = (0, 0)  # (T_y, T_x), the tile after clipping to the output


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Reflection-pad semantics (edge not repeated), then clamp what lies beyond any window."""
    idx = np.where(idx < 0, -idx, idx)
    idx = np.where(idx > n - 1, 2 * (n - 1) - idx, idx)
    return np.clip(idx, 0, n - 1)


def make_halo_plan(
    height: int, width: int, kernel: int, stride: int = 1, heads: int = 1, head_dim: int = 1,
    tile: int | tuple[int, int] | None = None, dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None, chunk_bytes: int = CHUNK_BYTES,
) -> HaloPlan:
    """Build the index tables for one input size (``tile`` defaults to :func:`choose_tile`).

    The blocks are split into groups of at most ``chunk_bytes`` of logits per
    image (at least one block per group).

    Computed with NumPy on purpose: when a model is traced (ONNX export), the
    tables must enter the graph as constants, not as traced index arithmetic.
    """
    pad = (kernel - 1) // 2
    tile = tile or choose_tile(height, width, kernel, stride, head_dim)
    tile_y, tile_x = (tile, tile) if isinstance(tile, int) else tile
    h_out, w_out = (height - 1) // stride + 1, (width - 1) // stride + 1
    ty, tx = min(tile_y, h_out), min(tile_x, w_out)
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

    tiles = nty * ntx
    per_tile = heads * ty * tx * ky * kx * torch.empty((), dtype=dtype).element_size()
    groups = min(tiles, max(1, -(-tiles * per_tile // chunk_bytes)))
    bounds = [round(i * tiles / groups) for i in range(groups + 1)]
    return HaloPlan(
        out_size=(h_out, w_out), heads=heads, tiles=tiles, tile_pixels=ty * tx, halo_pixels=ky * kx,
        query_index=index(query_pos), key_index=index(key_pos), output_index=index(output_index),
        mask=values(mask), coords=values(loc),
        row_identity=values(np.eye(head_dim)) if head_dim <= TRANSPOSE_BY_PRODUCT_MAX_DIM else None,
        map_index=tuple(index(ar(part * heads, (part + 1) * heads)) for part in range(3)),
        query_chunks=tuple(index(query_pos[a:z]) for a, z in zip(bounds[:-1], bounds[1:])),
        key_chunks=tuple(index(key_pos[a:z]) for a, z in zip(bounds[:-1], bounds[1:])),
        tile=(ty, tx),
    )


def _recording() -> bool:
    """True while a graph is being recorded (ONNX export, tracing, torch.compile / torch.export)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


@contextlib.contextmanager
def conv_path_layout(layout: str | None):
    """Inside this block, eager convolution paths run on ``layout`` memory (``"channels_last"`` or
    ``"channels_first"``) whatever the device and dtype; ``None`` restores the default rule of
    :func:`grouped_conv_channels_last`.  Recorded graphs are not affected (always channels-first).

    For a CPU where the default is measured slower (it was measured on one kind), and for side-by-side
    benchmarks (``benchmarks/conv_layout_speed.py``).  The same values either way, up to the
    convolution's summation order.
    """
    if layout is not None and layout not in CONV_LAYOUTS:
        raise ConfigError(f"conv path layout must be one of {', '.join(CONV_LAYOUTS)} or None, got {layout!r}")
    with scoped_value(_CONV_LAYOUT, layout):
        yield


def grouped_conv_channels_last(x: torch.Tensor) -> bool:
    """Whether a convolution path (grouped, a few channels per group) should read ``x`` as channels-last memory.

    Never while a graph is recorded (an exported ``Conv`` is channels-first; the backend picks its own
    layout).  Otherwise as :func:`conv_path_layout` says inside one, else as the environment variable
    ``ACMIX_DEPLOY_CONV_LAYOUT`` says (``channels_last`` or ``channels_first``: for a whole process, e.g.
    ``serve``, whose threads a context manager does not reach).  Otherwise (``auto``, the default) true for
    float32 CPU tensors: oneDNN's grouped kernels ran these convolutions 1.5-3.1x faster on channels-last
    memory than on channels-first maps, the conversion copy included (ACmix-ResNet-50's and Swin-T's shapes,
    docs/deploy_attention.md, docs/swin_acmix.md); whole models, torch eager, 1 thread, AMD EPYC with AVX2
    (``benchmarks/conv_layout_speed.py``, two runs): ACmix-ResNet-50 deploy / plain ResNet-50 1.59-1.66x ->
    1.36-1.44x at batch 1 and 1.62-1.65x -> 1.49-1.54x at batch 8, Swin-T + ACmix training / deploy
    1.00-1.01x -> 1.11-1.13x.  False on other devices (not measured) and for float64 (no oneDNN kernels:
    channels-last ran 1.8x slower).
    """
    if _recording():
        return False
    forced = _CONV_LAYOUT.get()
    if forced is None:
        forced = _env_conv_layout()
    if forced is not None:
        return forced == "channels_last"
    return x.device.type == "cpu" and x.dtype == torch.float32


def _env_conv_layout() -> str | None:
    """The layout the ``ACMIX_DEPLOY_CONV_LAYOUT`` environment variable asks for (None: unset or ``auto``)."""
    raw = os.environ.get(CONV_LAYOUT_ENV, "")
    value = raw.strip().lower()
    if value in ("", "auto"):
        return None
    if value not in CONV_LAYOUTS:
        raise ConfigError(f"{CONV_LAYOUT_ENV}={raw!r}: expected auto, {', '.join(CONV_LAYOUTS)}")
    return value


def halo_attention(qkv: torch.Tensor, pos_weight: torch.Tensor, plan: HaloPlan, *,
                   graph: bool | None = None) -> torch.Tensor:
    """Window attention of ACmix.

    ``qkv``: ``(b, 3C, H, W)`` in head-dimension-major order (channel
    ``i * 3h + t``, see the module docstring), queries already scaled by
    ``d ** -0.5``; ``pos_weight``: ``(d, 2)``, the weight of ``conv_p``.
    Returns ``(b, C, H_out, W_out)`` in the usual head-major order::

        out_i(p) = sum_n softmax_n(q(sp) . (k(n) - W_p loc(n))) v_i(n)

    over the ``ka x ka`` reflection-padded window of input position ``s * p``.
    The blocks are computed in the plan's groups (``query_chunks``), one
    group's logits at a time.

    Two spellings of the same computation, chosen by ``graph`` (default: a
    graph is being recorded, i.e. ONNX export, tracing or torch.compile):
    the graph spelling is the one tuned for ONNX Runtime (layout copies as
    multi-threaded products and Gathers, see the module docstring); eager
    torch runs the other one, where a transposition is one multi-threaded
    copy, q, k and v are views of it and ``index_select`` gathers (measured
    on ACmix-ResNet-50, torch eager, 3-7% faster than the graph spelling at
    1 and 2 threads).  For finite inputs both give bit-identical results (an
    ``inf`` in ``qkv`` becomes NaN through the identity product of the graph
    spelling).
    """
    _, c3, hh, ww = qkv.shape
    heads = plan.heads
    d = c3 // (3 * heads)
    if graph is None:
        graph = _recording()
    if plan.row_identity is not None and plan.row_identity.shape[0] != d:
        raise ValueError(f"halo plan built for head_dim {plan.row_identity.shape[0]}, got {d}")
    if graph:
        # One transposition to rows of d channels, (b, 3h, H*W, d), split into q, k, v.
        if plan.row_identity is not None:
            rows = torch.matmul(qkv.reshape(-1, d, 3 * heads * hh * ww).transpose(1, 2), plan.row_identity)
            rows = rows.reshape(-1, 3 * heads, hh * ww, d)
        else:
            rows = qkv.reshape(-1, d, 3 * heads, hh * ww).permute(0, 2, 3, 1).contiguous()
        # Split by three Gathers: ONNX Runtime runs Split on one thread, Gather on all intra-op threads.
        q, k, v = (rows[:, maps] for maps in plan.map_index)

        def take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return t[:, :, index]
    else:
        rows = qkv.reshape(-1, d, 3 * heads * hh * ww).transpose(1, 2).contiguous().view(-1, 3 * heads, hh * ww, d)
        q, k, v = rows[:, :heads], rows[:, heads:2 * heads], rows[:, 2 * heads:]

        def take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return t.index_select(2, index.reshape(-1)).view(*t.shape[:2], *index.shape, t.shape[-1])
    k = k - torch.matmul(plan.coords, pos_weight.t())  # k - W_p loc
    # The queries of all blocks in one gather (no halo: each query is read once), cut into the groups
    # by one Split: one operator per block instead of one per group.
    q_blocks = take(q, plan.query_index)  # (b, h, tiles, T*T, d)
    q_groups = q_blocks.split([len(c) for c in plan.query_chunks], dim=2) if len(plan.query_chunks) > 1 else (q_blocks,)
    floor = _SOFTMAX_FLOOR.get() if graph else None
    outs = []
    for q_group, k_index in zip(q_groups, plan.key_chunks):
        # (b, h, blocks, T*T, d) x (b, h, blocks, K*K, d); the mask is added in place, which in
        # eager mode saves allocating (and paging in) one more logits buffer.
        logits = torch.matmul(q_group, take(k, k_index).transpose(-1, -2)).add_(plan.mask)
        if floor is not None:  # every row holds its own pixel's logit, so its max is finite
            logits = torch.maximum(logits, logits.amax(-1, keepdim=True) - floor)
        outs.append(torch.matmul(torch.softmax(logits, dim=-1), take(v, k_index)))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, 2)  # (b, h, tiles, T*T, d)
    out = take(out.reshape(-1, heads, plan.tiles * plan.tile_pixels, d), plan.output_index)  # (b, h, Ho*Wo, d)
    h_out, w_out = plan.out_size
    return out.transpose(2, 3).reshape(-1, heads * d, h_out, w_out)
