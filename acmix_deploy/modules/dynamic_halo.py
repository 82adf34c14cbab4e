"""The halo attention with dynamic height and width: index tables computed in the graph from the input's shape.

A fixed-size graph takes the attention core's index tables as constants of the traced size
(:func:`~acmix_deploy.modules.window_attention.make_halo_plan`).  A graph exported with dynamic height and
width (``export --dynamic-hw``) computes them from the shape of the core's input instead, with the same
algebra, so the one graph is exact at every valid size.  Only the tile and the number of block groups are
fixed at export (the tuning of the traced size, like TensorRT's ``opt`` shape).

The tables are cheap to compute but many small operators: ONNX Runtime spends about 1.7 us on each on one
thread (measured on an AMD EPYC), which on a small network at batch 1 is several percent of the run.  So
the ONNX spelling is written by hand (:class:`_HaloTablesOp`'s ``symbolic``) rather than traced from the
torch arithmetic, with as few operators as the algebra allows:

* both axes' sizes as one 2-vector, the ``Shape`` of ``qkv[0, 0]`` (a view without the batch axis, so that
  ONNX Runtime folds everything below into constants once height and width are fixed, see
  :mod:`acmix_deploy.runtime.per_size`), scalars picked by ``Gather``;
* reflection as ``max(last - |last - |i||, 0)`` on each axis's ``(blocks, halo)`` grid, combined into the
  halo table ``(tiles, K_y * K_x)`` by one broadcast ``Add``;
* the query table *gathered from the halo table*: the query slot ``(p, q)`` of a block is its halo slot
  ``(s p + pad, s q + pad)``, the centre of its own window, which is the input position ``s (T a + p)``
  exactly wherever that slot is an output pixel.  Slots past the output edge (partial last blocks) then
  read some other in-bounds position instead of a clamped one; their results are never read back;
* the output table as ``o_y T_x + (o_y // T_y) T_y T_x (n_x - 1) + o_x + (o_x // T_x) T_x (T_y - 1)``
  (the block-major slot of each output pixel, rearranged so that no remainder is needed);
* ACmix's ``loc`` axes as ``i * (2 / max(n - 1, 1)) - 1``, shaped to broadcast against the positional
  weight, so each block offsets its keys with two products and an add (no coordinate table, no MatMul).

Reshapes of the data use ONNX's 0 ("keep this axis") for the batch (:func:`_reshape`), where the traced
spelling computes the batch from ``Shape`` with four operators.  On ``acmix_resnet_tiny`` (four ACmix
blocks, four table sets) the in-graph shape arithmetic went from 541 operators to 316 and the whole graph
from 711 to 492 (176 at a fixed size); docs/dynamic_shapes.md has the measured cost.  :func:`_halo_tables`
computes the same tables in NumPy for eager mode and for the tracer, and the tests check the two
spellings agree at many sizes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .window_attention import _SOFTMAX_FLOOR, HaloPlan, _recording, _reflect

__all__ = ["DynamicHaloSpec", "DynamicHaloTables", "dynamic_halo_attention", "dynamic_halo_tables",
           "make_dynamic_halo_spec"]


@dataclass(frozen=True)
class DynamicHaloSpec:
    """What a graph with dynamic height and width fixes at export time: the tile and the number of groups.

    The tables that depend on the size (halo, query and output indices, coordinates) are computed from
    the input's shape by :func:`dynamic_halo_tables`; the mask depends only on the tile, the window and
    the stride, so it stays a constant.  ``groups`` is the plan's group count at the export size: at every
    size the blocks are cut into ``groups`` equal runs (the last run padded with copies of the last block,
    computed and discarded), so the run length grows with the image while the graph stays one graph.
    """

    kernel: int
    stride: int
    heads: int
    head_dim: int
    tile: tuple[int, int]  # (T_y, T_x)
    groups: int
    mask: torch.Tensor  # (T_y * T_x, K_y * K_x)
    row_identity: torch.Tensor | None
    map_index: tuple[torch.Tensor, torch.Tensor, torch.Tensor]

    @property
    def geometry(self) -> tuple[int, int, int, int, int]:
        """``(kernel, stride, T_y, T_x, groups)``: everything the tables depend on besides the size."""
        return self.kernel, self.stride, self.tile[0], self.tile[1], self.groups


def make_dynamic_halo_spec(plan: HaloPlan, kernel: int, stride: int, head_dim: int) -> DynamicHaloSpec:
    """The size-independent part of ``plan`` (built at the export size), for :func:`dynamic_halo_attention`.

    The dynamic graph cuts the blocks into runs of equal length, the last one padded with copies of the
    last block; the group count is chosen so that, at the traced size, runs are at most a quarter longer
    than the plan's groups and the fewest copies are computed (49 blocks in 9 groups would take 54 slots
    in runs of 6; runs of 7 take 49).
    """
    tiles, r0 = plan.tiles, -(-plan.tiles // len(plan.query_chunks))
    runs = range(r0, -(-5 * r0 // 4) + 1)
    run = min(runs, key=lambda r: (-(-tiles // r) * r - tiles, abs(r - r0)))
    return DynamicHaloSpec(kernel=kernel, stride=stride, heads=plan.heads, head_dim=head_dim, tile=plan.tile,
                           groups=-(-tiles // run), mask=plan.mask, row_identity=plan.row_identity,
                           map_index=plan.map_index)


@dataclass(frozen=True)
class DynamicHaloTables:
    """The size-dependent tables of one block input size (:func:`dynamic_halo_tables`).

    Index tables are int64; the query and key tables of each group keep a leading axis of 1 (the ONNX
    ``Split`` of the ``(groups, run, slots)`` table, without a ``Squeeze`` per group).
    """

    query_index: tuple[torch.Tensor, ...]  # per group: (1, run, T_y * T_x)
    key_index: tuple[torch.Tensor, ...]  # per group: (1, run, K_y * K_x)
    output_index: torch.Tensor  # (H_out * W_out,): the slot of each output pixel
    out_shape: torch.Tensor  # [0, -1, H_out, W_out]: the output's shape as ONNX Reshape reads it
    loc_w: torch.Tensor  # (1, W, 1): ACmix's loc, width coordinate of each column
    loc_h: torch.Tensor  # (H, 1, 1): height coordinate of each row


def _query_slots(geometry) -> np.ndarray:
    """Halo slot of each query slot of a block: the centre of its own window, ``(s p + pad, s q + pad)``."""
    ka, s, ty, tx, _ = geometry
    pad, kx = (ka - 1) // 2, (tx - 1) * s + ka
    return ((s * np.arange(ty) + pad)[:, None] * kx + (s * np.arange(tx) + pad)[None, :]).reshape(-1)


def _halo_tables(hh: int, ww: int, geometry, dtype: torch.dtype, device=None) -> tuple[torch.Tensor, ...]:
    """The tables of one ``hh x ww`` input in NumPy (eager mode and the tracer): the algebra of the ONNX spelling.

    Returns ``(*key groups, *query groups, output_index, out_shape, loc_w, loc_h)`` as tensors, ``out_shape``
    ``[0, -1, H_out, W_out]`` (ONNX ``Reshape``'s spelling: 0 keeps the batch, -1 infers the channels).
    """
    ka, s, ty, tx, groups = geometry
    pad = (ka - 1) // 2
    ky, kx = (ty - 1) * s + ka, (tx - 1) * s + ka
    h_out, w_out = (hh + s - 1) // s, (ww + s - 1) // s
    nty, ntx = (h_out + ty - 1) // ty, (w_out + tx - 1) // tx

    def reflected(n: int, t: int, k: int, nt: int) -> np.ndarray:  # (blocks, halo) input rows (or columns)
        pos = np.arange(-pad, nt * s * t - pad, s * t)[:, None] + np.arange(k)[None, :]
        return _reflect(pos, n)  # the static plan's reflection; the graph spells it max(l - |l - |i||, 0)

    rows, cols = reflected(hh, ty, ky, nty), reflected(ww, tx, kx, ntx)
    key = (rows[:, None, :, None] * ww + cols[None, :, None, :]).reshape(-1, ky * kx)
    tiles = nty * ntx
    if groups > 1:
        run = (tiles + groups - 1) // groups
        key = key[np.minimum(np.arange(run * groups), tiles - 1)]
    key = key.reshape(groups, -1, ky * kx)
    query = key[:, :, _query_slots(geometry)]
    oy, ox = np.arange(h_out), np.arange(w_out)
    slot_y = oy * tx + (oy // ty) * (ty * tx * (ntx - 1))
    slot_x = ox + (ox // tx) * (tx * (ty - 1))
    output_index = (slot_y[:, None] + slot_x[None, :]).reshape(-1)

    def loc(n: int) -> torch.Tensor:  # float arithmetic as the graph does it: one division, a product, a difference
        scale = torch.tensor(2.0, dtype=dtype) / torch.tensor(max(n - 1, 1), dtype=dtype)
        return torch.arange(n, dtype=torch.int64).to(dtype) * scale - 1.0

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)

    return (*(t(key[i:i + 1]) for i in range(groups)), *(t(query[i:i + 1]) for i in range(groups)),
            t(output_index), t(np.array([0, -1, h_out, w_out])),
            loc(ww).reshape(1, -1, 1).to(device), loc(hh).reshape(-1, 1, 1).to(device))


_ONNX_FLOAT = {torch.float32: 1, torch.float64: 11, torch.float16: 10, torch.bfloat16: 16}
_SCALAR_TYPE = {"Float": torch.float32, "Double": torch.float64, "Half": torch.float16, "BFloat16": torch.bfloat16}


def _halo_tables_onnx(g, qkv, geometry):
    """The ONNX spelling of :func:`_halo_tables` (the ``symbolic`` of :class:`_HaloTablesOp`).

    Int64 arithmetic on ``Shape(qkv)``: per table set, 1 ``Shape`` + 1 ``Slice``, then ``Gather`` picks of
    2-vectors, ``Range``, ``Abs``/``Sub``/``Max`` for the reflection, ``Div``/``Mul``/``Add``, ``Reshape`` to
    constant shapes, ``Split`` into the groups; ``Cast`` and float ``Div``/``Mul``/``Sub`` for ``loc``.
    Opsets 13 and later (integer ``Max``, ``Split`` with a split input).
    """
    ka, s, ty, tx, groups = geometry
    pad = (ka - 1) // 2
    ky, kx = (ty - 1) * s + ka, (tx - 1) * s + ka
    dtype = _SCALAR_TYPE.get(qkv.type().scalarType(), torch.float32)

    def c(value, dt=torch.int64):
        return g.op("Constant", value_t=torch.tensor(value, dtype=dt))

    def pick(vec, i):  # element i of a 2-vector, as a 0-d tensor
        return g.op("Gather", vec, c(i), axis_i=0)

    def op(name, *args, **kw):
        return g.op(name, *args, **kw)

    # [H, W] as the shape of qkv[0, 0] (channel 0 first: N*H*W values copied, not 3C*H*W): a tensor without
    # the batch axis, so that once height and width are fixed (ONNX Runtime's free dimension overrides) its
    # Shape and all of the arithmetic below fold into constants, batch still dynamic (ONNX Runtime folds a
    # Shape only when every axis of its input is known).
    zero = c(0)
    hw = op("Shape", op("Gather", op("Gather", qkv, zero, axis_i=1), zero, axis_i=0))
    out = hw if s == 1 else op("Div", op("Add", hw, c(s - 1)), c(s))  # [H_out, W_out]
    nt = op("Div", op("Add", out, c([ty - 1, tx - 1])), c([ty, tx]))  # blocks per axis
    limit = op("Sub", op("Mul", nt, c([s * ty, s * tx])), c(pad))
    last = op("Sub", hw, c(1))

    def reflected(i, t, k, base_shape, k_shape):
        base = op("Range", c(-pad), pick(limit, i), c(s * t))
        pos = op("Add", op("Reshape", base, c(base_shape)), c(np.arange(k).reshape(k_shape).tolist()))
        n1 = pick(last, i)
        inner = op("Sub", n1, op("Abs", pos))
        return op("Max", op("Sub", n1, op("Abs", inner)), c(0))

    width = pick(hw, 1)
    rows = reflected(0, ty, ky, [-1, 1, 1, 1], [1, 1, ky, 1])  # (n_y, 1, K_y, 1)
    cols = reflected(1, tx, kx, [1, -1, 1, 1], [1, 1, 1, kx])  # (1, n_x, 1, K_x)
    key = op("Reshape", op("Add", op("Mul", rows, width), cols), c([-1, ky * kx]))  # (tiles, K_y K_x)
    ntx = pick(nt, 1)
    if groups > 1:
        tiles = op("Mul", pick(nt, 0), ntx)
        run = op("Div", op("Add", tiles, c(groups - 1)), c(groups))
        ids = op("Min", op("Range", c(0), op("Mul", run, c(groups)), c(1)), op("Sub", tiles, c(1)))
        key = op("Gather", key, ids, axis_i=0)
    key = op("Reshape", key, c([groups, -1, ky * kx]))
    query = op("Gather", key, c(_query_slots(geometry).tolist()), axis_i=2)
    if groups > 1:
        split = c([1] * groups)
        keys = op("Split", key, split, axis_i=0, outputs=groups)
        queries = op("Split", query, split, axis_i=0, outputs=groups)
    else:
        keys, queries = [key], [query]

    out_shape = op("Concat", c([0, -1]), out, axis_i=0)
    oy = op("Range", c(0), pick(out, 0), c(1))
    ox = op("Range", c(0), pick(out, 1), c(1))
    slot_y = op("Add", op("Mul", oy, c(tx)),
                op("Mul", op("Div", oy, c(ty)), op("Mul", op("Sub", ntx, c(1)), c(ty * tx))))
    slot_x = ox if ty == 1 else op("Add", ox, op("Mul", op("Div", ox, c(tx)), c(tx * (ty - 1))))
    output_index = op("Reshape", op("Add", op("Reshape", slot_y, c([-1, 1])), slot_x), c([-1]))

    to = _ONNX_FLOAT.get(dtype, 1)
    one = c(1.0, dtype)
    scale = op("Div", c(2.0, dtype), op("Max", op("Sub", op("Cast", hw, to_i=to), one), one))

    def loc(i, n, shape):
        coord = op("Sub", op("Mul", op("Cast", op("Range", c(0), n, c(1)), to_i=to), pick(scale, i)), one)
        return op("Reshape", coord, c(shape))

    loc_w = loc(1, width, [1, -1, 1])
    loc_h = loc(0, pick(hw, 0), [-1, 1, 1])
    return (*keys, *queries, output_index, out_shape, loc_w, loc_h)


class _HaloTablesOp(torch.autograd.Function):
    """The tables as one traced operator: NumPy values at the traced size, the hand-written ONNX in the graph."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, geometry):  # noqa: D102 (see the class)
        with warnings.catch_warnings():  # the tracer's "constant in the trace" notes: the symbolic replaces them
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return _halo_tables(int(qkv.shape[2]), int(qkv.shape[3]), geometry, qkv.dtype, qkv.device)

    @staticmethod
    def symbolic(g, qkv, geometry):  # noqa: D102
        return _halo_tables_onnx(g, qkv, geometry)


def dynamic_halo_tables(qkv: torch.Tensor, spec: DynamicHaloSpec) -> DynamicHaloTables:
    """All tables :func:`dynamic_halo_attention` needs for ``qkv``'s height and width.

    While the ONNX exporter traces, one :class:`_HaloTablesOp` (the hand-written ONNX arithmetic on
    ``Shape(qkv)``); otherwise the same tables computed in NumPy.  Blocks whose inputs always have the same
    size may share one result (``ACmixDeploy`` does so within one export, see
    :func:`acmix_deploy.modules.acmix.dynamic_spatial_export`), so the arithmetic enters the graph once.
    """
    geometry = spec.geometry
    if torch.jit.is_tracing():
        values = _HaloTablesOp.apply(qkv, geometry)
    else:
        values = _halo_tables(int(qkv.shape[2]), int(qkv.shape[3]), geometry, qkv.dtype, qkv.device)
    g = spec.groups
    keys, queries, (output_index, out_shape, loc_w, loc_h) = values[:g], values[g:2 * g], values[2 * g:]
    return DynamicHaloTables(tuple(queries), tuple(keys), output_index, out_shape, loc_w, loc_h)


class _ReshapeOp(torch.autograd.Function):
    """``Reshape`` with ONNX's rule that 0 keeps the input's size on that axis: one node, no shape arithmetic."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, shape):  # noqa: D102 (see the class)
        dims = shape.tolist() if isinstance(shape, torch.Tensor) else list(shape)
        return x.reshape([x.shape[i] if v == 0 else v for i, v in enumerate(dims)])

    @staticmethod
    def symbolic(g, x, shape):  # noqa: D102
        if isinstance(shape, (tuple, list)):
            shape = g.op("Constant", value_t=torch.tensor(shape, dtype=torch.int64))
        return g.op("Reshape", x, shape)


def _reshape(x: torch.Tensor, shape) -> torch.Tensor:
    """``x`` reshaped to ``shape`` (a tuple of ints or a 1-D int64 tensor), 0 keeping ``x``'s size on that axis.

    The exporter spells a reshape to a traced size as ``Shape``, ``Gather``, ``Unsqueeze``, ``Concat`` and
    ``Reshape``; with the 0 rule the batch needs no arithmetic at all.
    """
    if torch.jit.is_tracing():
        return _ReshapeOp.apply(x, shape)
    return _ReshapeOp.forward(None, x, shape)


def dynamic_halo_attention(qkv: torch.Tensor, pos_weight: torch.Tensor, spec: DynamicHaloSpec,
                           tables: DynamicHaloTables | None = None) -> torch.Tensor:
    """:func:`~acmix_deploy.modules.window_attention.halo_attention` (graph spelling), tables from ``qkv``'s shape.

    Used when a graph is recorded with dynamic height and width (``ACmixDeploy`` under
    :func:`acmix_deploy.modules.acmix.dynamic_spatial_export`), so one graph is exact at every valid size.
    Same algebra as the static plan: reflected halo indices into the unpadded map, a mask of each pixel's
    own window, keys offset by ``-W_p loc``.  ``tables`` (default: computed here) must be
    :func:`dynamic_halo_tables` of a tensor of ``qkv``'s height and width.
    """
    heads, d = spec.heads, spec.head_dim
    if tables is None:
        tables = dynamic_halo_tables(qkv, spec)
    # (b, 3C, H, W) -> (b, 3h, H*W, d): rows of d channels, as in halo_attention's graph spelling.
    if spec.row_identity is not None:
        rows = torch.matmul(_reshape(qkv, (0, d, -1)).transpose(1, 2), spec.row_identity)
        rows = _reshape(rows, (0, 3 * heads, -1, d))
    else:
        rows = _reshape(qkv, (0, d, 3 * heads, -1)).permute(0, 2, 3, 1)
    q, k, v = (rows[:, maps] for maps in spec.map_index)
    # k - W_p loc, the offset as (H, 1, d) + (1, W, d) (the weight's columns are constants of the graph).
    offset = tables.loc_h * pos_weight[:, 1] + tables.loc_w * pos_weight[:, 0]
    k = k - offset.reshape(-1, d)
    floor = _SOFTMAX_FLOOR.get() if _recording() else None
    outs = []
    for qi, ki in zip(tables.query_index, tables.key_index):  # (1, run, slots): gathers of (b, h, 1, run, slots, d)
        logits = torch.matmul(q[:, :, qi], k[:, :, ki].transpose(-1, -2)) + spec.mask
        if floor is not None:  # as in halo_attention: every row holds its own pixel's logit
            logits = torch.maximum(logits, logits.amax(-1, keepdim=True) - floor)
        outs.append(torch.matmul(torch.softmax(logits, dim=-1), v[:, :, ki]))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, 2)  # (b, h, groups, run, T*T, d)
    out = _reshape(out, (0, heads, -1, d))[:, :, tables.output_index]  # (b, h, Ho*Wo, d)
    # (b, C, Ho, Wo).  The exporter cannot name these sizes; exporters.onnx.name_symbolic_sizes does, so that
    # ONNX Runtime sees them equal to the convolution path's and fuses the sum that follows.
    return _reshape(out.transpose(2, 3), tables.out_shape)
