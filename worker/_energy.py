"""Energy report of a truncated SVD.

Everything is derived from the singular values and the total energy
‖A‖_F² (or the total variance ‖A − 1μᵀ‖_F² when centred) measured exactly in
the first pass. For orthonormal U, V with σ_i = u_iᵀ A v_i the Frobenius
residual of the rank-r truncation is exactly
``sqrt(total − Σ_{i≤r} σ_i²)`` (Pythagoras), so the report needs no extra
pass; by Eckart–Young it is also the best rank-r error when the σ_i are the
true leading singular values.

The ranks suggested for truncation are the largest ratios σ_r/σ_{r+1}
(spectral gaps): a subspace is stable under perturbation in proportion to
its gap (Davis–Kahan / Wedin).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["energy_report", "ENERGY_LEVELS"]

ENERGY_LEVELS = (0.9, 0.95, 0.99, 0.999)


def _f(x):
    x = float(x)
    return x if math.isfinite(x) else None


def energy_report(sigma, total, *, shape, method, center, s_all=None, n_gaps=5):
    """Build the JSON-serialisable energy report.

    Parameters
    ----------
    sigma : ndarray of shape (k,)
        Leading singular values, non-increasing.
    total : float
        Total energy measured in pass 1.
    shape : (m, n)
        Shape of the input as stored.
    method : {"exact", "randomized"}
    center : bool
    s_all : ndarray of shape (min(m, n),), optional
        The full spectrum (exact method): gives κ₂ and the numerical rank
        of A itself rather than of its rank-k part.
    n_gaps : int, default=5

    Returns
    -------
    dict
        See ``docs/contracts.md`` section 3 for every key.
    """
    sigma = np.asarray(sigma, dtype=float)
    m, n = shape
    k = sigma.size
    total = max(float(total), 0.0)
    sq = sigma**2
    cum = np.cumsum(sq)
    # Round-off can push Σσ² a few ulps over the measured total: clip at 0.
    resid = np.sqrt(np.maximum(total - cum, 0.0))
    safe = total if total > 0 else 1.0
    components = [
        {
            "rank": r + 1,
            "sigma": float(sigma[r]),
            "energy_fraction": float(sq[r] / safe) if total > 0 else 0.0,
            "cumulative_fraction": float(min(cum[r] / safe, 1.0)) if total > 0 else 0.0,
            "residual": float(resid[r]),
            "relative_residual": float(resid[r] / math.sqrt(safe)) if total > 0 else 0.0,
        }
        for r in range(k)
    ]
    ranks = []
    frac = cum / safe if total > 0 else np.ones(k)
    for level in ENERGY_LEVELS:
        hit = np.nonzero(frac >= level * (1 - 1e-12))[0]
        if hit.size:
            r = int(hit[0]) + 1
            ranks.append({"fraction": level, "rank": r, "more_than_k": False,
                          "storage_ratio": r * (m + n + 1) / (m * n)})
        else:
            ranks.append({"fraction": level, "rank": None, "more_than_k": True,
                          "storage_ratio": None})
    spectrum = np.asarray(s_all, dtype=float) if s_all is not None else sigma
    eps = np.finfo(float).eps
    tol = float(spectrum[0] * max(m, n) * eps) if spectrum.size else 0.0
    numerical_rank = int(np.sum(spectrum > tol))
    cond_est = _f(sigma[0] / sigma[-1]) if k and sigma[-1] > 0 else None
    cond = None
    if s_all is not None and spectrum.size:
        cond = _f(spectrum[0] / spectrum[-1]) if spectrum[-1] > 0 else None
    gaps = []
    if spectrum.size > 1:
        upto = min(spectrum.size - 1, max(k, 1))
        num, den = spectrum[:upto], spectrum[1 : upto + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(den > tol, num / np.where(den > 0, den, 1), np.inf)
        ratio = np.where(num > tol, ratio, 1.0)  # a gap between two zeros is no gap
        order = np.argsort(-ratio, kind="stable")[:n_gaps]
        gaps = [{"rank": int(i) + 1, "ratio": _f(ratio[i])} for i in order if ratio[i] > 1]
    report = {
        "shape": [int(m), int(n)],
        "method": method,
        "rank": int(k),
        "center": bool(center),
        "singular_values": [float(x) for x in sigma],
        "singular_values_all": None if s_all is None else [float(x) for x in s_all],
        "energy_kind": "total_variance" if center else "sum_of_squares",
        "total_energy": total,
        "captured_energy": float(cum[-1]) if k else 0.0,
        "components": components,
        "energy_ranks": ranks,
        "numerical_rank": numerical_rank,
        "numerical_rank_tol": tol,
        "condition_estimate": cond_est,
        "condition_number": cond,
        "spectral_gaps": gaps,
        "n_samples": int(m),
        "explained_variance": None,
        "explained_variance_ratio": None,
    }
    if center:
        dof = max(m - 1, 1)
        report["explained_variance"] = [float(x) for x in sq / dof]
        report["explained_variance_ratio"] = [float(x) / safe if total > 0 else 0.0 for x in sq]
    return report
