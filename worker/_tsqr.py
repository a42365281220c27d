"""Exact truncated SVD of a tall matrix by TSQR.

Benson, Gleich & Demmel, "Direct QR factorizations for tall-and-skinny
matrices in MapReduce architectures", IEEE BigData 2013 (Alg. "Direct TSQR").

Passes over A: **2**.

1. Pass 1 reads every panel once: a local Householder QR per panel, R
   factors reduced in a binary tree (on the workers), plus ‖A‖_F², column
   means and the finite-value check. The root R (n×n) has the singular
   values and right singular vectors of A: R = U_R Σ Vᵀ.
2. Pass 2 reads every panel again, rebuilds its local Q (the same ``geqrf``
   call on the same bits gives the same factor) and forms
   U_i = Q_i W_i, where W_i is this panel's slice of the tree's Q factors
   times U_R[:, :k] (the downward sweep). U is orthonormal to working
   precision however ill-conditioned A is: it is never formed as A V Σ⁻¹.

Centring (PCA) is implicit. With s = Qᵀ1 carried up the tree,
1 = Q s + r with r ⊥ range(Q), so
A − 1μᵀ = [Q, r̂] [[R − s μᵀ], [−‖r‖ μᵀ]]; a QR of that (n+1)×n matrix
finishes the factorisation (:func:`centre_correction`) without a pass.

Memory: a worker holds one panel and O(n²) for the tree nodes; the driver
holds O(n²).
"""

from __future__ import annotations

import numpy as np

from ._kernels import split_down, svd_flip_rows, tall_block, tsqr_leaf, tsqr_merge

__all__ = ["tsqr_up", "tsqr_down", "centre_correction", "exact_svd"]


def tsqr_up(engine, leaves):
    """Reduce leaf R factors in a binary tree.

    Parameters
    ----------
    engine : LocalEngine or DaskEngine
    leaves : list of handles to :func:`~._kernels.tsqr_leaf` results

    Returns
    -------
    root : dict
        ``r`` (ndarray of shape (r, c)) and ``s`` (ndarray of shape (r,) or None).
    nodes : list
        Internal nodes for :func:`tsqr_down`.
    """
    root, nodes = engine.tree(leaves, tsqr_merge)
    return engine.gather([root])[0], nodes


def tsqr_down(engine, nodes, n_leaves, w_root):
    """Downward sweep: each leaf's coefficients from the root's.

    Parameters
    ----------
    w_root : ndarray of shape (r, k)
        Coefficients of the wanted tall factor in the root's Q basis.

    Returns
    -------
    list of handles (or arrays) to ndarray of shape (r_i, k), one per leaf.
    """
    wmap = {(0, n_leaves): w_root}
    for handle, ra, rb in reversed(nodes):
        pair = engine.submit(split_down, handle, wmap.pop((ra[0], rb[1])))
        wmap[ra] = engine.part(pair, 0)
        wmap[rb] = engine.part(pair, 1)
    return [wmap[(i, i + 1)] for i in range(n_leaves)]


def centre_correction(r, s, w, m):
    """QR of a TSQR factorisation after subtracting a rank-one term 1wᵀ.

    Given X = Q R (Q of shape (m, r) orthonormal) and s = Qᵀ1, factor
    X − 1wᵀ = [Q, r̂] Q_M R_c with Q_M R_c the QR of
    ``[[R − s wᵀ], [−ρ wᵀ]]`` and ρ = ‖1 − Q s‖ = sqrt(m − ‖s‖²).

    Parameters
    ----------
    r : ndarray of shape (r, c)
    s : ndarray of shape (r,)
    w : ndarray of shape (c,)
    m : int
        Number of rows of X.

    Returns
    -------
    rc : ndarray of shape (min(r + 1, c), c)
        R factor of the corrected matrix.
    to_basis : callable
        ``to_basis(z)`` for z of shape (min(r + 1, c), k) returns ``(W, c)``
        with W of shape (r, k) and c of shape (k,) such that the tall factor
        [Q, r̂] Q_M z equals ``Q W + 1 cᵀ`` (what :func:`~._kernels.tall_block`
        builds per panel).
    """
    rho = float(np.sqrt(max(m - float(s @ s), 0.0)))
    mat = np.vstack([r - np.outer(s, w), -rho * w[None, :]])
    q_m, rc = np.linalg.qr(mat, mode="reduced")
    nr = r.shape[0]
    # Below this, 1 lies in range(Q) to working precision: r̂ is noise and its
    # coefficient row (−ρwᵀ) is negligible, so drop it.
    tiny = rho <= np.sqrt(m) * 64 * np.finfo(float).eps

    def to_basis(z):
        top, last = q_m[:nr] @ z, q_m[nr] @ z
        if tiny:
            return top, None
        c = last / rho
        return top - np.outer(s, c), c

    return rc, to_basis


def exact_svd(run, k):
    """Exact rank-k SVD of the tall view by TSQR (2 passes).

    Parameters
    ----------
    run : svdserve.worker._run.Run
    k : int

    Returns
    -------
    dict with ``t`` (list of handles to ndarray of shape (rows_i, k), the tall
    factor per panel), ``s_all`` (every singular value, ndarray of shape
    (n,)), ``v`` (ndarray of shape (n, k), right factor of the tall view).
    """
    eng = run.engine
    leaves = run.first_pass("stats+qr", tsqr_leaf, lambda i: (run.center,))
    t_factor = run.phase("factor", reads=False)
    root, nodes = tsqr_up(eng, leaves)
    if run.center:
        rc, to_basis = centre_correction(root["r"], root["s"], run.mean, run.m)
    else:
        rc, to_basis = root["r"], (lambda z: (z, None))
    u_r, sigma, vt = np.linalg.svd(rc, full_matrices=False)
    u_r, vt = svd_flip_rows(u_r, vt)
    w_root, c = to_basis(u_r[:, :k])
    run.report(t_factor, 1, 1)
    ws = tsqr_down(eng, nodes, len(run.panels), w_root)
    handles = run.run_pass("tall", tall_block, lambda i: (ws[i], c))
    t = [eng.part(h, 0) for h in handles]
    s_all = np.zeros(run.n)
    s_all[: sigma.size] = sigma[: run.n]
    return {"t": t, "s_all": s_all, "sigma": s_all[:k], "v": vt[:k].T}
