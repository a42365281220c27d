"""Pure NumPy kernels on one panel (a row band of the tall matrix).

Nothing here knows about Dask, Zarr or the panel plan: every function takes
in-memory arrays and returns in-memory arrays, so each is tested without a
cluster. The graph plumbing lives in :mod:`._engine`; the algorithms that
chain these kernels into passes live in :mod:`._tsqr` and :mod:`._rsvd`.

Notation: a panel ``a`` is an ``ndarray of shape (rows, n)`` in float64.
When the tall view is centred (PCA), ``a`` has already been shifted by a
common pivot row ``p`` (``a = A_i − 1pᵀ``, see :func:`prepare_panel`),
so that an offset common to all rows never enters a rounding error.

Sums of squares are carried scaled, as LAPACK's ``dlassq`` does: a pair
``(e, s)`` stands for ``s·4**e`` (see :func:`sumsq`), so ‖A‖²_F of a matrix
with entries near 1e±300 neither overflows nor underflows.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import lapack

__all__ = [
    "sumsq",
    "add_sumsq",
    "scale_sumsq",
    "sumsq_norm",
    "tail_norms",
    "prepare_panel",
    "mask_missing",
    "panel_stats",
    "merge_stats",
    "qr_r",
    "qr_apply",
    "qr_full",
    "tsqr_leaf",
    "tsqr_merge",
    "split_down",
    "power_leaf",
    "sketch_leaf",
    "sketch_project",
    "sketch_residual",
    "sketch_tall",
    "sketch_finish",
    "deflated_power_leaf",
    "probe_sumsq",
    "panel_tests",
    "stream_leaf",
    "tall_block",
    "gemm_leaf",
    "gemm_tall",
    "orthonormalize",
    "svd_flip_rows",
    "block_argmax",
]

#: Rows per block in the blocked loops (keeps temporaries in cache).
_BLOCK = 256


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
        amax = _abs_max(x)
    if amax == 0.0:
        return (0, 0.0)
    if 2.0**-300 < amax < 2.0**300:
        return _normal(0, _dot_self(x))
    e = math.frexp(amax)[1]
    return _normal(e, _dot_self(_times_pow2(x, -e)))


def _times_pow2(x, e, out=None):
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


# --------------------------------------------------------------------------- panel preparation


def prepare_panel(a, *, shift=None, center_rows=False, owned=False):
    """Shift or row-centre a panel before any kernel sees it.

    Parameters
    ----------
    a : ndarray of shape (rows, n), float64
    shift : ndarray of shape (n,), optional
        The pivot row p of a column-centred run: returns ``a − 1pᵀ``. The
        difference of two nearby floats is exact (Sterbenz) and any other is
        correctly rounded relative to itself, so a common offset never enters
        a rounding error again.
    center_rows : bool
        Centre each row by its own mean (PCA of a wide matrix, whose tall
        view has the samples along the rows), shifting by the row's first
        entry first for the same reason.
    owned : bool
        ``a`` is a fresh buffer that may be overwritten.

    Returns
    -------
    block : ndarray of shape (rows, n)
    row_means : ndarray of shape (rows,) or None
    """
    if shift is not None:
        a = np.subtract(a, shift, out=a if owned else None)
    if not center_rows:
        return a, None
    first = a[:, :1].copy()
    a = np.subtract(a, first, out=a if owned else None)
    means = a.mean(axis=1)
    a -= means[:, None]
    return a, first[:, 0] + means


def mask_missing(a, markers=(), *, owned=False):
    """Replace missing entries (NaN, or equal to one of ``markers``) by 0 and count them.

    Parameters
    ----------
    a : ndarray of shape (rows, n), float64
    markers : sequence of float
        CF missing-value markers besides NaN (``_FillValue``, ``missing_value``).
    owned : bool
        ``a`` may be overwritten.

    Returns
    -------
    block : ndarray of shape (rows, n)
        ``a`` itself when nothing is missing.
    counts : (ndarray of shape (n,), ndarray of shape (rows,)) or None
        Missing entries per column and per row; None when there are none.
    """
    miss = np.isnan(a)
    for value in markers:
        miss |= a == value
    if not miss.any():
        return a, None
    if not owned:
        a = a.copy()
    a[miss] = 0.0
    return a, (miss.sum(axis=0), miss.sum(axis=1))


# --------------------------------------------------------------------------- stats


def _abs_max(a):
    """max|a| in two reads and no temporary; NaN if ``a`` holds a NaN."""
    return float(max(a.max(), -a.min())) if a.size else 0.0


def _blocked_sumsq(a, difference):
    """‖a − x‖²_F as a :func:`sumsq` pair, the difference formed ``_BLOCK`` rows at a time.

    ``difference(rows, out)`` writes ``a[rows] − x[rows]`` into ``out`` (a
    slice of rows). One block-sized buffer is reused: a fresh temporary per
    block would cost a page-faulted allocation each time on a Dask worker,
    whose allocator is told to return memory to the system
    (``MALLOC_TRIM_THRESHOLD_``).
    """
    acc = (0, 0.0)
    buf = np.empty((min(_BLOCK, a.shape[0]), a.shape[1]))
    for s in range(0, a.shape[0], _BLOCK):
        r = buf[: min(_BLOCK, a.shape[0] - s)]
        difference(slice(s, s + _BLOCK), r)
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
        out["ss"] = _blocked_sumsq(a, lambda i, r: np.subtract(a[i], mean, out=r))
    return out


def _moments(a, squares):
    """max|a|, the column sums and, if ``squares``, Σa² of a panel in one read.

    Each block of ``_BLOCK`` rows is reduced every way while it is in cache,
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
    for s in range(0, a.shape[0], _BLOCK):
        b = a[s:s + _BLOCK]
        tops.append(_abs_max(b))
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


# --------------------------------------------------------------------------- QR


def _positive_diag(q, r):
    """Flip signs so that ``diag(r) >= 0``; makes QR unique for full-rank input."""
    d = np.sign(np.diagonal(r)).copy()
    d[d == 0] = 1.0
    r = r * d[:, None]
    if q is not None:
        q = q * d[None, :]
    return q, r


def _fortran(a, ones=False):
    """A new Fortran-ordered float64 copy of ``a`` (behind a column of ones if ``ones``).

    Copied ``_BLOCK`` rows at a time: the transposing copy of a C-ordered
    panel then stays in cache, at about 0.6× the time of ``np.asfortranarray``.
    """
    lead = int(ones)
    out = np.empty((a.shape[0], a.shape[1] + lead), order="F")
    if ones:
        out[:, 0] = 1.0
    for s in range(0, a.shape[0], _BLOCK):
        out[s:s + _BLOCK, lead:] = a[s:s + _BLOCK]
    return out


def _with_ones(a):
    """``[1, a]``: the panel behind a column of ones, in one new Fortran-ordered buffer."""
    return _fortran(a, ones=True)


#: Block size of the compact-WY Householder QR (LAPACK ``dgeqrt``).
_QR_BLOCK = 64


def _geqrt(a):
    """Householder QR in compact WY form (``dgeqrt``, block 64) of a Fortran-ordered copy.

    ``dgeqrt`` on a column-major buffer runs at about 1.5× the speed of
    ``geqrf`` behind ``scipy.linalg.qr_multiply`` on a 32768×500 panel. A
    buffer that is already Fortran-ordered and writable (from
    :func:`_with_ones`) is factored in place.
    """
    f = a if a.flags.f_contiguous and a.flags.writeable and a.dtype == np.float64 \
        else _fortran(a)
    nb = max(1, min(_QR_BLOCK, *f.shape))
    v, t, info = lapack.dgeqrt(nb, f, overwrite_a=True)
    if info != 0:  # pragma: no cover - only for invalid arguments
        raise ValueError(f"dgeqrt failed with info={info}")
    return v, t


def qr_r(a):
    """R factor of a panel's Householder QR (LAPACK ``dgeqrt``).

    Every per-panel QR in this package goes through :func:`_geqrt`, so a
    panel's factorisation is bit-for-bit the same in every pass that
    rebuilds it: a later pass re-derives Q_i (applied to a small block,
    never formed) instead of storing it.

    Parameters
    ----------
    a : ndarray of shape (rows, n)

    Returns
    -------
    r : ndarray of shape (min(rows, n), n)
    """
    v, _ = _geqrt(a)
    return np.triu(v[: min(a.shape)])


def qr_apply(a, w):
    """Q_a w for the Q factor of :func:`qr_r`, without forming Q (``dgeqrt`` + ``dgemqrt``).

    Parameters
    ----------
    a : ndarray of shape (rows, n)
    w : ndarray of shape (min(rows, n), k)

    Returns
    -------
    ndarray of shape (rows, k)
    """
    return _q_times(*_geqrt(a), w)


def _q_times(v, t, w):
    """Q w for the Q factor of a :func:`_geqrt` result ``(v, t)`` (``dgemqrt``).

    Parameters
    ----------
    v : ndarray of shape (rows, n)
    t : ndarray of shape (nb, min(rows, n))
    w : ndarray of shape (min(rows, n), k)

    Returns
    -------
    ndarray of shape (rows, k), Fortran-ordered
    """
    kk = min(v.shape)  # reflectors (v has n columns when rows < n)
    c = np.zeros((v.shape[0], w.shape[1]), order="F")
    c[: w.shape[0]] = w
    c, info = lapack.dgemqrt(v[:, :kk], t[:, :kk], c, side="L", trans="N", overwrite_c=True)
    if info != 0:  # pragma: no cover - only for invalid arguments
        raise ValueError(f"dgemqrt failed with info={info}")
    return c


def _thin_qr(y):
    """Thin Householder QR of a tall-skinny block with Q formed (``dgeqrt`` + ``dgemqrt``).

    Level-3 throughout (the recursive QR of Elmroth & Gustavson 2000 in
    ``dgeqrt3``, then ``dlarfb`` on ``[I; 0]``):
    on 32768×30 it takes about half the time of ``np.linalg.qr``, whose
    ``geqrf``/``orgqr`` fall back to one ``gemv`` + ``ger`` per column when the
    block is narrower than LAPACK's block size, and it calls no ``gemv``,
    whose summation order may depend on memory alignment.

    Parameters
    ----------
    y : ndarray of shape (rows, l)
        Overwritten if it is already a writable Fortran-ordered float64 buffer.

    Returns
    -------
    q : ndarray of shape (rows, min(rows, l)), Fortran-ordered
    r : ndarray of shape (min(rows, l), l)
    """
    v, t = _geqrt(y)
    kk = min(v.shape)
    return _q_times(v, t, np.eye(kk)), np.triu(v[:kk])


def qr_full(a):
    """Thin Householder QR with non-negative diagonal (small dense blocks).

    Returns
    -------
    q : ndarray of shape (rows, min(rows, n))
    r : ndarray of shape (min(rows, n), n)
    """
    q, r = np.linalg.qr(a, mode="reduced")
    return _positive_diag(q, r)


def _centered_leaf(r_aug, rows):
    """Leaf of a centred TSQR from the R factor of ``[1, a]``.

    A Householder QR of ``[1, a]`` = ``[q₀, Q'] [[ρ, ρμᵀ], [0, R]]`` centres
    the panel stably: ``a − 1μᵀ = Q'R`` with ``Q' ⊥ 1`` to working precision.
    """
    return {"r": r_aug[1:, 1:], "mean": r_aug[0, 1:] / r_aug[0, 0], "count": rows}


def tsqr_leaf(a, center):
    """Leaf of a TSQR tree (Benson, Gleich & Demmel 2013, Alg. 1).

    Parameters
    ----------
    a : ndarray of shape (rows, c)
    center : bool
        Factor the panel centred by its own column means, through the QR
        of ``[1, a]`` (see :func:`tsqr_merge` for how centred leaves merge).

    Returns
    -------
    dict with ``r`` (ndarray of shape (r, c)), ``mean`` (ndarray of shape
    (c,), or None when not centred) and ``count`` (rows).
    """
    if center:
        return _centered_leaf(qr_r(_with_ones(a)), a.shape[0])
    return {"r": qr_r(a), "mean": None, "count": a.shape[0]}


def tsqr_merge(left, right):
    """Internal TSQR node: QR of two stacked R factors.

    For centred children (Chan, Golub & LeVeque's pairwise update in matrix
    form) the stack gains the row ``sqrt(n_a n_b / n)·(μ_a − μ_b)ᵀ``: with
    e = [(n_b/n)·1_a; −(n_a/n)·1_b], ‖e‖² = n_a n_b/n, the two subtrees
    centred by their common mean are exactly
    ``[Q_a ⊕ Q_b, e/‖e‖] · [R_a; R_b; ‖e‖(μ_a − μ_b)ᵀ]``, and e ⊥ 1, Q_a, Q_b.

    Parameters
    ----------
    left, right : dict
        Children as returned by :func:`tsqr_leaf` or this function.

    Returns
    -------
    dict with ``q`` (ndarray of shape (ra + rb [+ 1], r)) kept for the
    downward sweep, ``r`` (ndarray of shape (r, c)), ``mean``, ``count``,
    ``split`` ((ra, ra + rb): where the right child and the mean row start
    in ``q``) and ``coef`` (the constant e/‖e‖ takes on the left and right
    rows, or None).
    """
    ra, rb = left["r"].shape[0], right["r"].shape[0]
    blocks = [left["r"], right["r"]]
    mean = coef = None
    na, nb = left["count"], right["count"]
    n = na + nb
    if left["mean"] is not None:
        delta = left["mean"] - right["mean"]
        blocks.append(math.sqrt(na * nb / n) * delta[None, :])
        mean = right["mean"] + delta * (na / n)
        coef = (math.sqrt(nb / (na * n)), -math.sqrt(na / (nb * n)))
    q, r = qr_full(np.vstack(blocks))
    return {"q": q, "r": r, "mean": mean, "count": n, "split": (ra, ra + rb), "coef": coef}


def split_down(node, wc):
    """Downward sweep of TSQR: coefficients of the children from the parent's.

    Parameters
    ----------
    node : dict
        A :func:`tsqr_merge` result.
    wc : (ndarray of shape (r, k), ndarray of shape (k,) or None)
        Coefficients ``w`` of the wanted tall factor in the node's basis,
        and the constant row ``c`` added to every row below the node
        (centred trees), so the factor's rows are ``Q_node w + 1cᵀ``.

    Returns
    -------
    (wc_left, wc_right) : pairs of the same form for the two children.
    """
    w, c = wc
    qw = node["q"] @ w
    i, j = node["split"]
    if node["coef"] is None:
        return (qw[:i], c), (qw[i:j], c)
    last = qw[j]
    return (qw[:i], c + node["coef"][0] * last), (qw[i:j], c + node["coef"][1] * last)


def tall_block(a, wc, center):
    """Rows of the orthonormal tall factor, ``Q_i w + 1cᵀ``, Q_i rebuilt from ``a``.

    Parameters
    ----------
    a : ndarray of shape (rows, c_in)
        The same panel (same bits) as the leaf was built from.
    wc : (ndarray of shape (r_i, k), ndarray of shape (k,) or None)
        This leaf's pair from the downward sweep (:func:`split_down`).
    center : bool
        The leaf was centred (:func:`tsqr_leaf`).

    Returns
    -------
    ndarray of shape (rows, k)
    """
    w, c = wc
    if center:
        t = qr_apply(_with_ones(a), np.vstack([np.zeros((1, w.shape[1])), w]))
    else:
        t = qr_apply(a, w)
    if c is not None:
        t += c
    return t


def gemm_leaf(a, w, mu_w):
    """Y_i = (A_i − 1μᵀ) W and its local QR: U_k = A V_k Σ_k⁻¹, re-orthonormalised by TSQR.

    Parameters
    ----------
    a : ndarray of shape (rows, n)
    w : ndarray of shape (n, k)
        V_k Σ_k⁻¹.
    mu_w : ndarray of shape (k,) or None
        μᵀW, computed once by the caller (see :func:`power_leaf` on gemv).

    Returns
    -------
    dict with ``tree`` (a TSQR leaf of Y_i, R with non-negative diagonal) and
    ``q`` (ndarray of shape (rows, min(rows, k))).
    """
    y = a @ w
    if mu_w is not None:
        y -= mu_w
    q, r = qr_full(y)
    return {"tree": {"r": r, "mean": None, "count": a.shape[0]}, "q": q}


def gemm_tall(leaf, wc):
    """Rows of U_k from a :func:`gemm_leaf` and its downward-sweep pair.

    Returns
    -------
    ndarray of shape (rows, k)
    """
    return leaf["q"] @ wc[0]


# --------------------------------------------------------------------------- randomized


def _exponent(x):
    """e with max|x| < 2**e (0 for an all-zero block): an exact power-of-two scale."""
    amax = _abs_max(x)
    return math.frexp(amax)[1] if amax > 0 and math.isfinite(amax) else 0


def power_leaf(a, g, mu, mu_g=None):
    """One fused power-iteration step on a panel: A_iᵀ (A_i G), centred implicitly.

    The product is returned scaled by a power of two, ``z·2**e``, so that
    it neither overflows nor underflows for entries near 1e±300 (only the
    direction of the sum matters: the caller re-orthonormalises it).

    Parameters
    ----------
    a : ndarray of shape (rows, n)
    g : ndarray of shape (n, l)
    mu : ndarray of shape (n,) or None
        Column means for implicit centring, (A − 1μᵀ)ᵀ(A − 1μᵀ)G.
    mu_g : ndarray of shape (l,), optional
        μᵀG, computed once by the caller. When omitted, ``mu`` is this
        panel's own mean and μᵀG is the mean of the rows of A_iG (equal in
        exact arithmetic). Either way no vector-matrix product runs here:
        BLAS ``gemv`` may sum in an order that depends on memory alignment,
        and factors must not depend on where an array landed.

    Returns
    -------
    dict with ``z`` (ndarray of shape (n, l)) and ``e`` (int): the product is
    ``z·2**e``.
    """
    if mu is None or mu_g is not None:
        return _power_blocked(a, g, mu, mu_g)
    y = a @ g
    y -= y.mean(axis=0)
    e = _exponent(y)
    y = _times_pow2(y, -e, out=y)
    z = a.T @ y
    z -= np.outer(mu, y.sum(axis=0))
    return {"z": z, "e": e}


#: Rows per block of the fused power step: a block of A (512 × n) stays in
#: cache between its two products, so A streams through memory once.
_POWER_BLOCK = 512


def _power_blocked(a, g, mu, mu_g):
    """:func:`power_leaf` block by block: y_b = A_b G (− 1μᵀG), z += A_bᵀ y_b.

    Each block's y_b is scaled by its own power of two and the running sum
    (with Σ y_b for the centring term) is rescaled exactly when a larger
    one arrives, so no block overflows or underflows. Blocks start at fixed
    row offsets: the bits depend only on the panel's values.
    """
    rows, ell = a.shape[0], g.shape[1]
    z = np.zeros((a.shape[1], ell))
    ysum = np.zeros(ell)
    e = None
    buf = np.empty((min(_POWER_BLOCK, rows), ell))
    for s in range(0, rows, _POWER_BLOCK):
        ab = a[s:s + _POWER_BLOCK]
        yb = np.matmul(ab, g, out=buf[: ab.shape[0]])
        if mu_g is not None:
            yb -= mu_g
        eb = _exponent(yb)
        _times_pow2(yb, -eb, out=yb)
        zb = ab.T @ yb
        if e is None or eb > e:
            if e is not None:
                _times_pow2(z, e - eb, out=z)
                _times_pow2(ysum, e - eb, out=ysum)
            e = eb
        elif eb < e:
            _times_pow2(zb, eb - e, out=zb)
            yb = _times_pow2(yb, eb - e)
        z += zb
        if mu is not None:
            ysum += yb.sum(axis=0)
    if mu is not None:
        z -= np.outer(mu, ysum)
    return {"z": z, "e": 0 if e is None else e}


def _residual_sumsq(a, q, c):
    """‖a − q c‖²_F as a :func:`sumsq` pair, formed block by block (no cancellation)."""
    def difference(i, r):
        np.matmul(q[i], c, out=r)
        np.subtract(a[i], r, out=r)
    return _blocked_sumsq(a, difference)


def sketch_leaf(a, g, center, probes=None, prev=None, bg=None):
    """Last randomized pass on one panel: range, local QR and projection in one read.

    Y_i = A_i G is factored locally, Y_i = Q_i R_i (for a centred run the QR of
    ``[1, Y_i]``, which centres Y stably as in :func:`tsqr_leaf`), and the
    panel is projected on that local basis, C_i = Q_iᵀA_i. Once the R factors
    are reduced in a tree, the global basis is Q_i M_i and B = Σ M_iᵀC_i
    (:func:`sketch_project`). The panel's own residual ‖A_i − Q_iC_i‖²_F is
    accumulated here; with the second term of :func:`sketch_residual` it
    gives ‖A − QB‖²_F exactly, with no subtraction of large numbers.

    Parameters
    ----------
    a : ndarray of shape (rows, n)
    g : ndarray of shape (n, l)
    center : bool
    probes : ndarray of shape (n, t), optional
        Gaussian probes of the a-posteriori error estimate: A_i ω is kept
        (``probe``) in the same product as A_i G, at no extra read.
    prev : ndarray of shape (rows, l0), optional
        This panel's rows of an orthonormal basis Q₀ found earlier (the
        blocked QB of :mod:`._randqb`). The local QR is then of
        ``[Q₀_i, A_i G − Q₀_i (B₀G)]``, so the global basis extends Q₀.
    bg : ndarray of shape (l0, l), optional
        B₀G with B₀ = Q₀ᵀA, with ``prev``.

    Returns
    -------
    dict with ``tree`` (a :func:`tsqr_leaf`-like dict for the R tree),
    ``q`` (ndarray of shape (rows, l')), ``c`` (ndarray of shape (l', n)),
    ``ones`` (``Q_iᵀ1``, ndarray of shape (l',)), ``lead`` (the R entry of the
    ones column, or None), ``local`` (a :func:`sumsq` pair) and ``probe``
    (ndarray of shape (rows, t), or None).
    """
    probe = None
    if probes is None:
        y = a @ g
    else:
        both = a @ np.hstack([g, probes])
        y, probe = both[:, :g.shape[1]], both[:, g.shape[1]:]
    if prev is not None:
        y = np.hstack([prev, y - prev @ bg])
    q, r = _thin_qr(_with_ones(y) if center else y)
    c = q.T @ a
    if center:
        tree, lead = _centered_leaf(r, a.shape[0]), float(r[0, 0])
    else:
        tree, lead = {"r": r, "mean": None, "count": a.shape[0]}, None
    return {"tree": tree, "q": q, "c": c, "ones": q.sum(axis=0), "lead": lead,
            "local": _residual_sumsq(a, q, c), "probe": probe}


def deflated_power_leaf(a, g, mu, mu_g, q, bg, b):
    """One power step on the residual of a QB approximation: (A_i − Q_iB)ᵀ(A_i − Q_iB)G.

    The panel's share of ``(A − QB)ᵀ(A − QB)G`` (with A centred implicitly by
    ``mu``), scaled by a power of two like :func:`power_leaf`.

    Parameters
    ----------
    a : ndarray of shape (rows, n)
    g : ndarray of shape (n, l)
    mu : ndarray of shape (n,) or None
    mu_g : ndarray of shape (l,) or None
        μᵀG, computed once by the caller (no per-panel gemv: see :func:`power_leaf`).
    q : ndarray of shape (rows, l0)
        This panel's rows of the basis Q (orthogonal to 1 when centred).
    bg : ndarray of shape (l0, l)
        B G.
    b : ndarray of shape (l0, n)

    Returns
    -------
    dict with ``z`` (ndarray of shape (n, l)) and ``e`` (int): the share is ``z·2**e``.
    """
    y = a @ g - q @ bg
    if mu is not None:
        y -= mu_g
    e = _exponent(y)
    y = _times_pow2(y, -e, out=y)
    z = a.T @ y - b.T @ (q.T @ y)
    if mu is not None:
        z -= np.outer(mu, y.sum(axis=0))
    return {"z": z, "e": e}


def probe_sumsq(y, t, c, shift=None, cumulative=False):
    """Squared norms of the probe residuals ``(A_i − U_i diag(S) Vᵀ)ω`` of one panel.

    Parameters
    ----------
    y : ndarray of shape (rows, p)
        A_i ω for p probes (kept from the last pass).
    t : ndarray of shape (rows, k)
        The panel's rows of U.
    c : ndarray of shape (k, p)
        diag(S) Vᵀ ω.
    shift : ndarray of shape (p,), optional
        μᵀω, subtracted from every row (implicit centring).
    cumulative : bool
        Return the norms for every rank r = 0..k (rank-one updates, the cost
        of one product), not only for r = k.

    Returns
    -------
    (e, s) : int and ndarray of shape (p,) (or (k + 1, p)): the squared
        norms are ``s·4**e`` (scaled like :func:`sumsq`).
    """
    r = y - shift if shift is not None else y.copy()
    e = _exponent(r)
    if t.size:
        e = max(e, _exponent(t) + _exponent(c))
    r = _times_pow2(r, -e, out=r)
    if not cumulative:
        r -= t @ _times_pow2(c, -e)
        return e, np.einsum("ij,ij->j", r, r)
    c = _times_pow2(c, -e)
    out = np.empty((t.shape[1] + 1, r.shape[1]))
    out[0] = np.einsum("ij,ij->j", r, r)
    for j in range(t.shape[1]):
        r -= np.outer(t[:, j], c[j])
        out[j + 1] = np.einsum("ij,ij->j", r, r)
    return e, out


def panel_tests(seed, start, stop, k, s):
    """The left test matrices of one panel of the streaming sketch, Υ_i and Φ_i.

    Drawn from a generator seeded by ``(seed, start, stop)``, so any worker
    (and any later rebuild) gets the same bits for the same panel plan.

    Returns
    -------
    ups : ndarray of shape (k, rows)
    phi : ndarray of shape (s, rows)
    """
    rng = np.random.default_rng([int(seed), 0x5EC7, int(start), int(stop)])
    rows = stop - start
    return rng.standard_normal((k, rows)), rng.standard_normal((s, rows))


def stream_leaf(a, omega, psi, probes, seed, start, stop):
    """The single pass of the streaming sketch on one panel (Tropp et al. 2019, Alg. 2).

    Parameters
    ----------
    a : ndarray of shape (rows, n)
    omega : ndarray of shape (n, k)
        Range test matrix: Y_i = A_i Ω is kept on the worker.
    psi : ndarray of shape (n, s)
        Right core test matrix.
    probes : ndarray of shape (n, p)
        Error-estimate probes: A_i ω is kept.
    seed, start, stop : int
        Seed and row range of the panel for :func:`panel_tests`.

    Returns
    -------
    dict with ``y`` (rows, k), ``probe`` (rows, p), ``x`` = Υ_i A_i (k, n),
    ``z`` = Φ_i A_i Ψ (s, s), ``ups1`` = Υ_i 1 (k,), ``phi1`` = Φ_i 1 (s,).
    """
    k, s = omega.shape[1], psi.shape[1]
    ups, phi = panel_tests(seed, start, stop, k, s)
    both = a @ np.hstack([omega, psi, probes])
    y, ap, probe = both[:, :k], both[:, k:k + s], both[:, k + s:]
    return {"y": y, "probe": probe, "x": ups @ a, "z": phi @ ap,
            "ups1": ups.sum(axis=1), "phi1": phi.sum(axis=1)}


def _coefficients(leaf, wc):
    """M_i with global basis rows Q_i^glob = Q_i M_i (a leading row for the ones column)."""
    w, c = wc
    if leaf["lead"] is None:
        return w
    return np.vstack([leaf["lead"] * c[None, :], w])


def sketch_project(leaf, wc):
    """This panel's share of B = QᵀA: ``(M_iᵀC_i, M_iᵀ(Q_iᵀ1))``.

    Returns
    -------
    (ndarray of shape (l, n), ndarray of shape (l,))
    """
    m = _coefficients(leaf, wc)
    # Σ_j m_ji·ones_j elementwise: no gemv (see power_leaf).
    return m.T @ leaf["c"], (m * leaf["ones"][:, None]).sum(axis=0)


def sketch_residual(leaf, wc, b, mu):
    """This panel's ‖A_i − Q_i^glob B‖²_F as a :func:`sumsq` pair.

    A_i − Q_i M_i B = (A_i − Q_iC_i) + Q_i(C_i − M_i B): two orthogonal terms,
    the first accumulated in the pass (:func:`sketch_leaf`), the second small.

    Parameters
    ----------
    leaf : dict from :func:`sketch_leaf`
    wc : the leaf's pair from the downward sweep
    b : ndarray of shape (l, n)
    mu : ndarray of shape (n,) or None
        Column means of the (shifted) panel rows, when centred.
    """
    c = leaf["c"] if mu is None else leaf["c"] - np.outer(leaf["ones"], mu)
    return add_sumsq(leaf["local"], sumsq(c - _coefficients(leaf, wc) @ b))


def sketch_tall(leaf, wc, uk, const=None):
    """Rows of the left factor, Q_i M_i Ũ_k (+ 1 constᵀ).

    Parameters
    ----------
    uk : ndarray of shape (l, k)
    const : ndarray of shape (k,), optional
        A constant row added to every row (the 1/√m direction of a centred
        basis, see :func:`svdserve.worker._tsqr.with_ones_direction`).

    Returns
    -------
    ndarray of shape (rows, k)
    """
    t = leaf["q"] @ (_coefficients(leaf, wc) @ uk)
    if const is not None:
        t += const
    return t


def sketch_finish(leaf, wc, b, mu, uk, const=None, c=None, shift=None):
    """One panel's last steps once B and its SVD are known, in one task.

    :func:`sketch_residual`, :func:`sketch_tall` and (with probes)
    :func:`probe_sumsq` of the same kept blocks.

    Parameters
    ----------
    leaf, wc, b, mu
        As :func:`sketch_residual`.
    uk, const
        As :func:`sketch_tall`.
    c : ndarray of shape (k, p), optional
        diag(S) Vᵀ ω of the probes (no probes: None).
    shift : ndarray of shape (p,), optional
        μᵀω (centred runs).

    Returns
    -------
    dict with ``tall`` (ndarray of shape (rows, k)) and ``small``: the pair
    (residual :func:`sumsq` pair, :func:`probe_sumsq` result or None).
    """
    t = sketch_tall(leaf, wc, uk, const)
    probe = None if c is None else probe_sumsq(leaf["probe"], t, c, shift)
    return {"tall": t, "small": (sketch_residual(leaf, wc, b, mu), probe)}


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


def block_argmax(t):
    """Per-column largest-magnitude entry of a block of a tall factor.

    Parameters
    ----------
    t : ndarray of shape (rows, k)

    Returns
    -------
    (absval, value) : two ndarrays of shape (k,); the lowest row wins ties,
    and an empty block gives absval -1 (it never wins).
    """
    if t.shape[0] == 0:
        k = t.shape[1]
        return np.full(k, -1.0), np.zeros(k)
    idx = np.argmax(np.abs(t), axis=0)
    val = t[idx, np.arange(t.shape[1])]
    return np.abs(val), val
