"""Admission: as many answers at once as the model has slots, a bounded queue, and a clear refusal past it.

One admission per answer service, whatever asks: the browser UI and ``rag ask`` (each question in its own thread
and event loop), ``rag serve`` (one event loop), the MCP server. In-process llama.cpp has one slot (it is not
thread-safe: a rewrite, a tokenisation and a generation all run inside the slot); a llama.cpp server started with
``--parallel N`` (or vLLM) has N. Waiters are served first come, first served, each on its own event loop: a freed
slot is handed to the next waiter directly, so nobody overtakes the queue.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import TYPE_CHECKING

from rag.errors import BusyError

if TYPE_CHECKING:
    from rag.settings import Settings

__all__ = ["Admission", "default_slots"]


def default_slots(settings: Settings) -> int:
    """Answers generated at once: ``serve_slots``, else 1 for a model in this process (llama.cpp is not
    thread-safe), 4 for a model server."""
    return settings.serve_slots or (1 if settings.llm_base_url is None else 4)


class Admission:
    """``slots`` answers at once, ``queue`` more waiting (None: no limit); :meth:`enter` raises :class:`BusyError`
    when both are full. Every :meth:`enter` that returns is paired with one :meth:`leave`."""

    def __init__(self, slots: int, queue: int | None = None, *, retry_after_s: int = 2) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.slots = slots
        self.queue = queue
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._running = 0
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def enter(self) -> None:
        """Take a slot, waiting in the queue (cancelling the wait gives up the place)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._running < self.slots and not self._waiters:
                self._running += 1
                return
            if self.queue is not None and len(self._waiters) >= self.queue:
                raise BusyError(
                    f"the server is busy ({self._running} answers running, {len(self._waiters)} waiting): "
                    "retry shortly",
                    retry_after_s=self.retry_after_s,
                )
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            with self._lock:
                if (loop, waiter) in self._waiters:
                    self._waiters.remove((loop, waiter))
                    raise
            if waiter.done() and not waiter.cancelled():  # granted just before the cancellation reached us
                self.leave()
            # else the slot is on its way: _grant sees the cancelled waiter and passes the slot on
            raise

    def leave(self) -> None:
        """Give the slot back: to the next waiter (on its own loop), else free it."""
        with self._lock:
            self._running -= 1
            while self._waiters:
                loop, waiter = self._waiters.popleft()
                try:
                    loop.call_soon_threadsafe(self._grant, waiter)
                except RuntimeError:  # its loop is closed: nobody waits there any more
                    continue
                self._running += 1  # the slot goes to that waiter, not back to the pool
                return

    def _grant(self, waiter: asyncio.Future[None]) -> None:
        """On the waiter's loop: the slot is its own now, unless it gave up meanwhile (then the next one's)."""
        if waiter.done():  # cancelled while the slot was on its way
            self.leave()
        else:
            waiter.set_result(None)
