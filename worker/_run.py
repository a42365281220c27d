"""One decomposition in flight: panels, engine, pass counter, first-pass statistics.

Shared by the algorithms (:mod:`._tsqr`, :mod:`._rsvd`); holds no numerics
of its own beyond merging the first pass's statistics.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._engine import Phase
from ._errors import NonFiniteError
from ._kernels import merge_stats, panel_stats, prepare_panel
from ._tasks import panel_task

__all__ = ["Run", "Factors", "with_stats"]


class Factors(NamedTuple):
    """What every algorithm returns: the factors of the tall view and what it knows.

    Attributes
    ----------
    tall : list of handles or None
        The tall factor per panel, each of shape (rows_i, rank); None when
        not formed (``compute_u=False``).
    sigma : ndarray of shape (rank,)
    v : ndarray of shape (n, rank)
        Right factor of the tall view.
    rank : int
        k (chosen by the algorithm for an energy target).
    s_all : ndarray of shape (n,) or None
        Every singular value (exact only).
    sigma_b : ndarray or None
        Every singular value of the projected matrix B (randomized).
    resid_ss : (int, float) or None
        ‖A − QB‖²_F as a scaled sum of squares (randomized).
    resid_est : ndarray or None
        Estimated residual norms per rank (sketch).
    probe_norms : ndarray or None
        ‖(A − U S Vᵀ)ω_j‖ of the Gaussian probes.
    u_route : str or None
        ``"gemm"`` or ``"reapply"``: how the exact method formed U.
    width : int or None
        Sketch width l (randomized).
    sketch_sizes : dict or None
        Range and core sketch sizes (sketch).
    energy_target : dict or None
        How an energy target was met.
    """

    tall: list | None
    sigma: np.ndarray
    v: np.ndarray
    rank: int
    s_all: np.ndarray | None = None
    sigma_b: np.ndarray | None = None
    resid_ss: tuple | None = None
    resid_est: np.ndarray | None = None
    probe_norms: np.ndarray | None = None
    u_route: str | None = None
    width: int | None = None
    sketch_sizes: dict | None = None
    energy_target: dict | None = None


def with_stats(kernel, *, center=False, local_mean=False, center_rows=False):
    """Wrap a first-pass kernel so it also returns :func:`panel_stats`.

    A panel holding NaN/Inf skips the kernel (LAPACK must not see it).
    With ``local_mean`` the kernel gets the panel's own column means (or
    None when not centring) as its last argument. With ``center_rows`` the
    panel's rows are centred first and their means returned as ``row_means``.
    """
    return _WithStats(kernel, center, local_mean, center_rows)


class _RowCentered:
    """Kernel wrapper: centre each row of the panel by its own mean first.

    PCA of a wide matrix: its tall view holds one column of A per row, so
    centring A's columns is centring the tall view's rows, panel by panel
    (:func:`~._kernels.prepare_panel`). The engine tells the wrapper whether
    the block is its own to overwrite (``takes_owned``).
    """

    takes_owned = True

    def __init__(self, kernel, center_rows=True):
        self.kernel, self.center_rows = kernel, center_rows

    def prepare(self, block, owned):
        if not self.center_rows:
            return block, None
        return prepare_panel(block, center_rows=True, owned=owned)

    def __call__(self, block, *args, owned=False):
        return self.kernel(self.prepare(block, owned)[0], *args)


class _WithStats(_RowCentered):
    def __init__(self, kernel, center, local_mean, center_rows):
        super().__init__(kernel, center_rows)
        self.center, self.local_mean = center, local_mean

    def __call__(self, block, *args, owned=False):
        block, row_means = self.prepare(block, owned)
        stats = panel_stats(block, self.center)
        if not stats["finite"]:
            return {"stats": stats, "out": None, "row_means": row_means}
        if self.local_mean:
            args = (*args, stats["mean"] if self.center else None)
        return {"stats": stats, "out": self.kernel(block, *args), "row_means": row_means}


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
    pivot : ndarray of shape (n,), optional
        With ``center``: the common row every panel is shifted by before any
        arithmetic (the tall view's first row), so that the column offsets
        never enter a rounding error. None with ``center``: panels are not
        shifted and the centring is implicit (sparse panels,
        :mod:`._sparse_kernels`).
    cache : (token, fraction), optional
        Keep decoded panels in worker memory between passes (:mod:`._cache`).
    missing : tuple of float, optional
        ``missing="mask"``: every read replaces NaN (and these markers) by 0
        and counts them (:mod:`._missing`).
    decide_missing : callable, optional
        ``decide_missing(counts)`` after pass 1, with the per-panel counts
        (None for a panel without missing entries); may raise to fail the run.
    """

    def __init__(self, engine, panels, bounds, tall_shape, *, center, center_rows,
                 passes, progress, wide, pivot=None, cache=None, missing=None,
                 decide_missing=None):
        self.engine, self.panels, self.bounds = engine, panels, bounds
        self.m, self.n = tall_shape
        self.center, self.center_rows = center, center_rows
        self.passes, self.progress, self.wide = passes, progress, wide
        self.implicit = bool(center and pivot is None)
        self.pivot = (np.zeros(self.n) if pivot is None else pivot) if center else None
        self.cache = cache
        self.missing, self.decide_missing = missing, decide_missing
        self._shift = engine.scatter(pivot) if center and pivot is not None else None
        self.pass_no = 0
        self.stats = None
        self.panel_stats = None
        self.row_means = None

    def phase(self, name, reads=True):
        if reads:
            self.pass_no += 1
        return Phase(name, max(self.pass_no, 1), self.passes)

    def tick(self, phase, done, total):
        """Report progress of a step that reads no panel (``progress(done, total, phase)``)."""
        if self.progress is not None:
            self.progress(done, total, phase)

    def run_pass(self, name, kernel, args_for=lambda i: ()):
        """A pass over A; returns per-panel handles to the kernel's result."""
        if self.center_rows:
            kernel = _RowCentered(kernel)
        return self.engine.run_pass(self.phase(name), self.panels, kernel, args_for,
                                    task=panel_task,
                                    shift=self._shift,
                                    cache=self.cache, progress=self.progress,
                                    missing=self.missing)

    def first_pass(self, name, kernel, args_for=lambda i: (), *, local_mean=False):
        """Pass 1: the kernel plus statistics; stops at the first non-finite panel.

        Returns
        -------
        list of handles to the kernel's own output per panel.
        """
        eng = self.engine
        phase = self.phase(name)
        stats = {}

        def check(indices, handles):
            # The statistics are small (two n-vectors): fetch them as panels
            # finish, so a NaN stops the pass without waiting for the rest.
            for i, s in zip(indices, eng.peek(handles, 0, "stats")):
                if not s["finite"]:
                    start, stop = self.bounds[i]
                    what = "columns" if self.wide else "rows"
                    raise NonFiniteError(
                        f"the matrix holds NaN or Inf values in {what} {start}:{stop} "
                        f"(panel {i + 1} of {len(self.panels)}); clean or impute them, then "
                        "resubmit (features missing in every sample, such as land in an ocean "
                        "field, are dropped with missing='mask').",
                        rows=(start, stop))
                stats[i] = s

        handles = eng.run_pass(phase, self.panels,
                               with_stats(kernel, center=self.center, local_mean=local_mean,
                                          center_rows=self.center_rows),
                               args_for, task=panel_task, shift=self._shift,
                               cache=self.cache, progress=self.progress, on_result=check,
                               missing=self.missing)
        if self.decide_missing is not None:
            self.decide_missing(list(eng.missing_counts))
        self.panel_stats = [stats[i] for i in range(len(handles))]
        merged = self.panel_stats[0]
        for s in self.panel_stats[1:]:
            merged = merge_stats(merged, s)
        self.stats = merged
        if self.center_rows:
            means = eng.gather([eng.part(h, "row_means") for h in handles])
            self.row_means = np.concatenate(means)
        return [eng.part(h, "out") for h in handles]

    @property
    def shifted_mean(self):
        """Column means of the panels as the kernels see them (after the pivot shift)."""
        return self.stats["mean"] if self.center else None

    @property
    def mean(self):
        """Column means of the tall view (tall centring) -- None otherwise."""
        return self.pivot + self.stats["mean"] if self.center else None

    @property
    def total_sumsq(self):
        """‖A‖_F², or ‖A − 1μᵀ‖_F² when centred, from pass 1, as a scaled
        :func:`~._kernels.sumsq` pair."""
        return self.stats["ss"]
