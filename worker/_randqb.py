"""Rank by energy target: a blocked adaptive randomized QB, out of core.

Yu, Gu & Li, "Efficient randomized algorithms for the fixed-precision
low-rank matrix approximation", SIAM J. Matrix Anal. Appl. 39(3), 2018,
Alg. 2 (randQB_EI, with the power scheme of their Alg. 4): the basis Q
grows by blocks of b columns and the error indicator

    E = ‖A‖²_F − ‖B‖²_F,  B = QᵀA

is updated after each block; the loop stops when E ≤ (1 − energy)·‖A‖²_F.
Here ‖A‖²_F is the pass-1 total (the total variance ‖A − 1μᵀ‖²_F when
centred), measured exactly as a scaled sum of squares, and ‖B‖²_F is formed
from B itself. E is a difference of two large numbers, accurate to about
ε·‖A‖²_F: good enough for a stopping rule at 1 − energy ≥ 1e-12 or so, but
the residuals in the report are never formed that way (see below).

Passes over A: **blocks × (n_iter + 1)**.

- Power step (×n_iter per block): each panel is read once for its share of
  (A − QB)ᵀ(A − QB)G (:func:`~._kernels.deflated_power_leaf`), with Q's rows
  kept on the workers and B small; G ← orth(Σ). The first block's first
  pass (which also measures ‖A‖²_F, the means and finiteness) centres with
  local means as in :mod:`._rsvd`.
- Range and projection, fused (×1 per block): each panel factors
  ``[Q_i, A_iG − Q_i(BG)]`` locally, projects itself on that local basis
  and keeps A_iω for the error probes (:func:`~._kernels.range_leaf`); the
  R factors are reduced in a TSQR tree, whose basis extends Q with b new
  orthonormal columns (Householder-stable: no Gram–Schmidt against Q, so no
  loss of orthogonality as E shrinks), and B = QᵀA is re-formed whole.
  ‖A − QB‖²_F comes out of the same pass exactly (two orthogonal parts,
  as in :mod:`._rsvd`).

Stopping: the indicator is met *and* the basis holds ``n_oversamples``
columns beyond the chosen rank (so the top singular values of B are as
accurate as a fixed-rank run's), or the basis reaches ``max_rank +
n_oversamples`` columns. The rank is then the one scikit-learn's
``PCA(n_components=energy)`` picks from the spectrum: the smallest r with
Σ_{i≤r} σ_i² > energy·‖A‖²_F, the σ_i being those of B (lower bounds of
A's, Weyl), capped at ``max_rank``.

Memory: a worker holds one panel and its rows of Q (m×l over the cluster,
as for the randomized method); the driver holds B (l×n).
"""

from __future__ import annotations

import math

import numpy as np

from ._kernels import (
    orthonormalize,
    range_leaf,
    range_tall,
    sumsq,
)
from ._rsvd import power_step, probe_matrix, project_basis, qb_factors
from ._run import Factors

__all__ = ["randqb_svd", "energy_rank", "sumsq_ratio"]


def sumsq_ratio(num, den):
    """num/den for two :func:`~._kernels.sumsq` pairs (no over- or underflow)."""
    (ea, sa), (eb, sb) = num, den
    if sb == 0.0:
        return 1.0
    return math.ldexp(sa / sb, 2 * (ea - eb))


def energy_rank(sigma, norm, energy):
    """Smallest r with Σ_{i≤r} (σ_i/norm)² > energy, as ``PCA(n_components=energy)``.

    Returns len(sigma) + 1 when the computed values do not reach it.
    """
    if norm == 0:
        return 1
    cum = np.cumsum((np.asarray(sigma, dtype=float) / norm) ** 2)
    return int(np.searchsorted(cum, energy, side="right")) + 1


def _range_pass(run, g, pr_h, basis, b_mat):
    """One range+project pass with the block's test matrix ``g``, against the
    basis so far (``basis`` per panel and ``b_mat``; None for the first block)."""
    eng = run.engine
    g_h = eng.scatter(g)
    if run.stats is None:
        return run.first_pass("range+project", range_leaf, lambda i: (g_h, run.center, pr_h))
    bg_h = None if basis is None else eng.scatter(b_mat @ g)

    def args(i):
        first = (g_h, run.center, pr_h)
        return first if basis is None else (*first, basis[i], bg_h)
    return run.run_pass("range+project", range_leaf, args)


def randqb_svd(run, *, energy, max_rank, block_size, n_oversamples, n_iter, random_state,
               n_probes=10):
    """Rank by energy target (randQB_EI), then the SVD of B at that rank.

    Parameters
    ----------
    run : svdserve.worker._run.Run
    energy : float
        Fraction in (0, 1) of ‖A‖²_F (or of the total variance) to capture.
    max_rank : int
        Largest rank returned.
    block_size : int
        Columns b added to the basis per block.
    n_oversamples : int
        Columns kept beyond the chosen rank before stopping.
    n_iter : int
        Power steps per block (one pass each).
    random_state : int
    n_probes : int, default=10

    Returns
    -------
    Factors
        As :func:`~._rsvd.randomized_svd`, with ``rank`` (the chosen rank) and
        ``energy_target`` (blocks, basis width, indicator, whether the target
        was reached).
    """
    eng = run.engine
    m, n = run.m, run.n
    width_cap = min(m - 1 if run.center else m, n, max_rank + n_oversamples)
    width_cap = max(width_cap, 1)
    rng = np.random.default_rng(random_state)
    probes = probe_matrix(n, n_probes, random_state) if n_probes else None
    pr_h = eng.scatter(probes)
    basis, b_mat, ell, blocks = None, None, 0, 0
    history = []
    while True:
        bsz = min(block_size, width_cap - ell)
        blocks += 1
        run.passes = max(run.passes, run.pass_no + n_iter + 1)
        g = orthonormalize(rng.standard_normal((n, bsz)))
        for _ in range(n_iter):
            g = orthonormalize(power_step(run, g, None if basis is None else (basis, b_mat)))
        leaves = _range_pass(run, g, pr_h, basis, b_mat)
        b_mat, ws = project_basis(run, leaves)
        ell = b_mat.shape[0]
        total = run.total_sumsq
        norm_a = math.sqrt(total[1]) * 2.0 ** total[0] if total[1] else 0.0
        frac = sumsq_ratio(sumsq(b_mat), total)
        sigma_b = np.linalg.svd(b_mat, compute_uv=False)
        r = energy_rank(sigma_b / 2.0 ** total[0], math.sqrt(total[1]), energy) \
            if total[1] else 1
        history.append({"block": blocks, "basis_width": ell, "indicator": 1.0 - frac,
                        "rank": min(r, ell)})
        met = frac >= energy and r <= ell
        if (met and r + n_oversamples <= ell) or ell >= width_cap or frac >= 1.0:
            break
        eye = np.eye(ell)
        basis = [eng.submit(range_tall, h, w, eye) for h, w in zip(leaves, ws)]
    reached = bool(frac >= energy and r <= min(ell, max_rank))
    k = max(1, min(r, ell, max_rank))
    t, sigma, vt, resid, norms = qb_factors(run, leaves, ws, b_mat, k, probes)
    qb = {"energy": float(energy), "max_rank": int(max_rank), "block_size": int(block_size),
          "blocks": blocks, "basis_width": int(ell), "n_iter_per_block": int(n_iter),
          "indicator": float(1.0 - frac), "reached": reached, "history": history,
          "norm": norm_a}
    return Factors(t, sigma[:k], vt[:k].T, k, sigma_b=sigma, resid_ss=resid,
                   probe_norms=norms, width=ell, energy_target=qb)
