"""Change notifications for long-polling ``GET /v1/jobs/{id}?wait=S``.

The store calls :meth:`ChangeFeed.notify_threadsafe` from any thread after a
write; waiters on the event loop are woken through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

__all__ = ["ChangeFeed"]


class ChangeFeed:
    """Per-job wake-ups on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    def notify_threadsafe(self, job_id: str) -> None:
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self._notify, job_id)
        except RuntimeError:  # loop closing
            pass

    def _notify(self, job_id: str) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()

    def subscribe(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters[job_id].add(event)
        return event

    def unsubscribe(self, job_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[job_id]

    def wake_all(self) -> None:
        """Wake every waiter (shutdown)."""
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()
