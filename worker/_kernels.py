"""Pure NumPy kernels on one panel (a row band of the tall matrix).

Nothing here knows about Dask, Zarr or the panel plan: every function takes
in-memory arrays and returns in-memory arrays, so each is tested without a
cluster. The graph plumbing lives in :mod:`._engine`; the algorithms that
chain these kernels into passes live in :mod:`._tsqr` and :mod:`._rsvd`.

Notation: a panel ``a`` is an ``ndarray of shape (rows, n)`` in float64.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import qr_multiply

__all__ = [
    "panel_stats",
    "merge_stats",
    "qr_r",
    "qr_apply",
    "qr_full",
    "tsqr_leaf",
    "tsqr_merge",
    "split_down",
    "power_leaf",
    "range_leaf",
    "project_leaf",
    "tall_block",
    "orthonormalize",
    "svd_flip_rows",
    "block_argmax",
]


# --------------------------------------------------------------------------- stats


def panel_stats(a):
    """First-pass statistics of one panel.

    Parameters
    ----------
    a : ndarray of shape (rows, n)

    Returns
    -------
    dict
        ``finite`` (bool), ``count`` (rows), ``sumsq`` (Σ a_ij²), ``mean``
        (ndarray of shape (n,)) and ``m2`` (ndarray of shape (n,), the
        column sums of squares about the panel mean). Means and ``m2`` are
        merged across panels with :func:`merge_stats` (Chan, Golub & LeVeque
        1979), which avoids the cancellation of ``Σa² − m μ²``.
    """
    finite = bool(np.isfinite(a).all())
    n = a.shape[1]
    if not finite or a.shape[0] == 0:
        return {"finite": finite, "count": a.shape[0], "sumsq": 0.0,
                "mean": np.zeros(n), "m2": np.zeros(n)}
    mean = a.mean(axis=0)
    d = a - mean
    return {
        "finite": True,
        "count": a.shape[0],
        "sumsq": float(np.einsum("ij,ij->", a, a)),
        "mean": mean,
        "m2": np.einsum("ij,ij->j", d, d),
    }


def merge_stats(x, y):
    """Merge two :func:`panel_stats` results (pairwise update of Chan et al.)."""
    na, nb = x["count"], y["count"]
    n = na + nb
    if na == 0:
        return dict(y)
    if nb == 0:
        return dict(x)
    delta = y["mean"] - x["mean"]
    return {
        "finite": x["finite"] and y["finite"],
        "count": n,
        "sumsq": x["sumsq"] + y["sumsq"],
        "mean": x["mean"] + delta * (nb / n),
        "m2": x["m2"] + y["m2"] + delta**2 * (na * nb / n),
    }


# --------------------------------------------------------------------------- QR


def _positive_diag(q, r):
    """Flip signs so that ``diag(r) >= 0``; makes QR unique for full-rank input."""
    d = np.sign(np.diagonal(r)).copy()
    d[d == 0] = 1.0
    r = r * d[:, None]
    if q is not None:
        q = q * d[None, :]
    return q, r


def qr_r(a):
    """R factor of a panel's Householder QR (LAPACK ``geqrf``).

    Every per-panel QR in this package is a ``scipy.linalg.qr_multiply`` of
    the panel, so a panel's factorisation is bit-for-bit the same in every
    pass that rebuilds it: a later pass re-derives Q_i (applied to a small
    block, never formed) instead of storing it.

    Parameters
    ----------
    a : ndarray of shape (rows, n)

    Returns
    -------
    r : ndarray of shape (min(rows, n), n)
    """
    _, r = qr_multiply(a, np.zeros((1, a.shape[0])), mode="right")
    return r[: min(a.shape)]


def qr_apply(a, w):
    """Q_a w for the Q factor of :func:`qr_r`, without forming Q (``geqrf`` + ``ormqr``).

    Parameters
    ----------
    a : ndarray of shape (rows, n)
    w : ndarray of shape (min(rows, n), k)

    Returns
    -------
    ndarray of shape (rows, k)
    """
    return qr_multiply(a, w, mode="left")[0]


def qr_full(a):
    """Thin Householder QR with non-negative diagonal (small dense blocks).

    Returns
    -------
    q : ndarray of shape (rows, min(rows, n))
    r : ndarray of shape (min(rows, n), n)
    """
    q, r = np.linalg.qr(a, mode="reduced")
    return _positive_diag(q, r)


def tsqr_leaf(a, with_ones):
    """Leaf of a TSQR tree (Benson, Gleich & Demmel 2013, Alg. 1).

    Parameters
    ----------
    a : ndarray of shape (rows, c)
    with_ones : bool
        Also return ``s = Qᵀ1``, the projection of the all-ones vector on the
        panel's Q factor, used to apply a rank-one centring correction to the
        finished factorisation (see :func:`svdserve.worker._tsqr.centre_correction`).

    Returns
    -------
    dict with ``r`` (ndarray of shape (min(rows, c), c)) and ``s``
    (ndarray of shape (min(rows, c),) or None).
    """
    if with_ones:
        s, r = qr_multiply(a, np.ones((1, a.shape[0])), mode="right")
        return {"r": r[: min(a.shape)], "s": s[0]}
    return {"r": qr_r(a), "s": None}


def tsqr_merge(left, right):
    """Internal TSQR node: QR of two stacked R factors.

    Parameters
    ----------
    left, right : dict
        Children as returned by :func:`tsqr_leaf` or this function:
        ``r`` of shape (ra, c) and (rb, c), ``s`` or None.

    Returns
    -------
    dict with ``q`` (ndarray of shape (ra + rb, r)) kept for the downward
    sweep, ``r`` (ndarray of shape (r, c)), ``s`` (ndarray of shape (r,) or
    None) and ``split`` (ra, the row where the right child starts in ``q``).
    """
    stacked = np.vstack([left["r"], right["r"]])
    q, r = qr_full(stacked)
    s = None
    if left["s"] is not None:
        s = q.T @ np.concatenate([left["s"], right["s"]])
    return {"q": q, "r": r, "s": s, "split": left["r"].shape[0]}


def split_down(node, w):
    """Downward sweep of TSQR: coefficients of the children from the parent's.

    Parameters
    ----------
    node : dict
        A :func:`tsqr_merge` result.
    w : ndarray of shape (r, k)
        Coefficients of the wanted tall factor in the node's Q basis.

    Returns
    -------
    (w_left, w_right) : ndarrays of shape (ra, k) and (rb, k)
    """
    qw = node["q"] @ w
    return qw[: node["split"]], qw[node["split"]:]


# --------------------------------------------------------------------------- randomized


def _centred_product(a, g, mu):
    """(a − 1μᵀ) g without forming the centred panel; ``mu`` may be None."""
    y = a @ g
    if mu is not None:
        y -= mu @ g
    return y


def power_leaf(a, g, mu):
    """One fused power-iteration step on a panel: A_iᵀ (A_i G), centred implicitly.

    Parameters
    ----------
    a : ndarray of shape (rows, n)
    g : ndarray of shape (n, l)
    mu : ndarray of shape (n,) or None
        Column means for implicit centring, (A − 1μᵀ)ᵀ(A − 1μᵀ)G.

    Returns
    -------
    ndarray of shape (n, l)
    """
    y = _centred_product(a, g, mu)
    z = a.T @ y
    if mu is not None:
        z -= np.outer(mu, y.sum(axis=0))
    return z


def range_leaf(a, g, mu, with_ones):
    """Range-pass leaf: TSQR leaf of Y_i = (A_i − 1μᵀ) G.

    Returns
    -------
    dict as :func:`tsqr_leaf`.
    """
    return tsqr_leaf(_centred_product(a, g, mu), with_ones)


def project_leaf(a, g, mu, w, c):
    """Projection-pass leaf: rebuild Q_i of Y = AG and form B_i = Q_iᵀ(A_i − 1μᵀ).

    Parameters
    ----------
    a : ndarray of shape (rows, n)
    g : ndarray of shape (n, l)
    mu : ndarray of shape (n,) or None
        Means already known when Y was factored (power passes ran first).
    w : ndarray of shape (min(rows, l), l)
        This panel's coefficients from the TSQR downward sweep.
    c : ndarray of shape (l,) or None
        Rank-one centring correction: Q_i = Q_i^loc w + 1cᵀ.

    Returns
    -------
    dict with ``q`` (ndarray of shape (rows, l)), ``b`` (ndarray of shape (l, n))
    and ``qsum`` (ndarray of shape (l,), ``Q_iᵀ1``).
    """
    q = tall_block(_centred_product(a, g, mu), w, c)
    return {"q": q, "b": q.T @ a, "qsum": q.sum(axis=0)}


def tall_block(a, w, c):
    """Rows of an orthonormal tall factor: Q_i^loc w + 1cᵀ, Q_i^loc rebuilt from ``a``.

    Parameters
    ----------
    a : ndarray of shape (rows, c_in)
    w : ndarray of shape (min(rows, c_in), k)
    c : ndarray of shape (k,) or None

    Returns
    -------
    ndarray of shape (rows, k)
    """
    t = qr_apply(a, w)
    if c is not None:
        t += c
    return t


# --------------------------------------------------------------------------- small dense helpers


def orthonormalize(z):
    """Orthonormal basis of the columns of a small block (Householder QR).

    Parameters
    ----------
    z : ndarray of shape (n, l)

    Returns
    -------
    ndarray of shape (n, l)
    """
    return qr_full(z)[0]


def svd_flip_rows(u, vt):
    """Fix signs so the largest-magnitude entry of each row of ``vt`` is positive.

    Ties are broken by the lowest column index, so the choice never depends
    on the chunking. Mirrors scikit-learn's ``svd_flip(u_based_decision=False)``.

    Parameters
    ----------
    u : ndarray of shape (m, k)
    vt : ndarray of shape (k, n)

    Returns
    -------
    u, vt : same shapes, with column ``j`` of u and row ``j`` of vt flipped together.
    """
    if vt.size == 0:
        return u, vt
    idx = np.argmax(np.abs(vt), axis=1)
    signs = np.sign(vt[np.arange(vt.shape[0]), idx])
    signs[signs == 0] = 1.0
    return u * signs[None, :], vt * signs[:, None]


def block_argmax(t, offset):
    """Per-column largest-magnitude entry of a block of a tall factor.

    Parameters
    ----------
    t : ndarray of shape (rows, k)
    offset : int
        Global index of the block's first row.

    Returns
    -------
    (absval, value, index) : three ndarrays of shape (k,); ``index`` is the
    global row of the winning entry (lowest on ties).
    """
    if t.shape[0] == 0:
        k = t.shape[1]
        return np.full(k, -1.0), np.zeros(k), np.full(k, np.iinfo(np.int64).max)
    idx = np.argmax(np.abs(t), axis=0)
    val = t[idx, np.arange(t.shape[1])]
    return np.abs(val), val, idx.astype(np.int64) + offset
