"""Issue 28: float32 input, power passes in float32 where the spectrum allows (precision="auto").

Matrices with a planted spectrum A = U diag(s) Vᵀ (float32, clean tail at 1e-12,
so that the randomized error of the float64 run is near machine precision and
what is left is the cost of float32 power passes). The bound checked is the one
derived in :mod:`svdserve.worker._precision`:

    |σ̂_j − σ_j|/σ_j ≲ min(1, u₃₂/ρ_j)² (σ_{l+1}/σ_j)²,   ρ_j = σ_j²/‖A‖²_F.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from svdserve.worker import InvalidInputError, svd
from svdserve.worker._precision import RHO_MIN, U32, power_leaf32

M, N, L_EXTRA = 1000, 300, 10
EPS64 = np.finfo(np.float64).eps


def planted(decay, seed=3):
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((M, N)))[0]
    v = np.linalg.qr(rng.standard_normal((N, N)))[0]
    s = np.maximum(decay ** np.arange(N), 1e-12)
    a = ((u * s) @ v.T).astype(np.float32)
    return a, np.linalg.svd(a.astype(np.float64), compute_uv=False)


def _zarr(path, a):
    z = zarr.create_array(str(path), shape=a.shape, dtype=a.dtype, chunks=(200, N))
    z[...] = a
    return str(path)


def test_safe_spectrum_runs_float32_and_agrees_with_float64_to_the_bound(tmp_path):
    a, truth = planted(0.8)
    k = 10
    url = _zarr(tmp_path / "A.zarr", a)
    auto = svd(url, k, method="randomized", client=False)
    f64 = svd(url, k, method="randomized", client=False, precision="float64")
    rep = auto.report["precision"]
    assert rep["power"] == "float32" and rep["float32_power_passes"] == 2, rep
    assert rep["rho_estimate"] >= RHO_MIN and rep["range_and_projection"] == "float64"
    # Both are lower bounds of ρ_k; the converged float64 Ritz value is the sharper one.
    assert rep["rho_estimate"] <= rep["rho_final"] * (1 + 1e-6) and rep["reason"] is None
    assert f64.report["precision"]["power"] == "float64"
    assert "float64" in f64.report["precision"]["reason"]
    s = truth[:k]
    rho = s**2 / np.sum(truth**2)
    bound = np.minimum(1.0, U32 / rho) ** 2 * (truth[k + L_EXTRA] / s) ** 2
    err32 = np.abs(auto.S - s) / s
    err64 = np.abs(f64.S - s) / s
    # The derived bound on top of the float64 run's own error, plus the rounding of
    # the float64 Rayleigh–Ritz step (a few hundred eps64 relative to σ₁, per σ_j).
    assert np.all(err32 <= bound + err64 + 300 * EPS64 * s[0] / s), (err32, bound, err64)
    # The report's numbers come from the float64 last pass: the energy total too.
    assert auto.report["frobenius_norm"] == pytest.approx(f64.report["frobenius_norm"],
                                                          rel=1e2 * EPS64)


def test_unsafe_spectrum_falls_back_and_the_report_says_why():
    a, truth = planted(0.5)
    k = 12  # σ_k²/‖A‖²_F = 0.25**11·0.75 ≈ 1.8e-7 < RHO_MIN = 64·u32 ≈ 3.8e-6
    res = svd(a, k, method="randomized", client=False)
    rep = res.report["precision"]
    assert rep["power"] == "mixed" and rep["float32_power_passes"] == 1, rep
    assert rep["rho_estimate"] < RHO_MIN and "pass-1 estimate" in rep["reason"]
    s = truth[:k]
    err = np.max(np.abs(res.S - s) / s)
    # Float32 power passes would leave σ_k only the accuracy of a run without power
    # iterations, (σ_{l+1}/σ_k)² = 0.25**10 ≈ 1e-6; the float64 passes after the
    # fallback reach it to a thousandth of that.
    assert err < 1e-3 * (truth[k + L_EXTRA] / s[-1]) ** 2, err


def test_float64_input_and_centred_runs_stay_float64():
    a, _ = planted(0.8)
    r64 = svd(a.astype(np.float64), 5, method="randomized", client=False, n_iter=1)
    assert r64.report["precision"]["power"] == "float64"
    assert r64.report["precision"]["reason"] == "the input is not float32"
    rc = svd(a, 5, method="randomized", client=False, n_iter=1, center=True)
    assert "centred" in rc.report["precision"]["reason"]
    # Weights scale each panel in float64 before the kernels see it (worker/_scaling.py):
    # the power passes stay float64, and the factors are those of the float64 run.
    w = np.linspace(0.5, 1.5, N)
    rw = svd(a, 5, method="randomized", client=False, n_iter=1, weights=w)
    assert "weighted" in rw.report["precision"]["reason"]
    rw64 = svd(a, 5, method="randomized", client=False, n_iter=1, weights=w,
               precision="float64")
    np.testing.assert_array_equal(rw.S, rw64.S)
    # Entries near 1e-25 (max|A| < 2**-60): float32 products of them would be subnormal.
    tiny = svd((a * np.float32(1e-25)).astype(np.float32), 5, method="randomized",
               client=False, n_iter=2)
    assert tiny.report["precision"]["power"] == "mixed"
    assert "max|A|" in tiny.report["precision"]["reason"]
    with pytest.raises(InvalidInputError, match="precision must be one of") as err:
        svd(a, 5, method="randomized", client=False, precision="float16")
    assert err.value.field == "precision"


def test_power_leaf32_overflowing_panel_is_recomputed_in_float64():
    rng = np.random.default_rng(0)
    g = np.linalg.qr(rng.standard_normal((30, 4)))[0]
    # Entries near float32's largest (3.4e38): a @ g overflows float32, not float64.
    a = (rng.uniform(1e38, 1.5e38, (50, 30)) * rng.choice([-1.0, 1.0], (50, 30))).astype(
        np.float32)
    out = power_leaf32(a, g)
    want = a.astype(np.float64).T @ (a.astype(np.float64) @ g)
    got = np.ldexp(out["z"], out["e"])
    assert np.all(np.isfinite(got))
    # The float64 kernel's rounding only: a few eps64 times the row length.
    assert np.allclose(got, want, rtol=100 * EPS64 * 30, atol=0)
