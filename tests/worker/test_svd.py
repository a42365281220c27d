"""svd() end to end on a real LocalCluster and real Zarr on disk, checked against LAPACK.

The checks every method passes (chunk geometries, centering, degenerate
matrices) are :class:`tests.worker.test_methods.SVDCommonTests`.
"""

import numpy as np
import pytest

from svdserve.worker import svd

from tests._check import check_svd, decaying, geometry_matrix, to_zarr


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


def test_dask_and_numpy_sources(dask_client):
    import dask.array as da

    A = geometry_matrix((500, 30), "f8")
    x = da.from_array(A, chunks=(70, 15))
    for src in (A, x):
        res = svd(src, 5, method="exact", client=dask_client, panel_bytes=30 * 8 * 100)
        check_svd(res, A, 5)
        assert res.passes == 2


def test_local_run_without_client_matches_cluster(dask_client, tmp_path):
    A = geometry_matrix((400, 25), "f8")
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
    A = geometry_matrix((400, 10), "f8")
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
    # float32 panels (issue 28): cached as stored, power passes in float32.
    url32 = to_zarr(tmp_path / "A32.zarr", A.astype(np.float32), (100, 40))
    out = {}
    for n_workers in (1, 4):
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cl, Client(cl) as c:
            out[n_workers] = [svd(url, 6, method=m, center=True, client=c, panel_bytes=1)
                              for m in ("exact", "randomized")]
            out[n_workers].append(svd(url32, 6, method="randomized", client=c, panel_bytes=1))
    assert out[4][2].report["precision"]["power"] == "float32"
    for a, b in zip(out[1], out[4]):
        assert np.array_equal(a.U, b.U) and np.array_equal(a.S, b.S)
        assert np.array_equal(a.Vt, b.Vt)
        assert (a.mean is None and b.mean is None) or np.array_equal(a.mean, b.mean)
    check_svd(out[4][0], A, 6, center=True)
