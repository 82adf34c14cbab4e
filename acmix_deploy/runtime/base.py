"""The runner interface every backend implements, in the manner of Polygraphy's runners.

A :class:`Runner` says what it runs (``name``, ``backend``, ``device``), what it takes and returns
(``input_specs`` and ``output_specs``, one :class:`TensorSpec` per tensor, batch axis first) and which
batches it accepts (``batch_range``).  ``infer_outputs(x)`` runs one float32 NCHW batch and returns every
output, in the order of :func:`acmix_deploy.outputs.flatten_outputs`; ``infer(x)`` returns the one output
of a single-output model.  The input is checked here, once for every backend (rank, the fixed axes, the
batch range), before the backend sees it; subclasses implement :meth:`Runner._infer_impl`.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass
from typing import Callable, ClassVar, Union

import numpy as np

from ..artifacts.spatial import SpatialRule
from ..errors import AcmixDeployError, InputShapeError
from ..outputs import SINGLE_OUTPUT_NAME
from .per_size import PerSizeCache

__all__ = ["BATCH_AXIS", "Dim", "Runner", "TensorSpec", "check_single_output", "single_output"]

# A dimension: a fixed size, or a dynamic axis (a symbolic name such as "batch", or None when unnamed).
Dim = Union[int, str, None]
BATCH_AXIS = "batch"  # the name of a dynamic batch axis (the one the ONNX exporter gives it)


@dataclass(frozen=True)
class TensorSpec:
    """One tensor a runner takes or returns: ``shape`` has the batch axis first; a dynamic axis is a
    string (its symbolic name) or None."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    def __post_init__(self):
        shape = tuple(self.shape)
        for d in shape:
            if not (d is None or isinstance(d, str) or (isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                                                         and d >= 0)):
                raise ValueError(f"tensor {self.name}: a dimension is a size >= 0, a name or None, got {d!r}")
        object.__setattr__(self, "shape", tuple(int(d) if isinstance(d, (int, np.integer)) else d for d in shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def item_shape(self) -> tuple[Dim, ...]:
        """The shape of one sample (without the batch axis)."""
        return self.shape[1:]

    @property
    def is_static(self) -> bool:
        """Whether every axis but the batch axis has a fixed size."""
        return all(isinstance(d, int) for d in self.shape[1:])


def _dynamic(d: Dim) -> bool:
    return not isinstance(d, int)


def _shape_text(shape: tuple[Dim, ...]) -> str:
    return "(" + ", ".join("N" if i == 0 and _dynamic(d) else "?" if d is None else str(d)
                           for i, d in enumerate(shape)) + ")"


class Runner(abc.ABC):
    """What every backend exposes; see the module docstring.

    Subclasses call ``super().__init__`` with what their file records and implement :meth:`_infer_impl`
    (and, where timing needs the input placed first, :meth:`_prepare_impl`).  ``output_specs`` may be
    left ``None`` at construction (a torch module records nothing): they are then read from one run on
    zeros at the smallest batch, when the input's sample shape is fixed.  ``spatial_rule`` is the
    height x width an artifact with dynamic height and width promises (:mod:`acmix_deploy.artifacts.spatial`);
    other sizes are refused before they run.
    """

    backend: ClassVar[str] = ""  # "torch", "onnxruntime", "aoti", "tensorrt" (the loader's suffix table)
    batch_range_name: ClassVar[str] = "the model's batch range"  # how an out-of-range batch is described
    # Per-size sessions or compiled models of a graph with dynamic height and width (ONNX Runtime, OpenVINO)
    per_size: PerSizeCache | None = None

    def __init__(self, name: str, device: str, input_specs: tuple[TensorSpec, ...] | list[TensorSpec],
                 output_specs: tuple[TensorSpec, ...] | list[TensorSpec] | None = None,
                 batch_range: tuple[int, int | None] = (1, None), spatial_rule: SpatialRule | None = None):
        lo, hi = batch_range
        if lo < 1 or (hi is not None and hi < lo):
            raise AcmixDeployError(f"{name}: batch range {lo}..{hi} is empty or starts below 1")
        if not input_specs:
            raise AcmixDeployError(f"{name}: a runner takes at least one input")
        self.name = name
        self.device = str(device)
        self._input_specs = tuple(input_specs)
        self._output_specs = tuple(output_specs) if output_specs is not None else None
        self.batch_range: tuple[int, int | None] = (int(lo), None if hi is None else int(hi))
        self.spatial_rule = spatial_rule
        self._general_only = threading.local()  # set while warm_up runs in a thread

    @property
    def specialize(self) -> int:
        """How many per-size handles this runner keeps (:mod:`.per_size`; 0: none, always for a fixed size)."""
        return self.per_size.capacity if self.per_size is not None else 0

    @property
    def specialized_sizes(self) -> list[tuple[int, int]]:
        """The (height, width) of the per-size handles held now, least recently used first."""
        return self.per_size.sizes if self.per_size is not None else []

    # -- what it takes and returns -------------------------------------------------------------------

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self._input_specs

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        if self._output_specs is None:
            self._output_specs = self._specs_from_run()
        return self._output_specs

    @property
    def input_spec(self) -> TensorSpec:
        """The one input (every model this package exports takes one image batch)."""
        if len(self._input_specs) != 1:
            raise AcmixDeployError(f"{self.name} takes {len(self._input_specs)} inputs; use input_specs")
        return self._input_specs[0]

    @property
    def output_spec(self) -> TensorSpec:
        """The one output of a single-output model; a model with several refuses (use ``output_specs``)."""
        specs = self.output_specs
        check_single_output(len(specs), self.name, [s.name for s in specs], "output_spec", "output_specs")
        return specs[0]

    @property
    def output_names(self) -> list[str] | None:
        """The outputs' names where they are known without running (else None until the first run)."""
        return [s.name for s in self._output_specs] if self._output_specs is not None else None

    # -- running ---------------------------------------------------------------------------------------

    def infer_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output of the model on the batch ``x`` (float32, NCHW), in the model's order."""
        self.check_input(x)
        outs = list(self._infer_impl(x))
        if self._output_specs is not None and len(outs) != len(self._output_specs):
            names = ", ".join(s.name for s in self._output_specs)
            raise AcmixDeployError(f"{self.name} returned {len(outs)} output(s) where it declares "
                                   f"{len(self._output_specs)} ({names})")
        return outs

    def infer(self, x: np.ndarray) -> np.ndarray:
        """The one output of a single-output model (refused, before running when known, for several)."""
        names = self.output_names
        if names is not None:
            check_single_output(len(names), self.name, names)
        return single_output(self.infer_outputs(x), self.name, self.output_names)

    def prepare(self, x: np.ndarray) -> Callable[[], object]:
        """Check ``x``, place it where the backend reads it, and return a call that runs the model once.

        The call returns the backend's own outputs (device tensors for TensorRT) without copying them
        back: profilers time it, so the host-side preparation stays outside the timing.
        """
        self.check_input(x)
        return self._prepare_impl(x)

    def check_input(self, x: np.ndarray) -> None:
        """Refuse a batch the model cannot take: wrong rank, a fixed axis of another size, a batch outside
        :attr:`batch_range`, a height x width outside :attr:`spatial_rule`."""
        spec = self.input_spec
        if not isinstance(x, np.ndarray):
            raise InputShapeError(f"{self.name} takes a NumPy array, got {type(x).__name__}")
        if x.ndim != len(spec.shape) or any(isinstance(d, int) and d != s for d, s in zip(spec.shape[1:], x.shape[1:])):
            raise InputShapeError(f"{self.name} takes {spec.name} of shape {_shape_text(spec.shape)}, got {x.shape}")
        lo, hi = self.batch_range
        if not (lo <= x.shape[0] and (hi is None or x.shape[0] <= hi)):
            span = f"{lo}.." if hi is None else f"{lo}..{hi}"
            raise InputShapeError(f"batch {x.shape[0]} is outside {self.batch_range_name} {span}")
        if self.spatial_rule is not None:
            self.spatial_rule.check(*x.shape[-2:], what=self.name)

    def warm_up(self) -> list[np.ndarray]:
        """Run one batch of zeros at the smallest batch, check the outputs against the specs and fill what
        they leave open (a dynamic axis other than the batch axis, the dtype) from what the run returned.

        Needs a fixed sample shape, or an NCHW input with fixed channels and a :attr:`spatial_rule` (a graph
        with dynamic height and width runs at the rule's smallest size); returns the outputs.
        """
        spec = self.input_spec
        item = spec.shape[1:]
        if not spec.is_static:
            if self.spatial_rule is None or len(item) != 3 or not isinstance(item[0], int):
                raise AcmixDeployError(f"{self.name}: input {spec.name} has a dynamic sample shape "
                                       f"{_shape_text(spec.shape)}; a warm-up run needs a fixed one")
            item = (item[0], *self.spatial_rule.minimum)
        n = self.batch_range[0]
        self._general_only.active = True  # this thread, this run: no per-size handle for the warm-up size
        try:
            outs = self.infer_outputs(np.zeros((n, *item), dtype=spec.dtype))
        finally:
            self._general_only.active = False
        self._output_specs = self._merge_specs(outs, n)
        return outs

    def per_size_handle(self, x: np.ndarray) -> object | None:
        """The per-size handle (session, compiled model) that runs ``x``, if there is (or now is) one; None:
        the general one (no per-size handles, not an NCHW batch, or a warm-up run in this thread)."""
        if self.per_size is None or x.ndim != 4 or getattr(self._general_only, "active", False):
            return None
        return self.per_size.get((int(x.shape[2]), int(x.shape[3])))

    # -- for subclasses --------------------------------------------------------------------------------

    @abc.abstractmethod
    def _infer_impl(self, x: np.ndarray) -> list[np.ndarray]:
        """Run the checked batch ``x``; every output as a NumPy array (floating outputs as float32)."""

    def _prepare_impl(self, x: np.ndarray) -> Callable[[], object]:
        return lambda: self._infer_impl(x)

    def _run_output_names(self, count: int) -> list[str]:
        """Names for ``count`` outputs of a run when the runner records none: the naming rule of
        :mod:`acmix_deploy.outputs` for a plain tensor or list."""
        return [SINGLE_OUTPUT_NAME] if count == 1 else [f"output{i}" for i in range(count)]

    def _batch_dim(self, n: int) -> Dim:
        lo, hi = self.batch_range
        return n if lo == hi else self.input_spec.shape[0] if _dynamic(self.input_spec.shape[0]) else BATCH_AXIS

    def _specs_from_run(self) -> tuple[TensorSpec, ...]:
        spec = self.input_spec
        if not spec.is_static:
            raise AcmixDeployError(f"{self.name} records no output specs and its input {spec.name} has a dynamic "
                                   f"sample shape {_shape_text(spec.shape)}: they are known after a run")
        self.warm_up()
        return self._output_specs  # type: ignore[return-value]

    def _merge_specs(self, outs: list[np.ndarray], n: int) -> tuple[TensorSpec, ...]:
        known = self._output_specs
        names = [s.name for s in known] if known is not None else (self.output_names or self._run_output_names(len(outs)))
        if len(names) != len(outs):
            raise AcmixDeployError(f"{self.name} records {len(names)} output name(s) ({', '.join(names)}) but "
                                   f"returns {len(outs)} output(s); re-export it")
        specs = []
        for i, (name, out) in enumerate(zip(names, outs)):
            out = np.asarray(out)
            if out.ndim < 1 or out.shape[0] != n:
                raise AcmixDeployError(f"{self.name}: output {name} has shape {out.shape}, with no batch axis of "
                                       f"size {n}")
            shape: list[Dim] = [self._batch_dim(n), *out.shape[1:]]
            if known is not None:
                declared = known[i].shape
                if len(declared) != out.ndim or any(isinstance(d, int) and d != s
                                                    for d, s in zip(declared[1:], out.shape[1:])):
                    raise AcmixDeployError(f"{self.name}: output {name} has shape {out.shape} where the model "
                                           f"declares {_shape_text(declared)}")
                if _dynamic(declared[0]):
                    shape[0] = declared[0]  # the file's own name for its batch axis
                if self.spatial_rule is not None:  # dynamic height and width: what follows the size stays open
                    shape[1:] = [d if _dynamic(d) else s for d, s in zip(declared[1:], shape[1:])]
            specs.append(TensorSpec(name, tuple(shape), out.dtype))
        return tuple(specs)


def check_single_output(count: int, what: str, names: list[str] | None = None, call: str = "infer(x)",
                        instead: str = "infer_outputs(x)") -> None:
    """Refuse ``infer`` on a model with ``count`` != 1 outputs: returning the first silently would hand a
    detector's raw boxes to code that expects the whole result."""
    if count != 1:
        listed = f" ({', '.join(names)})" if names else ""
        raise AcmixDeployError(
            f"{what} has {count} outputs{listed}; {call} returns a single output: use {instead}, "
            "which returns all of them in order"
        )


def single_output(outputs: list[np.ndarray], what: str, names: list[str] | None = None) -> np.ndarray:
    """The one output of a single-output model (see :func:`check_single_output`)."""
    check_single_output(len(outputs), what, names)
    return outputs[0]
