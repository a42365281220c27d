"""Randomized truncated SVD of a tall matrix, out of core.

Halko, Martinsson & Tropp, "Finding structure with randomness", SIAM Review
53(2), 2011: Alg. 4.4 (randomized subspace iteration, re-orthonormalised at
every step) followed by Alg. 5.1 (direct SVD of B = QᵀA).

Passes over A: **q + 1** for ``n_iter = q``.

- Power pass (×q): each panel is read once for Z_i = A_iᵀ(A_i G); the sum
  Z (n×l) is small and local, and G ← orth(Z) re-orthonormalises it. This
  is the fused form of one step of Alg. 4.4 (the intermediate m×l block
  A G is never stored). Each Z_i comes scaled by a power of two, so the
  sum neither overflows nor underflows for entries near 1e±300.
- Last pass, range and projection fused: each panel computes Y_i = A_i G,
  its local QR Y_i = Q_i R_i and C_i = Q_iᵀA_i in one read. The R factors are
  reduced in a TSQR tree (:mod:`._tsqr`), whose downward sweep gives each
  panel's coefficients M_i of the global orthonormal basis Q_i M_i (never
  normal equations), and B = Σ M_iᵀC_i (l×n); svd(B) = Ũ Σ Vᵀ, U = Q M Ũ_k
  from the blocks kept on the workers, without reading A again.

The first pass also measures ‖A‖_F² (scaled), column means and finiteness.

A-posteriori error estimate (Halko et al. §4.3): the last pass also forms
A_iω for p Gaussian probes ω drawn independently of G (one wider product,
no extra read). Once U, S, V are known, each panel's rows of
(A − U S Vᵀ)ω are formed from the kept A_iω, and
10·sqrt(2/π)·max_j ‖(A − USVᵀ)ω_j‖ bounds ‖A − USVᵀ‖₂ except with
probability 10**-p (:func:`~._energy.spectral_estimate`).
Residuals are exact for the returned factors: ‖A − QB‖²_F is accumulated per
panel as ‖A_i − Q_iC_i‖² + ‖C_i − M_iB‖² (two orthogonal parts, no
cancellation), and the rank-r residual is sqrt(that + Σ_{r<i≤l} σ_i²).

Centring (PCA) is implicit and exact in one pass. Panels arrive shifted by
a common pivot row (see :mod:`._tsqr`). A first power pass centres each
panel by its own mean and adds Σ n_i δ_i δ_iᵀ G with δ_i = μ_i − μ once μ is
known; later power passes use (A_i − 1μᵀ) directly; the last pass factors
``[1, Y_i]`` so that the basis is orthogonal to 1 and B needs only μ.

Memory: a worker holds one panel, O(n·l) for G, Z and C_i, and its share of
the m×l basis Q.
"""

from __future__ import annotations

import math

import numpy as np

from ._kernels import (
    add_sumsq,
    deflated_power_leaf,
    orthonormalize,
    power_leaf,
    probe_sumsq,
    range_finish,
    range_leaf,
    range_project,
    svd_flip_rows,
)
from ._precision import MixedPrecision
from ._run import Factors
from ._tsqr import small_tree, split_ones_direction, with_ones_direction

__all__ = ["randomized_svd"]


def ordered_sum(parts):
    """Sum small blocks in panel order (bitwise the same on any cluster)."""
    total = parts[0].copy()
    for p in parts[1:]:
        total += p
    return total


def _sum_scaled(parts):
    """Σ z_i·2**e_i for :func:`~._kernels.power_leaf` outputs ``(z, e)``, as z·2**e.

    Summed in float64 whatever the parts' dtype (a float32 pass ships float32 parts,
    half the bytes, widened exactly here).
    """
    e = max(p["e"] for p in parts)
    return ordered_sum([np.ldexp(p["z"], p["e"] - e, dtype=np.float64) for p in parts]), e


def _between_panel_term(stats, mu, g):
    """Σ n_i δ_i (δ_iᵀ G) with δ_i = μ_i − μ, scaled as ``(t, e)``: t·2**e.

    What the panels' own centring left out of (A − 1μᵀ)ᵀ(A − 1μᵀ)G.
    """
    deltas = [s["mean"] - mu for s in stats]
    amax = max((float(np.max(np.abs(d))) for d in deltas), default=0.0)
    f = math.frexp(amax)[1] if amax > 0 else 0
    t = np.zeros((mu.size, g.shape[1]))
    for s, d in zip(stats, deltas):
        d = np.ldexp(d, -f)
        t += s["count"] * np.outer(d, d @ g)
    return t, 2 * f


def _power_sum(parts, extra=None):
    """The summed power step as ``(z, e)``: z·2**e."""
    z, e = _sum_scaled(parts)
    if extra is not None:
        t, f = extra
        top = max(e, f)
        z, e = np.ldexp(z, e - top) + np.ldexp(t, f - top), top
    return z, e


def probe_matrix(n, p, random_state):
    """The p Gaussian error probes (n×p), from a stream independent of the test matrix."""
    return np.random.default_rng([int(random_state), 0xE57]).standard_normal((n, p))


def combine_scaled(parts):
    """Σ s_i·4**e_i for :func:`~._kernels.probe_sumsq` outputs, as an ndarray (may be inf/0)."""
    e = max(p[0] for p in parts)
    total = ordered_sum([np.ldexp(p[1], 2 * (p[0] - e)) for p in parts])
    return np.sqrt(total) * 2.0**e


def probe_norms(run, leaves, t, sigma, v, probes, *, cumulative=False):
    """‖(A − U S Vᵀ)ω_j‖ from the probe products kept in ``leaves`` (no read of A).

    Parameters
    ----------
    leaves : list of handles to dicts with a ``probe`` entry (rows_i, p)
    t : list of handles to the tall factor's blocks (rows_i, k)
    sigma : ndarray of shape (k,)
    v : ndarray of shape (n, k)
    probes : ndarray of shape (n, p)
    cumulative : bool
        Norms for every rank r = 0..k, ndarray of shape (k + 1, p).

    Returns
    -------
    ndarray of shape (p,) (or (k + 1, p))
    """
    eng = run.engine
    c_h = eng.scatter((sigma[:, None] * v.T) @ probes)
    shift = eng.scatter(run.shifted_mean @ probes) if run.center else None
    parts = eng.gather([eng.submit(probe_sumsq, eng.part(h, "probe"), tb, c_h, shift, cumulative)
                        for h, tb in zip(leaves, t)])
    return combine_scaled(parts)


def power_step(run, g, deflate=None, leaf=power_leaf, scaled=False):
    """One pass for (A − 1μᵀ)ᵀ(A − 1μᵀ)G (or of the residual A − QB), summed over panels.

    The first pass over A also gathers the statistics (each panel centred by
    its own mean, plus the between-panel term); later passes centre by μ.

    Parameters
    ----------
    g : ndarray of shape (n, l)
    deflate : (list of handles, ndarray of shape (l0, n)), optional
        Each panel's rows of a basis Q and B = QᵀA: the step is then on the
        residual, (A − QB)ᵀ(A − QB)G (:func:`~._kernels.deflated_power_leaf`).
    leaf : callable, default=power_leaf
        The panel kernel (:func:`~._precision.power_leaf32` for a float32 pass).
    scaled : bool, default=False
        Return ``(z, e)`` with the step equal to z·2**e.

    Returns
    -------
    ndarray of shape (n, l), scaled by a power of two (or ``(z, e)``).
    """
    eng = run.engine
    g_h = eng.scatter(g)
    if run.stats is None:
        outs = run.first_pass("power", leaf, lambda i: (g_h,), local_mean=True)
        extra = None
        if run.center:
            extra = _between_panel_term(run.panel_stats, run.shifted_mean, g)
        z, e = _power_sum(eng.gather(outs), extra)
        d = run.post_scale()  # standardize: D(AᵀA G) starts the iteration on A·D
        if d is not None:
            z = z * d[:, None]
        return (z, e) if scaled else z
    mu = run.shifted_mean
    mu_h, mu_g = (eng.scatter(mu), eng.scatter(mu @ g)) if run.center else (None, None)
    if deflate is None:
        handles = run.run_pass("power", leaf, lambda i: (g_h, mu_h, mu_g))
    else:
        basis, b_mat = deflate
        bg_h, b_h = eng.scatter(b_mat @ g), eng.scatter(b_mat)
        handles = run.run_pass("power", deflated_power_leaf,
                               lambda i: (g_h, mu_h, mu_g, basis[i], bg_h, b_h))
    z, e = _power_sum(eng.gather(handles))
    return (z, e) if scaled else z


def project_basis(run, leaves):
    """B = QᵀA from the last pass's :func:`~._kernels.range_leaf` results.

    The local R factors (l×l each) are reduced by TSQR in this process
    (:func:`~._tsqr.small_tree`); its downward sweep gives each panel's pair
    (coefficients, constant row) of the global basis.

    Returns
    -------
    b : ndarray of shape (l, n)
    ws : list of each leaf's pair from the downward sweep
    """
    eng = run.engine
    _, ws = small_tree(eng, [eng.part(h, "tree") for h in leaves], run.center)
    shares = eng.gather([eng.submit(range_project, h, w) for h, w in zip(leaves, ws)])
    b = ordered_sum([s[0] for s in shares])
    if run.center:
        b -= np.outer(ordered_sum([s[1] for s in shares]), run.shifted_mean)
    return b, ws


def qb_factors(run, leaves, ws, b, k, probes):
    """Rank-k factors of A ≈ QB from the blocks kept on the workers, without a pass.

    svd(B) = Ũ Σ Vᵀ here, then one task per panel
    (:func:`~._kernels.range_finish`) forms its rows of U = Q M Ũ_k, its
    share of the exact ‖A − QB‖²_F and of the probe residuals.

    Parameters
    ----------
    leaves : list of handles to :func:`~._kernels.range_leaf` results
    ws : list of each leaf's pair from the downward sweep (:func:`project_basis`)
    b : ndarray of shape (l, n)
    k : int
    probes : ndarray of shape (n, p) or None

    Returns
    -------
    (tall handles, σ of B (every one), Vᵀ of B, residual :func:`~._kernels.sumsq`
    pair, probe norms of shape (p,) or None)
    """
    eng = run.engine
    b_ones, extra = with_ones_direction(b, k, run.center)
    u_b, sigma, vt = np.linalg.svd(b_ones, full_matrices=False)
    u_b, vt = svd_flip_rows(u_b, vt)
    uk, const = split_ones_direction(u_b[:, :k], extra, run.m, run.center)
    mu = run.shifted_mean if run.center else None
    c = shift = None
    if probes is not None:
        c = (sigma[:k, None] * vt[:k]) @ probes
        shift = mu @ probes if run.center else None
    args = [eng.scatter(x) for x in (b, mu, uk, const, c, shift)]
    done = [eng.submit(range_finish, h, w, *args) for h, w in zip(leaves, ws)]
    small = eng.gather([eng.part(h, "small") for h in done])
    resid = (0, 0.0)
    for part, _ in small:
        resid = add_sumsq(resid, part)
    norms = None if probes is None else combine_scaled([p for _, p in small])
    return [eng.part(h, "tall") for h in done], sigma, vt, resid, norms


def randomized_svd(run, k, *, n_oversamples, n_iter, random_state, n_probes=10,
                   compute_u=True, precision="float64"):
    """Randomized rank-k SVD of the tall view (n_iter + 1 passes).

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
    n_probes : int, default=10
        Gaussian probes of the error estimate (0: none).
    compute_u : bool, default=True
        Return the tall factor (formed from the kept blocks either way, since
        the error estimate needs it; no pass).
    precision : {"auto", "float64"}, default="float64"
        ``"auto"``: on float32 input the power passes run in float32 where
        pass 1 says the spectrum allows it (:mod:`._precision`); the last
        pass is float64 either way.

    Returns
    -------
    Factors
        ``tall`` (None without ``compute_u``), ``sigma``, ``v``, ``width``
        (the sketch width l), ``precision`` (:meth:`MixedPrecision.to_json`),
        ``sigma_b`` (every singular value of B, shape (l,)), ``resid_ss``
        (‖A − QB‖²_F as a :func:`~._kernels.sumsq` pair) and ``probe_norms``
        (shape (n_probes,)).
    """
    eng = run.engine
    n = run.n
    ell = min(k + n_oversamples, n)
    rng = np.random.default_rng(random_state)
    g = orthonormalize(rng.standard_normal((n, ell)))
    mixed = MixedPrecision(precision, run.float32_input, run.center or run.center_rows, k,
                           scaled=run.scaled)
    for i in range(n_iter):
        z, e = power_step(run, g, leaf=mixed.leaf, scaled=True)
        if i == 0:
            mixed.after_first(z, e, g, run.stats)
        else:
            mixed.after_pass()
        g = orthonormalize(z)

    g_h = eng.scatter(g)
    probes = probe_matrix(n, n_probes, random_state) if n_probes else None
    pr_h = eng.scatter(probes)
    if n_iter == 0:
        leaves = run.first_pass("range+project", range_leaf,
                                lambda i: (g_h, run.center, pr_h))
    else:
        leaves = run.run_pass("range+project", range_leaf,
                              lambda i: (g_h, run.center, pr_h))
    phase = run.phase("factor", reads=False)
    b, ws = project_basis(run, leaves)
    t, sigma, vt, resid, norms = qb_factors(run, leaves, ws, b, k, probes)
    mixed.after_last(sigma[k - 1], run.total_sumsq)
    run.tick(phase, 1, 1)
    return Factors(t if compute_u else None, sigma[:k], vt[:k].T, k, sigma_b=sigma,
                   resid_ss=resid, probe_norms=norms, width=ell,
                   precision=mixed.to_json(n_iter))
