"""EOF post-processing of a stored result against eofs and xeofs (issue 23, items 4-7).

The field is eofs' own reference SST (shipped in ``eofs/tests/data``: 15 times
× 11 lat × 18 lon, 21 land points NaN at every time). It is written with
``xarray.to_zarr`` in 2×2 spatial chunks, so the chunks that are all land are
absent from the store, decomposed by the worker (exact TSQR, ``center=True``,
``missing="mask"``, every one of the 14 modes of the centred 15-sample field)
into a result store, and opened with the client's reader. Everything the
client computes below reads only that store.

Tolerances. The worker's factors are backward stable: ‖ΔA‖ ≲ c·ε·‖A‖ with
ε = 2.2e-16. Eigenvalues then agree to ~ε·λ₁ (Weyl); singular vectors of mode
i to ~ε·λ₁/gap_i (Davis–Kahan), gap_i = min |λ_i − λ_j|, the smallest here is
λ₁₃ − λ₁₄ = 0.0178 against λ₁ = 14.6, so ε·λ₁/gap ≈ 1.8e-13 relative. eofs'
stored solutions were computed by LAPACK in float64 (same bound). We compare at
``TOL_VEC = 1e-11`` (relative to the largest entry): the Davis–Kahan bound
times √n ≈ 14 for the norms over the grid, times 4 for the scalings by
λ^{±1/2} and the rotation (observed: at most 3.5e-14); any real error (a wrong
scaling, sign, mode, normalisation or sort) is O(1e-3) or larger. The rotation
iterates of both codes start from the same loadings (to that bound) and stop at
the same iteration (105 here), so they agree to the same order.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import xarray as xr

import svdserve.client as sc
from svdserve.client import MissingValuesError, StoredResult
from svdserve.worker import svd

eofs_pkg = pytest.importorskip("eofs")
from eofs.standard import Eof  # noqa: E402
from eofs.tests.reference import reference_solution  # noqa: E402

EPS = np.finfo(np.float64).eps
TOL_VEC = 1e-11  # see the module docstring: ~50·ε·λ₁/min gap
N_MODES = 14


def _close(a, b, tol=TOL_VEC):
    """Equal to ``tol`` relative to the largest entry of b, NaN where b is NaN."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    scale = np.nanmax(np.abs(b))
    np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), rtol=0, atol=tol * scale)


def _align(maps, ref):
    """Sign of each mode (first axis) of maps matched to ref (EOF signs are arbitrary)."""
    flat, rflat = np.nan_to_num(maps.reshape(len(maps), -1)), np.nan_to_num(
        ref.reshape(len(ref), -1))
    return np.sign(np.sum(flat * rflat, axis=1))


@pytest.fixture(scope="module")
def sst():
    sol = reference_solution("standard", "equal")
    raw = np.load(os.path.join(os.path.dirname(eofs_pkg.__file__), "tests", "data", "sst.npy"))
    arr = xr.DataArray(raw, dims=("time", "lat", "lon"), name="sst",
                       coords={"time": np.asarray(sol["time"]), "lat": np.asarray(sol["latitude"]),
                               "lon": np.asarray(sol["longitude"])})
    anom = raw - raw.mean(axis=0)
    return {"sol": sol, "raw": raw, "arr": arr, "anom": anom, "solver": Eof(anom)}


@pytest.fixture(scope="module")
def stored(sst, dask_client, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eofpost")
    url, out = str(tmp / "sst.zarr"), str(tmp / "result.zarr")
    sst["arr"].chunk({"time": 5, "lat": 2, "lon": 2}).to_dataset().to_zarr(
        url, consolidated=False)
    chunks = {os.path.relpath(os.path.join(d, f), url) for d, _, fs in os.walk(url) for f in fs
              if "/c/" in os.path.join(d, f)}
    # lat 0-1 × lon 2-3 is all land: that chunk is absent at every time chunk
    assert not any(c.endswith("c/0/0/1") for c in chunks) and any(
        c.endswith("c/0/0/0") for c in chunks)
    svd(url, N_MODES, array="sst", sample_dims=("time",), missing="mask", center=True,
        method="exact", client=dask_client, out=out)
    svd(url, 4, array="sst", sample_dims=("time",), missing="mask", center=True,
        method="exact", client=dask_client, out=out + "4")
    shutil.rmtree(url)  # everything below reads the result stores and nothing else
    return StoredResult.open(out)


@pytest.fixture(scope="module")
def truncated(stored):
    """The same field's result with only its 4 leading modes (source deleted, like stored)."""
    return StoredResult.open(stored.url + "4")


# -- item 7: scalings ----------------------------------------------------------------------

@pytest.mark.parametrize("scaling", [0, 1, 2])
def test_pcs_and_eofs_scalings_match_eofs(stored, sst, scaling):
    solver, sol = sst["solver"], sst["sol"]
    ref_eofs = solver.eofs(eofscaling=scaling, neofs=N_MODES)
    got = sc.eofs(stored, eofscaling=scaling)
    signs = _align(got, ref_eofs)
    _close(got * signs[:, None, None], ref_eofs)
    _close(np.asarray(sc.pcs(stored, pcscaling=scaling)) * signs,
           solver.pcs(pcscaling=scaling, npcs=N_MODES))
    if scaling == 0:  # eofs' stored reference solution, independent of today's LAPACK
        _close(got * _align(got, np.asarray(sol["eofs"]))[:, None, None],
               np.asarray(sol["eofs"]))


@pytest.mark.parametrize("pcscaling", [0, 1, 2])
def test_covariance_maps_match_eofs(stored, sst, pcscaling):
    solver = sst["solver"]
    ref = solver.eofsAsCovariance(neofs=N_MODES, pcscaling=pcscaling)
    got = sc.eofs_as_covariance(stored, pcscaling=pcscaling)
    _close(got * _align(got, ref)[:, None, None], ref)


def test_correlation_maps_match_eofs(stored, sst):
    ref = np.asarray(sst["sol"]["eofscor"])
    got = sc.eofs_as_correlation(stored)  # exact: the result holds every mode
    signs = _align(got, ref)
    _close(got * signs[:, None, None], ref)
    _close(sc.eofs_as_correlation_truncated(stored) * signs[:, None, None], ref)
    # with the field's std given, any leading subset gives eofs' maps
    std = sst["arr"].std("time", ddof=1)
    _close(sc.eofs_as_correlation(stored, 3, field_std=std) * signs[:3, None, None], ref[:3])


# -- item 5: North ---------------------------------------------------------------------------

def test_north_errors_match_eofs_north_test(stored, sst):
    solver = sst["solver"]
    ne = stored.north_errors()
    # eigenvalues to ~ε·λ₁ (Weyl); the error is λ·√(2/N), one more rounding
    _close(ne.eigenvalues, solver.eigenvalues(N_MODES), 100 * EPS * N_MODES)
    _close(ne.errors, solver.northTest(N_MODES), 100 * EPS * N_MODES)
    _close(ne.scaled_errors, solver.northTest(N_MODES, vfscaled=True), 100 * EPS * N_MODES)
    _close(ne.errors, np.asarray(sst["sol"]["errors"]), 100 * EPS * N_MODES)
    assert ne.n_eff_method == "samples" and np.all(ne.n_eff == 15)
    lam, err = solver.eigenvalues(N_MODES), solver.northTest(N_MODES)
    expect = [(i + 1, i + 2) for i in range(N_MODES - 1) if lam[i] - err[i] <= lam[i + 1] + err[i + 1]]
    assert ne.degenerate_pairs == expect and (1, 2) not in expect and (4, 5) in expect
    rep = stored.report.north_errors(3, n_eff=30)
    _close(rep.errors, lam[:3] * np.sqrt(2 / 30), 100 * EPS)
    assert "degenerate with next" in str(ne)


def test_north_errors_lag1_effective_size(stored, sst):
    pcs = sst["solver"].pcs(npcs=4)
    d = pcs - pcs.mean(axis=0)
    r1 = np.sum(d[1:] * d[:-1], axis=0) / np.sum(d * d, axis=0)
    ne = sc.north_errors(stored, 4, n_eff="lag1")
    _close(ne.lag1, r1, TOL_VEC)  # r₁ is invariant to the sign of a PC; the PCs agree to TOL_VEC
    _close(ne.n_eff, 15 * (1 - r1**2) / (1 + r1**2), TOL_VEC)
    with pytest.raises(ValueError, match="lag1"):
        stored.report.north_errors(n_eff="lag1")


# -- item 6: projection -----------------------------------------------------------------------

@pytest.mark.parametrize("eofscaling", [0, 1, 2])
def test_project_field_with_nan_land_gives_pcs(stored, sst, eofscaling):
    solver = sst["solver"]
    ref = solver.projectField(sst["anom"], neofs=N_MODES, eofscaling=eofscaling)
    got = sc.project_field(stored, sst["raw"], eofscaling=eofscaling)  # NaN at land, centred
    assert not np.isnan(got).any()
    signs = _align(sc.eofs(stored), solver.eofs(neofs=N_MODES))
    _close(got * signs, ref)
    _close(sc.project_field(stored, sst["anom"], eofscaling=eofscaling, center=False) * signs, ref)
    # one map (no sample dim), and a DataArray in another dim order
    _close(sc.project_field(stored, sst["raw"][3], eofscaling=eofscaling) * signs, ref[3])
    arr = sst["arr"].transpose("lon", "time", "lat")
    _close(sc.project_field(stored, arr, eofscaling=eofscaling).reshape(15, -1) * signs, ref)
    lazy = sc.project_field(stored, arr.chunk({"time": 5}), eofscaling=eofscaling)
    assert hasattr(lazy, "dask")  # a dask field stays lazy (after its NaN check)
    _close(np.asarray(lazy).reshape(15, -1) * signs, ref)


def test_project_field_names_unmasked_nan_points(stored, sst):
    field = sst["raw"].copy()
    field[2, 5, 7] = np.nan  # an ocean point
    with pytest.raises(MissingValuesError, match=r"1 point.*'lat': .*'lon': ") as info:
        sc.project_field(stored, field)
    assert info.value.points.tolist() == [5 * 18 + 7]
    with pytest.raises(ValueError, match="shape"):
        sc.project_field(stored, field[:, :, :5])


# -- item 7: reconstruction ---------------------------------------------------------------------

def test_reconstruct_field_chosen_modes_mask_restored(stored, sst):
    import dask.array as da

    solver, sol = sst["solver"], sst["sol"]
    rec = sc.reconstruct_field(stored, [1, 2, 5], add_mean=False)
    assert isinstance(rec, da.Array) and rec.shape == (15, 11, 18)
    rec = rec.compute()
    _close(rec, solver.reconstructedField([1, 2, 5]))
    _close(rec, np.asarray(sol["rcon"]))
    _close(sc.reconstruct_field(stored).compute(), sst["raw"])  # every mode + mean: the field
    _close(sc.reconstruct_field(stored, 3, add_mean=False).compute(),
           solver.reconstructedField(3))
    with pytest.raises(ValueError, match="1-based"):
        sc.reconstruct_field(stored, [0, 1])


# -- item 4: rotation -----------------------------------------------------------------------------

@pytest.mark.parametrize("method,power", [("varimax", 1), ("promax", 4)])
def test_rotation_matches_xeofs(stored, sst, method, power):
    xe = pytest.importorskip("xeofs")
    model = xe.single.EOF(n_modes=N_MODES, solver="full")
    model.fit(sst["arr"], dim="time")
    rot = xe.single.EOFRotator(n_modes=4, power=power).fit(model)
    got = sc.rotate(stored, 4, method, power=power)
    assert got.converged and 1 <= got.n_iter < 1000
    comps = rot.components().transpose("mode", "lat", "lon").values
    _close(got.components, comps)  # sorted and signed as xeofs: no sign alignment needed
    _close(np.asarray(got.scores), rot.scores().transpose("time", "mode").values)
    _close(got.explained_variance, rot.explained_variance().values)
    _close(got.explained_variance_ratio, rot.explained_variance_ratio().values)
    _close(got.rotation_matrix, rot.data["rotation_matrix"].values)
    _close(got.phi, rot.data["phi_matrix"].values)
    if method == "varimax":  # orthogonal: the rotated modes keep the variance of the four
        _close(got.explained_variance.sum(), sst["solver"].eigenvalues()[:4].sum())


def test_truncated_result_correlation_needs_the_std(truncated, sst):
    ref = np.asarray(sst["sol"]["eofscor"])[:4]
    with pytest.raises(ValueError, match="field_std="):
        sc.eofs_as_correlation(truncated)
    std = sst["arr"].std("time", ddof=1)
    got = sc.eofs_as_correlation(truncated, field_std=std.values)
    _close(sc.eofs_as_correlation(truncated, field_std=std.transpose("lon", "lat")), got)
    signs = _align(got, ref)
    _close(got * signs[:, None, None], ref)
    # the rank-4 reconstruction misses variance: its maps are larger in magnitude, not eofs'
    trunc = np.abs(sc.eofs_as_correlation_truncated(truncated))
    assert np.nanmin(trunc - np.abs(got)) > -TOL_VEC and np.nanmax(trunc - np.abs(got)) > 0.1


def test_rotation_reports_non_convergence_and_bad_arguments(stored):
    with pytest.warns(RuntimeWarning, match="did not converge in 2 iterations"):
        rot = sc.rotate(stored, 3, max_iter=2)
    assert not rot.converged and rot.n_iter == 2
    for kwargs, match in [(dict(n_modes=1), "between 2 and 14"),
                          (dict(n_modes=15), "between 2 and 14"),
                          (dict(n_modes=3, method="oblimin"), "'oblimin'"),
                          (dict(n_modes=3, method="promax", power=1), "power")]:
        with pytest.raises(ValueError, match=match):
            sc.rotate(stored, **kwargs)


# -- item 5: North in the energy report, its table and its scree plot -------------------------

def test_report_north_section_table_and_error_bars(stored, sst):
    """The worker's report carries North's errors (N = m) and the overlapping pairs; the
    table prints them and the scree plot draws them as error bars. The source was deleted
    by the fixture: all of it comes from the result store."""
    from matplotlib.container import ErrorbarContainer

    solver = sst["solver"]
    north = stored.report["north"]
    assert north["n_samples"] == 15 and north["n_eff"] == "samples"
    # eigenvalues to ~ε·λ₁ (Weyl), the error one rounding more (as the test above)
    _close(north["eigenvalues"], solver.eigenvalues(N_MODES), 100 * EPS * N_MODES)
    _close(north["errors"], solver.northTest(N_MODES), 100 * EPS * N_MODES)
    expect = [list(p) for p in stored.north_errors().degenerate_pairs]
    assert north["degenerate_pairs"] == expect and [4, 5] in expect and [1, 2] not in expect
    old = sc.EnergyReport({k: v for k, v in stored.report.items() if k != "north"})
    assert old.north["degenerate_pairs"] == expect  # a report of before the section
    line = [ln for ln in stored.report.table().splitlines() if ln.startswith("North")]
    assert line and "N = 15" in line[0] and "4-5" in line[0] and "1-2" not in line[0]
    ax = stored.report.figure().axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1 and "overlapping: " in bars[0].get_label()
    segs = bars[0].lines[2][0].get_segments()  # one vertical segment per kept σ
    s = np.asarray(stored.report.singular_values)
    rel = np.sqrt(2 / 15)
    # the bars are σ·√(1 ± √(2/N)) up to the rounding of that product (a few ε relative)
    np.testing.assert_allclose([seg[1][1] for seg in segs], s * np.sqrt(1 + rel), rtol=10 * EPS)
    np.testing.assert_allclose([seg[0][1] for seg in segs], s * np.sqrt(1 - rel), rtol=10 * EPS)
