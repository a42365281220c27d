"""Single-pass streaming sketch of a tall matrix.

Tropp, Yurtsever, Udell & Cevher, "Streaming low-rank matrix approximation
with an application to scientific simulation", SIAM J. Sci. Comput. 41(4),
2019: the sketch of their §3 (range, co-range and core sketches), the
low-rank reconstruction of §4 (eq. (4.3)) and the fixed-rank truncation of
§5.

Passes over A: **1**. For storage where each read costs money (S3), or data
read once.

Each panel A_i (rows_i × n) is read once, and contributes

- Y_i = A_i Ω (range sketch, rows_i × k), kept on the worker;
- X += Υ_i A_i (co-range sketch, k × n);
- Z += Φ_i A_i Ψ (core sketch, s × s);
- A_i ω for p Gaussian error probes, kept on the worker.

Ω (n×k), Ψ (n×s) and the probes ω (n×p) come from the seed; Υ_i (k×rows_i)
and Φ_i (s×rows_i) from generators seeded by the seed and blocks of global
row indices (:func:`~._kernels.panel_tests`), so any worker, any rebuild after
a lost worker, and an update reading only appended rows (:mod:`._update`)
draw the same bits: the result is deterministic per seed and panel plan.

After the pass, without reading A again: Q = orth(Y) by a TSQR of the kept
blocks, P = orth(Xᵀ), C = (ΦQ)† Z ((ΨᵀP)†)ᵀ (two small least-squares
solves), Â = Q C Pᵀ; the rank-r SVD of C gives U = Q Ũ_r, S, V = P Ṽ_r.
Default sizes are the paper's (§5.4): k = 4r + 1, s = 2k + 1.

Centring (PCA) is exact and costs nothing: the sketches are linear, so the
centred sketches are Y − 1(μᵀΩ) (the TSQR of Y centres it, as in
:mod:`._tsqr`), X − (Υ1)μᵀ and Z − (Φ1)(μᵀΨ), with μ the pass-1 mean.

Error estimate: with U, S, V known, each panel forms its rows of
(A − U S Vᵀ)ω from the kept A_iω; 10·sqrt(2/π)·max_j ‖(A − USVᵀ)ω_j‖ bounds
‖A − USVᵀ‖₂ except with probability 10**-p (Halko, Martinsson & Tropp 2011
§4.3; Tropp et al. 2019 §6 use the same Gaussian probes for the Frobenius
error). A is never read again, so the report's residuals are estimates:
mean_j ‖(A − U_rS_rV_rᵀ)ω_j‖² is unbiased for ‖A − U_rS_rV_rᵀ‖²_F.

Scaling: unlike the other methods, the products are not rescaled by powers
of two: entries must stay within about 1e±150.

Memory: a worker holds one panel and its blocks of Y and Aω (m×(k + p) over
the cluster); the driver holds X (k×n), Z (s×s) and Ψ (n×s).
"""

from __future__ import annotations

import numpy as np

from ._kernels import panel_tests, stream_leaf, svd_flip_rows, tall_block, tsqr_leaf
from ._rsvd import ordered_sum, probe_matrix, probe_norms
from ._run import Factors
from ._tsqr import small_tree

__all__ = ["sketch_svd", "sketch_sizes", "sketch_tests", "stream_pass", "sketch_sums",
           "sketch_factors"]


def sketch_sizes(k, shape, center, sizes=None):
    """Range and core sketch sizes (k_s, s_s): the paper's 4r + 1 and 2k + 1, clipped.

    Parameters
    ----------
    k : int
        Target rank r.
    shape : (m, n) of the tall view
    center : bool
        A centred range holds at most m − 1 directions.
    sizes : (int, int), optional
        Overrides; each is still clipped to the matrix.
    """
    m, n = shape
    short = min(m - 1 if center else m, n)
    rng_k, core = (4 * k + 1, None) if sizes is None else sizes
    rng_k = max(k, min(int(rng_k), short))
    core = 2 * rng_k + 1 if core is None else int(core)
    core = max(rng_k, min(core, min(m, n)))
    return rng_k, core


def _phi_q(seed, start, stop, k, s, q):
    """Φ_i Q_i: this panel's share of ΦQ (Φ_i rebuilt from its seed)."""
    return panel_tests(seed, start, stop, k, s)[1] @ q


def _tall_times(y, wc, center, uk):
    """Rows of Q Ũ_k: the TSQR factor of the kept range block, times Ũ_k."""
    w, c = wc
    return tall_block(y, (w @ uk, None if c is None else c @ uk), center)


def sketch_tests(n, kr, s, random_state, n_probes):
    """The right test matrices Ω (n×kr), Ψ (n×s) and the probes (n×p) of a seed."""
    rng = np.random.default_rng(random_state)
    omega = rng.standard_normal((n, kr))
    psi = rng.standard_normal((n, s))
    return omega, psi, probe_matrix(n, max(n_probes, 1), random_state)


def sketch_svd(run, k, *, random_state, sizes=None, n_probes=10):
    """Rank-k SVD of the tall view from one pass (Tropp et al. 2019).

    Parameters
    ----------
    run : svdserve.worker._run.Run
    k : int
    random_state : int
    sizes : (int, int), optional
        Range and core sketch sizes; default (4k + 1, 2(4k + 1) + 1).
    n_probes : int, default=10
        Gaussian probes of the error estimate (at least 1).

    Returns
    -------
    Factors
        ``tall``, ``sigma``, ``v``, ``resid_est`` (estimated ‖A − A_r‖_F,
        r = 1..k), ``probe_norms``, ``sketch_sizes`` and ``state`` (the
        sketches, for an update: :mod:`._update`).
    """
    eng = run.engine
    kr, s = sketch_sizes(k, (run.m, run.n), run.center, sizes)
    tests = sketch_tests(run.n, kr, s, random_state, n_probes)
    leaves = stream_pass(run, tests, random_state)
    sums = sketch_sums(eng, leaves)
    return sketch_factors(run, leaves, run.bounds, sums, tests, k, random_state=random_state,
                          n_probes=n_probes)


def stream_pass(run, tests, random_state):
    """The one pass over A (:func:`~._kernels.stream_leaf` per panel); per-panel handles."""
    eng = run.engine
    om_h, psi_h, pr_h = (eng.scatter(t) for t in tests)
    seed = int(random_state)
    return run.first_pass("sketch", stream_leaf,
                          lambda i: (om_h, psi_h, pr_h, seed, *run.bounds[i]))


def sketch_sums(eng, leaves):
    """X, Z, Υ1 and Φ1 summed over the panels (uncentred, in panel order)."""
    parts = eng.gather([eng.submit(_small, h) for h in leaves])
    return {key: ordered_sum([p[key] for p in parts]) for key in ("x", "z", "ups1", "phi1")}


def sketch_factors(run, leaves, bounds, sums, tests, k, *, random_state, n_probes):
    """The factors from the sketches, without reading A (Tropp et al. 2019, §4-5).

    Parameters
    ----------
    run : Run
        Its statistics (the mean of a centred run) are those of every row.
    leaves : list of handles to dicts with ``y`` (rows_i, kr) and ``probe`` (rows_i, p)
    bounds : list of (int, int)
        The global rows of each of ``leaves``.
    sums : dict
        ``x``, ``z``, ``ups1``, ``phi1`` (:func:`sketch_sums`), over every row.
    tests : (omega, psi, probes)
    k : int

    Returns
    -------
    Factors
        As :func:`sketch_svd`; ``tall`` per entry of ``bounds``.
    """
    eng = run.engine
    omega, psi, probes = tests
    kr, s = omega.shape[1], psi.shape[1]
    x, z = sums["x"].copy(), sums["z"].copy()
    if run.center:
        mu = run.shifted_mean
        x -= np.outer(sums["ups1"], mu)
        z -= np.outer(sums["phi1"], mu @ psi)
    seed = int(random_state)
    ys = [eng.part(h, "y") for h in leaves]
    _, ws = small_tree(eng, [eng.submit(tsqr_leaf, y, run.center) for y in ys], run.center)
    phase = run.phase("factor", reads=False)
    phi_q = ordered_sum(eng.gather([
        eng.submit(_phi_q, seed, start, stop, kr, s, eng.submit(tall_block, y, w, run.center))
        for y, w, (start, stop) in zip(ys, ws, bounds)]))
    p_mat = np.linalg.qr(x.T, mode="reduced")[0]
    core = np.linalg.lstsq(phi_q, z, rcond=None)[0]
    core = np.linalg.lstsq(psi.T @ p_mat, core.T, rcond=None)[0].T
    u_c, sigma, vt_c = np.linalg.svd(core, full_matrices=False)
    k = min(k, sigma.size)
    u_c, sigma = u_c[:, :k], sigma[:k]
    vt = vt_c[:k] @ p_mat.T
    u_c, vt = svd_flip_rows(u_c, vt)
    uk_h = eng.scatter(u_c)
    t = [eng.submit(_tall_times, y, w, run.center, uk_h) for y, w in zip(ys, ws)]
    norms = probe_norms(run, leaves, t, sigma, vt.T, probes, cumulative=True)
    resid_est = np.sqrt(np.mean(norms[1:] ** 2, axis=1))
    run.tick(phase, 1, 1)
    state = {**sums, "sizes": [kr, s], "n_probes": n_probes, "bounds": list(bounds),
             "y": ys, "probe": [eng.part(h, "probe") for h in leaves]}
    return Factors(t, sigma, vt.T, k, resid_est=resid_est,
                   probe_norms=norms[-1][:n_probes] if n_probes else None,
                   sketch_sizes={"range": kr, "core": s}, state=state)


def _small(leaf):
    """The small parts of a :func:`~._kernels.stream_leaf` result (for the driver)."""
    return {key: leaf[key] for key in ("x", "z", "ups1", "phi1")}
