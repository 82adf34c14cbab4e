"""The input sizes an artifact with dynamic height and width accepts, and how that rule is written down.

A graph exported with dynamic height and width (``dynamic_hw``) is exact at every size its operators can
take.  For ACmix that is: at every ACmix block, the input divisible by the block's stride and larger than
the reflection padding ``(kernel_att - 1) // 2``.  Expressed on the image, with ``r`` the downsampling
factor in front of a block (4 for ResNet's first stage), the rule is

    height and width multiples of ``multiple`` (the lcm of ``r * stride`` over the blocks),
    and at least ``minimum`` (the largest ``r * (padding + 1)``, rounded up to that multiple),

per axis.  The rule is sufficient, not necessary: some other sizes run too, but only these are promised
(and tested at export).  :class:`SpatialRule` holds it; :meth:`SpatialRule.check` is the one place that
refuses a size, with an :class:`~acmix_deploy.errors.InputShapeError` that names the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import AcmixDeployError, InputShapeError

__all__ = ["SpatialRule"]


@dataclass(frozen=True)
class SpatialRule:
    """Valid (height, width): each a multiple of ``multiple[axis]`` and at least ``minimum[axis]``."""

    multiple: tuple[int, int] = (1, 1)
    minimum: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        for name in ("multiple", "minimum"):
            value = getattr(self, name)
            if (not isinstance(value, (tuple, list)) or len(value) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
                raise AcmixDeployError(f"spatial rule: {name} must be two positive integers, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if any(lo % m for lo, m in zip(self.minimum, self.multiple)):
            raise AcmixDeployError(f"spatial rule: minimum {self.minimum} is not a multiple of {self.multiple}")

    def valid(self, height: int, width: int) -> bool:
        return all(n >= lo and n % m == 0 for n, lo, m in zip((height, width), self.minimum, self.multiple))

    def describe(self) -> str:
        """``height a multiple of 32 and >= 128, width a multiple of 32 and >= 128`` (one clause if both agree)."""
        (mh, mw), (lh, lw) = self.multiple, self.minimum
        if (mh, lh) == (mw, lw):
            return f"height and width multiples of {mh}, at least {lh}"
        return f"height a multiple of {mh}, at least {lh}; width a multiple of {mw}, at least {lw}"

    def check(self, height: int, width: int, what: str = "the model") -> None:
        """Raise :class:`InputShapeError` unless ``height x width`` satisfies the rule."""
        if not self.valid(height, width):
            smaller = [max(lo, n // m * m) for n, lo, m in zip((height, width), self.minimum, self.multiple)]
            larger = [max(lo, -(-n // m) * m) for n, lo, m in zip((height, width), self.minimum, self.multiple)]
            near = sorted({tuple(smaller), tuple(larger)})
            raise InputShapeError(
                f"{what} takes inputs whose {self.describe()} (its attention windows need sizes "
                f"divisible by the strides and larger than the reflection padding); got {height}x{width}; "
                f"nearest valid: {' or '.join(f'{h}x{w}' for h, w in near)}")

    def examples(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Two valid sizes other than ``height x width``, neither square: where a dynamic graph is proved.

        The smallest height with the width one step up, and the smallest width with the height one step up:
        the smallest valid size of each axis is where reflection reaches furthest into the map, and one step
        up on the other axis makes the size differ from the export size and from a square."""
        (mh, mw), (lh, lw) = self.multiple, self.minimum

        def step_up(low: int, step: int, avoid: int, export: tuple[int, int]) -> int:
            """The size of the other axis: ``low + step``, stepped further if it equals ``avoid`` (square) or
            makes the export size."""
            n = low + step
            while n == avoid or (avoid, n) == export:
                n += step
            return n

        first = (lh, step_up(lw, mw, lh, (height, width)))
        second = (step_up(lh, mh, lw, (width, height)), lw)
        return first, second

    def to_json(self) -> dict[str, Any]:
        return {"multiple": list(self.multiple), "min": list(self.minimum), "rule": self.describe()}

    @classmethod
    def from_json(cls, value: Any) -> "SpatialRule":
        try:
            return cls(tuple(value["multiple"]), tuple(value["min"]))
        except (KeyError, TypeError) as exc:
            raise AcmixDeployError(f"spatial rule {value!r} is not a valid-size record ({exc})") from None

    def merge(self, other: "SpatialRule") -> "SpatialRule":
        """The rule both ``self`` and ``other`` accept (lcm of the multiples, the larger minimum, rounded up)."""
        mult = tuple(math.lcm(a, b) for a, b in zip(self.multiple, other.multiple))
        low = tuple(-(-max(a, b) // m) * m for a, b, m in zip(self.minimum, other.minimum, mult))
        return SpatialRule(mult, low)
