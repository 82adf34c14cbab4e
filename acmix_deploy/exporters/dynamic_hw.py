"""Exports with dynamic height and width: which models can have them, and which sizes they then take.

A model qualifies when every operator with a size-dependent table computes it from the input's shape in
the graph.  ACmix's deploy form does (:func:`acmix_deploy.modules.acmix.dynamic_spatial_export`);
X-volution and plain convolutions have no such tables.  The Swin-ACmix models do not qualify: their
structure itself is chosen per resolution (see :func:`refuse_fixed_structure`).

The valid sizes are derived by running the model once at the export size with a hook on every ACmix
block (:func:`derive_spatial_rule`), and checked at two more sizes (the smallest height, the smallest width): a model whose blocks' input sizes do not
scale with the image (valid convolutions, crops) is refused instead of being given a wrong rule.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..artifacts.spatial import SpatialRule
from ..errors import ConfigError, InputShapeError
from ..modules.acmix import ACmix, ACmixDeploy
from ..modules.swin_acmix import WindowAttentionACmix, WindowAttentionACmixDeploy, WindowAttentionACmixFolded

__all__ = ["SWIN_REASON", "derive_spatial_rule", "refuse_fixed_structure"]

SWIN_REASON = (
    "Swin-ACmix cannot be exported with dynamic height and width: its structure depends on the resolution. "
    "Every stage partitions the map into 7x7 windows (so height and width must be multiples of patch 4 x 2^3 "
    "merges x window 7 = 224 for all stages to tile), the shifted blocks' attention mask is a table of one "
    "window layout, and a stage no larger than a window switches to a single unshifted window of its own "
    "size. Export one file per input size ({imgsz})"
)


def refuse_fixed_structure(model: nn.Module) -> None:
    """Raise :class:`ConfigError` for a model that cannot have dynamic height and width (Swin-ACmix)."""
    swin = (WindowAttentionACmix, WindowAttentionACmixDeploy, WindowAttentionACmixFolded)
    if any(isinstance(m, swin) for m in model.modules()):
        raise ConfigError(SWIN_REASON, params=["imgsz"])


def _block_inputs(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, int, int]]:
    """Every ACmix block's input size during ``model(x)``, in call order."""
    seen: list[tuple[nn.Module, int, int]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append((mod, *args[0].shape[-2:])))
             for m in model.modules() if isinstance(m, (ACmix, ACmixDeploy))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def derive_spatial_rule(model: nn.Module, input_size: tuple[int, int, int]) -> SpatialRule:
    """The sizes ``model`` takes (see :mod:`acmix_deploy.artifacts.spatial`), proved at
    :meth:`SpatialRule.examples` (the smallest height, the smallest width).

    Raises :class:`ConfigError` when a block's input is not a whole fraction of the image at the export
    size, or when the fractions change at an example size (the rule would not hold)."""
    refuse_fixed_structure(model)
    param = next(model.parameters())
    c, height, width = input_size

    def run(h: int, w: int):
        return _block_inputs(model, torch.zeros(1, c, h, w, dtype=param.dtype, device=param.device))

    blocks = run(height, width)
    mult, low = [1, 1], [1, 1]
    ratios = []
    for module, bh, bw in blocks:
        pad = (module.kernel_att - 1) // 2
        ratio = []
        for axis, (full, part) in enumerate(((height, bh), (width, bw))):
            if full % part:
                raise ConfigError(
                    f"cannot derive the valid sizes for dynamic height and width: an ACmix block sees "
                    f"{bh}x{bw} for a {height}x{width} image, not a whole fraction of it; export at a size "
                    "that is a multiple of the network's total stride (e.g. 224 or 256 for a ResNet)")
            r = full // part
            ratio.append(r)
            mult[axis] = math.lcm(mult[axis], r * module.stride)
            low[axis] = max(low[axis], r * (pad + 1))
        ratios.append(ratio)
    rule = SpatialRule(tuple(mult), tuple(-(-lo // m) * m for lo, m in zip(low, mult)))
    for h2, w2 in rule.examples(height, width):  # the smallest height, then the smallest width
        if not blocks:  # nothing with a size rule of its own: the model must still run at the examples
            try:
                run(h2, w2)
            except Exception as exc:  # whatever the model's own layers raise
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(f"cannot export with dynamic height and width: the model has no ACmix block "
                                  f"(whose sizes acmix-deploy knows) and fails at {h2}x{w2}: {first}") from None
            continue
        try:
            again = run(h2, w2)
        except InputShapeError as exc:
            raise ConfigError(f"cannot export with dynamic height and width: the derived rule ({rule.describe()}) "
                              f"fails at {h2}x{w2}: {exc}") from None
        expected = [(h2 // rh, w2 // rw) for rh, rw in ratios]
        if [(bh, bw) for _, bh, bw in again] != expected:
            raise ConfigError(
                f"cannot export with dynamic height and width: at {h2}x{w2} the ACmix blocks see "
                f"{[(bh, bw) for _, bh, bw in again]}, not the same fractions of the image as at "
                f"{height}x{width} ({expected}); the model's layers do not scale with the input (valid "
                "convolutions or crops)")
    return rule
