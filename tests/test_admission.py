"""The answer service's admission (rag/app/admission.py): slots, a bounded queue, first come first served, across
threads that each run their own event loop (the UI's askers) and within one loop (the HTTP server)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rag.app.admission import Admission
from rag.errors import BusyError


def test_slots_then_a_queue_then_a_clear_refusal() -> None:
    async def scenario() -> None:
        admission = Admission(slots=2, queue=1, retry_after_s=3)
        await admission.enter()
        await admission.enter()
        assert (admission.running, admission.waiting) == (2, 0)
        third = asyncio.ensure_future(admission.enter())
        await asyncio.sleep(0.01)
        assert not third.done() and admission.waiting == 1
        with pytest.raises(BusyError, match=r"busy \(2 answers running, 1 waiting\)") as refused:
            await admission.enter()
        assert refused.value.retry_after_s == 3
        admission.leave()  # the slot goes to the waiter, not back to the pool
        await asyncio.wait_for(third, 1)
        assert (admission.running, admission.waiting) == (2, 0)
        admission.leave()
        admission.leave()
        assert admission.running == 0

    asyncio.run(scenario())


def test_waiters_are_served_in_order_and_a_cancelled_one_gives_up_its_place() -> None:
    async def scenario() -> list[str]:
        admission = Admission(slots=1)
        served: list[str] = []
        await admission.enter()

        async def asker(name: str) -> None:
            await admission.enter()
            served.append(name)
            await asyncio.sleep(0.01)
            admission.leave()

        tasks = {name: asyncio.ensure_future(asker(name)) for name in "abcd"}
        await asyncio.sleep(0.01)
        assert admission.waiting == 4
        tasks["b"].cancel()
        await asyncio.sleep(0.01)
        assert admission.waiting == 3
        admission.leave()
        await asyncio.gather(*(task for name, task in tasks.items() if name != "b"))
        assert admission.running == 0 and admission.waiting == 0
        return served

    assert asyncio.run(scenario()) == ["a", "c", "d"]


def test_a_slot_handed_to_a_waiter_that_was_just_cancelled_goes_to_the_next() -> None:
    async def scenario() -> None:
        admission = Admission(slots=1)
        await admission.enter()
        first = asyncio.ensure_future(admission.enter())
        second = asyncio.ensure_future(admission.enter())
        await asyncio.sleep(0.01)
        admission.leave()  # handed to `first` (scheduled on the loop) ...
        first.cancel()  # ... which gives up before it runs
        await asyncio.wait_for(second, 1)
        assert first.cancelled() and admission.running == 1 and admission.waiting == 0
        admission.leave()
        assert admission.running == 0

    asyncio.run(scenario())


def test_askers_on_their_own_threads_and_loops_take_turns() -> None:
    admission = Admission(slots=1)
    inside = 0
    most_inside = 0
    lock = threading.Lock()

    async def ask() -> None:
        nonlocal inside, most_inside
        await admission.enter()
        try:
            with lock:
                inside += 1
                most_inside = max(most_inside, inside)
            await asyncio.sleep(0.02)
            with lock:
                inside -= 1
        finally:
            admission.leave()

    threads = [threading.Thread(target=asyncio.run, args=(ask(),)) for _ in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    assert most_inside == 1 and admission.running == 0 and admission.waiting == 0
    assert time.monotonic() - started >= 8 * 0.02  # one at a time
