"""Randomized truncated SVD of a tall matrix, out of core.

Halko, Martinsson & Tropp, "Finding structure with randomness", SIAM Review
53(2), 2011: Alg. 4.4 (randomized subspace iteration, re-orthonormalised at
every step) followed by Alg. 5.1 (direct SVD of B = QᵀA).

Passes over A: **q + 2** for ``n_iter = q``.

- Power pass (×q): each panel is read once for Z_i = A_iᵀ(A_i G); the sum
  Z (n×l) is small and local, and G ← orth(Z) re-orthonormalises it. This
  is the fused form of one step of Alg. 4.4 (the intermediate m×l block
  A G is never stored).
- Range pass: Y = A G factored by TSQR (:mod:`._tsqr`), so the basis Q is
  orthonormal to working precision (no normal equations).
- Projection pass: each panel rebuilds its Q_i (same bits as the range pass)
  and contributes B_i = Q_iᵀ A_i; B = Σ B_i (l×n); svd(B) = Ũ Σ Vᵀ. The tall
  factor U = Q Ũ_k is then formed from the Q_i blocks kept on the workers,
  without reading A again.

The first pass also measures ‖A‖_F², column means and finiteness. Centring
(PCA) is implicit: (A − 1μᵀ)G = AG − 1(μᵀG). In the first pass μ is not yet
known, so it is applied afterwards: to the power sum as
Aᵀ A G − m μ(μᵀG), or, when ``n_iter=0`` makes the range pass the first one,
to the TSQR of Y as a rank-one correction (:func:`._tsqr.centre_correction`).

Memory: a worker holds one panel, O(n·l) for G and Z, and its share of the
m×l basis Q.
"""

from __future__ import annotations

import numpy as np

from ._kernels import orthonormalize, power_leaf, project_leaf, range_leaf, svd_flip_rows
from ._tsqr import centre_correction, tsqr_down, tsqr_up

__all__ = ["randomized_svd"]


def _times(q, z):
    return q @ z


def _sum(engine, handles):
    """Sum small per-panel blocks in panel order (bitwise the same on any cluster)."""
    parts = engine.gather(handles)
    total = parts[0].copy()
    for p in parts[1:]:
        total += p
    return total


def randomized_svd(run, k, *, n_oversamples, n_iter, random_state):
    """Randomized rank-k SVD of the tall view (n_iter + 2 passes).

    Parameters
    ----------
    run : svdserve.worker._run.Run
    k : int
    n_oversamples : int
        Extra test vectors p; the sketch has l = min(k + p, n) columns.
    n_iter : int
        Power (subspace) iterations q.
    random_state : int
        Seed of the Gaussian test matrix (NumPy ``default_rng``).

    Returns
    -------
    dict with ``t`` (handles to ndarray of shape (rows_i, k)), ``sigma``
    (ndarray of shape (k,)), ``v`` (ndarray of shape (n, k)), ``l`` (sketch
    width used) and ``s_all`` (None: the spectrum beyond l is not computed).
    """
    eng = run.engine
    m, n = run.m, run.n
    ell = min(k + n_oversamples, n)
    rng = np.random.default_rng(random_state)
    g = orthonormalize(rng.standard_normal((n, ell)))

    mu_y = None  # the means applied inside Y = (A − 1μᵀ)G, once known
    for it in range(n_iter):
        g_h = eng.scatter(g)
        if it == 0:
            outs = run.first_pass("power", power_leaf, lambda i: (g_h, None))
            z = _sum(eng, outs)
            if run.center:
                mu = run.mean
                z -= m * np.outer(mu, mu @ g)
        else:
            outs = [eng.part(h, 0) for h in run.run_pass("power", power_leaf,
                                                           lambda i: (g_h, run.mean))]
            z = _sum(eng, outs)
        g = orthonormalize(z)
    if n_iter > 0:
        mu_y = run.mean

    g_h = eng.scatter(g)
    correct = run.center and mu_y is None
    if n_iter == 0:
        leaves = run.first_pass("range", range_leaf, lambda i: (g_h, None, correct))
    else:
        leaves = [eng.part(h, 0) for h in run.run_pass(
            "range", range_leaf, lambda i: (g_h, mu_y, correct))]
    root, nodes = tsqr_up(eng, leaves)
    if correct:
        _, to_basis = centre_correction(root["r"], root["s"], g.T @ run.mean, m)
        w_root, c = to_basis(np.eye(ell))
    else:
        w_root, c = np.eye(root["r"].shape[0], ell), None
    ws = tsqr_down(eng, nodes, len(run.panels), w_root)

    handles = run.run_pass("project", project_leaf, lambda i: (g_h, mu_y, ws[i], c))
    b = _sum(eng, [eng.part(h, 0, "b") for h in handles])
    if run.center:
        b -= np.outer(_sum(eng, [eng.part(h, 0, "qsum") for h in handles]), run.mean)
    u_b, sigma, vt = np.linalg.svd(b, full_matrices=False)
    u_b, vt = svd_flip_rows(u_b, vt)
    phase = run.phase("factor", reads=False)
    uk = eng.scatter(u_b[:, :k])
    t = [eng.submit(_times, eng.part(h, 0, "q"), uk) for h in handles]
    run.report(phase, 1, 1)
    return {"t": t, "sigma": sigma[:k], "v": vt[:k].T, "l": ell, "s_all": None}
