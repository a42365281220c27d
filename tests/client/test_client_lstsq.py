"""Unit tests of svdserve.client._lstsq (pure NumPy): TSVD, Tikhonov, GCV.

Tolerances: the solutions are backward stable, so they agree with LAPACK's to
about ``κ(A) · eps`` relative; with κ ≤ 1e3 in the well-conditioned cases we
allow ``1e4 · eps`` (≈ 2e-12) relative, i.e. κ·eps with a factor-10 margin.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svdserve.client._lstsq import choose_alpha_gcv, filter_factors, gcv, lstsq, solve
from svdserve.client import LstsqResult

from tests._check import EPS

RTOL = 1e4 * EPS  # κ(A) ≤ 1e3 times eps, with a factor-10 margin (see module docstring)


def _well_conditioned(rng, m, n, cond=100.0):
    """A random m×n matrix with singular values log-spaced from 1 to 1/cond."""
    p = min(m, n)
    Q1, _ = np.linalg.qr(rng.standard_normal((m, p)))
    Q2, _ = np.linalg.qr(rng.standard_normal((n, p)))
    s = np.logspace(0, -np.log10(cond), p)
    return (Q1 * s) @ Q2.T


def _svd(A):
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    return U, s, Vt


@pytest.mark.parametrize(
    "m, n, p",
    [
        (60, 8, None),  # tall, one right-hand side
        (60, 8, 3),  # tall, three right-hand sides
        (30, 30, None),  # square: zero residual
        (8, 20, None),  # wide: minimum-norm solution
    ],
)
def test_full_rank_equals_numpy_lstsq(m, n, p):
    rng = np.random.default_rng(0)
    A = _well_conditioned(rng, m, n)
    b = rng.standard_normal((m,) if p is None else (m, p))
    U, s, Vt = _svd(A)
    res = lstsq(U, s, Vt, b)
    x_np, resid_np, rank_np, _ = np.linalg.lstsq(A, b, rcond=None)
    assert isinstance(res, LstsqResult)
    assert res.method == "tsvd" and res.alpha is None
    assert res.rank == rank_np == min(m, n)
    np.testing.assert_allclose(res.x, x_np, rtol=RTOL, atol=RTOL * np.abs(x_np).max())
    # residual and solution norms equal the explicit ones
    r_explicit = np.linalg.norm(b - A @ res.x, axis=0)
    np.testing.assert_allclose(res.residual_norm, r_explicit, rtol=1e-6, atol=1e3 * EPS * np.linalg.norm(b))
    np.testing.assert_allclose(res.solution_norm, np.linalg.norm(res.x, axis=0), rtol=RTOL)
    if m > n:  # numpy reports squared residuals only for overdetermined full-rank problems
        np.testing.assert_allclose(np.asarray(res.residual_norm) ** 2, resid_np, rtol=1e-10)
    assert res.effective_rank == pytest.approx(min(m, n))


def test_rank_deficient_drops_tiny_singular_values_like_numpy():
    rng = np.random.default_rng(1)
    B = rng.standard_normal((40, 5))
    A = np.hstack([B, B[:, :2] @ rng.standard_normal((2, 3))])  # 40 x 8, rank 5
    b = rng.standard_normal(40)
    U, s, Vt = _svd(A)
    res = lstsq(U, s, Vt, b)
    x_np, _, rank_np, _ = np.linalg.lstsq(A, b, rcond=None)
    assert res.rank == rank_np == 5
    np.testing.assert_allclose(res.x, x_np, rtol=1e-9, atol=1e-12)


def test_tsvd_rank_r_is_projection_on_first_r_components():
    rng = np.random.default_rng(2)
    A = _well_conditioned(rng, 50, 10, cond=1e6)
    b = rng.standard_normal(50)
    U, s, Vt = _svd(A)
    r = 4
    res = lstsq(U, s, Vt, b, rank=r)
    x_ref = Vt[:r].T @ ((U[:, :r].T @ b) / s[:r])
    np.testing.assert_allclose(res.x, x_ref, rtol=RTOL)
    assert res.rank == r and res.effective_rank == r
    np.testing.assert_array_equal(res.phi, [1.0] * r + [0.0] * (10 - r))
    np.testing.assert_allclose(res.filter_factors[:r], 1.0 / s[:r], rtol=4 * EPS)
    assert np.all(res.filter_factors[r:] == 0)
    np.testing.assert_allclose(res.residual_norm, np.linalg.norm(b - A @ res.x), rtol=1e-10)


def test_tikhonov_equals_regularised_normal_equations():
    rng = np.random.default_rng(3)
    A = _well_conditioned(rng, 40, 12, cond=1e8)
    b = rng.standard_normal(40)
    alpha = 1e-3
    U, s, Vt = _svd(A)
    res = lstsq(U, s, Vt, b, alpha=alpha)
    # Stacked form [A; αI] x ≈ [b; 0] is the well-conditioned way to write Tikhonov.
    x_ref = np.linalg.lstsq(np.vstack([A, alpha * np.eye(12)]),
                            np.concatenate([b, np.zeros(12)]), rcond=None)[0]
    # cond of the stacked matrix ≤ σ1/α = 1e3: same κ·eps bound as the module docstring.
    np.testing.assert_allclose(res.x, x_ref, rtol=RTOL, atol=RTOL * np.abs(x_ref).max())
    np.testing.assert_allclose(res.filter_factors, s / (s**2 + alpha**2), rtol=4 * EPS)
    np.testing.assert_allclose(res.phi, s**2 / (s**2 + alpha**2), rtol=4 * EPS)
    assert res.effective_rank == pytest.approx(np.sum(s**2 / (s**2 + alpha**2)), rel=1e-14)
    assert res.method == "tikhonov" and res.alpha == alpha
    np.testing.assert_allclose(res.residual_norm, np.linalg.norm(b - A @ res.x), rtol=1e-10)
    np.testing.assert_allclose(res.solution_norm, np.linalg.norm(res.x), rtol=1e-12)


def _gcv_dense(A, b, alpha):
    """G(α) with the influence matrix formed densely: ‖(I − A A_α⁺) b‖² / trace(I − A A_α⁺)²."""
    m, n = A.shape
    H = A @ np.linalg.solve(A.T @ A + alpha**2 * np.eye(n), A.T)
    r = b - H @ b
    return float(r @ r) / float(np.trace(np.eye(m) - H)) ** 2


def test_gcv_function_matches_dense_influence_matrix():
    rng = np.random.default_rng(4)
    A = _well_conditioned(rng, 30, 6, cond=1e3)
    b = rng.standard_normal(30)
    U, s, Vt = _svd(A)
    beta = U.T @ b
    perp2 = float(np.sum((b - U @ beta) ** 2))
    alphas = np.array([1e-3, 1e-2, 0.1, 1.0])
    G = gcv(alphas, beta, s, perp2, 30)
    # the dense formula solves with AᵀA (κ² ≤ 1e6 for α ≥ 1e-3): 1e-8 relative is κ²·eps with margin
    np.testing.assert_allclose(G, [_gcv_dense(A, b, a) for a in alphas], rtol=1e-8)


def test_gcv_choice_is_the_minimum_and_recovers_a_smooth_solution():
    # Discretised Gaussian smoothing kernel: severely ill-conditioned.
    n = 64
    t = (np.arange(n) + 0.5) / n
    A = np.exp(-((t[:, None] - t[None, :]) ** 2) / (2 * 0.03**2)) / n
    x_true = np.sin(np.pi * t) + 0.5 * np.sin(3 * np.pi * t)
    rng = np.random.default_rng(5)
    b_clean = A @ x_true
    b = b_clean + 1e-3 * np.linalg.norm(b_clean) / np.sqrt(n) * rng.standard_normal(n)
    U, s, Vt = _svd(A)
    res = lstsq(U, s, Vt, b, alpha="gcv")
    beta = U.T @ b
    perp2 = float(np.sum((b - U @ beta) ** 2))
    # the refined α is no worse than any point of a fine independent grid
    fine = np.logspace(np.log10(s[0]) + 1, np.log10(s[0]) - 16, 2000)
    assert res.gcv <= gcv(fine, beta, s, perp2, n).min() * (1 + 1e-6)
    assert res.gcv == pytest.approx(gcv([res.alpha], beta, s, perp2, n)[0], rel=1e-12)
    assert res.gcv_alphas is not None and res.gcv_values.shape == res.gcv_alphas.shape
    naive = np.linalg.solve(A, b)
    err_gcv = np.linalg.norm(res.x - x_true) / np.linalg.norm(x_true)
    err_naive = np.linalg.norm(naive - x_true) / np.linalg.norm(x_true)
    assert err_naive > 10  # the unregularised solution is garbage ...
    assert err_gcv < 0.1  # ... GCV-Tikhonov recovers the signal to 10 %
    assert 1 < res.effective_rank < 0.75 * n  # a quarter of the components filtered away


def test_tsvd_rank_by_gcv_minimizes_g_over_ranks():
    rng = np.random.default_rng(8)
    A = _well_conditioned(rng, 80, 20, cond=1e8)
    b = A @ rng.standard_normal(20) + 1e-4 * rng.standard_normal(80)
    U, s, Vt = _svd(A)
    res = lstsq(U, s, Vt, b, rank="gcv")
    # brute force: G of every TSVD rank, from the explicit residual b − A x_r
    G = []
    for r in range(1, 21):
        x_r = lstsq(U, s, Vt, b, rank=r).x
        G.append(np.sum((b - A @ x_r) ** 2) / (80 - r) ** 2)
    assert res.rank == int(np.argmin(G)) + 1
    assert 1 < res.rank < 20  # the noise level makes a non-trivial choice
    np.testing.assert_allclose(res.gcv_values, G, rtol=1e-8)
    assert res.gcv == pytest.approx(min(G), rel=1e-8)
    with pytest.raises(ValueError, match="do not combine"):
        lstsq(U, s, Vt, b, rank="gcv", alpha=1.0)


def test_gcv_with_several_right_hand_sides_uses_one_alpha():
    rng = np.random.default_rng(6)
    A = _well_conditioned(rng, 50, 10, cond=1e6)
    B = A @ rng.standard_normal((10, 3)) + 1e-3 * rng.standard_normal((50, 3))
    U, s, Vt = _svd(A)
    res = lstsq(U, s, Vt, B, alpha="gcv")
    assert res.x.shape == (10, 3) and np.shape(res.residual_norm) == (3,)
    cols = [lstsq(U, s, Vt, B[:, j], alpha=res.alpha).x for j in range(3)]
    np.testing.assert_allclose(res.x, np.column_stack(cols), rtol=1e-13)


def test_filter_factors_validation():
    s = np.array([3.0, 2.0, 1.0, 0.0])
    phi, f = filter_factors(s, rank=2)
    np.testing.assert_array_equal(phi, [1, 1, 0, 0])
    np.testing.assert_allclose(f, [1 / 3, 1 / 2, 0, 0])
    phi, f = filter_factors(s, alpha=1.0)
    np.testing.assert_allclose(phi, [0.9, 0.8, 0.5, 0.0])
    np.testing.assert_allclose(f, [0.3, 0.4, 0.5, 0.0])
    with pytest.raises(ValueError, match="rank must be between 0 and 4"):
        filter_factors(s, rank=5)
    with pytest.raises(ValueError, match="alpha"):
        filter_factors(s, alpha=-1.0)


def test_solve_rejects_bad_inputs():
    s = np.array([2.0, 1.0])
    Vt = np.eye(2)
    with pytest.raises(ValueError, match="alpha must be"):
        solve(np.ones(2), s, Vt, 0.0, 5, alpha="loo")
    with pytest.raises(ValueError, match="rank must be between 0 and 2"):
        solve(np.ones(2), s, Vt, 0.0, 5, rank=3)
    with pytest.raises(ValueError, match="inconsistent"):
        solve(np.ones(3), s, Vt, 0.0, 5)
    with pytest.raises(ValueError, match="rows"):
        lstsq(np.eye(5)[:, :2], s, Vt, np.ones(4))


def test_choose_alpha_single_singular_value_grid_is_not_degenerate():
    alpha, g, alphas, values = choose_alpha_gcv(np.array([1.0]), np.array([2.0]), 0.5, 10)
    assert alphas[0] > alphas[-1] > 0 and np.isfinite(g) and alpha > 0


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(2, 30),
    n=st.integers(1, 12),
    p=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_shape_matches_numpy(m, n, p, seed):
    rng = np.random.default_rng(seed)
    A = _well_conditioned(rng, m, n, cond=10.0)
    b = rng.standard_normal((m, p))
    U, s, Vt = _svd(A)
    res = lstsq(U, s, Vt, b)
    x_np = np.linalg.lstsq(A, b, rcond=None)[0]
    np.testing.assert_allclose(res.x, x_np, rtol=RTOL, atol=RTOL * max(1.0, np.abs(x_np).max()))


def _well_posed_noisy(m=5000, n=30, noise=0.1, seed=0):
    """Issue 20's case: a Gaussian m×n matrix (κ ≈ 1.2), b = A x + noise."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    b = A @ rng.standard_normal(n) + noise * rng.standard_normal(m)
    return A, b


def test_gcv_on_a_well_posed_problem_gives_the_least_squares_solution():
    A, b = _well_posed_noisy()
    U, s, Vt = _svd(A)
    res = lstsq(U, s, Vt, b, alpha="gcv")
    x_np, r2_np, _, _ = np.linalg.lstsq(A, b, rcond=None)
    # G keeps falling below σ_min (65.7): its minimum is near the noise level (≈ 0.1),
    # far below σ_min, not at σ_min where the old grid stopped (residual 168 vs 7.06).
    assert res.alpha < 1e-2 * s[-1] and res.gcv_edge is None and res.notes == ()
    # Tikhonov differs from least squares by the filter: 1 − φ_i = α²/(σ_i² + α²) ≤ q²
    # with q = α/σ_min, so ‖x_α − x_LS‖ ≤ q²·‖x_LS‖; plus the κ·eps of both solvers (RTOL).
    q2 = (res.alpha / s[-1]) ** 2
    assert np.linalg.norm(res.x - x_np) <= (q2 + RTOL) * np.linalg.norm(x_np)
    # ‖b − A x_α‖² − ‖b − A x_LS‖² = Σ (1 − φ_i)² β_i² ≤ q⁴·‖β‖², relative to ‖r‖²;
    # 1e-12 covers the rounding of ‖r‖² (m·eps relative).
    beta2 = float(np.sum((U.T @ b) ** 2))
    assert res.residual_norm**2 == pytest.approx(r2_np[0], rel=q2**2 * beta2 / r2_np[0] + 1e-12)


def test_gcv_edge_lower_when_b_needs_no_regularisation():
    # b in the range of A exactly (β = σ·x, nothing outside: perp2 = 0): G(α) falls
    # to 0 as α → 0, so the minimum is the grid's smallest α, 16·eps·σ_1.
    s = np.array([3.0, 2.0, 1.0])
    beta = s * np.array([1.0, -2.0, 0.5])
    res = solve(beta, s, np.eye(3), 0.0, 10, alpha="gcv")
    assert res.gcv_edge == "lower" and res.gcv_alphas[-1] == pytest.approx(16 * EPS * 3.0)
    assert len(res.notes) == 1 and "lower edge" in res.notes[0] and "least-squares" in res.notes[0]
    # α ≤ 16·eps·σ_1 changes each filter factor by (α/σ_i)² ≤ (48·eps)²: x = β/σ to rounding.
    np.testing.assert_allclose(res.x, [1.0, -2.0, 0.5], rtol=4 * EPS)


def test_gcv_edge_upper_when_b_is_noise():
    # b independent of a well-conditioned A (m = 2n): G(0) = ‖b_⊥‖²/(m − n)² exceeds
    # G(σ_1), so GCV damps every component and says so.
    rng = np.random.default_rng(0)
    A = rng.standard_normal((40, 20))
    U, s, Vt = _svd(A)
    res = lstsq(U, s, Vt, rng.standard_normal(40), alpha="gcv")
    assert res.gcv_edge == "upper" and res.alpha == pytest.approx(s[0], rel=1e-6)
    assert len(res.notes) == 1 and "upper edge" in res.notes[0]
