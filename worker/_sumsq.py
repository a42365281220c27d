"""Scaled sums of squares and the statistics of one panel: pure NumPy.

Sums of squares are carried scaled, as LAPACK's ``dlassq`` does: a pair
``(e, s)`` stands for ``s·4**e`` (see :func:`sumsq`), so ‖A‖²_F of a matrix
with entries near 1e±300 neither overflows nor underflows. Pass 1 of every
method returns :func:`panel_stats` of each panel, merged by
:func:`merge_stats` (column means without cancellation, the scaled total).
Re-exported by :mod:`._kernels`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["BLOCK_ROWS", "sumsq", "add_sumsq", "scale_sumsq", "sumsq_norm", "tail_norms",
           "times_pow2", "abs_max", "blocked_sumsq", "panel_stats",
           "merge_stats"]

#: Rows per block in the blocked loops (keeps temporaries in cache).
BLOCK_ROWS = 256


# --------------------------------------------------------------------------- scaled sums of squares


def _normal(e, s):
    """Renormalise ``s·4**e`` so that ``s`` lies in [0.5, 2) (or is 0)."""
    if s == 0.0:
        return (0, 0.0)
    mant, x = math.frexp(s)
    if x % 2:
        mant, x = mant * 2.0, x - 1
    return (int(e) + x // 2, mant)


def sumsq(x, amax=None):
    """Scaled sum of squares Σx² as ``(e, s)`` with Σx² = s·4**e (LAPACK ``dlassq``).

    Parameters
    ----------
    x : ndarray of any shape
    amax : float, optional
        An upper bound of max|x| (computed when omitted).

    Returns
    -------
    (int, float)
        ``s`` in [0.5, 2) or 0. Exact scaling by powers of two: within
        2**±300 the squares are summed unscaled (the common case costs one
        dot product), outside it ``x`` is first multiplied by 2**-e.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return (0, 0.0)
    if amax is None:
        # One read in the common case: a finite sum well above the underflow
        # range cannot have lost anything that matters (a lost square is
        # below 2**-1074, the sum at least 2**-600).
        s = _dot_self(x)
        if math.isfinite(s) and s >= 2.0**-600:
            return _normal(0, s)
        amax = abs_max(x)
    if amax == 0.0:
        return (0, 0.0)
    if 2.0**-300 < amax < 2.0**300:
        return _normal(0, _dot_self(x))
    e = math.frexp(amax)[1]
    return _normal(e, _dot_self(times_pow2(x, -e)))


def times_pow2(x, e, out=None):
    """``x·2**e`` with the bits of ``np.ldexp(x, e)``, at about a tenth of its cost.

    For −1022 ≤ e ≤ 1023 the factor 2**e is a normal float, and an IEEE
    multiplication rounds the exact product ``x·2**e`` correctly, as
    ``ldexp`` does (subnormal results included); beyond, ``np.ldexp`` runs.
    """
    if -1022 <= e <= 1023:
        return np.multiply(x, math.ldexp(1.0, e), out=out)
    return np.ldexp(x, e, out=out)


def _dot_self(x):
    """Σx² in one read (no temporary beyond a row for 1-D and 2-D input).

    For 2-D input, the column sums first: ``einsum`` adds whole rows with
    vector instructions, about 1.6× the speed of its full reduction.
    """
    if x.ndim == 2:
        return float(np.einsum("ij,ij->j", x, x).sum())
    flat = x.reshape(-1)
    return float(flat @ flat)


def add_sumsq(a, b):
    """Sum of two :func:`sumsq` pairs (exact rescaling by powers of two)."""
    (ea, sa), (eb, sb) = a, b
    if sa == 0.0:
        return (eb, sb)
    if sb == 0.0:
        return (ea, sa)
    e = max(ea, eb)
    return _normal(e, math.ldexp(sa, 2 * (ea - e)) + math.ldexp(sb, 2 * (eb - e)))


def scale_sumsq(a, c):
    """``c·(Σx²)`` for a :func:`sumsq` pair and a non-negative float ``c``."""
    e, s = a
    return _normal(e, s * c)


def sumsq_norm(a):
    """sqrt(Σx²) of a :func:`sumsq` pair: finite whenever the norm is representable."""
    e, s = a
    return math.ldexp(math.sqrt(s), e)


def tail_norms(s):
    """``t[r] = ‖s[r:]‖₂`` for r = 0..len(s), without over- or underflow.

    Accumulated from the smallest entry up with a running scale (``dlassq``),
    so a tail of tiny values is exact to rounding, never the difference of
    two large sums.

    Parameters
    ----------
    s : ndarray of shape (n,)

    Returns
    -------
    ndarray of shape (n + 1,)
    """
    s = np.abs(np.asarray(s, dtype=np.float64))
    out = np.zeros(s.size + 1)
    scale, ssq = 0.0, 0.0
    for r in range(s.size - 1, -1, -1):
        v = float(s[r])
        if v > 0.0:
            if v > scale:
                ssq = 1.0 + ssq * (scale / v) ** 2
                scale = v
            else:
                ssq += (v / scale) ** 2
        out[r] = scale * math.sqrt(ssq)
    return out

def abs_max(a):
    """max|a| in two reads and no temporary; NaN if ``a`` holds a NaN."""
    return float(max(a.max(), -a.min())) if a.size else 0.0


def blocked_sumsq(a, difference):
    """‖a − x‖²_F as a :func:`sumsq` pair, the difference formed ``BLOCK_ROWS`` rows at a time.

    ``difference(rows, out)`` writes ``a[rows] − x[rows]`` into ``out`` (a
    slice of rows). One block-sized buffer is reused: a fresh temporary per
    block would cost a page-faulted allocation each time on a Dask worker,
    whose allocator is told to return memory to the system
    (``MALLOC_TRIM_THRESHOLD_``).
    """
    acc = (0, 0.0)
    buf = np.empty((min(BLOCK_ROWS, a.shape[0]), a.shape[1]))
    for s in range(0, a.shape[0], BLOCK_ROWS):
        r = buf[: min(BLOCK_ROWS, a.shape[0] - s)]
        difference(slice(s, s + BLOCK_ROWS), r)
        acc = add_sumsq(acc, sumsq(r))
    return acc


def panel_stats(a, center=False):
    """First-pass statistics of one panel.

    Parameters
    ----------
    a : ndarray of shape (rows, n)
        The panel (already shifted by the pivot row when ``center``).
    center : bool
        Sum the squares about the panel's own column means (total variance)
        instead of the raw squares.

    Returns
    -------
    dict
        ``finite`` (bool), ``count`` (rows), ``mean`` (ndarray of shape
        (n,)), ``amax`` (max|a|), ``center`` and ``ss`` (a :func:`sumsq`
        pair: Σa², or Σ(a − 1 meanᵀ)² when centred). Merged across panels
        with :func:`merge_stats` (Chan, Golub & LeVeque 1979), which avoids
        the cancellation of ``Σa² − m μ²``.
    """
    rows, n = a.shape
    amax, total, ss = _moments(a, squares=not center)
    out = {"finite": math.isfinite(amax), "count": rows, "mean": np.zeros(n),
           "amax": amax, "center": bool(center), "ss": ss}
    if not out["finite"] or rows == 0:
        return out
    mean = out["mean"] = total / rows
    if center:
        out["ss"] = blocked_sumsq(a, lambda i, r: np.subtract(a[i], mean, out=r))
    return out


def _moments(a, squares):
    """max|a|, the column sums and, if ``squares``, Σa² of a panel in one read.

    Each block of ``BLOCK_ROWS`` rows is reduced every way while it is in cache,
    instead of one read of the whole panel per statistic. Σa² is accumulated
    block by block as :func:`sumsq` pairs, each block scaled by its own max.

    Returns
    -------
    amax : float
        NaN or inf when ``a`` is not finite (then the other two are partial).
    total : ndarray of shape (n,)
    ss : a :func:`sumsq` pair, (0, 0.0) unless ``squares``
    """
    tops, total, ss = [0.0], np.zeros(a.shape[1]), (0, 0.0)
    for s in range(0, a.shape[0], BLOCK_ROWS):
        b = a[s:s + BLOCK_ROWS]
        if b.dtype != np.float64:  # a float32 panel (:mod:`._precision`): widened exactly,
            b = b.astype(np.float64)  # one block at a time, never the whole panel
        tops.append(abs_max(b))
        if not math.isfinite(tops[-1]):
            break
        total += b.sum(axis=0)
        if squares:
            ss = add_sumsq(ss, sumsq(b, tops[-1]))
    return float(np.max(tops)), total, ss


def merge_stats(x, y):
    """Merge two :func:`panel_stats` results (pairwise update of Chan et al.)."""
    na, nb = x["count"], y["count"]
    if na == 0:
        return dict(y)
    if nb == 0:
        return dict(x)
    n = na + nb
    delta = y["mean"] - x["mean"]
    ss = add_sumsq(x["ss"], y["ss"])
    if x["center"]:
        ss = add_sumsq(ss, scale_sumsq(sumsq(delta), na * nb / n))
    return {
        "finite": x["finite"] and y["finite"],
        "count": n,
        "mean": x["mean"] + delta * (nb / n),
        "amax": max(x["amax"], y["amax"]),
        "center": x["center"],
        "ss": ss,
    }
