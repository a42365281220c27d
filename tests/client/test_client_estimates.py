"""Issue 20, items 2-4, through the service: GCV on a well-posed problem, the error
estimate (the best bound known, and a flag for a sketch too coarse to use), and the
exact method's whole spectrum in the energy ranks.

The real service (``svdserve serve`` subprocess, see conftest.py), the real client and
CLI; numbers against NumPy on the same data.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from svdserve._cli import main
from svdserve.client._cli import flag_text

from tests._check import EPS

pytestmark = pytest.mark.timeout(300)


def test_gcv_lstsq_of_a_well_posed_problem_equals_numpy(client, data_dir):
    # Issue 20's case made smaller (the 5000×30 one is in test_client_lstsq.py): a
    # Gaussian 1000×20 (κ ≈ 1.3), noise 0.1. GCV used to stop at σ_min and over-regularise.
    rng = np.random.default_rng(0)
    A = rng.standard_normal((1000, 20))
    b = A @ rng.standard_normal(20) + 0.1 * rng.standard_normal(1000)
    url = client.upload(A, data_dir / "A.zarr", chunks=500)
    res = client.submit(url, 20, method="exact").result(timeout=120)
    out = res.lstsq(b, alpha="gcv")
    x_np, r2_np, _, _ = np.linalg.lstsq(A, b, rcond=None)
    s = res.S
    assert out.alpha < 1e-2 * s[-1] and out.gcv_edge is None
    # Tikhonov's filter differs from 1 by at most q² = (α/σ_min)²: ‖x_α − x_LS‖ ≤ q²·‖x_LS‖,
    # plus the service's SVD against LAPACK's lstsq, κ·eps·sqrt(m) relative (1e4·eps covers it).
    q2 = (out.alpha / s[-1]) ** 2
    assert np.linalg.norm(out.x - x_np) <= (q2 + 1e4 * EPS) * np.linalg.norm(x_np)
    # residual² grows by Σ(1 − φ_i)²β_i² ≤ q⁴·‖b‖²; 1e-10 covers the rounding of ‖r‖²
    # formed from ‖b‖² − ‖Uᵀb‖² parts (‖b‖²/‖r‖² ≈ 2e3 times eps·m).
    rel = q2**2 * float(b @ b) / r2_np[0] + 1e-10
    assert out.residual_norm**2 == pytest.approx(r2_np[0], rel=rel)


def test_sketch_too_coarse_is_flagged_in_report_notes_and_cli(service, client, data_dir,
                                                               capsys):
    # A 100×80 Gaussian (flat spectrum) and a one-pass sketch of rank 2 (issue 20).
    A = np.random.default_rng(0).standard_normal((100, 80))
    url = client.upload(A, data_dir / "flat.zarr", chunks=50)
    job = client.submit(url, 2, method="sketch")
    res = job.result(timeout=120)
    est = res.report.error_estimate
    assert est["source"] == "probe" and est["exceeds_sigma_k"]
    assert est["spectral"] > res.S[-1]
    warning = res.report.flat_spectrum_warning
    assert warning and "too flat for a one-pass sketch" in warning
    assert res.report.notes == [warning]
    assert warning in client.get(job.id).notes  # the job's notes
    code = main(["report", job.id, "--url", service.url, "--token", service.token])
    out = capsys.readouterr().out
    # the command line speaks in its flags, in `report` as in `status`
    assert code == 0 and f"note: {flag_text(warning)}" in out and "above σ_k" in out
    assert "use --method randomized with --n-iter ≥ 1" in out, out
    code = main(["status", job.id, "--url", service.url, "--token", service.token])
    assert "use --method randomized with --n-iter ≥ 1" in capsys.readouterr().out
    # The same data with the exact method and rank 2: nothing to flag.
    ex = client.submit(url, 2, method="exact").result(timeout=120)
    assert ex.report.error_estimate["source"] == "exact"
    assert not ex.report.error_estimate["exceeds_sigma_k"] and ex.report.notes == []


def test_sketch_of_low_rank_data_is_not_flagged(client, data_dir):
    rng = np.random.default_rng(1)
    A = rng.standard_normal((300, 3)) @ rng.standard_normal((3, 40))  # rank 3 exactly
    url = client.upload(A, data_dir / "low.zarr", chunks=100)
    job = client.submit(url, 3, method="sketch")
    res = job.result(timeout=120)
    est = res.report.error_estimate
    assert est["source"] == "probe" and not est["exceeds_sigma_k"] and est["warning"] is None
    assert res.report.notes == [] and client.get(job.id).notes == []


def test_randomized_estimate_on_centred_digits_is_at_most_the_frobenius_error(client,
                                                                             data_dir):
    from sklearn.datasets import load_digits

    X = load_digits().data[:500].astype(np.float64)  # small: the energy= run is in tests/worker
    url = client.upload(X, data_dir / "digits.zarr", chunks=250)
    # Issue 20: on centred digits the probe bound (3527) exceeded σ_1 (567) and ‖A‖_F (1469).
    # rank 25 keeps ~95 % of the variance, as `--energy 0.95` did
    res = client.submit(url, 25, center=True, method="randomized", n_iter=1).result(timeout=120)
    rep = res.report
    est = rep.error_estimate
    frob = rep.residuals[-1]  # the exact ‖A − U_kS_kV_kᵀ‖_F of the returned factors
    assert est["source"] == "frobenius" and est["spectral"] == frob < est["probe_bound"]
    assert est["spectral"] <= rep.frobenius_norm and est["spectral"] <= rep.singular_values[0]
    Xc = X - X.mean(axis=0)
    E = Xc - (np.asarray(res.U) * res.S) @ np.asarray(res.Vt)
    assert np.linalg.norm(E, 2) <= est["spectral"]
    assert "the exact ‖A − USVᵀ‖_F" in rep.table()


def test_exact_rank_5_of_64_columns_knows_every_energy_rank(client, data_dir, tmp_path):
    rng = np.random.default_rng(2)
    A = rng.standard_normal((200, 64)) * 0.97 ** np.arange(64)  # a slowly decaying spectrum
    url = client.upload(A, data_dir / "A64.zarr", chunks=100)
    job = client.submit(url, 5, method="exact")
    res = job.result(timeout=120)
    rep = client.report(job.id)
    s = np.linalg.svd(A, compute_uv=False)
    cum = np.cumsum(s**2) / np.sum(s**2)
    for fraction in (0.9, 0.95, 0.99):
        want = int(np.searchsorted(cum, fraction)) + 1
        # no cumulative fraction within 1e-10 of the level: the service's σ (to 1e-12
        # relative) pick the same rank
        assert np.min(np.abs(cum - fraction)) > 1e-10
        assert rep.rank_for(fraction) == want > 5
    table = rep.table()
    assert "> 5" not in table and "beyond k = 5" in table
    # the residual of a rank beyond k: the tail of the whole spectrum (LAPACK's σ to
    # 100·sqrt(n)·eps·σ_1 each, so the tail to 1e-10 relative with margin)
    assert rep.residual(20) == pytest.approx(np.sqrt(np.sum(s[20:] ** 2)), rel=1e-10)
    fig = rep.figure()
    fig.savefig(tmp_path / "scree.png")
    assert max(len(line.get_xdata()) for line in fig.axes[0].get_lines()) == 64
    assert res.report.to_dict() == rep.to_dict()


def test_report_table_prints_flat_spectral_gaps_to_four_digits(client, data_dir):
    # A Gaussian 400×40 has a flat spectrum: its largest gaps σr/σr+1 are 1.0x, which the
    # table printed as "1" (3 significant digits) before; the page shows 4 digits.
    A = np.random.default_rng(7).standard_normal((400, 40))
    url = client.upload(A, data_dir / "gaussian.zarr", chunks=100)
    report = client.submit(url, 5, method="exact").result(timeout=120).report
    line = next(ln for ln in report.table().splitlines() if ln.startswith("largest spectral"))
    printed = re.findall(r"σr/σr\+1 ([0-9.e+]+)\)", line)
    ratios = [g["ratio"] for g in report["spectral_gaps"]]
    assert printed == [f"{r:.4g}" for r in ratios]
    assert all(1.0 < r < 1.5 for r in ratios) and "1" not in printed, line
