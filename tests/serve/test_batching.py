"""The batcher: requests waiting together run as one batch, admission is bounded, a cancelled request frees
its slot at once and is never run."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from wattless.serve.batching import BatchStats, Batcher, Overloaded


def _echo(calls):
    def run(x):
        calls.append(len(x))
        return [float(v) for v in x[:, 0]]

    return run


def _rows(*values):
    return [np.array([[v]], dtype=np.float32) for v in values]


async def _with(batcher, body):
    batcher.start()
    try:
        return await body()
    finally:
        await batcher.stop()


@pytest.mark.parametrize("batching, runs", [(True, [3]), (False, [1, 1, 1])])
def test_requests_waiting_together_run_as_one_batch(batching, runs):
    calls: list[int] = []
    batcher = Batcher(_echo(calls), batching=batching, max_batch=8, max_wait_s=0.05)
    got = asyncio.run(_with(batcher, lambda: asyncio.gather(*(batcher.submit(x) for x in _rows(1, 2, 3)))))
    assert got == [[1.0], [2.0], [3.0]]  # each caller gets its own rows back
    assert calls == runs


def test_a_batch_never_exceeds_max_batch():
    calls: list[int] = []
    batcher = Batcher(_echo(calls), max_batch=2, max_wait_s=0.05)
    got = asyncio.run(_with(batcher, lambda: asyncio.gather(*(batcher.submit(x) for x in _rows(1, 2, 3, 4, 5)))))
    assert got == [[1.0], [2.0], [3.0], [4.0], [5.0]] and max(calls) <= 2 and sum(calls) == 5


def test_overload_is_refused_at_once_and_the_slots_come_back():
    gate = threading.Event()
    stats = BatchStats()

    def slow(x):
        gate.wait(5)
        return list(x[:, 0])

    batcher = Batcher(slow, max_pending=2, retry_after_s=3, stats=stats)

    async def body():
        first = [asyncio.ensure_future(batcher.submit(x)) for x in _rows(1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await batcher.submit(_rows(3)[0])
        assert info.value.retry_after_s == 3 and batcher.pending == 2
        gate.set()
        await asyncio.gather(*first)
        assert batcher.pending == 0
        return await batcher.submit(_rows(4)[0])  # admitted again

    assert asyncio.run(_with(batcher, body)) == [4.0]


def test_a_cancelled_request_frees_its_slot_and_is_not_run():
    gate, calls, cancelled = threading.Event(), [], []

    def run(x):
        calls.append(x[:, 0].tolist())
        gate.wait(5)
        return list(x[:, 0])

    batcher = Batcher(run, batching=False, max_pending=2, stats=BatchStats(on_cancel=lambda: cancelled.append(1)))

    async def body():
        running = asyncio.ensure_future(batcher.submit(_rows(1)[0]))
        await asyncio.sleep(0.05)  # the worker has taken it
        waiting = asyncio.ensure_future(batcher.submit(_rows(2)[0]))
        await asyncio.sleep(0)
        assert batcher.pending == 2
        waiting.cancel()
        await asyncio.sleep(0)
        assert batcher.pending == 1 and cancelled == [1]
        gate.set()
        return await running, await batcher.submit(_rows(3)[0])

    assert asyncio.run(_with(batcher, body)) == ([1.0], [3.0])
    assert calls == [[1.0], [3.0]]  # the cancelled one never ran


def test_a_failing_batch_fails_its_requests_only():
    def run(x):
        if (x == 13).any():
            raise RuntimeError("unlucky")
        return list(x[:, 0])

    batcher = Batcher(run, batching=False)

    async def body():
        with pytest.raises(RuntimeError, match="unlucky"):
            await batcher.submit(_rows(13)[0])
        return await batcher.submit(_rows(1)[0])

    assert asyncio.run(_with(batcher, body)) == [1.0]
