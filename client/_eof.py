"""EOF post-processing of a stored result: rotation, North errors, scalings, projection.

Everything here works from the stored factors ``U`` (m, k), ``S`` (k,),
``Vt`` (k, n), the ``mean`` (n,) and the ``mask`` (n,) of a
:class:`~svdserve.client.StoredResult`, entirely on the client: the input
matrix A is never read again. Names and conventions follow eofs
(``pcscaling``, ``eofscaling``, ``northTest``, ``projectField``,
``reconstructedField``) and xeofs (``EOFRotator``); eigenvalues are
``λ_i = σ_i² / (m − 1)`` (the covariance-matrix eigenvalues, ``ddof=1``).

A weighted or standardised result (``result.scale``, the feature scale D)
follows eofs: EOFs and PCs are those of the scaled field; the covariance maps
and the reconstruction divide D out (the field as given); a projected field is
scaled by D first; correlation maps do not depend on D.

Feature-side outputs (EOFs, maps) have shape ``(n_modes, *feature_shape)``
with NaN at the masked points; ``feature_shape`` is the shape of the feature
dims of a ``sample_dims`` job (e.g. ``(lat, lon)``) or ``(n,)`` for a matrix.
Sample-side outputs (PCs, scores) have shape ``(m, n_modes)``, samples
flattened in the job's ``sample_dims`` order, like eofs' ``(time, mode)``.

References
----------
Kaiser, H. F. (1958). The varimax criterion for analytic rotation in factor
analysis. *Psychometrika* 23, 187–200.
Hendrickson, A. E. & White, P. O. (1964). Promax: a quick method for rotation
to oblique simple structure. *Br. J. Stat. Psychol.* 17, 65–70.
North, G. R., Bell, T. L., Cahalan, R. F. & Moeng, F. J. (1982). Sampling
errors in the estimation of empirical orthogonal functions. *Mon. Wea. Rev.*
110, 699–706.
Bretherton, C. S., Widmann, M., Dymnikov, V. P., Wallace, J. M. & Bladé, I.
(1999). The effective number of spatial degrees of freedom of a time-varying
field. *J. Climate* 12, 1990–2009 (eq. 31, the effective sample size of a
variance estimate from an AR(1) series).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._errors import MissingValuesError

__all__ = ["Rotation", "NorthErrors", "rotate", "north_errors", "pcs", "eofs",
           "eofs_as_covariance", "eofs_as_correlation", "eofs_as_correlation_truncated",
           "project_field", "reconstruct_field"]

EPS = np.finfo(np.float64).eps


# -- shared views of the stored factors -----------------------------------------------------

def _shapes(result) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(sample_shape, feature_shape) of a result: from its labels, else (m,), (n,)."""
    lab = getattr(result, "labels", None)
    if not lab:
        return (result.shape[0],), (result.shape[1],)
    size = dict(zip(lab["dims"], lab["shape"]))
    return (tuple(int(size[d]) for d in lab["sample_dims"]),
            tuple(int(size[d]) for d in lab["feature_dims"]))


def _valid(result) -> np.ndarray:
    """ndarray of shape (n,), bool: the features that are not masked."""
    mask = getattr(result, "mask", None)
    return np.ones(result.shape[1], dtype=bool) if mask is None else ~np.asarray(mask)


def _n_modes(result, n_modes: int | None, *, lo: int = 1) -> int:
    if n_modes is None:
        return int(result.rank)
    if isinstance(n_modes, bool) or not isinstance(n_modes, (int, np.integer)):
        raise TypeError(f"n_modes must be an int or None, got {n_modes!r}")
    if not lo <= int(n_modes) <= result.rank:
        raise ValueError(f"n_modes must be between {lo} and {result.rank} (the modes the job "
                         f"computed), got {n_modes!r}; submit a job with a larger rank for more")
    return int(n_modes)


def _eigenvalues(result, n: int) -> np.ndarray:
    m = result.shape[0]
    return result.S[:n] ** 2 / max(m - 1, 1)


def _as_maps(result, rows: np.ndarray) -> np.ndarray:
    """Rows over the features (r, n) → (r, *feature_shape) with NaN at masked points."""
    out = np.array(rows, dtype=np.float64)
    out[:, ~_valid(result)] = np.nan
    return out.reshape(out.shape[0], *_shapes(result)[1])


def _u(result, n: int):
    if result.U is None:
        raise ValueError("this result has no U (the job ran with compute_u=False), so it has "
                         "no PCs; submit it again with compute_u=True")
    return result.U[:, :n].astype(np.float64)


def _pc_factor(result, n: int, pcscaling: int) -> np.ndarray:
    """g of shape (n,) with PC_j = g_j·U_j: σ (0), √(m−1) (1, unit variance), σ·√λ (2)."""
    if pcscaling not in (0, 1, 2):
        raise ValueError(f"pcscaling must be 0 (unscaled), 1 (unit variance) or 2 (multiplied "
                         f"by √eigenvalue), as in eofs; got {pcscaling!r}")
    s = result.S[:n]
    lam = _eigenvalues(result, n)
    return {0: s, 1: s / np.sqrt(lam), 2: s * np.sqrt(lam)}[pcscaling]


def _eof_factor(result, n: int, eofscaling: int) -> np.ndarray:
    if eofscaling not in (0, 1, 2):
        raise ValueError(f"eofscaling must be 0 (unit norm), 1 (divided by √eigenvalue) or 2 "
                         f"(multiplied by √eigenvalue), as in eofs; got {eofscaling!r}")
    lam = _eigenvalues(result, n)
    return {0: np.ones(n), 1: 1 / np.sqrt(lam), 2: np.sqrt(lam)}[eofscaling]


# -- scalings (eofs' pcs / eofs / eofsAsCovariance / eofsAsCorrelation) -----------------------

def pcs(result, n_modes: int | None = None, *, pcscaling: int = 0):
    """Principal component time series, scaled as eofs' ``Eof.pcs``.

    Parameters
    ----------
    result : StoredResult
        A centred result (``center=True``) with U.
    n_modes : int or None, default=None
        The leading modes wanted (all k when None).
    pcscaling : {0, 1, 2}, default=0
        0: unscaled, ``U·σ`` (eofs' default, xeofs' ``scores(normalized=False)``);
        1: unit variance, ``U·√(m−1)``; 2: ``U·σ·√λ``.

    Returns
    -------
    dask.array.Array of shape (m, n_modes)
        Lazy, chunked by samples like ``result.U``.
    """
    n = _n_modes(result, n_modes)
    return _u(result, n) * _pc_factor(result, n, pcscaling)


def eofs(result, n_modes: int | None = None, *, eofscaling: int = 0) -> np.ndarray:
    """EOFs, scaled as eofs' ``Eof.eofs``.

    Parameters
    ----------
    result : StoredResult
    n_modes : int or None, default=None
    eofscaling : {0, 1, 2}, default=0
        0: unit norm (the rows of Vt); 1: divided by √λ; 2: multiplied by √λ.

    Returns
    -------
    ndarray of shape (n_modes, *feature_shape)
        NaN at the masked points.
    """
    n = _n_modes(result, n_modes)
    return _as_maps(result, result._vt()[:n] * _eof_factor(result, n, eofscaling)[:, None])


def eofs_as_covariance(result, n_modes: int | None = None, *, pcscaling: int = 1) -> np.ndarray:
    """EOFs as the covariance of each PC with the field at each point (eofs' ``eofsAsCovariance``).

    ``cov(PC_j, x) = g_j·σ_j·Vt_j / (m − 1)`` because ``U_kᵀ X = S_k Vt_k``
    holds for the singular vectors of the centred field X: exact from the
    stored factors, whatever k (to the accuracy of the singular vectors).

    Parameters
    ----------
    result : StoredResult
    n_modes : int or None, default=None
    pcscaling : {0, 1, 2}, default=1
        Scaling of the PCs, as :func:`pcs` (eofs' default is 1).

    Returns
    -------
    ndarray of shape (n_modes, *feature_shape)
        NaN at the masked points; in the field's units (× the PC's units).
    """
    n = _n_modes(result, n_modes)
    g = _pc_factor(result, n, pcscaling)
    scale = g * result.S[:n] / max(result.shape[0] - 1, 1)
    # with the field as given: a weighted result's covariance is divided by the weights (eofs)
    return _as_maps(result, _unscaled(result, result._vt()[:n] * scale[:, None]))


def _full_rank(result) -> bool:
    """True when the k stored modes carry the whole variance (residual at rounding level)."""
    m, n = result.shape
    # Backward error of the SVD: 100·√max(m, n)·ε·‖A‖_F (tests/_check.py's bound).
    return result.report.residual(result.rank) <= 100 * math.sqrt(max(m, n)) * EPS * \
        result.report.frobenius_norm


def eofs_as_correlation(result, n_modes: int | None = None, *, field_std=None) -> np.ndarray:
    """EOFs as the correlation of each PC with the field at each point (eofs' ``eofsAsCorrelation``).

    ``corr(PC_j, x_i) = σ_j·Vt_ji / (√(m − 1)·std_i)``. The covariance part is
    exact from the factors; the standard deviation ``std_i`` of each point is
    not: it is ``√(Σ_all σ_j² Vt_ji² / (m − 1))`` over *every* mode, which a
    truncated result does not hold. So the maps are computed from the result
    alone only when it holds every mode (its residual is at rounding level:
    a centred job with rank = min(m − 1, n)); otherwise pass ``field_std``
    (one pass over the field, e.g. ``ds.sst.std("time", ddof=1)``), or use
    :func:`eofs_as_correlation_truncated`.

    Parameters
    ----------
    result : StoredResult
    n_modes : int or None, default=None
    field_std : array-like of shape feature_shape or (n,), optional
        The sample standard deviation (``ddof=1``) of the field at each point.

    Returns
    -------
    ndarray of shape (n_modes, *feature_shape)
        Values in [−1, 1], NaN at the masked points (and where std is 0).

    Raises
    ------
    ValueError
        The result is truncated and no ``field_std`` was given.
    """
    n = _n_modes(result, n_modes)
    if field_std is None:
        if not _full_rank(result):
            raise ValueError(
                f"exact correlation maps need the standard deviation of the field at each "
                f"point, but the {result.rank} stored modes hold only "
                f"{result.report.captured_fraction:.6g} of the variance; pass field_std= "
                "(the field's std over the samples, ddof=1: one pass over the data), or use "
                "eofs_as_correlation_truncated() for the maps of the rank-k reconstruction")
        return eofs_as_correlation_truncated(result, n)
    lab = getattr(result, "labels", None)
    if getattr(field_std, "dims", None) is not None and lab:
        field_std = field_std.transpose(*lab["feature_dims"])  # a DataArray in any dim order
    std = np.asarray(getattr(field_std, "values", field_std), dtype=np.float64).reshape(-1)
    if std.shape != (result.shape[1],):
        raise ValueError(f"field_std must have {result.shape[1]} values (one per point, shape "
                         f"{_shapes(result)[1]}), got shape {np.shape(field_std)}")
    cov = result._vt()[:n] * (result.S[:n] / math.sqrt(max(result.shape[0] - 1, 1)))[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return _as_maps(result, np.where(std > 0, cov / std, np.nan))


def eofs_as_correlation_truncated(result, n_modes: int | None = None) -> np.ndarray:
    """Correlation maps of each PC with the rank-k *reconstruction* of the field.

    The same as :func:`eofs_as_correlation` with the standard deviation of
    ``U_k S_k Vt_k`` (the k stored modes) in place of the field's: equal to
    eofs' maps when the result holds every mode, larger in magnitude (a
    point's variance outside the k modes is left out) when it is truncated.

    Returns
    -------
    ndarray of shape (n_modes, *feature_shape)
        NaN at the masked points and where the reconstruction is constant.
    """
    n = _n_modes(result, n_modes)
    vt = result._vt()
    m1 = max(result.shape[0] - 1, 1)
    std = np.sqrt(np.einsum("j,ji->i", result.S**2, vt**2) / m1)
    cov = vt[:n] * (result.S[:n] / math.sqrt(m1))[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return _as_maps(result, np.where(std > 0, cov / std, np.nan))


# -- North's rule of thumb -------------------------------------------------------------------

@dataclass(frozen=True)
class NorthErrors:
    """Sampling errors of the eigenvalues by North et al.'s (1982) rule of thumb.

    Attributes
    ----------
    eigenvalues : ndarray of shape (n_modes,)
        λ_i = σ_i² / (m − 1).
    errors : ndarray of shape (n_modes,)
        δλ_i = λ_i·√(2 / N_i): eofs' ``northTest()`` when N is the sample count.
    scaled_errors : ndarray of shape (n_modes,)
        δλ_i / Σ_all λ (in units of the explained variance ratio): eofs'
        ``northTest(vfscaled=True)``.
    n_eff : ndarray of shape (n_modes,)
        The sample size N_i used for each mode.
    n_eff_method : str
        ``"samples"`` (N = m), ``"given"`` or ``"lag1"``.
    degenerate : ndarray of shape (n_modes - 1,), bool
        ``degenerate[i]``: the error bars of modes i+1 and i+2 (1-based)
        overlap, λ_i − δλ_i ≤ λ_{i+1} + δλ_{i+1}: the two are degenerate, do
        not interpret them separately.
    lag1 : ndarray of shape (n_modes,) or None
        The lag-1 autocorrelation of each PC (``n_eff="lag1"`` only).
    """

    eigenvalues: np.ndarray
    errors: np.ndarray
    scaled_errors: np.ndarray
    n_eff: np.ndarray
    n_eff_method: str
    degenerate: np.ndarray
    lag1: np.ndarray | None = None

    @property
    def degenerate_pairs(self) -> list[tuple[int, int]]:
        """The (1-based) mode pairs whose error bars overlap: degenerate, do not
        interpret separately."""
        return [(int(i) + 1, int(i) + 2) for i in np.flatnonzero(self.degenerate)]

    def __str__(self) -> str:
        lines = ["mode  eigenvalue     error        N_eff"]
        for i, (lam, err, neff) in enumerate(zip(self.eigenvalues, self.errors, self.n_eff)):
            flag = "  degenerate with next: do not interpret separately" if (
                i < self.degenerate.size and self.degenerate[i]) else ""
            lines.append(f"{i + 1:>4}  {lam:<13.6g}  {err:<11.4g}  {neff:<8.4g}{flag}")
        return "\n".join(lines)


def _lag1(u: np.ndarray) -> np.ndarray:
    """Lag-1 autocorrelation of each column of u (m, n) about its mean."""
    d = u - u.mean(axis=0)
    den = np.sum(d * d, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, np.sum(d[1:] * d[:-1], axis=0) / den, 0.0)


def north_errors(result_or_report, n_modes: int | None = None, *,
                 n_eff: int | float | Literal["lag1"] | None = None) -> NorthErrors:
    """Eigenvalue sampling errors δλ_i = λ_i·√(2/N) (North et al. 1982) and degenerate pairs.

    Parameters
    ----------
    result_or_report : StoredResult or EnergyReport
        Only ``S``/the singular values, the shape and the total energy are
        read, and U (its first ``n_modes`` columns) for ``n_eff="lag1"``.
    n_modes : int or None, default=None
        The leading modes (all k when None).
    n_eff : int, float, "lag1" or None, default=None
        N: the number of samples m when None (as eofs' ``northTest``, which
        assumes independent samples), a given number, or ``"lag1"``: per
        mode, N·(1 − r₁²)/(1 + r₁²) with r₁ the lag-1 autocorrelation of the
        PC (Bretherton et al. 1999, eq. 31: an AR(1) series' effective size
        for a variance); needs a result with U and samples in time order.

    Returns
    -------
    NorthErrors

    Notes
    -----
    eofs' ``Eof.northTest(neigs, vfscaled)`` returns ``errors`` (and
    ``scaled_errors`` with ``vfscaled=True``) for N = the number of times;
    it does not flag overlaps: that is :attr:`NorthErrors.degenerate`.
    """
    rep = getattr(result_or_report, "report", result_or_report)
    m = int(rep.shape[0])
    s = np.asarray(rep.singular_values, dtype=np.float64)
    n = int(s.size) if n_modes is None else int(n_modes)
    if not 1 <= n <= s.size:
        raise ValueError(f"n_modes must be between 1 and {s.size}, got {n_modes!r}")
    lam = s[:n] ** 2 / max(m - 1, 1)
    total = rep.total_energy / max(m - 1, 1)
    r1, method = None, "samples"
    if n_eff is None:
        neff = np.full(n, float(m))
    elif isinstance(n_eff, str):
        if n_eff != "lag1" or not hasattr(result_or_report, "U"):
            raise ValueError(f"n_eff must be None, a number or 'lag1' (on a StoredResult, "
                             f"which has the PCs), got {n_eff!r}")
        r1, method = _lag1(np.asarray(_u(result_or_report, n).compute())), "lag1"
        neff = m * (1 - r1**2) / (1 + r1**2)
    else:
        if isinstance(n_eff, bool) or not float(n_eff) > 0:
            raise ValueError(f"n_eff must be a positive number of samples, got {n_eff!r}")
        neff, method = np.full(n, float(n_eff)), "given"
    err = lam * np.sqrt(2.0 / neff)
    degenerate = (lam[:-1] - err[:-1]) <= (lam[1:] + err[1:])
    scaled = err / total if total > 0 else err * np.nan
    return NorthErrors(lam, err, scaled, neff, method, degenerate, r1)


# -- rotation (xeofs' EOFRotator) --------------------------------------------------------------

@dataclass(frozen=True)
class Rotation:
    """Rotated EOFs (varimax or promax) of a stored result, as xeofs' ``EOFRotator``.

    Attributes
    ----------
    components : ndarray of shape (n_modes, *feature_shape)
        Rotated EOFs, unit norm, NaN at masked points; sorted by explained
        variance, the largest-magnitude entry of each positive.
    scores : dask.array.Array of shape (m, n_modes) or None
        Rotated PCs scaled by the pseudo singular values, xeofs'
        ``scores(normalized=False)``; None for a result without U.
    explained_variance : ndarray of shape (n_modes,)
        Variance of each rotated mode, Σ (rotated loadings)².
    explained_variance_ratio : ndarray of shape (n_modes,)
        ``explained_variance`` / total variance.
    singular_values : ndarray of shape (n_modes,)
        Pseudo singular values √(explained_variance·(m − 1)).
    rotation_matrix : ndarray of shape (n_modes, n_modes)
        R as xeofs stores it: rotated loadings = loadings @ R, columns in
        the order before sorting and sign fixing (see ``order``, ``signs``).
    phi : ndarray of shape (n_modes, n_modes)
        Correlation matrix of the rotated PCs (identity for varimax), xeofs'
        ``phi_matrix``, in the order before sorting.
    order : ndarray of shape (n_modes,), int
        Column of the unsorted rotation behind each returned mode.
    signs : ndarray of shape (n_modes,)
        ±1 applied to each returned mode.
    method : str
    power : int
        The promax power (1 for varimax).
    n_iter : int
        Varimax iterations made.
    converged : bool
        Whether the relative change of the varimax criterion fell below rtol.
    """

    components: np.ndarray
    scores: Any
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    singular_values: np.ndarray
    rotation_matrix: np.ndarray
    phi: np.ndarray
    order: np.ndarray
    signs: np.ndarray
    method: str
    power: int
    n_iter: int
    converged: bool


def _varimax(X: np.ndarray, *, max_iter: int, rtol: float, kaiser: bool):
    """Varimax rotation (Kaiser 1958) of loadings X (p, k), as xeofs' ``_varimax``.

    Returns (rotated loadings (p, k), R (k, k), n_iter, converged).
    """
    p, k = X.shape
    h = np.sqrt(np.sum(X * X, axis=1)) if kaiser else np.zeros(p)
    Xn = (1.0 / (h + EPS))[:, None] * X if kaiser else X
    R = np.eye(k)
    delta, alpha, n_iter = 0.0, 1.0 / p, 0
    converged = False
    for n_iter in range(1, max_iter + 1):
        delta_old = delta
        basis = Xn @ R
        basis2 = basis * basis
        transformed = Xn.T @ (basis * (basis2 - alpha * np.sum(basis2, axis=0)))
        u, svals, vt = np.linalg.svd(transformed)
        R = u @ vt
        delta = float(np.sum(svals))
        if abs(delta - delta_old) / delta < rtol:
            converged = True
            break
    Xd = h[:, None] * Xn if kaiser else Xn
    return Xd @ R, R, n_iter, converged


def _promax(X: np.ndarray, *, power: int, max_iter: int, rtol: float, kaiser: bool):
    """Promax (Hendrickson & White 1964) after varimax, as xeofs' ``_promax``.

    Returns (rotated loadings, R, phi, n_iter, converged).
    """
    X, R, n_iter, converged = _varimax(X, max_iter=max_iter, rtol=rtol, kaiser=kaiser)
    h = np.sqrt(np.sum(X * X, axis=1)) if kaiser else np.ones(X.shape[0])
    if kaiser:
        X = (1.0 / (h + EPS))[:, None] * X
    Xnorm = X / np.max(np.abs(X), axis=0)
    P = Xnorm * np.abs(Xnorm) ** (power - 1)
    L = np.linalg.inv(X.T @ X) @ X.T @ P   # the Procrustes fit (Richman 1986)
    try:
        sigma_inv = np.diag(np.diag(np.linalg.inv(L.T @ L)))
    except np.linalg.LinAlgError:
        sigma_inv = np.diag(np.diag(np.linalg.pinv(L.T @ L)))
    L = L @ np.sqrt(sigma_inv)
    Xrot = h[:, None] * (X @ L)
    L_inv = np.linalg.inv(L)
    return Xrot, R @ L, L_inv @ L_inv.T, n_iter, converged


def _check_rotate_args(result, n_modes, method, power, max_iter, rtol) -> int:
    if method not in ("varimax", "promax"):
        raise ValueError(f"method must be 'varimax' or 'promax', got {method!r}")
    n = _n_modes(result, n_modes, lo=2)
    if method == "promax" and (isinstance(power, bool) or not isinstance(power, (int, np.integer))
                               or power < 2):
        raise ValueError(f"power must be an int >= 2 for promax (power 1 is varimax), "
                         f"got {power!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    if not float(rtol) > 0:
        raise ValueError(f"rtol must be positive, got {rtol!r}")
    return n


def rotate(result, n_modes: int, method: Literal["varimax", "promax"] = "varimax", *,
           power: int = 4, max_iter: int = 1000, rtol: float = 1e-8,
           kaiser: bool = True) -> Rotation:
    """Varimax or promax rotation of the leading EOFs, from the stored factors only.

    Follows xeofs' ``EOFRotator`` step by step (``power=1`` there is
    varimax): the loadings ``Vt_k·√λ`` over the unmasked points are rotated
    with Kaiser's row normalisation (Kaiser 1958); promax raises the
    normalised varimax loadings to ``power`` and fits the oblique rotation by
    least squares (Hendrickson & White 1964). The rotated modes are sorted by
    their variance and signed so that the largest-magnitude entry of each
    component is positive. Scores are ``U_k·(R⁻¹)ᵀ`` times the pseudo singular
    values (for varimax R⁻ᵀ = R).

    Parameters
    ----------
    result : StoredResult
        A centred result; A is not read.
    n_modes : int
        Leading modes to rotate (2 ≤ n_modes ≤ k).
    method : {"varimax", "promax"}, default="varimax"
    power : int, default=4
        Promax power (≥ 2; ignored by varimax).
    max_iter : int, default=1000
        Varimax iterations at most (xeofs' default).
    rtol : float, default=1e-8
        Stop when the relative change of the criterion is below it.
    kaiser : bool, default=True
        Kaiser's row normalisation (xeofs always applies it).

    Returns
    -------
    Rotation
        ``n_iter`` and ``converged`` report the iteration (xeofs raises on
        non-convergence; this warns with a :class:`RuntimeWarning`).
    """
    n = _check_rotate_args(result, n_modes, method, power, max_iter, rtol)
    valid = _valid(result)
    m = result.shape[0]
    lam = _eigenvalues(result, n)
    loadings = (result._vt()[:n, valid] * np.sqrt(lam)[:, None]).T  # (p, n)
    kw = dict(max_iter=int(max_iter), rtol=float(rtol), kaiser=bool(kaiser))
    if method == "varimax":
        rot, R, n_iter, converged = _varimax(loadings, **kw)
        phi, power = np.eye(n), 1
    else:
        rot, R, phi, n_iter, converged = _promax(loadings, power=int(power), **kw)
    if not converged:
        warnings.warn(f"the {method} rotation did not converge in {max_iter} iterations "
                      f"(rtol={rtol!r}); raise max_iter or rtol", RuntimeWarning, stacklevel=2)
    expvar = np.sum(rot * rot, axis=0)
    order = np.argsort(expvar)[::-1]  # xeofs: argsort, reversed
    comps = rot / np.sqrt(expvar)
    signs = np.where(comps.max(axis=0) >= np.abs(comps.min(axis=0)), 1.0, -1.0)
    norms = np.sqrt(expvar * (m - 1))
    full = np.zeros((n, result.shape[1]))
    full[:, valid] = (comps * signs).T[order]
    scores = None
    if result.U is not None:
        rinv_t = R if method == "varimax" else np.linalg.inv(R).T
        scores = (_u(result, n) @ (rinv_t * (norms * signs)))[:, order]
    total = result.report.total_energy / max(m - 1, 1)
    ev = expvar[order]
    return Rotation(_as_maps(result, full), scores, ev, ev / total if total > 0 else ev * np.nan,
                    norms[order], R, phi, order, signs[order], method, int(power), n_iter,
                    converged)


# -- projection and reconstruction -----------------------------------------------------------

def _flat_field(result, field) -> tuple[Any, tuple[int, ...]]:
    """field (..., *feature_shape) or (..., n) → (r, n) array and the leading shape."""
    fshape = _shapes(result)[1]
    lab = getattr(result, "labels", None)
    dims = getattr(field, "dims", None)
    if dims is not None and lab and set(lab["feature_dims"]) <= set(dims):
        lead = [d for d in dims if d not in lab["feature_dims"]]
        field = field.transpose(*lead, *lab["feature_dims"]).data
    elif dims is not None:
        field = field.data
    if not hasattr(field, "dask"):
        field = np.asarray(field, dtype=np.float64)
    n = result.shape[1]
    shape = tuple(field.shape)
    if shape[len(shape) - len(fshape):] == fshape and len(shape) >= len(fshape):
        lead = shape[:len(shape) - len(fshape)]
    elif shape and shape[-1] == n:
        lead = shape[:-1]
    else:
        raise ValueError(f"field must have shape (..., {', '.join(map(str, fshape))}) or "
                         f"(..., {n}) to match the result's points, got {shape}")
    return field.reshape(int(np.prod(lead, dtype=int)), n), lead


def _point_names(result, idx: np.ndarray) -> list:
    """Feature indices → their coordinates ({dim: value}) when the result has labels."""
    lab = getattr(result, "labels", None)
    if not lab:
        return [int(i) for i in idx]
    fdims = lab["feature_dims"]
    multi = np.unravel_index(idx, _shapes(result)[1])
    names = []
    for j in range(idx.size):
        point = {}
        for d, ax in zip(fdims, multi):
            values = lab["coords"].get(d, (None,))[0]
            point[d] = values[ax[j]].item() if values is not None else int(ax[j])
        names.append(point)
    return names


def _check_missing(result, flat, valid: np.ndarray) -> None:
    bad_cols = np.isnan(flat[:, valid]).any(axis=0)
    if hasattr(bad_cols, "compute"):
        bad_cols = bad_cols.compute()
    idx = np.flatnonzero(valid)[np.asarray(bad_cols)]
    if idx.size:
        names = _point_names(result, idx[:10])
        raise MissingValuesError(
            f"the field has NaN at {idx.size} point(s) that are not masked in the result "
            f"(first: {names!r}, flat indices {idx[:10].tolist()!r}); only the result's "
            f"{int((~valid).sum())} masked points may be missing: fill or drop those samples",
            points=idx)


def project_field(result, field, n_modes: int | None = None, *, eofscaling: int = 0,
                  center: bool = True):
    """Pseudo-PCs of a new field on the stored EOFs (eofs' ``projectField``, xeofs' ``transform``).

    Parameters
    ----------
    result : StoredResult
    field : array-like, dask array or xarray.DataArray of shape (..., *feature_shape) or (..., n)
        Values at the masked points are ignored (NaN there is expected); a
        DataArray is transposed to the result's feature dims by name.
    n_modes : int or None, default=None
    eofscaling : {0, 1, 2}, default=0
        Scaling of the EOFs projected onto, as eofs.
    center : bool, default=True
        Subtract the result's stored mean first (xeofs' ``transform`` does;
        eofs' ``projectField`` projects the field as given, so pass
        anomalies with ``center=False`` to reproduce it).

    Returns
    -------
    ndarray of shape (..., n_modes), or a dask array for dask input

    Raises
    ------
    MissingValuesError
        NaN at points that are not masked; ``.points`` holds their flat indices.
    """
    n = _n_modes(result, n_modes)
    flat, lead = _flat_field(result, field)
    valid = _valid(result)
    _check_missing(result, flat, valid)
    x = flat[:, valid]
    if center and result.mean is not None:
        x = x - result.mean[valid]
    if getattr(result, "scale", None) is not None:  # weighted as the analysis was (eofs)
        x = x * result.scale[valid]
    vt = result._vt()[:n, valid] * _eof_factor(result, n, eofscaling)[:, None]
    return (x @ vt.T).reshape(*lead, n)


def _unscaled(result, rows):
    """``rows`` (modes × n) of the scaled field as rows of the field as given: divided by the
    result's feature scale (weights, standardisation), 0 where that is 0."""
    d = getattr(result, "scale", None)
    if d is None:
        return rows
    return np.divide(rows, d, out=np.zeros_like(rows, dtype=float), where=d != 0)


def _mode_index(result, modes) -> np.ndarray:
    if modes is None:
        return np.arange(result.rank)
    if isinstance(modes, (int, np.integer)) and not isinstance(modes, bool):
        return np.arange(_n_modes(result, int(modes)))
    if isinstance(modes, Iterable) and not isinstance(modes, str):
        idx = np.asarray(list(modes))
        if idx.size and idx.dtype.kind in "iu" and idx.min() >= 1 and idx.max() <= result.rank:
            return idx - 1
    raise ValueError(f"modes must be a number of leading modes or mode numbers from 1 to "
                     f"{result.rank} (1-based, as eofs), got {modes!r}")


def reconstruct_field(result, modes=None, *, add_mean: bool = True):
    """The field rebuilt from chosen modes, NaN at the masked points, lazily (eofs' ``reconstructedField``).

    Parameters
    ----------
    result : StoredResult
    modes : int, iterable of int or None, default=None
        An int: the leading ``modes`` modes; an iterable: mode numbers,
        1-based as in eofs (``[1, 2, 5]``); None: all k.
    add_mean : bool, default=True
        Add the stored mean back (eofs returns anomalies: ``add_mean=False``).

    Returns
    -------
    dask.array.Array of shape (*sample_shape, *feature_shape)
        Chunked by samples like U; nothing is read until computed.
    """
    idx = _mode_index(result, modes)
    u = _u(result, result.rank)[:, idx]
    rows = _unscaled(result, result._vt()[idx] * result.S[idx][:, None])  # eofs: ÷ weights
    if add_mean and result.mean is not None:
        base = result.mean
    else:
        base = np.zeros(result.shape[1])
    rows = np.where(_valid(result), rows, np.nan)
    base = np.where(_valid(result), base, np.nan)
    out = u @ rows + base
    sshape, fshape = _shapes(result)
    return out.reshape(*sshape, *fshape)
