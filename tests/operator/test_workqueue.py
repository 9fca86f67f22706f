"""Work queue semantics: one queued copy per key, never two workers on one key, backoff."""

from __future__ import annotations

import asyncio

from bertserve_operator.workqueue import WorkQueue


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_a_key_is_queued_once() -> None:
    async def scenario() -> list[str]:
        q: WorkQueue[str] = WorkQueue()
        for key in ("a", "b", "a", "a"):
            q.add(key)
        got = [await q.get(), await q.get()]
        assert len(q) == 0
        return got

    assert run(scenario()) == ["a", "b"]


def test_adding_a_key_in_progress_requeues_it_after_done() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        q.add("a")
        key = await q.get()
        q.add("a")  # an event arrives while "a" is being reconciled
        assert q._queue.empty()  # not handed to a second worker
        q.done(key)
        assert await asyncio.wait_for(q.get(), 1) == "a"

    run(scenario())


def test_retry_backs_off_exponentially_and_forget_resets() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue(base_delay=0.01, max_delay=0.04)
        waits = []
        for _ in range(4):
            waits.append(q.retry("a"))
            assert await asyncio.wait_for(q.get(), 1) == "a"
            q.done("a")
        assert waits == [0.01, 0.02, 0.04, 0.04]
        q.forget("a")
        assert q.retry("a") == 0.01
        assert q.retry("b", delay=0.03) == 0.03  # the error's own delay wins when longer

    run(scenario())


def test_close_drops_pending_retries() -> None:
    async def scenario() -> None:
        q: WorkQueue[str] = WorkQueue()
        q.retry("a", delay=0.01)
        q.close()
        q.add("b")
        await asyncio.sleep(0.05)
        assert len(q) == 0

    run(scenario())
