"""Panel cache: decoded panels kept in a worker's memory between passes.

After its first read from storage, a panel can stay in the memory of the
worker that decoded it, so later passes of the same job are compute-bound
instead of decode-bound. The cache is per worker process and per job:

- keys are ``(token, start, stop)``, where ``token`` is unique to one
  :func:`svdserve.worker.svd` call, so nothing is ever served across jobs or
  across inputs;
- a panel is admitted only while the cached bytes stay within
  ``fraction × memory_limit`` of that worker *and* the process's resident
  set (with the panel) stays below :data:`RSS_CEILING` of the limit, well
  under Dask's spill (70 %) and pause (80 %) thresholds, so the cache never
  makes a worker spill, pause or be killed; panels that do not fit are
  streamed from storage in every pass as before;
- :func:`release` drops a job's panels (called when the job ends, fails or
  is cancelled).

Panels in the cache are shared: kernels must never modify them in place
(:func:`svdserve.worker._tasks.panel_task` copies before shifting).
"""

from __future__ import annotations

import threading

__all__ = ["lookup", "offer", "release", "cached_bytes", "RSS_CEILING"]

#: Largest share of the worker's memory limit the process may use after admitting a panel.
RSS_CEILING = 0.6

_lock = threading.Lock()
_panels: dict = {}
_bytes = 0


def _memory_limit():
    """This worker's memory limit in bytes (the machine's memory when unlimited)."""
    import psutil

    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):
        limit = None
    return int(limit) if limit else int(psutil.virtual_memory().total)


def _rss():
    import psutil

    return psutil.Process().memory_info().rss


def _nbytes(block):
    """Bytes of a panel: an ndarray, or a scipy.sparse CSR panel (its three arrays)."""
    if hasattr(block, "nbytes"):
        return block.nbytes
    return block.data.nbytes + block.indices.nbytes + block.indptr.nbytes


def _freeze(block):
    for arr in ((block,) if hasattr(block, "setflags") else
                (block.data, block.indices, block.indptr)):
        arr.setflags(write=False)


def lookup(key):
    """The cached panel for ``key`` or None."""
    return _panels.get(key)


def offer(key, block, fraction):
    """Keep ``block`` under ``key`` if it fits the budget; returns whether it was kept."""
    global _bytes
    if fraction <= 0:
        return False
    limit = _memory_limit()
    with _lock:
        if key in _panels:
            return True
        size = _nbytes(block)
        if _bytes + size > fraction * limit:
            return False
        if _rss() + size > RSS_CEILING * limit:
            return False
        _freeze(block)
        _panels[key] = block
        _bytes += size
        return True


def release(token):
    """Drop every panel of one job; returns the bytes freed."""
    global _bytes
    with _lock:
        keys = [k for k in _panels if k[0] == token]
        freed = sum(_nbytes(_panels.pop(k)) for k in keys)
        _bytes -= freed
    return freed


def cached_bytes(token=None):
    """Bytes held (for one job, or in all)."""
    with _lock:
        return sum(_nbytes(v) for k, v in _panels.items() if token is None or k[0] == token)
