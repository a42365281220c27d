"""Job states, named once for the service (the store, the demo)::

    queued ──▶ running ──▶ succeeded | failed | cancelled
       │          │
       │          └──▶ cancelling ──▶ cancelled | failed
       └──▶ cancelled

``_schemas.JobState`` spells the same list as a ``Literal`` for the OpenAPI
schema; a test checks that the two agree.
"""

from __future__ import annotations

__all__ = ["STATES", "TERMINAL"]

STATES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
#: States a job never leaves.
TERMINAL = ("succeeded", "failed", "cancelled")
