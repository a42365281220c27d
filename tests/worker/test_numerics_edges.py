"""Numerical trust at the edges (issue 8): offsets, extreme scales, tiny tails, κ to 1e15.

References are LAPACK (``numpy.linalg.svd``) on matrices that fit in memory;
for centring, on the matrix centred *exactly* (:func:`tests._check.centered_exactly`),
since a float64 ``X − X.mean(0)`` is itself off by about ε·offset and even
np.longdouble is off by ~1e-9 at an offset of 1e10.

The edges every method meets (extreme scales, zero and constant matrices,
wide rows centered in panels, rank deficiency after centering) are in
:class:`tests.worker.test_methods.SVDCommonTests`.
"""

import math

import numpy as np
import pytest

from svdserve.worker import svd

from tests._check import EPS, centered_exactly, check_svd, decaying, exact_mean, offset_data, to_zarr

OFFSETS = [1e2, 1e4, 1e8, 1e10]


def _abs_gaps(s):
    """Distance of each σ_i to the nearest other σ_j (the Davis–Kahan gap)."""
    d = np.abs(s[:, None] - s[None, :])
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


@pytest.mark.parametrize("panel_bytes", [None, 80000], ids=["one-panel", "12-panels"])
@pytest.mark.parametrize("offset", OFFSETS)
def test_exact_centering_beats_the_offset(dask_client, tmp_path, offset, panel_bytes):
    X = offset_data(offset)
    url = to_zarr(tmp_path / "X.zarr", X, (250, 40))
    k, n = 10, X.shape[1]
    res = svd(url, k, method="exact", center=True, client=dask_client, panel_bytes=panel_bytes)
    C = centered_exactly(X)
    _, ref, ref_vt = np.linalg.svd(C, full_matrices=False)
    # Weyl: every σ moves by at most the backward error of Householder QR on the
    # shifted, centred data, c·√n·ε·σ₁ with a modest c; the bar is c = 10.
    # It binds all 40 σ (a 3-decade spectrum: ≤ 1e-12 relative even for the smallest).
    bound = 10 * math.sqrt(n) * EPS * ref[0]
    s_all = np.asarray(res.report["singular_values_all"])
    np.testing.assert_array_less(np.abs(s_all - ref), bound)
    # components_: a singular vector moves by at most ‖E‖/gap (Davis–Kahan, Wedin),
    # with ‖E‖ the same backward error: the bar, 10·√n·ε·σ₁/gap. Ours and
    # LAPACK's each carry an error of that kind; measured, the difference is ≤ 0.03
    # of the bar at every offset here, so the bar itself holds with room.
    gaps = _abs_gaps(ref)[:k]
    vt = np.asarray(res.Vt)
    signs = np.sign(np.sum(vt * ref_vt[:k], axis=1))
    err = np.linalg.norm(vt - signs[:, None] * ref_vt[:k], axis=1)
    np.testing.assert_array_less(err, bound / gaps)
    # The mean is p + μ: μ exact to ε·spread, then one rounding of the sum, so
    # within an ulp or two of the correctly rounded mean (ε = 2 ulp-halves).
    np.testing.assert_allclose(res.mean, exact_mean(X), rtol=2 * EPS)
    # U is orthonormal and orthogonal to 1 (centred scores), to ~m·ε.
    U = np.asarray(res.U)
    assert np.abs(U.T @ U - np.eye(k)).max() <= 10 * X.shape[0] * EPS
    assert np.abs(U.sum(axis=0)).max() <= 10 * math.sqrt(X.shape[0]) * X.shape[0] * EPS


@pytest.mark.parametrize("n_iter", [0, 2])
@pytest.mark.parametrize("offset", [1e2, 1e8, 1e10])
def test_randomized_centering_no_worse_than_on_the_centered_matrix(dask_client, offset, n_iter):
    X = offset_data(offset, m=2000)
    C = centered_exactly(X)
    ref = np.linalg.svd(C, compute_uv=False)
    kw = dict(method="randomized", n_iter=n_iter, client=dask_client, panel_bytes=80000,
              random_state=3)
    ours = svd(X, 10, center=True, **kw)
    same_alg = svd(C, 10, center=False, **kw)
    err_ours = np.abs(ours.S - ref[:10])
    err_alg = np.abs(same_alg.S - ref[:10])
    # Same sketch, same panels: the two differ only by rounding of the implicit
    # centring, a few ε·σ₁ — far below the method's own error (≥ 1e-11·σ₁ here).
    np.testing.assert_array_less(np.abs(err_ours - err_alg), 100 * EPS * ref[0])
    assert ours.passes == n_iter + 1


def test_constant_columns(dask_client):
    # (A constant matrix, for every method: SVDCommonTests.test_constant_matrix.)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((600, 6))
    X[:, [1, 4]] = [3e9, -7.0]  # constant columns: zero variance, exactly
    res = svd(X, 4, method="exact", center=True, client=dask_client, panel_bytes=6 * 8 * 50)
    check_svd(res, X, 4, center=True)
    # Their columns of the shifted data are exactly 0 and stay 0 through every
    # Householder QR; only the small SVD's right reflectors may mix them at
    # rounding level, ε·‖R‖/‖R‖ per entry.
    assert np.abs(np.asarray(res.Vt)[:, [1, 4]]).max() <= 10 * EPS


def _tail_case():
    rng = np.random.default_rng(7)
    u, _ = np.linalg.qr(rng.standard_normal((2000, 60)))
    v, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    return (u * np.array([1.0] * 10 + [1e-9] * 50)) @ v.T


def test_exact_residual_of_a_tiny_tail(dask_client):
    A = _tail_case()
    res = svd(A, 10, method="exact", client=dask_client, panel_bytes=60 * 8 * 400)
    ref = np.linalg.svd(A, compute_uv=False)
    truth = np.sqrt(np.sum(ref[10:] ** 2))  # ≈ 7.07e-9 (sqrt(total − Σσ²) gave 9.4e-8)
    got = res.report["components"][9]["residual"]
    # Each tail σ is known to ~c·ε·σ₁ absolutely (Weyl), in LAPACK's and in ours,
    # so the residual agrees to ~√50·2·c·ε·σ₁ ≈ 1e-14 absolute: ≤ 1e-10·‖A‖_F,
    # i.e. relative_residual correct to 1e-10, and here ≤ 1e-5 of the residual itself.
    assert abs(got - truth) <= 1e-10 * np.linalg.norm(A)
    assert got == pytest.approx(truth, rel=1e-5)
    # ... while the old formula is off by a factor ~13 on this matrix.
    cancelling = math.sqrt(max(np.sum(A**2) - np.sum(res.S**2), 0.0))
    assert abs(cancelling - truth) > 1e3 * abs(got - truth)


def test_randomized_residual_is_the_achieved_error(dask_client):
    A = decaying(1500, 80, seed=3, decay=0.85, noise=1e-6)
    res = svd(A, 8, method="randomized", n_iter=1, client=dask_client, panel_bytes=80 * 8 * 200)
    U, S, Vt = np.asarray(res.U), res.S, np.asarray(res.Vt)
    for r in (1, 4, 8):
        achieved = np.linalg.norm(A - (U[:, :r] * S[:r]) @ Vt[:r])
        # Accumulated per panel as two orthogonal parts: agreement to ~ε·‖A‖_F.
        got = res.report["components"][r - 1]["residual"]
        assert abs(got - achieved) <= 1e3 * EPS * np.linalg.norm(A)
    assert res.report["residual_kind"].startswith("achieved")


def test_exact_kappa_1e15(dask_client):
    rng = np.random.default_rng(11)
    u, _ = np.linalg.qr(rng.standard_normal((1200, 30)))
    v, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    s = np.logspace(0, -15, 30)
    A = (u * s) @ v.T
    res = svd(A, 30, method="exact", client=dask_client, panel_bytes=30 * 8 * 100)
    check_svd(res, A, 30)  # σ to ~√n·ε·σ₁ absolute (Weyl), U, V orthonormal however small σ
    # (Rank deficient after centering, for every method:
    # SVDCommonTests.test_rank_deficient_centered_square_request.)
