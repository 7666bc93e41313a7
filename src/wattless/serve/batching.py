"""Dynamic batching with bounded admission.

Requests that arrive within ``max_wait_s`` of the first one waiting run as one batch of at most
``max_batch`` inputs, on one worker thread (the event loop keeps accepting meanwhile). Admission is
bounded: beyond ``max_pending`` inputs waiting or running, ``submit`` raises Overloaded at once (the app
answers 503 with Retry-After) instead of queueing without bound. A request whose caller gives up (its task
is cancelled: the client went away) frees its slot at once and is dropped from any batch not yet started.
With batching off, every request runs on its own, in arrival order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Overloaded", "Batcher", "BatchStats"]


class Overloaded(Exception):
    """More inputs are pending than the server admits; retry after ``retry_after_s``."""

    def __init__(self, pending: int, limit: int, retry_after_s: int) -> None:
        super().__init__(f"server overloaded: {pending} inputs pending, limit {limit}; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future


@dataclass
class BatchStats:
    """What the batcher did, for the metrics: ``on_batch(size_inputs, requests, seconds)``."""

    on_batch: Callable[[int, int, float], None] = lambda inputs, requests, seconds: None
    on_cancel: Callable[[], None] = lambda: None
    pending: int = field(default=0)


class Batcher:
    """``await submit(x)`` -> ``run_batch``'s results for the rows of x (a list of len(x))."""

    def __init__(self, run_batch: Callable[[np.ndarray], list[Any]], *, batching: bool = True, max_batch: int = 64,
                 max_wait_s: float = 0.002, max_pending: int = 1024, retry_after_s: int = 1,
                 stats: BatchStats | None = None) -> None:
        self.run_batch, self.batching = run_batch, batching
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.max_pending, self.retry_after_s = max_pending, retry_after_s
        self.stats = stats or BatchStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._carry: _Item | None = None  # an item that did not fit the last batch: the next one starts with it
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="wattless-batch")

    @property
    def pending(self) -> int:
        return self.stats.pending

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, x: np.ndarray) -> list[Any]:
        if self._worker is None:  # an engine that runs no ASGI lifespan (start() not called): start now
            self.start()
        n = len(x)
        if self.stats.pending + n > self.max_pending:
            raise Overloaded(self.stats.pending, self.max_pending, self.retry_after_s)
        future = asyncio.get_running_loop().create_future()
        self.stats.pending += n
        future.add_done_callback(lambda f: self._release(f, n))
        self._queue.put_nowait(_Item(x, future))
        return await future  # cancelling this await cancels the future: its slot is released at once

    def _release(self, future: asyncio.Future, n: int) -> None:
        self.stats.pending -= n
        if future.cancelled():
            self.stats.on_cancel()

    async def _collect(self) -> list[_Item]:
        """The next batch: the first live item, then (batching on) those that arrived within max_wait_s,
        up to max_batch inputs. One timer per batch, not one per item: the loop stays free to parse them."""
        first, self._carry = (self._carry, None) if self._carry is not None else (await self._queue.get(), None)
        items = [first]
        if not self.batching:
            return items
        if self.max_wait_s > 0 and len(first.x) < self.max_batch:
            await asyncio.sleep(self.max_wait_s)
        size = len(first.x)
        while size < self.max_batch and not self._queue.empty():
            item = self._queue.get_nowait()
            if size + len(item.x) > self.max_batch:
                self._carry = item  # the next batch starts with it
                break
            items.append(item)
            size += len(item.x)
        return items

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [i for i in await self._collect() if not i.future.done()]  # cancelled ones dropped
            if not items:
                continue
            x = items[0].x if len(items) == 1 else np.concatenate([i.x for i in items])
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, x)
            except Exception as exc:  # the app turns it into a 500 for these requests; the server goes on
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.stats.on_batch(len(x), len(items), time.perf_counter() - start)
            offset = 0
            for item in items:
                if not item.future.done():
                    item.future.set_result(results[offset : offset + len(item.x)])
                offset += len(item.x)
