"""Issue 13 through the service: energy targets, the sketch, error estimates, denoising.

The real service (``svdserve serve`` subprocess, see conftest.py), the real
client and CLI; numbers against scikit-learn and NumPy on the same data.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA as SkPCA

from svdserve._cli import main
from svdserve.client import InvalidRequest

pytestmark = pytest.mark.timeout(300)


def _noisy_low_rank(m, n, r, noise, seed=0):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((n, r)))
    edge = (min(m, n) / max(m, n)) ** 0.25 * math.sqrt(max(m, n)) * noise
    return (u * (5 * edge * np.linspace(2, 1, r))) @ v.T + noise * rng.standard_normal((m, n))


def test_energy_target_equals_sklearn_pca(client, data_dir):
    X = load_digits().data.astype(np.float64)
    url = client.upload(X, data_dir / "digits.zarr", chunks=300)
    want = SkPCA(n_components=0.9, svd_solver="full").fit(X).n_components_
    # Exact (the default on 64 columns): the rank from the whole spectrum.
    res = client.submit(url, energy=0.9, center=True).result(timeout=120)
    assert res.rank == want and res.job["result"]["rank"] == want
    assert res.report["energy_target"]["energy"] == 0.9
    assert res.report["suggested_rank"]["energy"] == want
    # Randomized: the blocked QB, whose report says how many blocks it took.
    job = client.submit(url, energy=0.9, center=True, method="randomized", max_rank=40)
    res = job.result(timeout=120)
    tgt = res.report["energy_target"]
    assert res.method == "randqb" and tgt["reached"] and tgt["blocks"] >= 1
    assert res.report["passes"] == tgt["blocks"] * 3  # n_iter = 2 power steps + 1 per block
    assert job["request"]["energy"] == 0.9 and job["request"]["rank"] is None
    # The gap around 0.9 on digits (≈ 3e-3) exceeds the method's error (< 1e-4).
    assert res.rank == want
    est = res.report.error_estimate
    assert est["probes"] == 10 and est["spectral"] > 0


def test_sketch_job_reads_once_and_estimates_its_error(client, data_dir):
    rng = np.random.default_rng(4)
    u, _ = np.linalg.qr(rng.standard_normal((500, 40)))
    v, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    A = (u * 0.5 ** np.arange(40)) @ v.T
    url = client.upload(A, data_dir / "A.zarr", chunks=100)
    res = client.submit(url, 4, method="sketch").result(timeout=120)
    assert res.method == "sketch" and res.report["passes"] == 1
    err = np.linalg.norm(A - np.asarray(res.reconstruct()), 2)
    est = res.report.error_estimate
    # The bound holds except with probability 1e-10 (10 probes).
    assert err <= est["spectral"] and est["probability"] == pytest.approx(1 - 1e-10)
    # A single pass has no power step: σ̂ is accurate to a small multiple of the
    # first σ beyond the range sketch (k = 4·4 + 1 = 17, σ_18 = 2^-17); 10×.
    np.testing.assert_allclose(res.S, 0.5 ** np.arange(4), rtol=0, atol=10 * 0.5**17)


def test_denoise_reconstructs_at_the_gavish_donoho_rank(client, data_dir):
    A = _noisy_low_rank(200, 200, 4, 0.01)
    url = client.upload(A, data_dir / "N.zarr", chunks=50)
    res = client.submit(url, 12, method="exact").result(timeout=120)
    den = res.report["suggested_rank"]["denoise"]
    assert den["rank"] == 4 and den["noise_estimator"] == "median_singular_value"
    assert res.report.denoise_rank == 4 and res.denoise_rank() == 4
    np.testing.assert_allclose(np.asarray(res.denoise()), np.asarray(res.reconstruct(4)))
    # Known noise: 4/√3·sqrt(n)·σ for a square matrix gives the same rank.
    assert res.denoise_rank(noise=0.01) == 4


def test_energy_validation_names_the_field(client, data_dir):
    url = client.upload(np.ones((10, 4)), data_dir / "B.zarr")
    with pytest.raises(ValueError, match="exactly one of rank and energy"):
        client.submit(url, 2, energy=0.9)
    with pytest.raises(InvalidRequest) as info:
        client.submit(url, energy=1.5)
    assert any(e["field"] == "body.energy" for e in info.value.errors)
    with pytest.raises(InvalidRequest) as info:
        client.submit(url, energy=0.9, method="sketch")
    assert any(e["field"] == "body.method" for e in info.value.errors)
    with pytest.raises(InvalidRequest) as info:
        client.submit(url, energy=0.9, max_rank=5)
    assert any(e["field"] == "body.max_rank" for e in info.value.errors)


def test_cli_energy_sketch_and_report(service, capsys, data_dir):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((150, 12)) @ np.diag(0.5 ** np.arange(12))
    path = data_dir / "A.npy"
    np.save(path, A)
    conn = ["--url", service.url, "--token", service.token]
    assert main(["upload", str(path), str(data_dir / "A.zarr"), "--chunks", "50", *conn]) == 0
    capsys.readouterr()
    code = main(["submit", str(data_dir / "A.zarr"), "--energy", "0.99", "--method",
                 "randomized", "--wait", "--no-progress", *conn])
    out, _ = capsys.readouterr()
    assert code == 0
    job_id = out.split()[0]
    want = int(np.searchsorted(np.cumsum(np.linalg.svd(A, compute_uv=False) ** 2)
                               / np.sum(A**2), 0.99, side="right")) + 1
    assert f"rank {want} (randqb)" in out
    assert main(["report", job_id, *conn]) == 0
    out, _ = capsys.readouterr()
    assert "error estimate ‖A − USVᵀ‖₂ ≤" in out and "denoising rank" in out
    assert "energy target 99 %: rank" in out
    code = main(["submit", str(data_dir / "A.zarr"), "-k", "3", "--method", "sketch", "--wait",
                 "--no-progress", *conn])
    out, _ = capsys.readouterr()
    assert code == 0 and "rank 3 (sketch)" in out
    code = main(["submit", str(data_dir / "A.zarr"), "-k", "3", "--energy", "0.9", *conn])
    _, err = capsys.readouterr()
    assert code == 2 and "not allowed with argument" in err
    code = main(["submit", str(data_dir / "A.zarr"), "--energy", "2", *conn])
    _, err = capsys.readouterr()
    assert code == 2 and "0 < F < 1" in err
