"""Dynamic batching: concurrent requests merged along the batch axis, run once, split back.

Semantics (the same as Triton's dynamic batcher with ``max_batch_size`` and
``max_queue_delay``, except for oversized requests):

* A batch starts with the oldest waiting request and takes the next ones, in
  arrival order, while their rows fit in ``max_batch``; it is dispatched when
  full, when the next request would not fit (that request opens the next
  batch), or ``timeout_s`` after the batch started collecting.
* ``workers`` batches may run at once (one thread each; the event loop never
  runs a model).  With one worker, requests that arrive while a batch runs
  are merged into the next one without waiting further.
* Only requests of the same size are batched together (a model with dynamic
  height and width takes several; a batch is one array): a request of
  another size met while collecting is set aside, in arrival order, and the
  oldest set-aside request opens the next batch.  The collection still ends
  when the batch is full or its delay is over.
* A request with ``rows >= max_batch`` is run alone, as sent; ``max_batch=1``
  therefore turns batching off.  (The server refuses requests with more rows
  than its per-request limit, and ones the model cannot take, before they
  get here.)
* A request whose caller has gone (its future cancelled) is skipped when it
  is taken from the queue, and again just before its batch runs: abandoned
  work is never computed.
* ``infer`` returns one array, or a list of arrays for a model with several
  outputs; every output is split by rows, so each request gets its rows of
  each output (a list when ``infer`` returns a list).
* The model is row-independent (inference mode, no cross-sample statistics),
  so row ``i`` of a merged batch equals the unbatched result for that row; the
  tests check this against direct runner calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .metrics import ServerMetrics

__all__ = ["DynamicBatcher"]


@dataclass(eq=False)  # requests are told apart by identity (comparing their arrays would be ambiguous)
class _Pending:
    tensor: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def rows(self) -> int:
        return int(self.tensor.shape[0])


def _shape_of(item: _Pending) -> tuple:
    """What must agree for two requests to share a batch: everything but the row count."""
    return tuple(item.tensor.shape[1:])


class DynamicBatcher:
    def __init__(self, infer: Callable[[np.ndarray], "np.ndarray | list[np.ndarray]"], max_batch: int = 8,
                 timeout_s: float = 0.002,
                 workers: int = 1, metrics: ServerMetrics | None = None, max_elements: int | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        if timeout_s < 0:
            raise ValueError(f"timeout must not be negative, got {timeout_s}")
        if workers < 1:
            raise ValueError(f"workers must be positive, got {workers}")
        self.infer = infer
        self.max_batch = max_batch
        # most input elements one merged batch may hold (a graph with dynamic height and width: rows of large
        # images are merged only while their pixels fit); None: rows alone decide
        self.max_elements = max_elements
        self.timeout_s = timeout_s
        self.workers = workers
        self.metrics = metrics
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="acmix-infer")
        self._queue: asyncio.Queue[_Pending] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._collector: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._held: list[_Pending] = []  # taken from the queue, not yet batched (another size, or no room)
        self._collecting: list[_Pending] = []  # the batch being filled (failed on stop, not lost)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.workers)
        self._collector = asyncio.create_task(self._collect_forever(), name="acmix-batcher")

    async def stop(self) -> None:
        """Finish the batches that run, fail what still waits, release the threads."""
        if self._collector is not None:
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                pass
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        leftovers = [*self._collecting, *self._held]
        while self._queue is not None and not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        for item in leftovers:
            if not item.future.done():
                item.future.set_exception(RuntimeError("server is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, tensor: np.ndarray) -> "np.ndarray | list[np.ndarray]":
        """The model's output(s) for ``tensor`` (rows of one request), computed in some batch."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        item = _Pending(tensor, asyncio.get_running_loop().create_future())
        await self._queue.put(item)
        return await item.future

    async def _next(self, timeout: float | None, shape: tuple | None = None) -> _Pending | None:
        """The oldest waiting request of ``shape`` (any, when None) whose client still waits.

        Cancelled requests are dropped here, never run; requests of another shape met in the queue are set
        aside for a later batch.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            item = self._take_held(shape)
            if item is None:
                item = await self._next_any(None if deadline is None else deadline - loop.time())
                if item is not None and shape is not None and _shape_of(item) != shape:
                    self._held.append(item)
                    if deadline is not None and deadline - loop.time() <= 0:
                        return None
                    continue
            if item is None or not item.future.done():
                return item

    def _take_held(self, shape: tuple | None) -> _Pending | None:
        matching = [p for p in self._held if shape is None or _shape_of(p) == shape]
        if not matching:
            return None
        item = min(matching, key=lambda p: p.enqueued)
        self._held.remove(item)
        return item

    async def _next_any(self, timeout: float | None) -> _Pending | None:
        if timeout is None:
            return await self._queue.get()
        if timeout <= 0:
            try:
                return self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            try:
                first = await self._next(None)
            except BaseException:
                self._slots.release()
                raise
            batch, rows = [first], first.rows
            self._collecting = batch
            deadline = loop.time() + self.timeout_s
            room = self.max_batch
            if self.max_elements is not None:
                room = max(1, min(room, self.max_elements // max(1, int(np.prod(_shape_of(first))))))
            while rows < room:
                item = await self._next(deadline - loop.time(), _shape_of(first))
                if item is None:
                    break
                if rows + item.rows > room:
                    self._held.append(item)  # set aside; the oldest set-aside request opens the next batch
                    break
                batch.append(item)
                rows += item.rows
            self._collecting = []
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            live = [p for p in batch if not p.future.done()]  # a request cancelled meanwhile (client gone) is not run
            if not live:
                return
            started = time.perf_counter()
            x = live[0].tensor if len(live) == 1 else np.concatenate([p.tensor for p in live], axis=0)
            try:
                y = await asyncio.get_running_loop().run_in_executor(self._executor, self.infer, x)
                several = isinstance(y, (list, tuple))
                ys = list(y) if several else [y]
                for out in ys:
                    if not isinstance(out, np.ndarray) or out.ndim < 1 or out.shape[0] != x.shape[0]:
                        raise RuntimeError(f"the model returned shape {getattr(out, 'shape', None)} for a batch "
                                           f"of {x.shape[0]}")
            except Exception as exc:
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                return
            if self.metrics is not None:
                self.metrics.batch_executed(int(x.shape[0]), [started - p.enqueued for p in live])
            start = 0
            for p in live:
                if not p.future.done():
                    part = [out[start:start + p.rows] for out in ys]
                    p.future.set_result(part if several else part[0])
                start += p.rows
        finally:
            self._slots.release()
