"""The decomposition methods, named once.

``auto`` picks ``exact`` (TSQR, :mod:`._tsqr`) or ``randomized`` (Halko et
al., :mod:`._rsvd`) from the shape and rank; ``sketch`` is the one-pass
method (:mod:`._sketch`). The job service's schema and the worker's
validation take their list from here; the client, which does not import the
worker, keeps its own copy (``svdserve.client._literals``), checked against
this one by the tests.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["Method", "METHODS"]

Method = Literal["auto", "exact", "randomized", "sketch"]

#: Every value ``method=`` accepts, ``"auto"`` first.
METHODS: tuple[str, ...] = get_args(Method)
