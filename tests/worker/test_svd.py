"""svd() end to end on a real LocalCluster and real Zarr on disk, checked against LAPACK."""

import numpy as np
import pytest

from svdserve.worker import svd

from tests._check import check_svd, decaying, to_zarr

# (shape, chunks, rank, dtype, zarr_format, panel_bytes): one row per geometry.
GEOMETRIES = [
    pytest.param((300, 20), (300, 20), 5, "f8", 3, None, id="single-chunk"),
    pytest.param((600, 30), (50, 30), 6, "f8", 3, 30 * 8 * 100, id="many-row-chunks"),  # 2 chunks a panel
    pytest.param((613, 25), (100, 25), 4, "f8", 3, 1, id="ragged-last-chunk"),  # one chunk a panel
    pytest.param((500, 40), (64, 16), 7, "f8", 3, 40 * 8 * 128, id="2d-chunks"),  # column chunks too
    pytest.param((35, 400), (35, 64), 5, "f8", 3, 1, id="wide"),  # m < n: through the transpose
    pytest.param((400, 1), (50, 1), 1, "f8", 3, 1, id="one-column"),
    pytest.param((200, 12), (40, 12), 12, "f8", 3, 1, id="rank-equals-min"),
    pytest.param((300, 20), (60, 20), 5, "f4", 3, 1, id="float32"),  # accumulated in float64
    pytest.param((300, 20), (60, 20), 5, "i4", 3, 1, id="int32"),
    pytest.param((300, 20), (60, 20), 5, "f8", 2, 1, id="zarr-v2"),
    pytest.param((8, 3), (3, 3), 3, "f8", 3, 1, id="panels-shorter-than-n"),  # panels of 3 rows, n=3
]


def _matrix(shape, dtype, seed=0):
    if np.dtype(dtype).kind == "i":
        # Exactly rank 8 in integers, so that the randomized sketch (l ≥ 8) spans it.
        rng = np.random.default_rng(seed)
        return (rng.integers(-5, 6, (shape[0], 8)) @ rng.integers(-5, 6, (8, shape[1]))).astype(dtype)
    return (decaying(*shape, seed=seed, decay=0.7) * 100).astype(dtype)


@pytest.mark.parametrize("method", ["exact", "randomized"])
@pytest.mark.parametrize("shape,chunks,k,dtype,fmt,panel_bytes", GEOMETRIES)
def test_geometries(tmp_path, dask_client, method, shape, chunks, k, dtype, fmt, panel_bytes):
    A = _matrix(shape, dtype)
    url = to_zarr(tmp_path / "A.zarr", A, chunks, zarr_format=fmt)
    res = svd(url, k, method=method, n_iter=3, client=dask_client, panel_bytes=panel_bytes)
    # With σ_i = 0.7^i and l = k + 10 columns, q = 3 power iterations make the
    # randomized subspace error ~(σ_{l+1}/σ_k)^(2q+1) ≈ 0.7^70 ≈ 1e-11 relative: LAPACK
    # accuracy up to that, so the same exact checks apply with a 1e-9 relative σ tolerance.
    check_svd(res, A, k, exact=True, sigma_rtol=None if method == "exact" else 1e-9)
    assert res.method == method
    assert res.passes == (2 if method == "exact" else 3 + 1)  # q power passes + 1


@pytest.mark.parametrize("method", ["exact", "randomized"])
@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("shape", [(400, 30), (30, 400)], ids=["tall", "wide"])
def test_centering_equals_svd_of_centered_matrix(dask_client, method, center, shape):
    A = _matrix(shape, "f8") + 50.0  # a large common offset makes centring matter
    res = svd(A, 6, method=method, center=center, n_iter=3, client=dask_client,
              panel_bytes=shape[1] * 8 * 40)
    check_svd(res, A, 6, center=center, sigma_rtol=None if method == "exact" else 1e-9)
    assert res.passes == (2 if method == "exact" else 4)
    assert (res.mean is not None) == center


def test_exact_sigma_relative_error_well_conditioned(dask_client):
    # κ = 10: Weyl's bound |δσ| ≤ ‖E‖₂ ≈ c·ε·σ_1 gives relative errors ≲ 10·c·ε ≪ 1e-12.
    rng = np.random.default_rng(3)
    u, _ = np.linalg.qr(rng.standard_normal((2000, 50)))
    v, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    s = np.linspace(10, 1, 50)
    A = (u * s) @ v.T
    res = svd(A, 50, method="exact", client=dask_client, panel_bytes=50 * 8 * 300)
    np.testing.assert_allclose(res.S, s, rtol=1e-12)
    assert res.report["condition_number"] == pytest.approx(10, rel=1e-12)


def test_randomized_spectral_error_bound_default_n_iter(dask_client):
    # Halko et al. Thm 10.6 (with q = 2 power steps) makes ‖A − A_k‖₂ within a
    # small factor of σ_{k+1} for a decaying spectrum; we demand ≤ 1.1·σ_{k+1}.
    A = decaying(3000, 200, seed=5, decay=0.9, noise=1e-3)
    k = 15
    res = svd(A, k, method="randomized", client=dask_client, panel_bytes=200 * 8 * 500)
    ref = np.linalg.svd(A, compute_uv=False)
    err = np.linalg.norm(A - (res.U * res.S) @ res.Vt, 2)
    assert err <= 1.1 * ref[k]
    assert res.passes == 3 and res.report["n_iter"] == 2
    check_svd(res, A, k, exact=False)


def test_rank_deficient_and_zero_matrices(dask_client):
    rng = np.random.default_rng(1)
    A = rng.standard_normal((300, 3)) @ rng.standard_normal((3, 20))  # rank 3
    for method in ("exact", "randomized"):
        res = svd(A, 8, method=method, client=dask_client, panel_bytes=20 * 8 * 50)
        ref = np.linalg.svd(A, compute_uv=False)
        # σ_4.. are zero up to rounding ~ ε·σ_1·√m; U stays orthonormal regardless.
        check_svd(res, A, 8, exact=True, sigma_rtol=None)
        assert res.report["numerical_rank"] == 3 if method == "exact" else True
        assert np.all(res.S[3:] <= 1e-12 * ref[0])
    Z = np.zeros((120, 10))
    for method in ("exact", "randomized"):
        res = svd(Z, 4, method=method, client=dask_client, panel_bytes=10 * 8 * 30)
        check_svd(res, Z, 4)
        assert np.all(res.S == 0) and res.report["total_energy"] == 0


def test_dask_and_numpy_sources(dask_client):
    import dask.array as da

    A = _matrix((500, 30), "f8")
    x = da.from_array(A, chunks=(70, 15))
    for src in (A, x):
        res = svd(src, 5, method="exact", client=dask_client, panel_bytes=30 * 8 * 100)
        check_svd(res, A, 5)
        assert res.passes == 2


def test_local_run_without_client_matches_cluster(dask_client, tmp_path):
    A = _matrix((400, 25), "f8")
    url = to_zarr(tmp_path / "A.zarr", A, (50, 25))
    a = svd(url, 5, method="randomized", client=dask_client, panel_bytes=1)
    b = svd(url, 5, method="randomized", client=None, panel_bytes=1)
    # Same panel plan, same seed, same kernels: bit-for-bit equal.
    assert np.array_equal(a.U, b.U) and np.array_equal(a.S, b.S) and np.array_equal(a.Vt, b.Vt)


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**31 - 1])
def test_any_seed_passes(dask_client, seed):
    A = decaying(500, 60, seed=9, decay=0.6)
    res = svd(A, 5, method="randomized", random_state=seed, client=dask_client)
    check_svd(res, A, 5, sigma_rtol=1e-9)  # σ_{l+1}/σ_k = 0.6^10 per step, q=2: ~1e-11 relative


def test_auto_method_rule():
    from svdserve.worker import EXACT_MAX_COLUMNS, choose_method

    assert choose_method("auto", (10**6, 500), 20, 10) == "exact"
    assert choose_method("auto", (10**6, EXACT_MAX_COLUMNS + 1), 20, 10) == "randomized"
    assert choose_method("auto", (10**6, 5000), 2490, 10) == "exact"  # sketch ≥ half the short side
    assert choose_method("randomized", (10, 5), 2, 0) == "randomized"


def test_progress_reports_every_panel_and_can_cancel(dask_client):
    A = _matrix((400, 10), "f8")
    seen = []
    svd(A, 3, method="randomized", n_iter=1, client=dask_client, panel_bytes=10 * 8 * 50,
        progress=lambda d, t, ph: seen.append((d, t, ph.name, ph.pass_no, ph.passes)))
    per_pass = [s for s in seen if s[2] in ("power", "range+project")]
    assert len(per_pass) == 2 * 8  # 8 panels of 50 rows, 2 passes
    assert [s[3] for s in per_pass[::8]] == [1, 2] and all(s[4] == 2 for s in seen)

    class Stop(Exception):
        pass

    def cancel(done, total, phase):
        if phase.pass_no == 2:
            raise Stop

    with pytest.raises(Stop):
        svd(A, 3, method="randomized", n_iter=1, client=dask_client, panel_bytes=10 * 8 * 50,
            progress=cancel)


def test_determinism_across_worker_processes(tmp_path):
    """Same seed and panel plan give bit-identical factors on 1 and 4 worker processes."""
    from distributed import Client, LocalCluster

    A = decaying(2000, 40, seed=2, decay=0.8, noise=1e-4)
    url = to_zarr(tmp_path / "A.zarr", A, (100, 40))
    out = {}
    for n_workers in (1, 4):
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cl, Client(cl) as c:
            out[n_workers] = [svd(url, 6, method=m, center=True, client=c, panel_bytes=1)
                              for m in ("exact", "randomized")]
    for a, b in zip(out[1], out[4]):
        assert np.array_equal(a.U, b.U) and np.array_equal(a.S, b.S)
        assert np.array_equal(a.Vt, b.Vt) and np.array_equal(a.mean, b.mean)
    check_svd(out[4][0], A, 6, center=True)
