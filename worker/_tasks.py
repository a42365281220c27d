"""The panel task: one panel from the cache or the source → mask → shift → kernel.

What every pass submits once per panel (:meth:`~._engine.LocalEngine.run_pass`
forwards it): :func:`panel_task` loads the panel (:mod:`._cache`, else
:func:`~._source.read_panel`), replaces missing entries by 0
(:func:`~._kernels.mask_missing`, ``missing="mask"``), shifts it by the pivot
row (:func:`~._kernels.prepare_panel`) and runs the kernel on it.
"""

from __future__ import annotations

import numpy as np

from . import _cache
from ._kernels import mask_missing, prepare_panel
from ._source import PanelRef, read_panel
from ._sparse_source import SparsePanel

__all__ = ["panel_task"]


def _read(panel, missing):
    """Read a panel; with ``missing`` (markers) replace missing entries by 0.

    Returns ``(block, owned, counts)`` (counts: :func:`~._kernels.mask_missing`).
    """
    block = read_panel(panel)
    # An in-memory panel converted to float64 is ours; a view of it (a read-only
    # memmap seen through np.asarray, say) is not.
    owned = isinstance(panel, (PanelRef, SparsePanel)) or not np.may_share_memory(block, panel)
    if missing is None:
        return block, owned, None
    masked, counts = mask_missing(block, missing, owned=owned)
    return masked, owned or masked is not block, counts


def _load(panel, cache, missing=None):
    """A panel's block from the cache or the source: ``(block, rows_read, owned, counts)``.

    A cached block was masked when it was read; ``counts`` is None then.
    """
    if cache is None or not isinstance(panel, (PanelRef, SparsePanel)):
        block, owned, counts = _read(panel, missing)
        return block, block.shape[0], owned, counts
    token, fraction = cache
    key = (token, panel.start, panel.stop)
    block = _cache.lookup(key)
    if block is not None:
        return block, 0, False, None
    block, _owned, counts = _read(panel, missing)
    return block, block.shape[0], not _cache.offer(key, block, fraction), counts


def panel_task(kernel, panel, shift, cache, missing, *args):
    """Load one panel (:mod:`._cache` or storage), shift it by the pivot row
    (:func:`~._kernels.prepare_panel`) and run ``kernel(block, *args)`` on it.

    ``cache`` is ``(token, fraction)`` or None. A cached block is shared, so it
    is shifted into a copy, never in place; a kernel with ``takes_owned``
    (a wrapper that prepares the block further, e.g. row centring in
    :mod:`._run`) is told whether it may overwrite the block. ``missing`` is None
    (missing values are errors) or the markers of :func:`~._kernels.mask_missing`
    (``missing="mask"``: missing entries read as 0 and are counted).

    Returns
    -------
    (result, rows, rows_read, counts)
        ``counts``: missing entries per column and per row of the panel, or None.
    """
    block, rows_read, owned, counts = _load(panel, cache, missing)
    if getattr(panel, "densify", False):  # a sparse panel (cached as CSR) for the exact method
        block, owned = block.toarray(), True
    if shift is not None:
        block, owned = prepare_panel(block, shift=shift, owned=owned)[0], True
    out = (kernel(block, *args, owned=owned) if getattr(kernel, "takes_owned", False)
           else kernel(block, *args))
    return out, block.shape[0], rows_read, counts

