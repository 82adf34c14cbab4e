"""Per-size handles of a graph with dynamic height and width: sessions (ONNX Runtime) or compiled models (OpenVINO).

A graph exported with ``--dynamic-hw`` computes its attention tables from the input's height and width.
Loaded with height and width fixed (ONNX Runtime's free dimension overrides, OpenVINO's ``reshape``), the
runtime folds that arithmetic into constants and the graph runs as fast as one exported at that size,
batch still dynamic.  :class:`PerSizeCache` keeps such handles for the sizes a runner sees, the most
recently used ``capacity`` of them; the runner falls back to its general handle for any other size.

Two ways to build: at the first sight of a size, waiting for it (library use, ``profile``); or, with
``background=True`` (the server), only once a size has been seen :data:`SPECIALIZE_AFTER` times, in a
background thread, one build at a time, while the general handle answers meanwhile, so that no request
waits for a build and a client cannot make the server build one handle per request.
"""

from __future__ import annotations

import collections
import threading
import warnings
from typing import Callable

__all__ = ["SPECIALIZE_AFTER", "PerSizeCache"]

# How many requests of one size a background cache sees before it builds that size's handle.
SPECIALIZE_AFTER = 3
# Sizes whose requests are counted at once; beyond, the counts start afresh (many sizes seen once each).
_MAX_COUNTED = 1024

Size = tuple[int, int]


class PerSizeCache:
    """Handles built by ``build((height, width))``, at most ``capacity`` of them, least recently used dropped.

    ``what`` names the model in the warning given when a build fails (that size then stays on the general
    handle for good).
    """

    def __init__(self, build: Callable[[Size], object], capacity: int, background: bool = False, what: str = "model"):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity, self.background, self.what = capacity, background, what
        self._build = build
        self._handles: collections.OrderedDict[Size, object] = collections.OrderedDict()
        self._seen: collections.Counter[Size] = collections.Counter()
        self._building: set[Size] = set()
        self._failed: set[Size] = set()
        self._lock = threading.Lock()

    @property
    def sizes(self) -> list[Size]:
        """The sizes with a handle now, least recently used first."""
        with self._lock:
            return list(self._handles)

    @property
    def building(self) -> bool:
        with self._lock:
            return bool(self._building)

    def get(self, hw: Size) -> object | None:
        """The handle of ``hw``, building it now or in the background as the cache does; None: use the general one."""
        with self._lock:
            handle = self._handles.get(hw)
            if handle is not None:
                self._handles.move_to_end(hw)
                return handle
            if hw in self._failed or hw in self._building:
                return None
            if len(self._seen) >= _MAX_COUNTED:
                self._seen.clear()
            self._seen[hw] += 1
            if self.background and (self._building or self._seen[hw] < SPECIALIZE_AFTER):
                return None
            self._building.add(hw)
        if self.background:
            threading.Thread(target=self._add, args=(hw,), name=f"specialize-{hw[0]}x{hw[1]}", daemon=True).start()
            return None
        return self._add(hw)

    def _add(self, hw: Size) -> object | None:
        try:
            handle = self._build(hw)
        except Exception as exc:  # noqa: BLE001 - the general handle still runs this size
            warnings.warn(f"{self.what}: nothing specialised to {hw[0]}x{hw[1]} ({type(exc).__name__}: {exc}); "
                          "the general model runs it", stacklevel=2)
            handle = None
        with self._lock:
            self._building.discard(hw)
            self._seen.pop(hw, None)
            if handle is None:
                self._failed.add(hw)
                return None
            self._handles[hw] = handle
            while len(self._handles) > self.capacity:
                self._handles.popitem(last=False)
        return handle
