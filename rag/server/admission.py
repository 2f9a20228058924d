"""Admission control: as many answers at once as the model has slots, a bounded queue, and a clean 503 past it.

Checked before retrieval, so a full server spends nothing on a request it will refuse. In-process llama.cpp has one
slot; a llama.cpp server started with ``--parallel N`` (or vLLM) has N.
"""

from __future__ import annotations

import asyncio

from rag.server.errors import ApiError

__all__ = ["Admission"]


class Admission:
    """``slots`` answers at once, ``queue`` more waiting; :meth:`enter` raises a 503 :class:`ApiError` when full."""

    def __init__(self, slots: int, queue: int, *, retry_after_s: int = 2) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.slots = slots
        self.queue = queue
        self.retry_after_s = retry_after_s
        self._free = asyncio.Semaphore(slots)
        self._waiting = 0
        self._running = 0

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._waiting

    async def enter(self) -> None:
        """Take a slot, waiting in the queue; every :meth:`enter` must be paired with :meth:`leave`."""
        if self._free.locked() and self._waiting >= self.queue:
            raise ApiError(
                503,
                f"the server is busy ({self._running} answers running, {self._waiting} waiting): retry shortly",
                code="server_busy",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self._waiting += 1
        try:
            await self._free.acquire()
        finally:
            self._waiting -= 1
        self._running += 1

    def leave(self) -> None:
        self._running -= 1
        self._free.release()
