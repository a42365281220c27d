"""Kernels on one sparse panel (CSR), pure NumPy/SciPy: products, never a dense copy.

A sparse panel ``a`` is a ``scipy.sparse.csr_matrix`` of shape (rows, n),
float64, or a :class:`RowCentered` view of one (a panel of the tall view of
a CSC matrix whose rows are centred, PCA of a wide sparse matrix). The
dense kernels of :mod:`._kernels` dispatch here when they are given one.

Implicit centring. Sparse panels are never shifted by a pivot row (that
would densify them): a column-centred product is formed from the sparse one,

    (A − 1μᵀ)G = AG − 1(μᵀG),        (A − 1μᵀ)ᵀY = AᵀY − μ(1ᵀY),

with μ from pass 1 (the randomized kernels already take ``mu``/``mu_g`` in
this form). Accuracy: the rounding error of AG is about ε‖A‖‖G‖ instead of
ε‖A − 1μᵀ‖‖G‖ for the shifted panel, a factor ‖A‖_F/‖A − 1μᵀ‖_F larger.
For a column with a fraction d of non-zeros, mμ_j² ≤ d‖a_j‖² (Cauchy–Schwarz
over its non-zeros), so that factor is at most 1/sqrt(1 − d_max): 1.05 at
10 % density, 1.4 at 50 %. Only a column that is non-zero almost everywhere
with a large common offset (the case the pivot shift exists for) loses
digits; the run reports the factor (``report["centering"]``).

The randomized method's residual ‖A_i − Q_iC_i‖² of a panel is ‖A_i‖² − ‖C_i‖²
unless that would cancel (:func:`sparse_residual_sumsq`).

Sums of squares stay exact without densifying: Σ(a_ij − μ_j)² over a column
is Σ over its non-zeros of (a_ij − μ_j)² plus (rows − nnz_j)·μ_j², two sums
of positive terms.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from ._sumsq import BLOCK_ROWS, abs_max, add_sumsq, scale_sumsq, sumsq, times_pow2

__all__ = ["is_sparse", "RowCentered", "row_centered", "sparse_stats", "sparse_power_leaf",
           "sparse_residual_sumsq", "dense_rows", "sparse_times_left", "csr_panel",
           "check_panel_arrays"]


def is_sparse(a):
    """Whether ``a`` is a sparse panel (CSR or a :class:`RowCentered` view)."""
    return sp.issparse(a) or isinstance(a, RowCentered)


class RowCentered:
    """A CSR panel with each row centred by its own mean, as a linear operator.

    ``A_c = A − r1ᵀ`` with ``r`` the row means: ``A_c @ G = AG − r(1ᵀG)``,
    ``A_cᵀ @ Y = AᵀY − 1(rᵀY)``, ``X @ A_c = XA − (Xr)1ᵀ``; never formed.

    Parameters
    ----------
    a : scipy.sparse.csr_matrix of shape (rows, n)
    r : ndarray of shape (rows,)
    """

    __array_ufunc__ = None  # ndarray @ RowCentered defers to __rmatmul__

    def __init__(self, a, r, transposed=False):
        self.a, self.r, self.transposed = a, r, transposed

    @property
    def shape(self):
        rows, n = self.a.shape
        return (n, rows) if self.transposed else (rows, n)

    @property
    def T(self):
        return RowCentered(self.a, self.r, not self.transposed)

    def __matmul__(self, g):
        g = np.asarray(g)
        if self.transposed:  # (A − r1ᵀ)ᵀY = AᵀY − 1(rᵀY)
            return self.a.T @ g - (self.r @ g)[None, :]
        return self.a @ g - np.outer(self.r, g.sum(axis=0))

    def __rmatmul__(self, x):
        x = np.asarray(x)
        if self.transposed:  # X(A − r1ᵀ)ᵀ = XAᵀ − X1 rᵀ
            return (self.a @ x.T).T - np.outer(x.sum(axis=1), self.r)
        return (self.a.T @ x.T).T - np.outer(x @ self.r, np.ones(self.a.shape[1]))


def row_centered(a):
    """``(RowCentered view, row means)`` of a CSR panel (PCA of a wide sparse matrix)."""
    means = np.asarray(a.sum(axis=1)).ravel() / a.shape[1]
    return RowCentered(a, means), means


def dense_rows(a, s, e):
    """Rows ``s:e`` of a sparse panel as a dense block (a few rows at a time only)."""
    if isinstance(a, RowCentered):
        return a.a[s:e].toarray() - a.r[s:e, None]
    return a[s:e].toarray()


def sparse_times_left(x, a):
    """``x @ a`` for a dense ``x`` of shape (k, rows) and a sparse panel: ndarray (k, n)."""
    if isinstance(a, RowCentered):
        return x @ a
    return np.asarray((a.T @ x.T).T)


def _csr_and_rows(a):
    return (a.a, a.r) if isinstance(a, RowCentered) else (a, None)


def sparse_stats(a, center=False):
    """:func:`~._sumsq.panel_stats` of a sparse panel, without densifying it.

    Same dict (``finite``, ``count``, ``mean``, ``amax``, ``center``, ``ss``);
    the centred sum of squares is Σ_nz (a − μ_j)² + Σ_j (rows − nnz_j) μ_j².
    """
    csr, r = _csr_and_rows(a)
    rows, n = csr.shape
    data = csr.data
    out = {"finite": True, "count": rows, "mean": np.zeros(n), "amax": 0.0,
           "center": bool(center), "ss": (0, 0.0)}
    amax = abs_max(data)
    if not math.isfinite(amax):
        out.update(finite=False, amax=amax)
        return out
    if r is not None:  # row-centred: entries a_ij − r_i, zeros read −r_i
        vals = data - np.repeat(r, np.diff(csr.indptr))
        zeros = n - np.diff(csr.indptr)
        out["amax"] = max(abs_max(vals), abs_max(r) if np.any(zeros) else 0.0)
        total = np.bincount(csr.indices, weights=vals, minlength=n) - \
            (r.sum() - np.bincount(csr.indices, weights=np.repeat(r, np.diff(csr.indptr)),
                                   minlength=n))
        ss = add_sumsq(sumsq(vals), sumsq(np.sqrt(zeros) * np.abs(r)))
    else:
        vals, out["amax"] = data, amax
        total = np.bincount(csr.indices, weights=data, minlength=n)
        ss = sumsq(data)
    if rows == 0:
        return out
    mean = out["mean"] = total / rows
    if not center:
        out["ss"] = ss
        return out
    if r is not None:
        raise ValueError("a row-centred panel is not also column-centred")
    nnz = np.bincount(csr.indices, minlength=n)
    out["ss"] = add_sumsq(sumsq(vals - mean[csr.indices]),
                          sumsq(np.sqrt(rows - nnz) * np.abs(mean)))
    return out


def _exponent(x):
    amax = abs_max(x)
    return math.frexp(amax)[1] if amax > 0 and math.isfinite(amax) else 0


def sparse_power_leaf(a, g, mu, mu_g=None):
    """:func:`~._kernels.power_leaf` of a sparse panel: Aᵢᵀ(AᵢG), centred implicitly.

    ``y = A_iG (− 1μᵀG)`` (rows × l, the only dense block), scaled by a power
    of two, then ``z = A_iᵀy − μ(1ᵀy)``.

    Returns
    -------
    dict with ``z`` (ndarray of shape (n, l)) and ``e`` (int): the product is z·2**e.
    """
    y = np.asarray(a @ g)
    if mu is not None:
        y -= y.mean(axis=0) if mu_g is None else mu_g
    e = _exponent(y)
    y = times_pow2(y, -e, out=y)
    z = np.asarray(a.T @ y)
    if mu is not None:
        z -= np.outer(mu, y.sum(axis=0))
    return {"z": z, "e": e}


#: Below this share of ‖A_i‖²_F, ‖A_i − Q_iC_i‖² is formed as a difference of dense rows
#: (no cancellation, O(rows·n·l)); above it as ‖A_i‖² − ‖C_i‖² (O(nnz + l·n)), whose
#: rounding error ~ε‖A_i‖² is then at most 1e-9 of the result.
RESIDUAL_SUBTRACT = 1e-6


def sparse_residual_sumsq(a, q, c):
    """‖a − qc‖²_F of a sparse panel, for ``c = qᵀa`` with orthonormal ``q``.

    Pythagoras, ‖a‖² − ‖c‖², costs only the non-zeros; where the residual is
    below :data:`RESIDUAL_SUBTRACT` of ‖a‖² (an almost exactly low-rank panel) that
    difference would cancel, and the residual is formed densely instead,
    ``BLOCK_ROWS`` rows at a time (never the whole panel).
    """
    total = sparse_stats(a)["ss"]
    cc = sumsq(c)
    e = max(total[0], cc[0])
    diff = math.ldexp(total[1], 2 * (total[0] - e)) - math.ldexp(cc[1], 2 * (cc[0] - e))
    whole = math.ldexp(total[1], 2 * (total[0] - e))
    if diff > RESIDUAL_SUBTRACT * whole:
        return scale_sumsq((e, 1.0), diff) if diff > 0 else (0, 0.0)
    acc = (0, 0.0)
    for s in range(0, a.shape[0], BLOCK_ROWS):
        stop = min(s + BLOCK_ROWS, a.shape[0])
        r = dense_rows(a, s, stop)
        r -= q[s:stop] @ c
        acc = add_sumsq(acc, sumsq(r))
    return acc


def check_panel_arrays(indptr, indices, n_minor, what):
    """Validate one panel's index arrays; returns an error message or None.

    ``indptr`` must be non-decreasing and ``indices`` in ``[0, n_minor)``.
    """
    steps = np.diff(indptr)
    if steps.size and steps.min() < 0:
        i = int(np.argmax(steps < 0))
        return (f"indptr is not monotone in {what}: indptr[{i}] = {int(indptr[i])} > "
                f"indptr[{i + 1}] = {int(indptr[i + 1])} (relative to the panel)")
    if indices.size:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= n_minor:
            bad = lo if lo < 0 else hi
            return (f"indices hold {bad} in {what}, outside [0, {n_minor}) (the matrix has "
                    f"{n_minor} columns in this orientation)")
    return None


def csr_panel(indptr, indices, data, n_minor):
    """A float64 CSR panel from its slices (``indptr`` relative to the first entry).

    Returns
    -------
    scipy.sparse.csr_matrix of shape (len(indptr) − 1, n_minor)
    """
    ptr = np.asarray(indptr, dtype=np.int64) - int(indptr[0])
    idx = np.asarray(indices)
    idx = idx.astype(np.int32 if n_minor < 2**31 and ptr[-1] < 2**31 else np.int64, copy=False)
    vals = np.asarray(data, dtype=np.float64)
    return sp.csr_matrix((vals, idx, ptr.astype(idx.dtype, copy=False)),
                         shape=(ptr.size - 1, int(n_minor)), copy=False)
