"""Energy report of a truncated SVD.

Everything is derived from the singular values and the total energy
‖A‖_F² (or the total variance ‖A − 1μᵀ‖_F² when centred), measured in the
first pass as a scaled sum of squares (:func:`~._kernels.sumsq`), so nothing
over- or underflows for any finite input: fractions are formed from σ/‖A‖_F,
never from σ², and a quantity whose square is not representable in float64
(``total_energy``, ``captured_energy``, ``explained_variance`` near 1e±170)
is reported as null beside its always-finite norm (``frobenius_norm``).

Residuals ‖A − A_r‖_F are computed without cancellation, never as
``sqrt(total − Σσ²)`` (which loses half the digits, √ε·‖A‖_F):

- ``exact``: the whole spectrum is known, so the residual of the rank-r
  truncation is the tail norm sqrt(Σ_{i>r} σ_i²), accumulated from the
  smallest σ up (:func:`~._kernels.tail_norms`). It is the optimal rank-r
  error (Eckart–Young), accurate to a few ε·σ₁ in absolute terms (Weyl).
- ``randomized``: ‖A − QB‖²_F is accumulated per panel in the last pass,
  and the residual of the returned rank-r factors is
  sqrt(‖A − QB‖²_F + Σ_{r<i≤l} σ_i(B)²) (Pythagoras: A − QB ⊥ range Q). It
  is the achieved error of these factors, an upper bound on the optimal one.

- ``sketch``: A is read once, so no exact residual exists; the residual
  of the rank-r factors is estimated from Gaussian probes ω kept in that
  pass: mean ‖(A − U_rS_rV_rᵀ)ω_j‖² is an unbiased estimate of the squared
  Frobenius residual (relative standard deviation about sqrt(2/p) for p
  probes).

The ranks suggested for truncation are the largest ratios σ_r/σ_{r+1}
(spectral gaps): a subspace is stable under perturbation in proportion to
its gap (Davis–Kahan / Wedin).

Denoising rank (``suggested_rank.denoise``): Gavish & Donoho, "The optimal
hard threshold for singular values is 4/√3", IEEE Trans. Inf. Theory 60(8),
2014. For A = X + σZ (Z i.i.d. unit noise) of shape m×n, β = min/max, the
optimal threshold is τ = λ*(β)·sqrt(max(m, n))·σ (λ*(1) = 4/√3). The noise σ
is estimated:

- ``median_singular_value`` (the exact method has the whole spectrum): from
  the median singular value y_med, σ̂ = y_med / sqrt(max(m, n)·μ_β) with μ_β
  the median of the Marchenko–Pastur law (GD eq. (20)); the threshold is
  then ω(β)·y_med, as in GD's unknown-noise rule.
- ``residual_energy`` (otherwise): σ̂² = ‖A − A_k‖²_F / ((m − k)(n − k)),
  the residual energy per remaining degree of freedom. It assumes the k
  computed components hold all of the signal (k above the signal rank) and
  over-estimates σ otherwise; the report says which estimator was used.

With ``center=True`` the rows lose one degree of freedom (m − 1 is used).
"""

from __future__ import annotations

import math

import numpy as np

from ._kernels import add_sumsq, sumsq_norm, tail_norms
from ._north import north_section

__all__ = ["energy_report", "ENERGY_LEVELS", "gd_lambda", "gd_omega", "mp_median",
           "denoise_rank", "spectral_estimate"]

ENERGY_LEVELS = (0.9, 0.95, 0.99, 0.999)

#: What the ``residual`` of each method means (``residual_kind`` in the report).
RESIDUAL_KINDS = {
    "exact": "optimal: the Frobenius error of the rank-r truncated SVD, "
             "sqrt of the tail Σ_{i>r} σ_i², accurate to a few ε·σ₁",
    "randomized": "achieved: the exact Frobenius error of the returned rank-r factors, "
                  "an upper bound on the optimal error",
    "randqb": "achieved: the exact Frobenius error of the returned rank-r factors, "
              "an upper bound on the optimal error",
    "sketch": "estimated: from Gaussian probes kept in the single pass, an unbiased "
              "estimate of the squared Frobenius error of the returned rank-r factors "
              "(relative standard deviation about sqrt(2/probes))",
}

#: α of Halko, Martinsson & Tropp 2011, Lemma 4.1 / eq. (4.3): the bound
#: ‖E‖₂ ≤ α·sqrt(2/π)·max_j ‖Eω_j‖ fails with probability at most α**-p.
ESTIMATE_ALPHA = 10.0


def spectral_estimate(probe_norms):
    """A-posteriori spectral-norm bound from p Gaussian probe residuals ‖Eω_j‖.

    Halko, Martinsson & Tropp 2011, §4.3, eq. (4.3): for independent
    standard Gaussian ω_j (independent of E), ‖E‖₂ ≤ 10·sqrt(2/π)·max_j ‖Eω_j‖
    except with probability at most 10**-p. ``frobenius`` is
    sqrt(mean_j ‖Eω_j‖²), an unbiased estimate of ‖E‖²_F under the root.

    Parameters
    ----------
    probe_norms : ndarray of shape (p,)

    Returns
    -------
    dict with ``spectral`` (the bound), ``probability`` (that it holds,
    1 − 10**-p), ``failure_probability``, ``probes``, ``frobenius`` and ``kind``.
    """
    x = np.asarray(probe_norms, dtype=float)
    p = int(x.size)
    if p == 0:
        return None
    top = float(np.max(x))
    frob = top * math.sqrt(float(np.mean((x / top) ** 2))) if top > 0 else 0.0
    return {"spectral": _f(ESTIMATE_ALPHA * math.sqrt(2 / math.pi) * top),
            "probability": 1.0 - ESTIMATE_ALPHA ** -p,
            "failure_probability": ESTIMATE_ALPHA ** -p,
            "probes": p, "frobenius": _f(frob),
            "kind": "upper bound of ‖A − U_k S_k V_kᵀ‖₂ (Halko, Martinsson & Tropp 2011, "
                    "eq. (4.3), α = 10)"}


def gd_lambda(beta):
    """λ*(β) of Gavish & Donoho 2014, eq. (11): the known-noise threshold factor (4/√3 at β = 1)."""
    b = float(beta)
    return math.sqrt(2 * (b + 1) + 8 * b / ((b + 1) + math.sqrt(b * b + 14 * b + 1)))


def gd_omega(beta):
    """ω(β) ≈ 0.56β³ − 0.95β² + 1.82β + 1.43 (Gavish & Donoho 2014, eq. (25)): τ = ω(β)·y_med."""
    b = float(beta)
    return 0.56 * b**3 - 0.95 * b**2 + 1.82 * b + 1.43


def mp_median(beta):
    """Median of the Marchenko–Pastur law of ratio β ∈ (0, 1] (unit variance)."""
    from scipy.integrate import quad
    from scipy.optimize import brentq

    b = float(beta)
    lo, hi = (1 - math.sqrt(b)) ** 2, (1 + math.sqrt(b)) ** 2

    def density(t):
        return math.sqrt(max((hi - t) * (t - lo), 0.0)) / (2 * math.pi * b * t)

    def cdf(x):
        return quad(density, lo, x, limit=200)[0]

    return brentq(lambda x: cdf(x) - 0.5, lo, hi, xtol=1e-12)


def denoise_rank(sigma, *, shape, center, s_all=None, residual=None):
    """Gavish–Donoho hard-threshold rank (see the module docstring).

    Parameters
    ----------
    sigma : ndarray of shape (k,)
    shape : (m, n) of the input as stored
    center : bool
    s_all : ndarray, optional
        The whole spectrum (median estimator).
    residual : float, optional
        ‖A − A_k‖_F of the returned rank-k factors (residual-energy estimator).

    Returns
    -------
    dict with ``rank``, ``threshold``, ``noise_sigma``, ``noise_estimator``,
    ``beta``, ``more_than_k`` -- or None when no estimator applies.
    """
    m, n = shape
    m_eff = max(m - 1, 1) if center else m
    short, long_ = min(m_eff, n), max(m_eff, n)
    beta = short / long_
    sigma = np.asarray(sigma, dtype=float)
    k = sigma.size
    if s_all is not None:
        spec = np.sort(np.asarray(s_all, dtype=float)[:short])[::-1]
        y_med = float(np.median(spec))
        tau = gd_omega(beta) * y_med
        noise = y_med / math.sqrt(long_ * mp_median(beta))
        kind = "median_singular_value"
        more = False
    elif residual is not None and (m_eff - k) > 0 and (n - k) > 0:
        noise = float(residual) / math.sqrt((m_eff - k) * (n - k))
        tau = gd_lambda(beta) * math.sqrt(long_) * noise
        kind = "residual_energy"
        more = bool(k and sigma[-1] > tau)
    else:
        return None
    return {"rank": int(np.sum(sigma > tau)), "threshold": _f(tau), "noise_sigma": _f(noise),
            "noise_estimator": kind, "beta": beta, "more_than_k": more}


def _f(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _square(x):
    """x² as a float, or None when it over- or underflows (to inf, 0 or a subnormal)."""
    sq = float(x) * float(x)
    if x == 0 or (math.isfinite(sq) and sq >= np.finfo(float).tiny):
        return sq
    return None


def _residuals(sigma, method, s_all, sigma_b, resid_ss, resid_est=None):
    """‖A − A_r‖_F for r = 1..k (see the module docstring)."""
    k = sigma.size
    if resid_est is not None:
        return np.asarray(resid_est, dtype=float)
    if method == "exact" and s_all is not None:
        return tail_norms(s_all)[1 : k + 1]
    if resid_ss is not None and sigma_b is not None:
        tails = tail_norms(sigma_b)
        out = np.empty(k)
        for r in range(1, k + 1):
            t = tails[r] if r < tails.size else 0.0
            e = math.frexp(t)[1] if t > 0 else 0
            out[r - 1] = sumsq_norm(add_sumsq(resid_ss, (e, (math.ldexp(t, -e)) ** 2)))
        return out
    raise ValueError("a residual needs the whole spectrum (exact) or ‖A − QB‖ (randomized)")


def _energy_ranks(cum, norm, shape, k):
    """The smallest rank reaching each of :data:`ENERGY_LEVELS`.

    ``cum`` is the cumulative fraction over every known σ: σ_1..σ_k, or the whole
    spectrum (exact), where a rank beyond k is known (``more_than_k`` true, ``rank``
    set). None where the known σ do not reach the level.
    """
    m, n = shape
    ranks = []
    for level in ENERGY_LEVELS:
        hit = np.nonzero(cum >= level * (1 - 1e-12))[0] if norm > 0 else np.array([-1])
        if hit.size:
            r = int(hit[0]) + 1
            ranks.append({"fraction": level, "rank": r, "more_than_k": r > k,
                          "storage_ratio": r * (m + n + 1) / (m * n)})
        else:
            ranks.append({"fraction": level, "rank": None, "more_than_k": True,
                          "storage_ratio": None})
    return ranks


def _spectrum_stats(sigma, s_all, shape, n_gaps):
    """Numerical rank and its tolerance, condition numbers and the largest gaps.

    From the whole spectrum when known (exact), else from σ_1..σ_k.
    """
    m, n = shape
    k = sigma.size
    spectrum = np.asarray(s_all, dtype=float) if s_all is not None else sigma
    tol = float(spectrum[0] * max(m, n) * np.finfo(float).eps) if spectrum.size else 0.0
    cond = None
    if s_all is not None and spectrum.size:
        cond = _f(spectrum[0] / spectrum[-1]) if spectrum[-1] > 0 else None
    gaps = []
    if spectrum.size > 1:
        upto = min(spectrum.size - 1, max(k, 1))
        num, den = spectrum[:upto], spectrum[1 : upto + 1]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            gap = np.where(den > tol, num / np.where(den > 0, den, 1), np.inf)
        gap = np.where(num > tol, gap, 1.0)  # a gap between two zeros is no gap
        order = np.argsort(-gap, kind="stable")[:n_gaps]
        gaps = [{"rank": int(i) + 1, "ratio": _f(gap[i])} for i in order if gap[i] > 1]
    return spectrum, {
        "numerical_rank": int(np.sum(spectrum > tol)),
        "numerical_rank_tol": tol,
        "condition_estimate": _f(sigma[0] / sigma[-1]) if k and sigma[-1] > 0 else None,
        "condition_number": cond,
        "spectral_gaps": gaps,
    }


#: An error bound up to this many times the numerical-rank tolerance is rounding.
ROUNDING_FACTOR = 100.0

#: The report's warning for a probe-only bound above σ_k (see :func:`_error_estimate`).
FLAT_SPECTRUM_WARNING = (
    "the error bound {bound:.4g} exceeds σ_k = {sigma_k:.4g}: this spectrum is too flat for a "
    "one-pass sketch of this size; use method=randomized with n_iter ≥ 1, or larger sketches")


def _error_estimate(probe, sigma, s_all, frobenius, *, exact_residual, method, tol):
    """The report's ``error_estimate``: the best bound on ‖E‖₂ = ‖A − U_k S_k V_kᵀ‖₂ known.

    - exact (``s_all``): σ_{k+1} itself (``source`` ``"exact"``);
    - randomized, randqb: min(probe bound, ‖E‖_F), the exact Frobenius residual of
      the returned factors (‖E‖₂ ≤ ‖E‖_F always); the probe bound is about
      8·‖E‖_F (10·sqrt(2/π)·max_j ‖Eω_j‖ with E‖Eω‖² = ‖E‖²_F), so ‖E‖_F usually
      bounds it (``source`` ``"frobenius"``, probability 1);
    - sketch: the probe bound alone (``source`` ``"probe"``). When it exceeds σ_k
      the returned factors may be far off (a flat spectrum): ``warning`` says so.

    ``exceeds_sigma_k`` is ``spectral > σ_k`` for every method, unless the bound is
    rounding: at most ``ROUNDING_FACTOR·tol`` (``tol`` = σ_1·max(m, n)·ε, the
    numerical-rank tolerance; an exact sketch of rank-deficient data, k above its
    rank, measured a bound of ≈ 1·tol with σ_k ≈ 1e-2·tol). ``probe_bound`` keeps the
    probe bound (None for exact).
    """
    k = sigma.size
    sigma_k = max(float(sigma[-1]) if k else 0.0, ROUNDING_FACTOR * tol)
    if probe is None and s_all is None:
        if not exact_residual or method == "exact":
            return None
        # n_probes=0: no probe bound, ‖E‖_F still bounds ‖E‖₂
        probe = {"spectral": None, "probability": 0.0, "failure_probability": 1.0,
                 "probes": 0, "frobenius": None, "kind": "no probes (n_probes=0)"}
    if probe is None:
        nxt = float(s_all[k]) if k < len(s_all) else 0.0
        return {"spectral": nxt, "probability": 1.0, "failure_probability": 0.0,
                "probes": 0, "frobenius": frobenius, "kind": "exact: σ_{k+1} of the whole spectrum",
                "source": "exact", "probe_bound": None, "exceeds_sigma_k": nxt > sigma_k,
                "warning": None}
    est = {**probe, "probe_bound": probe["spectral"], "source": "probe"}
    if exact_residual:  # ‖E‖_F is exact here: it replaces the probes' estimate of it
        est["frobenius"] = frobenius
        if probe["spectral"] is None or frobenius < probe["spectral"]:
            est.update(spectral=frobenius, source="frobenius", probability=1.0,
                       failure_probability=0.0,
                       kind="exact ‖A − U_k S_k V_kᵀ‖_F, an upper bound of the spectral norm")
    bound = est["spectral"]
    est["exceeds_sigma_k"] = bool(k) and (bound is None or bound > sigma_k)
    est["warning"] = (FLAT_SPECTRUM_WARNING.format(bound=bound or math.inf,
                                                   sigma_k=float(sigma[-1]))
                      if est["exceeds_sigma_k"] and not exact_residual else None)
    return est


def energy_report(sigma, total_ss, *, shape, method, center, s_all=None, sigma_b=None,
                  resid_ss=None, n_gaps=5, resid_est=None, error_estimate=None):
    """Build the JSON-serialisable energy report.

    Parameters
    ----------
    sigma : ndarray of shape (k,)
        Leading singular values, non-increasing.
    total_ss : (int, float)
        Total energy measured in pass 1, a scaled :func:`~._kernels.sumsq` pair.
    shape : (m, n)
        Shape of the input as stored.
    method : {"exact", "randomized"}
    center : bool
    s_all : ndarray of shape (min(m, n),), optional
        The full spectrum (exact method): gives κ₂, the numerical rank of A
        itself rather than of its rank-k part, and the residuals.
    sigma_b : ndarray of shape (l,), optional
        Every singular value of B = QᵀA (randomized method).
    resid_ss : (int, float), optional
        ‖A − QB‖²_F as a scaled pair (randomized method).
    n_gaps : int, default=5
    resid_est : ndarray of shape (k,), optional
        Estimated residuals of the rank-r factors (sketch method).
    error_estimate : dict, optional
        :func:`spectral_estimate` of the returned factors (randomized and
        sketch). The report's ``error_estimate`` is the best bound known
        (:func:`_error_estimate`): σ_{k+1} for exact, min(probe bound, exact
        ‖E‖_F) for randomized, the probe bound for sketch, flagged (and noted in
        ``notes``) when that exceeds σ_k.

    Returns
    -------
    dict
        See ``docs/contracts.md`` section 3 for every key.
    """
    sigma = np.asarray(sigma, dtype=float)
    m, n = shape
    k = sigma.size
    norm = sumsq_norm(total_ss)
    resid = _residuals(sigma, method, s_all, sigma_b, resid_ss, resid_est)
    if norm > 0:
        ratio = sigma / norm
        frac = ratio**2
        cum = np.minimum(np.cumsum(frac), 1.0)
        rel = resid / norm
        # every known σ: the whole spectrum (exact) reaches ranks beyond k
        cum_known = cum if s_all is None else np.minimum(
            np.cumsum((np.asarray(s_all, dtype=float) / norm) ** 2), 1.0)
    else:
        frac = cum = cum_known = rel = np.zeros(k)
    components = [
        {"rank": r + 1, "sigma": float(sigma[r]), "energy_fraction": float(frac[r]),
         "cumulative_fraction": float(cum[r]), "residual": float(resid[r]),
         "relative_residual": float(rel[r])}
        for r in range(k)
    ]
    spectrum, stats = _spectrum_stats(sigma, s_all, shape, n_gaps)
    captured = tail_norms(sigma)[0] if k else 0.0
    report = {
        "shape": [int(m), int(n)],
        "method": method,
        "rank": int(k),
        "center": bool(center),
        "singular_values": [float(x) for x in sigma],
        "singular_values_all": None if s_all is None else [float(x) for x in s_all],
        "energy_kind": "total_variance" if center else "sum_of_squares",
        "frobenius_norm": norm,
        "total_energy": _square(norm),
        "captured_energy": _square(captured),
        "residual_kind": RESIDUAL_KINDS[method],
        "components": components,
        "energy_ranks": _energy_ranks(cum_known, norm, shape, k),
        **stats,
        "n_samples": int(m),
        "explained_variance": None,
        "explained_variance_ratio": None,
    }
    report["error_estimate"] = _error_estimate(
        error_estimate, sigma, s_all, norm if not k else float(resid[-1]),
        exact_residual=resid_est is None, method=method, tol=stats["numerical_rank_tol"])
    report["notes"] = [w for w in [(report["error_estimate"] or {}).get("warning")] if w]
    report["suggested_rank"] = {"denoise": denoise_rank(
        sigma, shape=shape, center=center, s_all=s_all,
        residual=float(resid[-1]) if k else None)}
    if center:
        dof = max(m - 1, 1)
        report["explained_variance"] = [
            None if (sq := _square(x)) is None else sq / dof for x in sigma]
        report["explained_variance_ratio"] = [float(x) for x in frac]
    report["north"] = north_section(sigma, m, center=center)  # North et al. 1982
    return report
