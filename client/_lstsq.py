"""Regularised least squares from a (truncated) SVD: pure NumPy on k-sized vectors.

With ``A ≈ U diag(s) Vt`` (k components) and ``β = Uᵀb``, every solution here
is a *filtered* SVD expansion (Hansen, "Rank-Deficient and Discrete Ill-Posed
Problems", SIAM 1998, section 4.2)::

    x = Σ_i  φ_i · β_i / σ_i · v_i  =  Σ_i  f_i · β_i · v_i

- truncated SVD (TSVD) of rank r: ``φ_i = 1`` for i ≤ r, else 0;
- Tikhonov with parameter α: ``φ_i = σ_i² / (σ_i² + α²)``, so the factors
  applied to ``β_i`` are ``f_i = σ_i / (σ_i² + α²)``.

Residual and solution norms follow without touching A again::

    ‖b − Ax‖² = ‖(I − UUᵀ) b‖² + Σ_i (1 − φ_i)² β_i²,     ‖x‖² = Σ_i (φ_i β_i / σ_i)²

(exact when the columns of U and V are exact singular vectors of A, since
then ``A v_i = σ_i u_i``). The effective rank (degrees of freedom) is
``Σ_i φ_i``, the trace of the influence matrix ``A A_α⁺``.

Generalized cross-validation (GCV) chooses α by minimising::

    G(α) = ‖(I − A A_α⁺) b‖² / (m − Σ_i φ_i(α))²

G. H. Golub, M. Heath and G. Wahba, "Generalized cross-validation as a method
for choosing a good ridge parameter", Technometrics 21(2):215-223, 1979.
G is evaluated on a logarithmic grid of α from σ_1 down to 16·eps·σ_1, and the
best grid point is refined by bounded Brent minimisation in log α
(:func:`scipy.optimize.minimize_scalar`). Hansen's Regularization Tools
``gcv`` stops the grid at σ_k; that over-regularises a well-posed problem,
whose G keeps falling below σ_k (G(α) − G(0) ∝ −α² for small α when b has
noise) and is flat near 0: searched down to 16·eps·σ_1 such a problem gets
α ≈ 0, whose filter factors are 1 to (α/σ_k)², i.e. the least-squares
solution. When the minimum lies at the grid's first or last point the result
says so (``gcv_edge`` and a note): at the lower edge no regularisation is
needed; at the upper edge (α = σ_1) every component is damped. With several right-hand sides one α
minimises the sum of their G numerators. The same criterion picks a TSVD rank
(``rank="gcv"``): ``G(r) = ‖(I − A A_r⁺) b‖² / (m − r)²`` over r = 1, 2, ….

Costs: O(k) per α; the m-sized work (``Uᵀb``, ``‖(I − UUᵀ)b‖²``) is done once
by the caller, which is what makes this usable with out-of-core factors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = ["LstsqResult", "filter_factors", "gcv", "choose_alpha_gcv", "gcv_edge", "solve",
           "lstsq"]

#: Points of the logarithmic α grid searched before refinement.
GCV_GRID_POINTS = 200

#: Smallest α of the GCV grid, relative to σ_1 (the floor of Hansen's Regularization
#: Tools): a smaller α changes the filter factors φ_i by (α/σ_i)², nothing for every
#: σ_i well above it, so the grid's lower end is the unregularised solution.
GCV_FLOOR = 16 * np.finfo(np.float64).eps


@dataclass(frozen=True)
class LstsqResult:
    """Solution of ``min ‖Ax − b‖`` (regularised) from the SVD of A.

    Attributes
    ----------
    x : ndarray of shape (n,) or (n, p)
        The solution (one column per right-hand side).
    residual_norm : float or ndarray of shape (p,)
        ‖b − Ax‖₂ per right-hand side.
    solution_norm : float or ndarray of shape (p,)
        ‖x‖₂ per right-hand side.
    method : {"tsvd", "tikhonov"}
        Which filter was used.
    rank : int
        Components used (r for TSVD; all kept components for Tikhonov).
    alpha : float or None
        The Tikhonov parameter (None for TSVD).
    filter_factors : ndarray of shape (k,)
        ``f_i`` with ``x = Vᵀ diag(f) Uᵀ b``: ``σ_i/(σ_i² + α²)`` for
        Tikhonov, ``1/σ_i`` (or 0 beyond the rank) for TSVD.
    phi : ndarray of shape (k,)
        Dimensionless filter ``φ_i = σ_i f_i`` in [0, 1].
    effective_rank : float
        ``Σ φ_i``, the degrees of freedom of the fit.
    gcv : float
        G at the solution (also reported when α was not chosen by GCV).
    gcv_alphas, gcv_values : ndarray or None
        The grid searched when ``alpha="gcv"`` (for plotting the GCV curve).
    gcv_edge : {"lower", "upper"} or None
        With ``alpha="gcv"``: ``"lower"`` when G is smallest at the grid's
        smallest α (16·eps·σ_1: no regularisation needed, the least-squares
        solution), ``"upper"`` when at its largest (α = σ_1: every component
        damped); None when the minimum lies inside the grid.
    notes : tuple of str
        What a user should know about this solution (e.g. the GCV edge).
    """

    x: np.ndarray
    residual_norm: float | np.ndarray
    solution_norm: float | np.ndarray
    method: Literal["tsvd", "tikhonov"]
    rank: int
    alpha: float | None
    filter_factors: np.ndarray
    phi: np.ndarray
    effective_rank: float
    gcv: float
    gcv_alphas: np.ndarray | None = field(default=None, repr=False)
    gcv_values: np.ndarray | None = field(default=None, repr=False)
    gcv_edge: Literal["lower", "upper"] | None = None
    notes: tuple[str, ...] = ()


def _as_2d(beta: np.ndarray) -> tuple[np.ndarray, bool]:
    beta = np.asarray(beta, dtype=np.float64)
    if beta.ndim == 1:
        return beta[:, None], True
    if beta.ndim == 2:
        return beta, False
    raise ValueError(f"Uᵀb must be 1-D or 2-D, got shape {beta.shape}")


def filter_factors(
    s: np.ndarray, *, rank: int | None = None, alpha: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Filter factors ``(phi, f)`` for TSVD (``rank``) and/or Tikhonov (``alpha``).

    Parameters
    ----------
    s : ndarray of shape (k,)
        Singular values, non-increasing, non-negative.
    rank : int or None, default=None
        Keep the first ``rank`` components (all when None).
    alpha : float or None, default=None
        Tikhonov parameter α ≥ 0 (none when None).

    Returns
    -------
    phi : ndarray of shape (k,)
        ``σ²/(σ² + α²)`` (or 1) for kept components, 0 otherwise.
    f : ndarray of shape (k,)
        ``phi / σ``, with 0 wherever ``phi`` is 0 or σ is 0.
    """
    s = np.asarray(s, dtype=np.float64)
    k = s.size
    rank = k if rank is None else int(rank)
    if not 0 <= rank <= k:
        raise ValueError(f"rank must be between 0 and {k} (the computed rank), got {rank!r}")
    keep = np.arange(k) < rank
    if alpha is None:
        phi = np.where(keep & (s > 0), 1.0, 0.0)
    else:
        alpha = float(alpha)
        if not alpha >= 0 or not np.isfinite(alpha):
            raise ValueError(f"alpha must be a finite number >= 0 or 'gcv', got {alpha!r}")
        s2 = s * s
        with np.errstate(invalid="ignore", divide="ignore"):
            phi = np.where(keep & (s > 0), s2 / (s2 + alpha * alpha), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(phi > 0, phi / np.where(s > 0, s, 1.0), 0.0)
    return phi, f


def _residual2(beta2: np.ndarray, perp2: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """‖b − Ax‖² per column; beta2 = β² of shape (k, p), perp2 of shape (p,)."""
    return perp2 + np.sum(((1.0 - phi) ** 2)[:, None] * beta2, axis=0)


def gcv(
    alphas: np.ndarray,
    beta: np.ndarray,
    s: np.ndarray,
    perp2: float | np.ndarray,
    m: int,
    *,
    rank: int | None = None,
) -> np.ndarray:
    """The GCV function G(α) of Golub, Heath & Wahba (1979) at each α.

    Parameters
    ----------
    alphas : array_like of shape (q,)
        Tikhonov parameters.
    beta : ndarray of shape (k,) or (k, p)
        ``Uᵀb``.
    s : ndarray of shape (k,)
        Singular values.
    perp2 : float or ndarray of shape (p,)
        ``‖(I − UUᵀ) b‖²``, the part of b that no component can fit.
    m : int
        Number of rows of A (observations).
    rank : int or None
        Components considered (all when None).

    Returns
    -------
    G : ndarray of shape (q,)
        ``Σ_cols ‖(I − A A_α⁺) b‖² / (m − Σ φ_i(α))²``; ``inf`` where the
        denominator vanishes.
    """
    beta2d, _ = _as_2d(beta)
    beta2 = beta2d**2
    perp2 = np.broadcast_to(np.asarray(perp2, dtype=np.float64), (beta2d.shape[1],))
    out = np.empty(len(np.atleast_1d(alphas)))
    for j, a in enumerate(np.atleast_1d(alphas)):
        phi, _ = filter_factors(s, rank=rank, alpha=float(a))
        num = float(np.sum(_residual2(beta2, perp2, phi)))
        den = (m - float(np.sum(phi))) ** 2
        out[j] = num / den if den > 0 else np.inf
    return out


def choose_alpha_gcv(
    beta: np.ndarray,
    s: np.ndarray,
    perp2: float | np.ndarray,
    m: int,
    *,
    rank: int | None = None,
    n_grid: int = GCV_GRID_POINTS,
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """α minimising G(α): a log grid, then Brent refinement in log α around its minimum.

    The grid runs from σ_1 down to 16·eps·σ_1 (below σ_k: see the module
    docstring); :func:`gcv_edge` tells whether its minimum lies at an end.

    Returns
    -------
    alpha : float
    G : float
        G(alpha).
    alphas, values : ndarray of shape (n_grid,)
        The grid and G on it (α decreasing).
    """
    s = np.asarray(s, dtype=np.float64)
    kept = s[: (s.size if rank is None else int(rank))]
    kept = kept[kept > 0]
    if kept.size == 0:
        raise ValueError("GCV needs at least one positive singular value")
    hi = float(kept[0])
    lo = GCV_FLOOR * hi  # not σ_k: a well-posed problem's minimum lies below it
    alphas = np.logspace(np.log10(hi), np.log10(lo), n_grid)
    values = gcv(alphas, beta, s, perp2, m, rank=rank)
    i = int(np.argmin(values))
    # Refine between the neighbours of the best grid point (in log α, where G is smooth).
    left = np.log(alphas[min(i + 1, n_grid - 1)])
    right = np.log(alphas[max(i - 1, 0)])
    best_alpha, best_g = float(alphas[i]), float(values[i])
    if right > left:
        from scipy.optimize import minimize_scalar  # imported here: slow to import

        res = minimize_scalar(
            lambda t: gcv([np.exp(t)], beta, s, perp2, m, rank=rank)[0],
            bounds=(left, right),
            method="bounded",
            options={"xatol": 1e-6},
        )
        if res.success and float(res.fun) <= best_g:
            best_alpha, best_g = float(np.exp(res.x)), float(res.fun)
    return best_alpha, best_g, alphas, values


def gcv_edge(values: np.ndarray) -> Literal["lower", "upper"] | None:
    """Where the minimum of G over the grid of :func:`choose_alpha_gcv` lies.

    Parameters
    ----------
    values : ndarray of shape (n_grid,)
        G on the grid, α decreasing.

    Returns
    -------
    ``"lower"`` when the smallest α (16·eps·σ_1) attains the minimum (also in a
    tie, as when G rounds to the same value on a flat stretch near 0), ``"upper"``
    when only the largest (σ_1) does, None when it lies inside.
    """
    values = np.asarray(values)
    low = float(np.min(values))
    if values[-1] <= low:
        return "lower"
    return "upper" if int(np.argmin(values)) == 0 else None


def _edge_note(edge: str | None, alphas: np.ndarray) -> tuple[str, ...]:
    if edge == "lower":
        return (f"GCV's minimum lies at the lower edge of its grid (alpha = {alphas[-1]:.3g} "
                "= 16·eps·σ_1): G is flat near 0, so b needs no regularisation and this is "
                "the least-squares solution",)
    if edge == "upper":
        return (f"GCV's minimum lies at the upper edge of its grid (alpha = σ_1 = "
                f"{alphas[0]:.3g}): every component is damped, b looks like noise to these "
                "factors; check b, or give alpha or rank yourself",)
    return ()


def solve(
    beta: np.ndarray,
    s: np.ndarray,
    Vt: np.ndarray,
    perp2: float | np.ndarray,
    m: int,
    *,
    rank: int | Literal["gcv"] | None = None,
    alpha: float | Literal["gcv"] | None = None,
    rcond: float | None = None,
) -> LstsqResult:
    """Regularised least-squares solution from ``β = Uᵀb`` and the SVD (no access to A).

    Parameters
    ----------
    beta : ndarray of shape (k,) or (k, p)
        ``Uᵀb`` for one or p right-hand sides.
    s : ndarray of shape (k,)
        Singular values, non-increasing.
    Vt : ndarray of shape (k, n)
        Right singular vectors (rows).
    perp2 : float or ndarray of shape (p,)
        ``‖(I − UUᵀ) b‖²``.
    m : int
        Rows of A.
    rank : int, "gcv" or None, default=None
        Components to use (TSVD rank; also caps Tikhonov). None: all those
        with ``σ_i > rcond · σ_1``. ``"gcv"``: the TSVD rank r minimising
        ``G(r) = ‖(I − A A_r⁺) b‖² / (m − r)²`` (then ``gcv_values[r-1]`` is
        G(r) for r = 1, 2, ...).
    alpha : float, "gcv" or None, default=None
        Tikhonov parameter; ``"gcv"`` chooses it by GCV; None means TSVD.
    rcond : float or None, default=None
        Relative cut-off for small singular values when ``rank`` and
        ``alpha`` are None; default ``eps · max(m, n)`` like
        :func:`numpy.linalg.lstsq`.
    """
    s = np.asarray(s, dtype=np.float64)
    Vt = np.asarray(Vt, dtype=np.float64)
    beta2d, vector = _as_2d(beta)
    k, n = Vt.shape
    if s.shape != (k,) or beta2d.shape[0] != k:
        raise ValueError(
            f"inconsistent SVD: s has shape {s.shape}, Vt {Vt.shape}, Uᵀb {np.shape(beta)}"
        )
    perp2 = np.broadcast_to(
        np.maximum(np.asarray(perp2, dtype=np.float64), 0.0), (beta2d.shape[1],)
    )
    if rcond is None:
        rcond = np.finfo(np.float64).eps * max(m, n)
    n_kept = int(np.count_nonzero(s > rcond * (s[0] if k else 0.0)))
    gcv_alphas = edge = None
    rank, gcv_values = _resolve_rank(rank, alpha, beta2d, s, perp2, m, n_kept)
    if isinstance(alpha, str):
        if alpha != "gcv":
            raise ValueError(f"alpha must be a number >= 0, 'gcv' or None, got {alpha!r}")
        alpha, _, gcv_alphas, gcv_values = choose_alpha_gcv(beta2d, s, perp2, m, rank=rank)
        edge = gcv_edge(gcv_values)
    phi, f = filter_factors(s, rank=rank, alpha=alpha)
    coef = f[:, None] * beta2d  # (k, p)
    x = Vt.T @ coef  # (n, p)
    res2 = _residual2(beta2d**2, perp2, phi)
    residual_norm = np.sqrt(np.maximum(res2, 0.0))
    solution_norm = np.sqrt(np.sum((phi[:, None] * beta2d) ** 2 * _safe_inv2(s)[:, None], axis=0))
    den = (m - float(np.sum(phi))) ** 2
    g = float(np.sum(res2)) / den if den > 0 else float("inf")
    if vector:
        x = x[:, 0]
        residual_norm = float(residual_norm[0])
        solution_norm = float(solution_norm[0])
    return LstsqResult(
        x=x,
        residual_norm=residual_norm,
        solution_norm=solution_norm,
        method="tsvd" if alpha is None else "tikhonov",
        rank=rank,
        alpha=None if alpha is None else float(alpha),
        filter_factors=f,
        phi=phi,
        effective_rank=float(np.sum(phi)),
        gcv=g,
        gcv_alphas=gcv_alphas,
        gcv_values=gcv_values,
        gcv_edge=edge,
        notes=_edge_note(edge, gcv_alphas),
    )


def _resolve_rank(rank, alpha, beta2d, s, perp2, m, n_kept):
    """The TSVD rank (or Tikhonov's cap) ``solve`` uses, and G over ranks for ``"gcv"``."""
    k = s.size
    gcv_values = None
    if isinstance(rank, str):
        if rank != "gcv":
            raise ValueError(f"rank must be an int, 'gcv' or None, got {rank!r}")
        if alpha is not None:
            raise ValueError("rank='gcv' chooses a TSVD rank; do not combine it with alpha")
        rank, gcv_values = _choose_rank_gcv(beta2d, s, perp2, m, n_kept)
    elif rank is None:
        rank = n_kept if alpha is None else k
    rank = int(rank)
    if not 0 <= rank <= k:
        raise ValueError(
            f"rank must be between 0 and {k} (the rank the job computed), got {rank!r}; "
            "submit a job with a larger rank for more components"
        )
    return rank, gcv_values


def _choose_rank_gcv(beta2d, s, perp2, m, n_kept):
    """TSVD rank in 1..n_kept (and < m) minimising G(r); returns (rank, G over ranks)."""
    r_max = min(n_kept, m - 1)
    if r_max < 1:
        raise ValueError("GCV needs at least one positive singular value and m > 1")
    tail = np.sum(beta2d**2, axis=1)[::-1].cumsum()[::-1]  # tail[i] = Σ_{j≥i} β_j² (all cols)
    tail = np.append(tail, 0.0)
    r = np.arange(1, r_max + 1)
    values = (float(np.sum(perp2)) + tail[r]) / (m - r) ** 2.0
    return int(r[np.argmin(values)]), values


def _safe_inv2(s: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0) ** 2, 0.0)


def lstsq(
    U: np.ndarray,
    s: np.ndarray,
    Vt: np.ndarray,
    b: np.ndarray,
    *,
    rank: int | Literal["gcv"] | None = None,
    alpha: float | Literal["gcv"] | None = None,
    rcond: float | None = None,
) -> LstsqResult:
    """:func:`solve` for in-memory factors: forms ``β = Uᵀb`` and ``‖(I − UUᵀ)b‖²`` itself.

    Parameters
    ----------
    U : ndarray of shape (m, k)
    s : ndarray of shape (k,)
    Vt : ndarray of shape (k, n)
    b : ndarray of shape (m,) or (m, p)
    """
    U = np.asarray(U, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if b.shape[0] != U.shape[0]:
        raise ValueError(f"b has {b.shape[0]} rows but A has {U.shape[0]}")
    beta = U.T @ b
    resid = b - U @ beta
    perp2 = np.sum(resid**2, axis=0)
    return solve(beta, s, Vt, perp2, U.shape[0], rank=rank, alpha=alpha, rcond=rcond)
