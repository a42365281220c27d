"""Exact truncated SVD of a tall matrix by TSQR.

Benson, Gleich & Demmel, "Direct QR factorizations for tall-and-skinny
matrices in MapReduce architectures", IEEE BigData 2013 (Alg. "Direct TSQR").

Passes over A: **2** (**1** with ``compute_u=False``: σ and V only).

1. Pass 1 reads every panel once: a local Householder QR per panel, R
   factors reduced in a binary tree (on the workers), plus ‖A‖_F² (scaled),
   column means and the finite-value check. The root R (n×n) has the
   singular values and right singular vectors of A: R = U_R Σ Vᵀ.
2. Pass 2 forms U_k, by one of two routes chosen from κ_k = σ₁/σ_k:

   - κ_k ≤ :data:`GEMM_MAX_COND`: U_k = A V_k Σ_k⁻¹, one GEMM per panel
     (n·k flops a row instead of a Householder QR's ~2n²), re-orthonormalised
     by a TSQR of that m×k block. The columns of A V_k Σ_k⁻¹ carry rounding
     errors of about √n·ε·σ₁/σ_i (the product's error relative to σ_i), so
     before re-orthonormalisation they are orthonormal to √n·ε·κ_k; the TSQR
     makes them orthonormal to ε and moves them by that much. With
     κ_k ≤ 1e3 that is ≤ 1e3·√n·ε: the accuracy of LAPACK's own singular
     vectors, whose error is ε·σ₁/gap, whenever the gap to the next σ is not
     above σ_k — the normal case.
   - κ_k above it: every panel is read again, its local Q rebuilt (the same
     ``geqrf`` call on the same bits gives the same factor) and applied to
     its slice of the tree's Q factors times U_R[:, :k] (the downward
     sweep). U is then orthonormal to working precision however
     ill-conditioned A is: it is never formed as A V Σ⁻¹.

Centring (PCA) is exact in the same pass and never forms the centred
matrix. Every panel is first shifted by one common pivot row p (so an offset
shared by all rows never enters a rounding error), each leaf factors its
panel centred by its own mean through the QR of ``[1, A_i − 1pᵀ]``, and each
merge adds the row sqrt(n_a n_b/n)·(μ_a − μ_b)ᵀ (Chan, Golub & LeVeque's
pairwise update in matrix form; :func:`~._kernels.tsqr_merge`). The root R is
then the R factor of A − 1 meanᵀ, accurate to ε relative to the centred
matrix, not to the offset.

Memory: a worker holds one panel and O(n²) for the tree nodes; the driver
holds O(n²).
"""

from __future__ import annotations

import numpy as np

from ._engine import LocalEngine
from ._kernels import (
    gemm_leaf,
    gemm_tall,
    split_down,
    svd_flip_rows,
    tall_block,
    tsqr_leaf,
    tsqr_merge,
)
from ._run import Factors

__all__ = ["tsqr_up", "tsqr_down", "small_tree", "exact_svd", "gemm_u", "with_ones_direction",
           "split_ones_direction", "GEMM_MAX_COND"]

#: Largest σ₁/σ_k for which U_k is formed as A V_k Σ_k⁻¹ plus a TSQR (see the module docstring).
GEMM_MAX_COND = 1e3


def tsqr_up(engine, leaves):
    """Reduce leaf R factors in a binary tree.

    Parameters
    ----------
    engine : LocalEngine or DaskEngine
    leaves : list of handles to :func:`~._kernels.tsqr_leaf` results

    Returns
    -------
    root : dict
        ``r`` (ndarray of shape (r, c)), ``mean`` and ``count``.
    nodes : list
        Internal nodes for :func:`tsqr_down`.
    """
    root, nodes = engine.tree(leaves, tsqr_merge)
    return engine.gather([root])[0], nodes


def tsqr_down(engine, nodes, n_leaves, w_root, c_root=None):
    """Downward sweep: each leaf's coefficients from the root's.

    Parameters
    ----------
    w_root : ndarray of shape (r, k)
        Coefficients of the wanted tall factor in the root's basis.
    c_root : ndarray of shape (k,), optional
        Zeros for a centred tree (the constant rows start there), else None.

    Returns
    -------
    list of handles (or values) to ``(w_i, c_i)`` pairs (see
    :func:`~._kernels.split_down`), one per leaf.
    """
    wmap = {(0, n_leaves): (w_root, c_root)}
    for handle, ra, rb in reversed(nodes):
        pair = engine.submit(split_down, handle, wmap.pop((ra[0], rb[1])))
        wmap[ra] = engine.part(pair, 0)
        wmap[rb] = engine.part(pair, 1)
    return [wmap[(i, i + 1)] for i in range(n_leaves)]


def small_tree(engine, trees, center=False):
    """TSQR of small leaf R factors (l×l, l a sketch width or a rank) in this process.

    The tree is the one the workers would build (:meth:`~._engine._Engine.tree`:
    same shape, same merges, so the same bits) without a round trip per node.

    Parameters
    ----------
    engine : LocalEngine or DaskEngine
    trees : list of handles to :func:`~._kernels.tsqr_leaf`-like dicts
    center : bool
        Centred leaves: the downward sweep starts the constant rows at zero.

    Returns
    -------
    root : dict
        As :func:`tsqr_up`.
    ws : list of ``(w_i, c_i)`` pairs, one per leaf, as :func:`tsqr_down` (values).
    """
    here = LocalEngine()
    root, nodes = tsqr_up(here, engine.gather(trees))
    width = root["r"].shape[0]
    ws = tsqr_down(here, nodes, len(trees), np.eye(width), np.zeros(width) if center else None)
    return root, here.gather(ws)


def with_ones_direction(r, k, center):
    """Complete a centred basis with 1/√m when k exceeds the centred rank.

    A centred tree's basis is orthogonal to 1 and has at most m − 1 columns;
    asking for k = m components (a square matrix) needs the last direction,
    which can only be 1/√m, with a zero row in R (the centred matrix has no
    energy along it).

    Returns
    -------
    r : ndarray of shape (max(r, k), c)
    extra : bool
        Whether a zero row for 1/√m was appended.
    """
    if not center or r.shape[0] >= k:
        return r, False
    return np.vstack([r, np.zeros((k - r.shape[0], r.shape[1]))]), True


def split_ones_direction(w, extra, m, center):
    """Coefficients in the tree's basis and the constant row (see :func:`with_ones_direction`)."""
    if not center:
        return w, None
    if not extra:
        return w, np.zeros(w.shape[1])
    return w[:-1], w[-1] / np.sqrt(m)


def gemm_u(run, out, vt, s_all, k):
    """``out`` with U = (A − 1μᵀ) V_k Σ_k⁻¹ formed by one GEMM pass of ``run`` and
    re-orthonormalised by a small TSQR (``u_route="gemm"``); needs σ_k > 0."""
    eng = run.engine
    w = vt[:k].T / s_all[:k]
    mu_w = eng.scatter(run.shifted_mean @ w) if run.center else None
    w = eng.scatter(w)
    gemm = run.run_pass("tall", gemm_leaf, lambda i: (w, mu_w))
    _, ws = small_tree(eng, [eng.part(h, "tree") for h in gemm])
    return out._replace(tall=[eng.submit(gemm_tall, h, wc) for h, wc in zip(gemm, ws)],
                        u_route="gemm")


def exact_svd(run, k, *, compute_u=True):
    """Exact rank-k SVD of the tall view by TSQR (2 passes, 1 without U).

    Parameters
    ----------
    run : svdserve.worker._run.Run
    k : int or callable
        The rank, or ``k(sigma) -> int`` choosing it from every singular value.
    compute_u : bool, default=True
        Form the tall factor (a second pass); False gives σ and V only.

    Returns
    -------
    Factors
        ``tall`` (None without ``compute_u``), ``sigma``, ``v``, ``rank``,
        ``s_all`` (every singular value, shape (n,)) and ``u_route``
        (``"gemm"``, ``"reapply"`` or None).
    """
    eng = run.engine
    leaves = run.first_pass("stats+qr", tsqr_leaf, lambda i: (run.center,))
    t_factor = run.phase("factor", reads=False)
    root, nodes = tsqr_up(eng, leaves)
    d = run.post_scale()  # standardize: the R of A·D is R·D (:mod:`._scaling`)
    r, extra = with_ones_direction(root["r"] if d is None else root["r"] * d,
                                   1 if callable(k) else k, run.center)
    u_r, sigma, vt = np.linalg.svd(r, full_matrices=False)
    u_r, vt = svd_flip_rows(u_r, vt)
    if callable(k):  # rank chosen from the whole spectrum (energy target)
        k = min(k(sigma), sigma.size)
    run.tick(t_factor, 1, 1)
    s_all = np.zeros(run.n)
    s_all[: sigma.size] = sigma[: run.n]
    out = Factors(None, s_all[:k], vt[:k].T, k, s_all=s_all,
                  state={"r": root["r"], "r_mean": root["mean"]})  # for an update
    if not compute_u:
        return out
    if s_all[k - 1] > 0 and s_all[0] <= GEMM_MAX_COND * s_all[k - 1] and not extra:
        return gemm_u(run, out, vt, s_all, k)
    w_root, c_root = split_ones_direction(u_r[:, :k], extra, run.m, run.center)
    ws = tsqr_down(eng, nodes, len(run.panels), w_root, c_root)
    handles = run.run_pass("tall", tall_block, lambda i: (ws[i], run.center), first_scale=True)
    return out._replace(tall=handles, u_route="reapply")
