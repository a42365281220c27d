"""svdserve.EOF against xeofs 3.0.6 (xeofs.single.EOF, EOFRotator) and eofs 2 (issue 23, item 8).

The field is eofs' own reference SST (``eofs/tests/data``: 15 times × 11 lat ×
18 lon, 21 land points NaN at every time), as a DataArray with its time, lat
and lon coordinates; xeofs fits the same DataArray with ``solver="full"``
(LAPACK), svdserve with ``solver="full"`` (TSQR).

Tolerances. Both SVDs are backward stable (‖ΔA‖ ≲ c·ε·‖A‖, ε = 2.2e-16), so
eigenvalues agree to ~ε·λ₁ (Weyl) and the singular vectors of mode i to
~ε·λ₁/gap_i (Davis–Kahan). :func:`_tol` computes that bound from the
reference spectrum of each case (the smallest gap among the modes compared and
the next one) and allows 1000 times it: √n ≈ 14 for norms over the grid, a
few more for the scalings and the rotation's iterates (which both codes start
from the same loadings and stop at the same iteration). Any real error (a
wrong weight, scaling, sign, mode or mask) is O(1e-3) or larger; the bound
itself stays below 1e-10 here (checked).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import xarray as xr

import svdserve

eofs_pkg = pytest.importorskip("eofs")
xe = pytest.importorskip("xeofs")
from eofs.standard import Eof  # noqa: E402
from eofs.tests.reference import reference_solution  # noqa: E402

EPS = np.finfo(np.float64).eps
N_MODES = 4


@pytest.fixture(scope="module")
def sst():
    sol = reference_solution("standard", "equal")
    raw = np.load(os.path.join(os.path.dirname(eofs_pkg.__file__), "tests", "data", "sst.npy"))
    return xr.DataArray(raw, dims=("time", "lat", "lon"), name="sst",
                        coords={"time": np.asarray(sol["time"]),
                                "lat": np.asarray(sol["latitude"]),
                                "lon": np.asarray(sol["longitude"])})


def _tol(model, n):
    """1000·ε·λ₁/min gap over modes 1..n+1 of the reference model (see the module docstring)."""
    lam = np.asarray(model.explained_variance().values)
    gap = np.min(-np.diff(lam[:n + 1]))
    tol = 1000 * EPS * lam[0] / gap
    assert tol < 1e-10, tol  # the comparison stays meaningful
    return tol


def _signs(ours, ref):
    """±1 per mode matching ours to ref (EOF signs are arbitrary), over all variables."""
    ours, ref = (ours, ref) if isinstance(ours, list) else ([ours], [ref])
    dot = sum((o.fillna(0) * r.fillna(0)).sum([d for d in o.dims if d != "mode"])
              for o, r in zip(ours, ref))
    return np.sign(dot)


def _close(a, b, tol):
    """Equal to ``tol`` relative to the largest entry of b, NaN where b is NaN, same dims."""
    assert set(a.dims) == set(b.dims), (a.dims, b.dims)
    a = a.transpose(*b.dims)
    for d in b.dims:
        if d in b.coords:
            np.testing.assert_array_equal(a[d].values, b[d].values)
    av, bv = np.asarray(a.values, dtype=float), np.asarray(b.values, dtype=float)
    np.testing.assert_array_equal(np.isnan(av), np.isnan(bv))
    scale = np.nanmax(np.abs(bv))
    np.testing.assert_allclose(np.nan_to_num(av), np.nan_to_num(bv), rtol=0, atol=tol * scale)


def _check_model(ours, ref, data, tol):
    """Every output of ours against xeofs' ref, signs aligned per mode."""
    s = _signs(ours.components(), ref.components())
    for got, want in zip(*(x if isinstance(x, list) else [x] for x in
                           (ours.components(), ref.components()))):
        _close(got * s, want, tol)
    for norm in (False, True):
        _close(ours.scores(normalized=norm) * s, ref.scores(normalized=norm), tol)
        _close(ours.transform(data, normalized=norm) * s, ref.transform(data, normalized=norm),
               tol)
    _close(ours.explained_variance(), ref.explained_variance(), tol)
    _close(ours.explained_variance_ratio(), ref.explained_variance_ratio(), tol)
    _close(ours.singular_values(), ref.singular_values(), tol)
    got, want = ours.inverse_transform(ours.scores()), ref.inverse_transform(ref.scores())
    for g, w in zip(*(x if isinstance(x, list) else [x] for x in (got, want))):
        _close(g, w, tol)


@pytest.mark.parametrize("kw", [
    {},                                          # plain covariance EOFs
    {"use_coslat": True},                        # √cos φ weights
    {"standardize": True},                       # correlation EOFs
    {"use_coslat": True, "standardize": True},   # both, in xeofs' order
])
def test_eof_matches_xeofs(sst, kw):
    ref = xe.single.EOF(n_modes=N_MODES, solver="full", **kw).fit(sst, dim="time")
    ours = svdserve.EOF(n_modes=N_MODES, solver="full", **kw).fit(sst, dim="time")
    _check_model(ours, ref, sst, _tol(ref, N_MODES))
    comps = ours.components()
    assert comps.dims == ("mode", "lat", "lon") and list(comps["mode"].values) == [1, 2, 3, 4]
    assert int(np.isnan(comps.sel(mode=1)).sum()) == 21  # the land points, restored as NaN


def test_eof_user_weights_match_xeofs(sst):
    """fit(weights=) over one feature dim, broadcast over the other, times √cos φ: xeofs'
    weights (which it wants on every feature dim)."""
    w = xr.DataArray(np.linspace(0.5, 2.0, sst.sizes["lon"]), dims=("lon",),
                     coords={"lon": sst["lon"]})
    ref = xe.single.EOF(n_modes=N_MODES, solver="full", use_coslat=True).fit(
        sst, dim="time", weights=w.broadcast_like(sst.isel(time=0)))
    ours = svdserve.EOF(n_modes=N_MODES, solver="full", use_coslat=True).fit(
        sst, dim="time", weights=w)
    _check_model(ours, ref, sst, _tol(ref, N_MODES))
    with pytest.raises(ValueError, match="feature dims"):
        svdserve.EOF().fit(sst, dim="time", weights=w.rename(lon="x"))


@pytest.mark.parametrize("rotation,power", [("varimax", 1), ("promax", 4)])
def test_eof_rotation_matches_xeofs(sst, rotation, power):
    ref_eof = xe.single.EOF(n_modes=N_MODES, solver="full", use_coslat=True).fit(sst, dim="time")
    ref = xe.single.EOFRotator(n_modes=N_MODES, power=power).fit(ref_eof)
    ours = svdserve.EOF(n_modes=N_MODES, solver="full", use_coslat=True, rotation=rotation,
                        power=max(power, 2)).fit(sst, dim="time")
    assert ours.rotation_.converged
    tol = _tol(ref_eof, N_MODES)
    s = _signs(ours.components(), ref.components())
    _close(ours.components() * s, ref.components(), tol)
    _close(ours.scores() * s, ref.scores(), tol)
    _close(ours.explained_variance(), ref.explained_variance(), tol)
    _close(ours.explained_variance_ratio(), ref.explained_variance_ratio(), tol)
    _close(ours.transform(sst) * s, ref.transform(sst), tol)
    # the rotated modes span the unrotated ones: the field rebuilt from them is the same
    plain = svdserve.EOF(n_modes=N_MODES, solver="full", use_coslat=True).fit(sst, dim="time")
    _close(ours.inverse_transform(ours.scores()), plain.inverse_transform(plain.scores()), tol)


def test_eof_multivariate_list_matches_xeofs(sst, tmp_path, dask_client):
    """Two variables sharing time (the SST, and a station series on other dims),
    standardised: one decomposition of the two side by side, components per variable;
    in memory (a list of DataArrays) and from one store (``array=[...]``, read by the
    worker in panels)."""
    rng = np.random.default_rng(3)
    stations = xr.DataArray(5 * rng.standard_normal((15, 3)) + 10 * sst.isel(lat=5, lon=[0, 7, 9])
                            .values, dims=("time", "station"), name="obs",
                            coords={"time": sst["time"], "station": ["a", "b", "c"]})
    data = [sst, stations]
    ref = xe.single.EOF(n_modes=N_MODES, solver="full", standardize=True).fit(data, dim="time")
    ours = svdserve.EOF(n_modes=N_MODES, solver="full", standardize=True).fit(data, dim="time")
    _check_model(ours, ref, data, _tol(ref, N_MODES))
    comps = ours.components()
    assert [c.dims for c in comps] == [("mode", "lat", "lon"), ("mode", "station")]
    url = str(tmp_path / "two.zarr")
    xr.Dataset({"sst": sst, "obs": stations}).chunk({"time": 5}).to_zarr(url, consolidated=False)
    stored = svdserve.EOF(n_modes=N_MODES, solver="full", standardize=True, array=["sst", "obs"],
                          client=dask_client).fit(url, dim="time")
    assert [v["name"] for v in stored.report_["variables"]] == ["sst", "obs"]
    _check_model(stored, ref, data, _tol(ref, N_MODES))
    with pytest.raises(ValueError, match="share the samples"):
        svdserve.EOF(n_modes=2).fit([sst, stations.isel(time=slice(0, 10))], dim="time")


def test_eof_north_errors_match_eofs(sst):
    """North's errors of the fitted modes equal eofs' northTest (N = the 15 times), and the
    overlapping pairs are flagged; nothing but the fit is used (U for n_eff="lag1")."""
    anom = sst.values - sst.values.mean(axis=0)
    solver = Eof(anom)
    ours = svdserve.EOF(n_modes=14, solver="full").fit(sst, dim="time")
    ne = ours.north_errors()
    lam, err = solver.eigenvalues(14), solver.northTest(14)
    # eigenvalues to ~ε·λ₁ (Weyl); the error one rounding more: 100·ε·k relative to λ₁
    np.testing.assert_allclose(ne["eigenvalue"], lam, rtol=0, atol=100 * EPS * 14 * lam[0])
    np.testing.assert_allclose(ne["error"], err, rtol=0, atol=100 * EPS * 14 * err[0])
    np.testing.assert_allclose(ne["error_ratio"], solver.northTest(14, vfscaled=True), rtol=0,
                               atol=100 * EPS * 14)
    expect = [[i + 1, i + 2] for i in range(13) if lam[i] - err[i] <= lam[i + 1] + err[i + 1]]
    assert ne.attrs["degenerate_pairs"] == expect and [4, 5] in expect
    assert list(np.flatnonzero(ne["degenerate"].values) + 1) == [p[0] for p in expect]
    lag1 = ours.north_errors(n_eff="lag1")
    assert lag1.attrs["n_eff_method"] == "lag1" and np.all(lag1["n_eff"] != 15)


def test_eof_fit_from_zarr_store_in_panels(sst, tmp_path, dask_client):
    """A store path is decomposed by the worker panel by panel (never loaded here), the
    latitude weights read from the store's coordinate; the same EOFs as in memory. The
    2×2 spatial chunks that are all land are absent from the store."""
    url = str(tmp_path / "sst.zarr")
    sst.chunk({"time": 5, "lat": 2, "lon": 2}).to_dataset().to_zarr(url, consolidated=False)
    ours = svdserve.EOF(n_modes=N_MODES, solver="full", use_coslat=True, panel_bytes=2000,
                        client=dask_client).fit(url, dim="time")
    assert ours.report_["plan"]["panels"] > 1 and ours.report_["scaling"]["weights"] == "coslat"
    ref = xe.single.EOF(n_modes=N_MODES, solver="full", use_coslat=True).fit(sst, dim="time")
    _check_model(ours, ref, sst, _tol(ref, N_MODES))
    assert ours.components()["lat"].attrs == sst["lat"].attrs


def test_eof_errors_name_the_problem(sst):
    with pytest.raises(ValueError, match="'depth'"):
        svdserve.EOF().fit(sst, dim="depth")
    with pytest.raises(ValueError, match="n_modes >= 2"):
        svdserve.EOF(n_modes=1, rotation="varimax").fit(sst, dim="time")
    with pytest.raises(TypeError, match="xarray.DataArray"):
        svdserve.EOF().fit(sst.values, dim="time")
    with pytest.raises(ValueError, match="latitude"):
        svdserve.EOF(use_coslat=True).fit(sst.rename(lat="y"), dim="time")
    model = svdserve.EOF(n_modes=2, solver="full").fit(sst, dim="time")
    bad = sst.copy()
    i, j = np.argwhere(~np.isnan(sst.values[0]))[0]
    bad[0, i, j] = np.nan  # an ocean point
    with pytest.raises(svdserve.client.MissingValuesError, match="not masked"):
        model.transform(bad)
