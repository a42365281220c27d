"""North's rule of thumb: the sampling errors of the eigenvalues of a sample covariance.

North, G. R., Bell, T. L., Cahalan, R. F. & Moeng, F. J. (1982). Sampling
errors in the estimation of empirical orthogonal functions. *Mon. Wea. Rev.*
110, 699–706, eq. (24): an eigenvalue λ_i of the covariance of N independent
samples has the sampling error δλ_i ≈ λ_i·√(2/N). When the error bars of two
neighbouring modes overlap, λ_i − δλ_i ≤ λ_{i+1} + δλ_{i+1}, the two are
degenerate: any rotation of the pair is as likely as the pair itself, so the
two EOFs must not be interpreted separately.

The report's section uses N = the number of samples m (as eofs' ``northTest``);
an effective sample size from the lag-1 autocorrelation of the PCs needs U,
so it is computed client-side from the stored result
(``StoredResult.north_errors(n_eff="lag1")``). Nothing here reads A: it is a
function of the singular values and m only, and costs O(k).

The overlap test is made on ratios σ_{i+1}/σ_i, never on σ², so it holds
for any finite σ (no overflow).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["north_section"]


def north_section(sigma, m: int, *, center: bool) -> dict:
    """The ``north`` section of the energy report.

    Parameters
    ----------
    sigma : ndarray of shape (k,)
        Singular values, non-increasing.
    m : int
        Number of samples N (rows of the matrix).
    center : bool
        Whether the eigenvalues are the covariance's, σ²/(m − 1) (centred),
        else the second moments σ²/m.

    Returns
    -------
    dict
        ``{"n_samples": N, "relative_error": √(2/N), "eigenvalues": [λ_i | null],
        "errors": [δλ_i | null], "degenerate": [bool] (k − 1: modes i, i+1
        overlap), "degenerate_pairs": [[i, i+1], ...] (1-based), "n_eff": "samples"}``;
        an eigenvalue or error not representable in float64 is null.
    """
    sigma = np.asarray(sigma, dtype=float)
    rel = math.sqrt(2.0 / m) if m > 0 else math.inf
    dof = max(m - 1, 1) if center else max(m, 1)
    lam = [_sq_over(x, dof) for x in sigma]
    err = [None if v is None or not math.isfinite(v * rel) else v * rel for v in lam]
    # λ_i(1 − r) ≤ λ_{i+1}(1 + r)  ⇔  (σ_{i+1}/σ_i)² ≥ (1 − r)/(1 + r)
    level = (1 - rel) / (1 + rel) if math.isfinite(rel) else -math.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(sigma[:-1] > 0, sigma[1:] / sigma[:-1], 1.0)
    degenerate = [bool(r * r >= level) for r in ratio]
    return {"n_samples": int(m), "n_eff": "samples", "relative_error": rel,
            "eigenvalues": lam, "errors": err, "degenerate": degenerate,
            "degenerate_pairs": [[i + 1, i + 2] for i, d in enumerate(degenerate) if d]}


def _sq_over(x: float, dof: int) -> float | None:
    """x²/dof, or None when it is not representable (x near 1e±170)."""
    with np.errstate(over="ignore", under="ignore"):
        v = float(x) * float(x) / dof
    return v if math.isfinite(v) and (v > 0 or x == 0) else None
