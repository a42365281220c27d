"""The client against the real service (a ``svdserve serve`` subprocess, see conftest.py).

Every client method is called over real HTTP; results are read both from
the shared results directory and over HTTP from the service; numbers are
checked against dense LAPACK (NumPy) and scikit-learn.

Tolerances
----------
The service's exact method is TSQR followed by a small LAPACK SVD: backward
stable, so singular values agree with ``numpy.linalg.svd`` to a modest
multiple of ``eps · σ_1`` (we allow ``1e3 · eps · σ_1``: the tree reduction
adds a few QR steps, each ~``n · eps``, with n ≤ 64 here), and singular
vectors to that divided by the relative spectral gap.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits, load_iris
from sklearn.decomposition import PCA as SkPCA

from svdserve.client import (
    Conflict,
    Forbidden,
    InvalidRequest,
    JobCancelled,
    JobFailed,
    NotFound,
    StoredResult,
    Timeout,
    Unauthorized,
)

from tests._check import EPS

pytestmark = pytest.mark.timeout(300)

SV_RTOL = 1e3 * EPS  # relative to σ_1: see module docstring


def _low_rank_plus_noise(seed, m, n, r, noise=1e-2):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, r)) @ rng.standard_normal((r, n)) * 10
    return A + noise * rng.standard_normal((m, n))


@pytest.fixture(scope="module")
def tall_job(service):
    """A 300×40 low-rank-plus-noise matrix in 64-row chunks, exact rank-8 SVD."""
    c = service.client()
    A = _low_rank_plus_noise(0, 300, 40, 6)
    d = service.data_root / "tall"
    d.mkdir(exist_ok=True)
    url = c.upload(A, d / "A.zarr", chunks=64)
    job = c.submit(url, 8, method="exact")
    res = job.result(timeout=120)
    yield A, job, res, c
    c.close()


# -- submit / wait / result -------------------------------------------------------------------


def test_upload_writes_row_chunked_zarr_v3(service, client, data_dir):
    import zarr

    A = np.arange(30.0).reshape(10, 3)
    url = client.upload(A, data_dir / "small.zarr", chunks=4)
    assert url == str(data_dir / "small.zarr")
    z = zarr.open_array(url, mode="r")
    assert z.metadata.zarr_format == 3 and z.chunks == (4, 3)
    np.testing.assert_array_equal(z[...], A)
    url2 = client.upload(A, data_dir / "grp.zarr", array="X")
    assert zarr.open_group(url2, mode="r")["X"].shape == (10, 3)


def test_exact_job_end_to_end(tall_job, service):
    A, job, res, c = tall_job
    assert isinstance(res, StoredResult) and res.job["id"] == job.id
    assert job.status() == "succeeded" and job.done() and not job.cancelled()
    assert job.progress is not None and job.progress.done == job.progress.total
    assert res.shape == (300, 40) and res.rank == 8 and res.method == "exact"
    # direct access: the results directory is shared with this process
    assert res.url.startswith(str(service.results_root)) and res.url.endswith("result.zarr")
    s_dense = np.linalg.svd(A, compute_uv=False)
    np.testing.assert_allclose(res.S, s_dense[:8], rtol=0, atol=SV_RTOL * s_dense[0])
    U = res.U.compute()
    Vt = res.Vt.compute()
    # orthonormal factors (TSQR keeps orthogonality to ~ n·eps)
    np.testing.assert_allclose(U.T @ U, np.eye(8), atol=1e3 * EPS)
    np.testing.assert_allclose(Vt @ Vt.T, np.eye(8), atol=1e3 * EPS)
    # sign convention: largest-|.| entry of each row of Vt is positive
    assert np.all(Vt[np.arange(8), np.argmax(np.abs(Vt), axis=1)] > 0)
    assert res.U.chunks[0][0] == 64  # U chunked by rows like the input


@pytest.mark.parametrize("rank", [1, 3, 6, 8])
def test_reconstruction_error_is_the_eckart_young_optimum(tall_job, rank):
    A, job, res, c = tall_job
    s = np.linalg.svd(A, compute_uv=False)
    optimum = float(np.sqrt(np.sum(s[rank:] ** 2)))
    # error() is sqrt(‖A‖² − Σσ²) from the report: a difference of squares, accurate to
    # ~ eps·‖A‖_F² / optimum in absolute terms (1e3 eps: summation over 12000 entries)
    tol = 1e3 * EPS * float(np.sum(A * A)) / optimum
    assert res.error(rank) == pytest.approx(optimum, abs=tol)
    dense_err = float(np.linalg.norm(A - res.reconstruct(rank).compute()))
    # the lazily reconstructed matrix attains it (entrywise error ~ SV_RTOL·σ_1)
    assert dense_err == pytest.approx(optimum, abs=tol + np.sqrt(A.size) * SV_RTOL * s[0])
    assert res.storage_ratio(rank) == pytest.approx(rank * (300 + 40 + 1) / (300 * 40))
    assert res.error(rank, relative=True) == pytest.approx(optimum / np.linalg.norm(A), abs=tol)


def test_report_over_http_equals_the_stored_one(tall_job, tmp_path):
    A, job, res, c = tall_job
    rep = job.report()
    assert rep.to_dict() == res.report.to_dict()
    assert c.report(job.id).to_dict() == rep.to_dict()
    assert rep.total_energy == pytest.approx(float(np.sum(A * A)), rel=1e-12)
    assert rep.rank_for(0.9) is not None and rep.rank_for(0.9) <= 6
    text = rep.table()
    assert "shape 300 x 40" in text and "method exact" in text
    out = rep.plot(tmp_path / "r.png")
    assert open(out, "rb").read(4) == b"\x89PNG"


def test_result_over_http_equals_direct(tall_job, service):
    A, job, res, c = tall_job
    with service.client(result_access="http") as ch:
        rh = ch.get(job.id).result()
    assert rh.url == f"{service.url}/v1/jobs/{job.id}/result"
    np.testing.assert_array_equal(rh.S, res.S)
    np.testing.assert_array_equal(rh.U.compute(), res.U.compute())
    np.testing.assert_array_equal(rh.Vt.compute(), res.Vt.compute())
    np.testing.assert_array_equal(rh.reconstruct(3, rows=slice(10, 20)).compute(),
                                  res.reconstruct(3, rows=slice(10, 20)).compute())
    assert rh.report.to_dict() == res.report.to_dict()
    with service.client(result_access="direct") as cd:
        assert cd.get(job.id).result().url == res.url


def test_http_result_access_needs_the_token(tall_job, service):
    A, job, res, c = tall_job
    import httpx

    r = httpx.get(f"{service.url}/v1/jobs/{job.id}/result/zarr.json")
    assert r.status_code == 401
    r = httpx.get(f"{service.url}/v1/jobs/{job.id}/result/zarr.json",
                  headers={"Authorization": f"Bearer {service.other_token}"})
    assert r.status_code == 404  # another tenant's job does not exist for bob


def test_to_zarr_reconstruction_can_be_submitted_again(tall_job, service):
    A, job, res, c = tall_job
    d = service.data_root / "tall"
    url = res.to_zarr(d / "A6.zarr", 6, overwrite=True)
    job2 = c.submit(url, 6, method="exact")
    res2 = job2.result(timeout=120)
    # A6 has rank 6: its singular values are A's first six, and its 7th is ~0
    np.testing.assert_allclose(res2.S, res.S[:6], rtol=0, atol=SV_RTOL * res.S[0])
    assert res2.error(6) <= 1e-6 * res.S[0]


def test_randomized_job(service, client, data_dir):
    rng = np.random.default_rng(3)
    m, n = 400, 60
    Q1, _ = np.linalg.qr(rng.standard_normal((m, n)))
    Q2, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = 0.5 ** np.arange(n)  # fast decay: randomized SVD is accurate to ~ σ_{k+p+1}
    A = (Q1 * s) @ Q2.T
    url = client.upload(A, data_dir / "A.zarr", chunks=50)
    res = client.submit(url, 5, method="randomized", n_iter=2).result(timeout=120)
    assert res.method == "randomized" and res.rank == 5
    # Halko et al. bound: error ≲ σ_{k+p+1} amplified by the power iterations; with
    # p = 10, q = 2 that is far below 1e-6 · σ_1 for this spectrum
    np.testing.assert_allclose(res.S, s[:5], rtol=1e-6)
    assert res.report.singular_values_all is None
    assert res.error(5) == pytest.approx(np.sqrt(np.sum(s[5:] ** 2)), rel=1e-6)


def test_get_jobs_and_idempotency(service, client, data_dir):
    url = client.upload(np.eye(20)[:, :5] + 0.1, data_dir / "E.zarr")
    j1 = client.submit(url, 2, idempotency_key="same-key-1")
    j2 = client.submit(url, 2, idempotency_key="same-key-1")
    assert j1.id == j2.id  # the replay answers with the same job
    j1.wait(timeout=120)
    got = client.get(j1.id)
    assert got == j1 and got.state == "succeeded" and got["request"]["rank"] == 2
    listed = client.jobs(state="succeeded")
    assert j1.id in [j.id for j in listed]
    assert all(j.state == "succeeded" for j in listed)
    assert len(client.jobs(limit=1)) == 1
    assert client.health() == {"status": "ok"}
    assert client.ready()["ready"] is True
    # bob sees none of alice's jobs
    with service.client(token=service.other_token) as bob:
        assert j1.id not in [j.id for j in bob.jobs()]
        with pytest.raises(NotFound):
            bob.get(j1.id)
    client.delete(j1.id)
    with pytest.raises(NotFound, match=j1.id[:8]):
        client.get(j1.id)


# -- errors from real responses -----------------------------------------------------------------


def test_validation_errors_name_the_field(client, data_dir):
    url = client.upload(np.ones((10, 4)), data_dir / "B.zarr")
    with pytest.raises(InvalidRequest) as info:
        client.submit(url, 0)
    err = info.value
    assert err.status_code == 422 and err.request_id
    assert any(e["field"] == "body.rank" for e in err.errors)
    assert "body.rank" in str(err)
    with pytest.raises(InvalidRequest, match="rank"):
        client.submit(url, 5)  # rank > min(m, n) = 4


def test_missing_and_forbidden_sources(client, data_dir):
    with pytest.raises(NotFound) as info:
        client.submit(str(data_dir / "nope.zarr"), 2)
    assert info.value.status_code == 404 and "nope.zarr" in str(info.value)
    with pytest.raises(Forbidden) as info:
        client.submit("/etc", 2)
    assert info.value.status_code == 403 and isinstance(info.value, PermissionError)


def test_unknown_job_and_bad_token(service, client):
    with pytest.raises(NotFound) as info:
        client.get("0" * 32)
    assert info.value.request_id and info.value.problem["status"] == 404
    with service.client(token="wrong") as bad:
        with pytest.raises(Unauthorized) as info:
            bad.jobs()
        assert info.value.status_code == 401


def test_non_finite_input_fails_the_job_with_the_servers_message(client, data_dir):
    A = np.ones((200, 8))
    A[150, 3] = np.nan
    url = client.upload(A, data_dir / "nan.zarr", chunks=25)
    job = client.submit(url, 2)
    with pytest.raises(JobFailed) as info:
        job.result(timeout=120)
    err = info.value
    assert err.type == "non_finite_values" and err.job_id == job.id
    assert job.error["message"] in str(err)
    with pytest.raises(Conflict):
        job.report()  # no report for a failed job
    assert job.cancel() is False  # already finished


def test_timeout_then_cancel_a_running_job(client, data_dir):
    rng = np.random.default_rng(5)
    A = rng.standard_normal((4000, 100))
    url = client.upload(A, data_dir / "big.zarr", chunks=40)  # 100 panels of 64 KiB... or so
    job = client.submit(url, 5, method="randomized", n_iter=50)  # 52 passes over A
    with pytest.raises(Timeout) as info:
        job.result(timeout=0.5)
    assert info.value.job["id"] == job.id
    assert job.state in ("queued", "running")
    deadline = time.monotonic() + 60
    while job.status() == "queued" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.cancel() is True
    with pytest.raises(JobCancelled):
        job.result(timeout=120)
    assert job.state == "cancelled" and job.cancelled()
    assert job.id in [j.id for j in client.jobs(state="cancelled")]


# -- PCA and least squares through the service ---------------------------------------------------

DATASETS = {
    "iris": (load_iris, 3),
    "digits": (load_digits, 10),
    "breast_cancer": (load_breast_cancer, 8),
}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_pca_equals_sklearn(name, client, data_dir):
    loader, k = DATASETS[name]
    X = loader().data.astype(np.float64)
    url = client.upload(X, data_dir / f"{name}.zarr", chunks=64)
    res = client.submit(url, k, method="exact", center=True).result(timeout=120)
    pca = res.pca()
    sk = SkPCA(n_components=k, svd_solver="full").fit(X)
    s1 = sk.singular_values_[0]
    # σ, variances: SV_RTOL relative to σ_1 (module docstring); ratios use the exact total
    np.testing.assert_allclose(pca.singular_values_, sk.singular_values_, rtol=0,
                               atol=SV_RTOL * s1)
    np.testing.assert_allclose(pca.explained_variance_, sk.explained_variance_, rtol=0,
                               atol=2 * SV_RTOL * s1**2 / (X.shape[0] - 1))
    np.testing.assert_allclose(pca.explained_variance_ratio_, sk.explained_variance_ratio_,
                               rtol=0, atol=2 * SV_RTOL)
    # components: same signs, no alignment; error ≤ SV_RTOL·σ_1 / (relative gap), the
    # smallest gap among these first components is ~1e-2 relative (digits)
    gaps = np.abs(np.diff(sk.singular_values_)) / s1
    comp_tol = SV_RTOL / max(gaps.min(), 1e-3) * 10
    np.testing.assert_allclose(pca.components_, sk.components_, rtol=0, atol=comp_tol)
    np.testing.assert_allclose(pca.mean_, sk.mean_, rtol=1e-13, atol=1e-13 * np.abs(X).max())
    Z = pca.transform(X)
    np.testing.assert_allclose(Z, sk.transform(X), rtol=0,
                               atol=comp_tol * np.abs(X - sk.mean_).sum(axis=1).max())
    # the report's PCA section uses scikit-learn's names and values
    np.testing.assert_allclose(res.report["explained_variance_ratio"],
                               sk.explained_variance_ratio_, rtol=0, atol=2 * SV_RTOL)
    assert pca.n_features_in_ == X.shape[1] and pca.n_components_ == k


def test_lstsq_equals_numpy(client, data_dir):
    rng = np.random.default_rng(7)
    m, n = 250, 12
    A = rng.standard_normal((m, n))  # κ ≈ 1.6
    b = rng.standard_normal(m)
    B = rng.standard_normal((m, 3))
    url = client.upload(A, data_dir / "A.zarr", chunks=40)
    res = client.submit(url, n, method="exact").result(timeout=120)
    x_np, resid_np, rank_np, _ = np.linalg.lstsq(A, b, rcond=None)
    out = res.lstsq(b)
    # backward-stable solvers on a κ≈1.6 problem: 1e3 eps relative (module docstring)
    np.testing.assert_allclose(out.x, x_np, rtol=0, atol=SV_RTOL * np.abs(x_np).max() * 10)
    assert out.rank == rank_np == n and out.effective_rank == n
    assert out.residual_norm**2 == pytest.approx(resid_np[0], rel=1e-10)
    assert out.solution_norm == pytest.approx(np.linalg.norm(x_np), rel=1e-12)
    outB = res.lstsq(B)
    np.testing.assert_allclose(outB.x, np.linalg.lstsq(A, B, rcond=None)[0], rtol=0,
                               atol=1e-12)
    burl = client.upload(b[:, None], data_dir / "b.zarr", chunks=40)
    outz = res.lstsq(burl)
    np.testing.assert_allclose(outz.x[:, 0], out.x, rtol=0, atol=1e-14)
    # Tikhonov with a tiny α is a tiny perturbation of the LS solution
    tik = res.lstsq(b, alpha=1e-6)
    np.testing.assert_allclose(tik.x, x_np, rtol=0, atol=1e-10)
    np.testing.assert_allclose(tik.filter_factors, res.S / (res.S**2 + 1e-12), rtol=1e-15)


def test_client_never_imports_the_service():
    code = (
        "import sys, svdserve.client, svdserve.client._cli, svdserve._cli;"
        "from svdserve.client._cli import build_parser; build_parser();"
        "print(sorted(m for m in sys.modules if m.startswith('svdserve.service')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_compute_u_false_gives_sigma_and_v_in_one_pass(client, data_dir):
    """σ and V only: one pass for the exact method, no U stored, a clear error on reconstruct."""
    A = np.random.default_rng(4).standard_normal((600, 12))
    url = client.upload(A, data_dir / "A.zarr", chunks=100)
    res = client.submit(url, rank=4, method="exact", compute_u=False).result(timeout=120)
    assert res.U is None and res.report["passes"] == 1
    ref = np.linalg.svd(A, compute_uv=False)
    # LAPACK-level σ (Weyl: a few √n·ε·σ₁), V orthonormal.
    np.testing.assert_allclose(res.S, ref[:4], rtol=0, atol=100 * np.sqrt(12) * EPS * ref[0])
    Vt = np.asarray(res.Vt)
    np.testing.assert_allclose(Vt @ Vt.T, np.eye(4), atol=100 * EPS)
    with pytest.raises(ValueError, match="compute_u=False"):
        res.reconstruct(2)
