"""EnergyReport and StoredResult on result groups written locally (no service).

The same operations on groups written by the real worker are tested in
test_client_service.py.

Tolerances: the fake group holds the dense SVD of A, so reconstructions agree
with the dense product to ``k · eps · σ_1`` per entry; we allow ``1e3 · eps ·
‖A‖_max``-scaled absolute errors (k ≤ 10, σ_1 / ‖A‖_max ≤ ~30 here).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from svdserve import _manifest
from svdserve.client import EnergyReport, StorageAccessError, StoredResult

from tests._check import EPS
from tests._check import fake_report as make_report
from tests._check import write_fake_result as write_result


def _low_rank_plus_noise(rng, m, n, r, noise=1e-3):
    A = rng.standard_normal((m, r)) @ rng.standard_normal((r, n))
    return A + noise * rng.standard_normal((m, n))


@pytest.fixture
def tall(tmp_path):
    rng = np.random.default_rng(0)
    A = _low_rank_plus_noise(rng, 200, 30, 5)
    path = tmp_path / "result.zarr"
    U, s, Vt, _ = write_result(path, A, 10, row_chunk=32)  # 7 row chunks, the last partial
    return A, StoredResult.open(str(path)), s


# -- EnergyReport ----------------------------------------------------------------------------


def test_report_mapping_and_views():
    s = np.array([4.0, 2.0, 1.0])
    rep = EnergyReport(make_report((10, 5), s, total=25.0, s_all=[4.0, 2.0, 1.0, 2.0**0.5, 2.0**0.5]))
    assert rep["rank"] == 3 and len(rep) > 10 and "components" in rep
    assert rep.shape == (10, 5) and rep.rank == 3
    np.testing.assert_array_equal(rep.singular_values, s)
    assert rep.captured_fraction == pytest.approx(21 / 25)
    np.testing.assert_allclose(rep.cumulative_fraction, [16 / 25, 20 / 25, 21 / 25])
    assert rep.rank_for(0.8) == 2
    assert rep.rank_for(0.9) == 4  # beyond k, from the whole spectrum (exact): 23/25 ≥ 0.9
    assert rep.residual(0) == pytest.approx(5.0)
    assert rep.residual(2) == pytest.approx(np.sqrt(5.0))
    # beyond k with the full spectrum (exact method): the tail norm of σ_5 = √2
    assert rep.residual(4) == pytest.approx(np.sqrt(2.0))
    with pytest.raises(ValueError, match="exceeds min"):
        rep.residual(6)
    rep2 = EnergyReport({**rep.to_dict(), "singular_values_all": None})
    with pytest.raises(ValueError, match="method='exact'"):
        rep2.residual(4)
    assert "EnergyReport 10x5" in repr(rep)


def test_report_table_lists_ranks_and_components():
    s = np.array([10.0, 3.0, 1.0, 0.5])
    rep = EnergyReport(make_report((100, 20), s, total=float(np.sum(s**2)) + 0.5))
    text = rep.table()
    lines = text.splitlines()
    assert lines[0].startswith("shape 100 x 20") and "rank 4" in lines[0]
    assert any(line.startswith(" 90.0 %   1 ") for line in lines)  # 100/110.75 ≥ 0.9 at r=1
    assert any(line.startswith(" 99.0 %   3 ") for line in lines)  # 110/110.75
    assert any(line.startswith(" 99.9 %   > 4") for line in lines)  # not reached within k
    comp = [line for line in lines if line.strip().startswith("2 ")]
    assert comp and "3" in comp[0]
    assert len(rep.table(max_rows=2).splitlines()) == len(lines) - 2 + 1  # 2 rows + "... more"


def test_report_plot_writes_png(tmp_path):
    from matplotlib.image import imread

    s = np.logspace(0, -3, 30)
    rep = EnergyReport(make_report((300, 40), s, total=float(np.sum(s**2)) * 1.0001))
    out = rep.plot(tmp_path / "energy.png")
    assert out == str(tmp_path / "energy.png")
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = imread(out)
    assert img.shape[0] == 400 and img.shape[1] == 1000  # figsize (10, 4) at dpi 100
    assert img[..., :3].std() > 0.05  # not blank


# -- StoredResult -------------------------------------------------------------------------------


def test_result_attributes(tall):
    A, res, s = tall
    assert res.shape == (200, 30) and res.rank == 10 and not res.center and res.mean is None
    np.testing.assert_array_equal(res.S, s)
    assert res.U.chunks[0][0] == 32  # lazy, chunked by rows as stored
    assert res.report.rank == 10 and res.method == "exact"
    assert "StoredResult 200x30 rank=10" in repr(res)


@pytest.mark.parametrize("rank", [1, 5, 10])
def test_reconstruction_is_eckart_young_optimal(tall, rank):
    A, res, _ = tall
    Ar = res.reconstruct(rank).compute()
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    best = (U[:, :rank] * s[:rank]) @ Vt[:rank]
    scale = 1e3 * EPS * np.abs(A).max()
    np.testing.assert_allclose(Ar, best, rtol=0, atol=scale)
    # the exact Frobenius error from the report equals the Eckart–Young optimum ...
    optimum = np.sqrt(np.sum(s[rank:] ** 2))
    # ... to eps·‖A‖_F² / optimum (the error is a square root of a difference of squares)
    tol = 100 * EPS * np.sum(A * A) / optimum
    assert res.error(rank) == pytest.approx(optimum, abs=tol)
    assert np.linalg.norm(A - Ar) == pytest.approx(optimum, abs=tol + np.sqrt(A.size) * scale)
    assert res.error(rank, relative=True) == pytest.approx(optimum / np.linalg.norm(A), abs=tol)
    assert res.storage_ratio(rank) == pytest.approx(rank * (200 + 30 + 1) / (200 * 30))


def test_reconstruct_rows_reads_only_those_rows(tall):
    A, res, _ = tall
    full = res.reconstruct(5).compute()
    part = res.reconstruct(5, rows=slice(40, 70))
    assert part.shape == (30, 30)
    np.testing.assert_allclose(part.compute(), full[40:70], rtol=0, atol=1e-13)
    picked = res.reconstruct(5, rows=[3, 150]).compute()
    np.testing.assert_allclose(picked, full[[3, 150]], rtol=0, atol=1e-13)


def test_rank_validation(tall):
    _, res, _ = tall
    with pytest.raises(ValueError, match="between 0 and 10"):
        res.reconstruct(11)
    with pytest.raises(ValueError, match="larger rank"):
        res.storage_ratio(12)
    with pytest.raises(TypeError):
        res.error(2.5)


def test_to_zarr_writes_the_reconstruction(tall, tmp_path):
    import zarr

    A, res, _ = tall
    url = res.to_zarr(tmp_path / "A3.zarr", 3)
    z = zarr.open_array(url, mode="r")
    assert z.shape == (200, 30) and z.chunks == (32, 30) and z.metadata.zarr_format == 3
    np.testing.assert_allclose(z[...], res.reconstruct(3).compute(), rtol=0, atol=1e-14)
    assert z.attrs["svdserve"]["reconstruction_rank"] == 3
    with pytest.raises(StorageAccessError, match="overwrite=True"):
        res.to_zarr(tmp_path / "A3.zarr", 3)
    res.to_zarr(tmp_path / "A3.zarr", 2, overwrite=True)


def test_centered_result(tmp_path):
    rng = np.random.default_rng(1)
    A = _low_rank_plus_noise(rng, 80, 12, 3) + 5.0  # large mean
    write_result(tmp_path / "r.zarr", A, 4, center=True)
    res = StoredResult.open(tmp_path / "r.zarr")
    assert res.center and res.mean.shape == (12,)
    Ar = res.reconstruct(4).compute()
    X = A - A.mean(axis=0)
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    optimum = np.sqrt(np.sum(s[4:] ** 2))
    assert np.linalg.norm(A - Ar) == pytest.approx(optimum, rel=1e-8)
    assert res.error(4) == pytest.approx(optimum, rel=1e-8)
    with pytest.raises(ValueError, match="center=False"):
        res.lstsq(np.ones(80))
    pca = res.pca(2)
    assert pca.n_components_ == 2


def test_pca_needs_centering(tall):
    with pytest.raises(ValueError, match="center=True"):
        tall[1].pca()


def test_lstsq_from_stored_factors(tall, tmp_path):
    """Full rank k = n: equals numpy.linalg.lstsq; b as vector, matrix and Zarr URL."""
    import zarr

    rng = np.random.default_rng(2)
    A = rng.standard_normal((120, 6))
    write_result(tmp_path / "full.zarr", A, 6, row_chunk=25)
    res = StoredResult.open(tmp_path / "full.zarr")
    b = rng.standard_normal(120)
    B = rng.standard_normal((120, 2))
    # κ(A) ~ 2 for a Gaussian 120×6: agreement to 1e3 eps relative
    out = res.lstsq(b)
    np.testing.assert_allclose(out.x, np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e3 * EPS * 10)
    assert out.residual_norm == pytest.approx(np.linalg.norm(b - A @ out.x), rel=1e-12)
    outB = res.lstsq(B)
    np.testing.assert_allclose(outB.x, np.linalg.lstsq(A, B, rcond=None)[0], rtol=1e-11)
    zarr.create_array(str(tmp_path / "b.zarr"), data=b, chunks=(50,))
    outz = res.lstsq(str(tmp_path / "b.zarr"))
    np.testing.assert_allclose(outz.x, out.x, rtol=1e-14)
    tik = res.lstsq(b, alpha="gcv")
    assert tik.method == "tikhonov" and tik.alpha > 0
    with pytest.raises(ValueError, match=r"shape \(120,\)"):
        res.lstsq(np.ones(7))


def test_refuses_a_group_without_manifest(tmp_path):
    rng = np.random.default_rng(3)
    write_result(tmp_path / "r.zarr", rng.standard_normal((20, 5)), 2)
    os.remove(_manifest.path_of(tmp_path / "r.zarr"))
    with pytest.raises(StorageAccessError, match="manifest.json"):
        StoredResult.open(tmp_path / "r.zarr")


def test_refuses_a_group_that_contradicts_its_manifest(tmp_path):
    rng = np.random.default_rng(4)
    write_result(tmp_path / "r.zarr", rng.standard_normal((20, 5)), 2)
    path = Path(_manifest.path_of(tmp_path / "r.zarr"))
    manifest = json.loads(path.read_text())
    manifest["arrays"]["U"]["shape"] = [21, 2]
    path.write_text(json.dumps(manifest))
    with pytest.raises(StorageAccessError, match="does not match its manifest"):
        StoredResult.open(tmp_path / "r.zarr")


# -- the whole spectrum (exact) and the plot ---------------------------------------------------


def _exact_report(k=5, n=64, decay=0.95):
    """An exact report of rank k over a slowly decaying spectrum of n values."""
    s_all = decay ** np.arange(n) * 10.0
    total = float(np.sum(s_all**2))
    return EnergyReport(make_report((300, n), s_all[:k], total=total, s_all=s_all)), s_all


def test_exact_report_answers_rank_for_beyond_k():
    rep, s_all = _exact_report()
    cum = np.cumsum(s_all**2) / np.sum(s_all**2)
    for fraction in (0.5, 0.9, 0.95, 0.99):  # 0.5: not an energy level of the report
        want = int(np.searchsorted(cum, fraction)) + 1  # no cum within 1e-10 of these
        assert rep.rank_for(fraction) == want > 5
    np.testing.assert_allclose(rep.cumulative_fraction_all, cum, rtol=1e-13)  # κ·eps of a sum
    r90 = rep.rank_for(0.9)
    assert any(line.startswith(f" 90.0 %   {r90:<8d} ") and "beyond k = 5" in line
               for line in rep.table().splitlines())
    # a report stored before the worker used the whole spectrum: rank null, yet s_all there
    old = rep.to_dict()
    old["energy_ranks"] = [{**e, "rank": None, "more_than_k": True, "storage_ratio": None}
                           for e in old["energy_ranks"]]
    assert EnergyReport(old).rank_for(0.9) == r90
    # without the whole spectrum: more than k is all one can say
    assert EnergyReport({**old, "singular_values_all": None}).rank_for(0.9) is None


def _rendered(rep, path):
    """The figure of ``rep.plot``, rendered to ``path`` with the Agg canvas."""
    fig = rep.figure()
    fig.savefig(path, format="png")
    return fig


def _visible_ticks(ax):
    lo, hi = ax.get_xlim()
    return [t for t in ax.get_xticks() if lo <= t <= hi]


@pytest.mark.parametrize("k", [1, 5, 15])
def test_plot_has_integer_rank_ticks_and_every_level_in_the_legend(tmp_path, k):
    s = np.logspace(0, -1, k)
    # total well above Σσ²: the 90/95/99 % levels are not reached within k
    rep = EnergyReport(make_report((300, 40), s, total=float(np.sum(s**2)) * 2.0))
    fig = _rendered(rep, tmp_path / "p.png")
    for ax in fig.axes[:2]:
        ticks = _visible_ticks(ax)
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert ax.get_xlim() == (0.5, k + 0.5)  # every rank, with half a rank of margin
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    for level in ("90", "95", "99"):
        assert f"{level} %: not reached within k={k}" in legend, legend


def test_plot_draws_the_whole_spectrum_and_marks_k(tmp_path):
    rep, s_all = _exact_report()
    fig = _rendered(rep, tmp_path / "p.png")
    scree, energy = fig.axes[:2]
    assert scree.get_xlim() == (0.5, 64.5)
    assert max(len(line.get_xdata()) for line in scree.get_lines()) == 64  # all σ drawn
    r = {f: rep.rank_for(f) for f in (0.9, 0.95, 0.99)}
    legend = [t.get_text() for t in energy.get_legend().get_texts()]
    assert "k = 5 (computed rank)" in legend
    assert [f"{100 * f:g} %: r={r[f]} (> k)" for f in r] == [t for t in legend if "%:" in t]
    assert all(float(t).is_integer() for t in _visible_ticks(scree))
