"""One decomposition in flight: panels, engine, pass counter, first-pass statistics.

Shared by the algorithms (:mod:`._tsqr`, :mod:`._rsvd`); holds no numerics
of its own beyond merging the first pass's statistics.
"""

from __future__ import annotations

import numpy as np

from ._engine import Phase
from ._errors import NonFiniteError
from ._kernels import merge_stats, panel_stats

__all__ = ["Run", "with_stats"]


def with_stats(kernel):
    """Wrap a first-pass kernel so it also returns :func:`panel_stats`.

    A panel holding NaN/Inf skips the kernel (LAPACK must not see it).
    """
    return _WithStats(kernel)


class _WithStats:
    def __init__(self, kernel):
        self.kernel = kernel

    def __call__(self, block, *args):
        stats = panel_stats(block)
        out = self.kernel(block, *args) if stats["finite"] else None
        return {"stats": stats, "out": out}


class Run:
    """State of one decomposition.

    Parameters
    ----------
    engine : LocalEngine or DaskEngine
    panels : list
        Panel arguments in row order.
    bounds : list of (start, stop)
        Rows of the tall view covered by each panel.
    tall_shape : (m_t, n_t)
    center : bool
        Implicit column centring of the tall view (PCA of a tall matrix).
    center_rows : bool
        Row centring inside each panel (PCA of a wide matrix).
    passes : int
        Passes over A the method will make (for progress labels).
    progress : callable or None
    wide : bool
        The stored matrix is the transpose of the tall view (row ranges in
        error messages are then column ranges of the stored matrix).
    """

    def __init__(self, engine, panels, bounds, tall_shape, *, center, center_rows,
                 passes, progress, wide):
        self.engine, self.panels, self.bounds = engine, panels, bounds
        self.m, self.n = tall_shape
        self.center, self.center_rows = center, center_rows
        self.passes, self.progress, self.wide = passes, progress, wide
        self.pass_no = 0
        self.stats = None
        self.row_means = None

    def phase(self, name, reads=True):
        if reads:
            self.pass_no += 1
        return Phase(name, max(self.pass_no, 1), self.passes)

    def report(self, phase, done, total):
        if self.progress is not None:
            self.progress(done, total, phase)

    def run_pass(self, name, kernel, args_for=lambda i: ()):
        """A pass over A; returns per-panel handles to ``(result, rows, row_means)``."""
        return self.engine.run_pass(self.phase(name), self.panels, kernel, args_for,
                                    center_rows=self.center_rows, progress=self.progress)

    def first_pass(self, name, kernel, args_for=lambda i: ()):
        """Pass 1: the kernel plus statistics; stops at the first non-finite panel.

        Returns
        -------
        list of handles to the kernel's own output per panel.
        """
        eng = self.engine
        phase = self.phase(name)
        stats = {}

        def check(i, handle):
            # The statistics are small (two n-vectors): fetch them as each
            # panel finishes, so a NaN stops the pass without waiting for it.
            s = eng.gather([eng.part(handle, 0, "stats")])[0]
            if not s["finite"]:
                start, stop = self.bounds[i]
                what = "columns" if self.wide else "rows"
                raise NonFiniteError(
                    f"the matrix holds NaN or Inf values in {what} {start}:{stop} "
                    f"(panel {i + 1} of {len(self.panels)}); clean or impute them, then resubmit.",
                    rows=(start, stop))
            stats[i] = s

        handles = eng.run_pass(phase, self.panels, with_stats(kernel), args_for,
                               center_rows=self.center_rows, progress=self.progress,
                               on_result=check)
        merged = stats[0]
        for i in range(1, len(handles)):
            merged = merge_stats(merged, stats[i])
        self.stats = merged
        if self.center_rows:
            means = eng.gather([eng.part(h, 2) for h in handles])
            self.row_means = np.concatenate(means)
        return [eng.part(h, 0, "out") for h in handles]

    @property
    def mean(self):
        """Column means of the tall view (tall centring) -- None otherwise."""
        return self.stats["mean"] if self.center else None

    @property
    def total_energy(self):
        """‖A‖_F², or ‖A − 1μᵀ‖_F² when centred, from pass 1."""
        if self.center:
            return float(np.sum(self.stats["m2"]))
        return float(self.stats["sumsq"])
