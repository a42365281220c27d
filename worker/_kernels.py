"""Pure NumPy kernels on one panel (a row band of the tall matrix).

Nothing here knows about Dask, Zarr or the panel layout: every function takes
in-memory arrays and returns in-memory arrays, so each is tested without a
cluster. The graph plumbing lives in :mod:`._engine`; the algorithms that
chain these kernels into passes live in :mod:`._tsqr` and :mod:`._rsvd`.

Notation: a panel ``a`` is an ``ndarray of shape (rows, n)`` in float64.
When the tall view is centred (PCA), ``a`` has already been shifted by a
common pivot row ``p`` (``a = A_i − 1pᵀ``, see :func:`prepare_panel`),
so that an offset common to all rows never enters a rounding error.

A panel may also be sparse (a CSR panel of a sparse source, :mod:`._sparse_kernels`):
the kernels of the randomized, sketch and energy-target methods then dispatch
to sparse products there, and it is never shifted (centring is implicit).

Sums of squares are carried scaled (:mod:`._sumsq`, re-exported here with the
panel statistics); the QR of a block is :mod:`._qr`.
"""

from __future__ import annotations

import math

import numpy as np

# The kernels' own building blocks, pure NumPy too (``from . import``: no package but NumPy
# enters here); their names are re-exported as this module's, where the kernels are used.
from . import _qr, _sparse_kernels, _sumsq

qr_r, qr_apply, qr_full, thin_qr, with_ones = (_qr.qr_r, _qr.qr_apply, _qr.qr_full,
                                               _qr.thin_qr, _qr.with_ones)
sumsq, add_sumsq, scale_sumsq, sumsq_norm, tail_norms = (
    _sumsq.sumsq, _sumsq.add_sumsq, _sumsq.scale_sumsq, _sumsq.sumsq_norm, _sumsq.tail_norms)
merge_stats = _sumsq.merge_stats
is_sparse = _sparse_kernels.is_sparse
abs_max, blocked_sumsq, times_pow2 = _sumsq.abs_max, _sumsq.blocked_sumsq, _sumsq.times_pow2

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
    "range_leaf",
    "range_project",
    "range_residual",
    "range_tall",
    "range_finish",
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



# --------------------------------------------------------------------------- panel preparation


def panel_stats(a, center=False):
    """:func:`~._sumsq.panel_stats` of a dense or sparse (:mod:`._sparse_kernels`) panel."""
    if is_sparse(a):
        return _sparse_kernels.sparse_stats(a, center)
    return _sumsq.panel_stats(a, center)


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
    if is_sparse(a):  # never shifted; rows centred implicitly (a RowCentered view)
        return _sparse_kernels.row_centered(a) if center_rows else (a, None)
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
        return _centered_leaf(qr_r(with_ones(a)), a.shape[0])
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
        t = qr_apply(with_ones(a), np.vstack([np.zeros((1, w.shape[1])), w]))
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
    amax = abs_max(x)
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
    if is_sparse(a):
        return _sparse_kernels.sparse_power_leaf(a, g, mu, mu_g)
    if mu is None or mu_g is not None:
        return _power_blocked(a, g, mu, mu_g)
    y = a @ g
    y -= y.mean(axis=0)
    e = _exponent(y)
    y = times_pow2(y, -e, out=y)
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
        times_pow2(yb, -eb, out=yb)
        zb = ab.T @ yb
        if e is None or eb > e:
            if e is not None:
                times_pow2(z, e - eb, out=z)
                times_pow2(ysum, e - eb, out=ysum)
            e = eb
        elif eb < e:
            times_pow2(zb, eb - e, out=zb)
            yb = times_pow2(yb, eb - e)
        z += zb
        if mu is not None:
            ysum += yb.sum(axis=0)
    if mu is not None:
        z -= np.outer(mu, ysum)
    return {"z": z, "e": 0 if e is None else e}


def _residual_sumsq(a, q, c):
    """‖a − q c‖²_F as a :func:`sumsq` pair, formed block by block (no cancellation)."""
    if is_sparse(a):
        return _sparse_kernels.sparse_residual_sumsq(a, q, c)
    def difference(i, r):
        np.matmul(q[i], c, out=r)
        np.subtract(a[i], r, out=r)
    return blocked_sumsq(a, difference)


def range_leaf(a, g, center, probes=None, prev=None, bg=None):
    """Last randomized pass on one panel: range, local QR and projection in one read.

    Y_i = A_i G is factored locally, Y_i = Q_i R_i (for a centred run the QR of
    ``[1, Y_i]``, which centres Y stably as in :func:`tsqr_leaf`), and the
    panel is projected on that local basis, C_i = Q_iᵀA_i. Once the R factors
    are reduced in a tree, the global basis is Q_i M_i and B = Σ M_iᵀC_i
    (:func:`range_project`). The panel's own residual ‖A_i − Q_iC_i‖²_F is
    accumulated here; with the second term of :func:`range_residual` it
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
    q, r = thin_qr(with_ones(y) if center else y)
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
    y = times_pow2(y, -e, out=y)
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
    r = times_pow2(r, -e, out=r)
    if not cumulative:
        r -= t @ times_pow2(c, -e)
        return e, np.einsum("ij,ij->j", r, r)
    c = times_pow2(c, -e)
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


def range_project(leaf, wc):
    """This panel's share of B = QᵀA: ``(M_iᵀC_i, M_iᵀ(Q_iᵀ1))``.

    Returns
    -------
    (ndarray of shape (l, n), ndarray of shape (l,))
    """
    m = _coefficients(leaf, wc)
    # Σ_j m_ji·ones_j elementwise: no gemv (see power_leaf).
    return m.T @ leaf["c"], (m * leaf["ones"][:, None]).sum(axis=0)


def range_residual(leaf, wc, b, mu):
    """This panel's ‖A_i − Q_i^glob B‖²_F as a :func:`sumsq` pair.

    A_i − Q_i M_i B = (A_i − Q_iC_i) + Q_i(C_i − M_i B): two orthogonal terms,
    the first accumulated in the pass (:func:`range_leaf`), the second small.

    Parameters
    ----------
    leaf : dict from :func:`range_leaf`
    wc : the leaf's pair from the downward sweep
    b : ndarray of shape (l, n)
    mu : ndarray of shape (n,) or None
        Column means of the (shifted) panel rows, when centred.
    """
    c = leaf["c"] if mu is None else leaf["c"] - np.outer(leaf["ones"], mu)
    return add_sumsq(leaf["local"], sumsq(c - _coefficients(leaf, wc) @ b))


def range_tall(leaf, wc, uk, const=None):
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


def range_finish(leaf, wc, b, mu, uk, const=None, c=None, shift=None):
    """One panel's last steps once B and its SVD are known, in one task.

    :func:`range_residual`, :func:`range_tall` and (with probes)
    :func:`probe_sumsq` of the same kept blocks.

    Parameters
    ----------
    leaf, wc, b, mu
        As :func:`range_residual`.
    uk, const
        As :func:`range_tall`.
    c : ndarray of shape (k, p), optional
        diag(S) Vᵀ ω of the probes (no probes: None).
    shift : ndarray of shape (p,), optional
        μᵀω (centred runs).

    Returns
    -------
    dict with ``tall`` (ndarray of shape (rows, k)) and ``small``: the pair
    (residual :func:`sumsq` pair, :func:`probe_sumsq` result or None).
    """
    t = range_tall(leaf, wc, uk, const)
    probe = None if c is None else probe_sumsq(leaf["probe"], t, c, shift)
    return {"tall": t, "small": (range_residual(leaf, wc, b, mu), probe)}


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
