"""Numerical trust at the edges (issue 8): offsets, extreme scales, tiny tails, κ to 1e15.

References are LAPACK (``numpy.linalg.svd``) on matrices that fit in memory;
for centring, on the matrix centred *exactly* (:func:`tests._check.centered_exactly`),
since a float64 ``X − X.mean(0)`` is itself off by about ε·offset and even
np.longdouble is off by ~1e-9 at an offset of 1e10.
"""

import json
import math

import numpy as np
import pytest

from svdserve.worker import svd

from tests._check import EPS, centered_exactly, check_svd, decaying, exact_mean, to_zarr

OFFSETS = [1e2, 1e4, 1e8, 1e10]


def _offset_data(offset, m=3000, n=40, seed=0):
    """The issue's data: offset + N(0,1)·logspace(-3, 0, n); the centred spectrum spans 3 decades."""
    rng = np.random.default_rng(seed)
    return offset + rng.standard_normal((m, n)) * np.logspace(-3, 0, n)


def _abs_gaps(s):
    """Distance of each σ_i to the nearest other σ_j (the Davis–Kahan gap)."""
    d = np.abs(s[:, None] - s[None, :])
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


@pytest.mark.parametrize("panel_bytes", [None, 80000], ids=["one-panel", "12-panels"])
@pytest.mark.parametrize("offset", OFFSETS)
def test_exact_centering_beats_the_offset(dask_client, tmp_path, offset, panel_bytes):
    X = _offset_data(offset)
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
    X = _offset_data(offset, m=2000)
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


def test_constant_matrix_and_constant_columns(dask_client):
    for method in ("exact", "randomized"):
        res = svd(np.full((1000, 5), 1e8), 2, method=method, center=True, client=dask_client,
                  panel_bytes=5 * 8 * 100)
        assert np.all(res.S == 0)  # the pivot shift makes every centred entry exactly 0
        rep = res.report
        assert rep["total_energy"] == 0 and rep["frobenius_norm"] == 0
        assert all(e["rank"] == 0 for e in rep["energy_ranks"])
    rng = np.random.default_rng(2)
    X = rng.standard_normal((600, 6))
    X[:, [1, 4]] = [3e9, -7.0]  # constant columns: zero variance, exactly
    res = svd(X, 4, method="exact", center=True, client=dask_client, panel_bytes=6 * 8 * 50)
    check_svd(res, X, 4, center=True)
    # Their columns of the shifted data are exactly 0 and stay 0 through every
    # Householder QR; only the small SVD's right reflectors may mix them at
    # rounding level, ε·‖R‖/‖R‖ per entry.
    assert np.abs(np.asarray(res.Vt)[:, [1, 4]]).max() <= 10 * EPS


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_wide_matrix_rows_centered_in_panels(dask_client, method):
    # Wide: the tall view's rows are the original columns, centred inside each panel.
    X = _offset_data(1e8, m=40, n=900, seed=4)
    C = centered_exactly(X)
    ref = np.linalg.svd(C, compute_uv=False)
    res = svd(X, 8, method=method, center=True, n_oversamples=32, client=dask_client,
              panel_bytes=40 * 8 * 100)
    # l = k + 32 = 40 spans the whole 40-row space, so randomized is exact too;
    # Weyl as above with the short side n = 40.
    np.testing.assert_array_less(np.abs(res.S - ref[:8]), 10 * math.sqrt(40) * EPS * ref[0])
    np.testing.assert_allclose(res.mean, exact_mean(X), rtol=2 * EPS)


@pytest.mark.parametrize("method", ["exact", "randomized"])
@pytest.mark.parametrize("scale", [1e-300, 1e-170, 1e170, 1e300])
def test_report_at_extreme_scales(dask_client, method, scale):
    rng = np.random.default_rng(1)
    B = rng.standard_normal((1000, 30)) * np.logspace(0, -2, 30)
    A = B * scale
    res = svd(A, 5, method=method, n_iter=2, client=dask_client, panel_bytes=30 * 8 * 200)
    rep = res.report
    text = json.dumps(rep, allow_nan=False)  # raises on inf/NaN anywhere
    assert "Infinity" not in text and "NaN" not in text
    ref = np.linalg.svd(B, compute_uv=False)
    fro = np.linalg.norm(B)
    if method == "exact":
        sig, tails = ref[:5], np.sqrt(np.cumsum((ref**2)[::-1])[::-1])[1:6]
    else:
        # The randomized error itself (~1e-9 here) is not what is tested: the
        # same run on the unscaled matrix is the reference.
        plain = svd(B, 5, method=method, n_iter=2, client=dask_client, panel_bytes=30 * 8 * 200)
        sig = plain.S
        tails = np.array([c["residual"] for c in plain.report["components"]])
    # A power of ten is not a power of two, so A = B·scale is rounded (ε); every
    # step after that is backward stable: 1e-12 relative leaves 4 digits of margin.
    np.testing.assert_allclose(res.S / scale, sig, rtol=1e-12)
    assert rep["frobenius_norm"] / scale == pytest.approx(fro, rel=1e-13)
    fr = np.array([c["energy_fraction"] for c in rep["components"]])
    cum = np.array([c["cumulative_fraction"] for c in rep["components"]])
    # Fractions are formed from σ/‖A‖_F, so they do not depend on the scale.
    np.testing.assert_allclose(fr, (sig / fro) ** 2, rtol=1e-12)
    np.testing.assert_allclose(cum, np.cumsum((sig / fro) ** 2), rtol=1e-12)
    rel = np.array([c["relative_residual"] for c in rep["components"]])
    np.testing.assert_allclose(rel, tails / fro, rtol=1e-10)
    r90 = {e["fraction"]: e["rank"] for e in rep["energy_ranks"]}[0.9]
    assert r90 is None or cum[r90 - 1] >= 0.9
    if rep["total_energy"] is not None:  # representable in float64 (not at 1e±170/300)
        assert rep["total_energy"] == pytest.approx((fro * scale) ** 2, rel=1e-13)


def test_zero_matrix_reports_rank_zero(dask_client):
    for method in ("exact", "randomized"):
        rep = svd(np.zeros((200, 8)), 3, method=method, client=dask_client).report
        json.dumps(rep, allow_nan=False)
        assert all(e["rank"] == 0 and e["storage_ratio"] == 0 for e in rep["energy_ranks"])
        assert all(c["residual"] == 0 and c["energy_fraction"] == 0 for c in rep["components"])


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


def test_exact_kappa_1e15_and_rank_deficient_centered(dask_client):
    rng = np.random.default_rng(11)
    u, _ = np.linalg.qr(rng.standard_normal((1200, 30)))
    v, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    s = np.logspace(0, -15, 30)
    A = (u * s) @ v.T
    res = svd(A, 30, method="exact", client=dask_client, panel_bytes=30 * 8 * 100)
    check_svd(res, A, 30)  # σ to ~√n·ε·σ₁ absolute (Weyl), U, V orthonormal however small σ
    # Rank 3 after centring: a square request (k = m) needs the 1/√m direction too.
    Y = rng.standard_normal((12, 3)) @ rng.standard_normal((3, 12)) + 5.0  # float64 reference: small offset
    for method in ("exact", "randomized"):
        r = svd(Y, 12, method=method, center=True, client=dask_client, panel_bytes=12 * 8 * 4)
        check_svd(r, Y, 12, center=True)
        assert np.all(r.S[3:] <= 1e-9 * r.S[0])
