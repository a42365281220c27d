"""The method names and job states the service speaks, named once for the client.

The client does not import :mod:`svdserve.worker` or :mod:`svdserve.service`,
so these are copies of ``svdserve.worker._methods.METHODS`` and
``svdserve.service._states.STATES``; ``tests/test_code_health.py`` checks
that they agree.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["Method", "METHODS", "STATES", "TERMINAL_STATES"]

Method = Literal["auto", "exact", "randomized", "sketch"]
METHODS: tuple[str, ...] = get_args(Method)

STATES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
