"""Per-size handles of a graph with dynamic height and width: sessions (ONNX Runtime) or compiled models (OpenVINO).

A graph exported with ``--dynamic-hw`` computes its attention tables from the input's height and width.
Loaded with height and width fixed (ONNX Runtime's free dimension overrides, OpenVINO's ``reshape``), the
runtime folds that arithmetic into constants and the graph runs as fast as one exported at that size,
batch still dynamic.  :class:`PerSizeCache` keeps such handles for the sizes a runner sees, at most
``capacity`` of them; the runner falls back to its general handle for any other size.

Which sizes get a handle.  Every size's requests are counted (and every handle's uses), the counts halved
every :data:`AGE_EVERY` lookups so that they follow the recent traffic.  While there is a free slot, a
size gets a handle at its first request (``background=False``: library use) or at its
:data:`SPECIALIZE_AFTER`-th (``background=True``: the server).  Once the cache is full, a size replaces the
least recently used handle only when it has been requested at least :data:`SPECIALIZE_AFTER` times and
more than :data:`REPLACE_MARGIN` times as often as that handle has been used: traffic spread over more
sizes than slots keeps the handles it has instead of rebuilding one per miss (or one per random swing of
the counts), while a size that takes the traffic over gets a slot once the old counts have aged.  A
caller that visits its sizes one after the other (``profile``) gives the cache a slot per size.

How.  Without ``background`` the lookup builds the handle and waits for it.  With it, the build runs in a
background thread, one at a time, and the general handle answers meanwhile: no request waits for a
build, and a client cannot make the server build a handle per request.  A failed build is warned about;
that size stays on the general handle for :data:`RETRY_AFTER_S` seconds before it may be tried (and
warned about) again.
"""

from __future__ import annotations

import collections
import threading
import time
import warnings
from typing import Callable

__all__ = ["AGE_EVERY", "REPLACE_MARGIN", "RETRY_AFTER_S", "SPECIALIZE_AFTER", "PerSizeCache"]

# Requests of one size a background cache sees before it builds that size's handle.
SPECIALIZE_AFTER = 3
# Lookups between two halvings of every count.
AGE_EVERY = 1024
# A size replaces a held one only when requested more than this many times as often as that one was used.
REPLACE_MARGIN = 2
# Seconds a size whose build failed stays on the general handle before it may be tried again.
RETRY_AFTER_S = 60.0

Size = tuple[int, int]


class PerSizeCache:
    """Handles built by ``build((height, width))``, at most ``capacity`` of them (see the module docstring).

    ``what`` names the model in the warning given when a build fails.
    """

    def __init__(self, build: Callable[[Size], object], capacity: int, background: bool = False, what: str = "model"):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity, self.background, self.what = capacity, background, what
        self._build = build
        self._handles: collections.OrderedDict[Size, object] = collections.OrderedDict()  # least recent first
        self._count: collections.Counter[Size] = collections.Counter()  # recent requests (handles: uses)
        self._building: set[Size] = set()
        self._failed: dict[Size, float] = {}  # size -> when its build failed
        self._lookups = 0
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
            self._age()
            self._count[hw] += 1
            handle = self._handles.get(hw)
            if handle is not None:
                self._handles.move_to_end(hw)
                return handle
            if not self._admit(hw):
                return None
            self._building.add(hw)
        if self.background:
            try:
                threading.Thread(target=self._add, args=(hw,), name=f"specialize-{hw[0]}x{hw[1]}",
                                 daemon=True).start()
            except BaseException:
                with self._lock:
                    self._building.discard(hw)
                raise
            return None
        return self._add(hw)

    def _age(self) -> None:
        self._lookups += 1
        if self._lookups % AGE_EVERY == 0:
            for key in list(self._count):
                self._count[key] //= 2
                if not self._count[key]:
                    del self._count[key]

    def _admit(self, hw: Size) -> bool:
        """Whether ``hw`` gets a handle built now (called under the lock)."""
        if hw in self._building or (self.background and self._building):
            return False
        failed = self._failed.get(hw)
        if failed is not None:
            if time.monotonic() - failed < RETRY_AFTER_S:
                return False
            del self._failed[hw]
        if self._count[hw] < (SPECIALIZE_AFTER if self.background else 1):
            return False
        if len(self._handles) + len(self._building) < self.capacity:
            return True
        victim = next(iter(self._handles), None)
        return (victim is not None and self._count[hw] >= SPECIALIZE_AFTER
                and self._count[hw] > REPLACE_MARGIN * self._count[victim])

    def _add(self, hw: Size) -> object | None:
        handle = None
        try:
            handle = self._build(hw)
        except Exception as exc:  # noqa: BLE001 - the general handle still runs this size
            with self._lock:
                self._failed[hw] = time.monotonic()
            warnings.warn(f"{self.what}: nothing specialised to {hw[0]}x{hw[1]} ({type(exc).__name__}: {exc}); "
                          f"the general model runs it (tried again after {RETRY_AFTER_S:.0f} s)", stacklevel=2)
        finally:
            with self._lock:
                self._building.discard(hw)
                if handle is not None:
                    self._handles[hw] = handle
                    while len(self._handles) > self.capacity:
                        self._handles.popitem(last=False)
        return handle
