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
from ._scaling import (PanelScale, column_sumsq, merge_column_sumsq, scaled_total,
                       std_scale)
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


def with_stats(kernel, *, center=False, local_mean=False, center_rows=False, scaled=False,
               columns=False):
    """Wrap a first-pass kernel so it also returns :func:`panel_stats`.

    A panel holding NaN/Inf skips the kernel (LAPACK must not see it).
    With ``local_mean`` the kernel gets the panel's own column means (or
    None when not centring) as its last argument. With ``center_rows`` the
    panel's rows are centred first and their means returned as ``row_means``.
    With ``scaled`` the first argument is the panel's :class:`~._scaling.PanelScale`
    (applied after the row centring); with ``columns`` the statistics also hold
    ``colss`` (:func:`~._scaling.column_sumsq`).
    """
    return _WithStats(kernel, center, local_mean, center_rows, scaled, columns)


class _RowCentered:
    """Kernel wrapper: centre each row of the panel by its own mean first.

    PCA of a wide matrix: its tall view holds one column of A per row, so
    centring A's columns is centring the tall view's rows, panel by panel
    (:func:`~._kernels.prepare_panel`). The engine tells the wrapper whether
    the block is its own to overwrite (``takes_owned``).
    """

    takes_owned = True

    def __init__(self, kernel, center_rows=True, scaled=False):
        self.kernel, self.center_rows, self.scaled = kernel, center_rows, scaled

    def prepare(self, block, owned, scale=None):
        """Row-centre, then scale (:class:`~._scaling.PanelScale`): ``(block, row_means,
        row factors or None)``."""
        row_means = d_rows = None
        if self.center_rows:
            block, row_means = prepare_panel(block, center_rows=True, owned=owned)
            owned = True
        if scale is not None:
            d_rows = scale.row_factors(block)
            block = scale.apply(block, owned, d_rows)
        return block, row_means, d_rows

    def split(self, args):
        """``(scale, kernel args)``: a scaled wrapper gets the panel's scale first."""
        return (args[0], args[1:]) if self.scaled else (None, args)

    def __call__(self, block, *args, owned=False):
        scale, args = self.split(args)
        return self.kernel(self.prepare(block, owned, scale)[0], *args)


class _WithStats(_RowCentered):
    def __init__(self, kernel, center, local_mean, center_rows, scaled=False, columns=False):
        super().__init__(kernel, center_rows, scaled)
        self.center, self.local_mean, self.columns = center, local_mean, columns

    def __call__(self, block, *args, owned=False):
        scale, args = self.split(args)
        block, row_means, d_rows = self.prepare(block, owned, scale)
        stats = panel_stats(block, self.center)
        out = {"stats": stats, "out": None, "row_means": row_means, "row_scale": d_rows}
        if not stats["finite"]:
            return out
        if self.columns:  # per-column sums of squares for standardize (tall)
            stats["colss"] = column_sumsq(block, stats["mean"])
        if self.local_mean:
            args = (*args, stats["mean"] if self.center else None)
        out["out"] = self.kernel(block, *args)
        return out


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
        never enter a rounding error.
    cache : (token, fraction), optional
        Keep decoded panels in worker memory between passes (:mod:`._cache`).
    missing : tuple of float, optional
        ``missing="mask"``: every read replaces NaN (and these markers) by 0
        and counts them (:mod:`._missing`).
    decide_missing : callable, optional
        ``decide_missing(counts)`` after pass 1, with the per-panel counts
        (None for a panel without missing entries); may raise to fail the run.
    weights : ndarray of shape (n_features,), optional
        Feature weights (:mod:`._scaling`): the tall view's columns, or its rows
        when ``wide``.
    standardize : bool, default=False
        Divide each feature by its standard deviation: locally per row when
        ``wide``, else after pass 1 (:meth:`post_scale`).
    """

    def __init__(self, engine, panels, bounds, tall_shape, *, center, center_rows,
                 passes, progress, wide, pivot=None, cache=None, missing=None,
                 decide_missing=None, weights=None, standardize=False):
        self.engine, self.panels, self.bounds = engine, panels, bounds
        self.m, self.n = tall_shape
        self.center, self.center_rows = center, center_rows
        self.passes, self.progress, self.wide = passes, progress, wide
        self.pivot = pivot if center else None
        self.cache = cache
        self.missing, self.decide_missing = missing, decide_missing
        self._shift = engine.scatter(self.pivot) if self.pivot is not None else None
        self.pass_no = 0
        self.stats = None
        self.panel_stats = None
        self.row_means = None
        self.standardize = bool(standardize)
        self.col_scale = None if wide else weights  # the tall view's current column scale
        self.row_scale = weights if wide else None  # wide: the features' scale after pass 1
        self._raw_mean = None
        self._scales = self._first_scales = self._panel_scales(weights)

    def _panel_scales(self, weights):
        """One :class:`~._scaling.PanelScale` handle per panel, or None when nothing scales."""
        if self.wide and (weights is not None or self.standardize):
            return [self.engine.scatter(PanelScale(
                rows=None if weights is None else weights[start:stop],
                standardize_rows=self.standardize)) for start, stop in self.bounds]
        if self.wide or weights is None or self.standardize:
            return None  # a tall standardised run scales after pass 1 (post_scale)
        return [self.engine.scatter(PanelScale(columns=weights))] * len(self.panels)

    def _scaled(self, kernel, args_for, first=False):
        """``(kernel, args_for)`` with the panel scale prepended (when anything scales)."""
        scales = self._first_scales if first else self._scales
        if not self.center_rows and scales is None:
            return kernel, args_for
        kernel = _RowCentered(kernel, self.center_rows, scaled=scales is not None)
        if scales is None:
            return kernel, args_for
        return kernel, (lambda i: (scales[i], *args_for(i)))

    def post_scale(self):
        """After pass 1 of a tall standardised run: the column scale d = w / max(σ, ε₃₂).

        Later passes scale panels by d; the statistics (mean, total) become
        those of the scaled columns. Returns d (shape (n,)) once, then None;
        None for every other run (nothing to apply after the fact).
        """
        if not self.standardize or self.wide or self._raw_mean is not None:
            return None
        st = self.stats
        colss = merge_column_sumsq(self.panel_stats, [s["colss"] for s in self.panel_stats])
        d = std_scale(colss, st["count"])
        if self.col_scale is not None:
            d = d * self.col_scale
        self._raw_mean, self.col_scale = st["mean"], d
        self.stats = {**st, "mean": st["mean"] * d, "ss": scaled_total(colss, st["count"], d)}
        self._scales = [self.engine.scatter(PanelScale(columns=d))] * len(self.panels)
        return d

    def phase(self, name, reads=True):
        if reads:
            self.pass_no += 1
        return Phase(name, max(self.pass_no, 1), self.passes)

    def tick(self, phase, done, total):
        """Report progress of a step that reads no panel (``progress(done, total, phase)``)."""
        if self.progress is not None:
            self.progress(done, total, phase)

    def run_pass(self, name, kernel, args_for=lambda i: (), *, first_scale=False):
        """A pass over A; returns per-panel handles to the kernel's result.

        ``first_scale``: scale the panels as pass 1 did (a pass that rebuilds
        pass 1's local factors), not by the scale known since.
        """
        kernel, args_for = self._scaled(kernel, args_for, first_scale)
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

        scales = self._first_scales
        if scales is not None:
            args_for = (lambda f: lambda i: (scales[i], *f(i)))(args_for)
        handles = eng.run_pass(phase, self.panels,
                               with_stats(kernel, center=self.center, local_mean=local_mean,
                                          center_rows=self.center_rows,
                                          scaled=scales is not None,
                                          columns=self.standardize and not self.wide),
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
        if self.wide and self.standardize:
            parts = eng.gather([eng.part(h, "row_scale") for h in handles])
            self.row_scale = np.concatenate(parts)
        return [eng.part(h, "out") for h in handles]

    @property
    def shifted_mean(self):
        """Column means of the panels as the kernels see them (after the pivot shift)."""
        return self.stats["mean"] if self.center else None

    @property
    def mean(self):
        """Column means of the tall view (tall centring) -- None otherwise.

        Of the data as stored: a weighted run divides the weights out again
        (0 for a feature of weight 0).
        """
        if not self.center:
            return None
        mu, d = self._raw_mean, None
        if mu is None:
            mu, d = self.stats["mean"], self.col_scale
        if d is not None:
            mu = np.divide(mu, d, out=np.zeros_like(mu), where=d != 0)
        return self.pivot + mu

    @property
    def scale(self):
        """The feature scale D applied (shape (n_features,)), or None."""
        return self.row_scale if self.wide else self.col_scale

    @property
    def total_sumsq(self):
        """‖A‖_F², or ‖A − 1μᵀ‖_F² when centred, from pass 1, as a scaled
        :func:`~._kernels.sumsq` pair."""
        return self.stats["ss"]
