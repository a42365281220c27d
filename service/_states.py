"""Job states, named once for the service (the store, the demo)::

    queued ──▶ running ──▶ succeeded | failed | cancelled
       │          │
       │          └──▶ cancelling ──▶ cancelled | failed
       └──▶ cancelled

``JobState`` is the same list as a ``Literal`` (the OpenAPI schema's enum).
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["JobState", "STATES", "TERMINAL"]

JobState = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
STATES: tuple[str, ...] = get_args(JobState)
#: States a job never leaves.
TERMINAL = ("succeeded", "failed", "cancelled")
