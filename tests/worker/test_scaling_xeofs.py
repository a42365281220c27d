"""Weighted and standardised EOFs against xeofs 3.0.6 on the same field (issue 23, items 1-2),
and the pass count: weighting and standardising read A no more often.

The field (time, lat, lon) holds three modes of well separated amplitude plus
noise of relative size 1e-3, NaN over "land" (whole chunks of it, so
``xarray.to_zarr`` leaves them unwritten), features of very different spread
(standardising matters) and one constant feature (xeofs divides it by
float32's ε: it becomes 0).

Tolerances (ε = 2.2e-16): the exact method is backward stable, ‖E‖ ≤
100·√max(m, n)·ε·σ₁ (``tests/_check``), so σ agrees to that relative to σ₁
(Weyl) and the first three components, whose gaps to their neighbours are
≥ 0.2·σ₁ by construction, to ‖E‖/gap ≤ 500·√max(m, n)·ε (Wedin).
The randomized method with q ≥ 1 power iterations converges on these three
modes with σ₄/σ₃ ≈ 1e-3 noise: its error is about (σ₄/σ₃)^(2q+1) ≈ 1e-15
relative (Halko et al. Thm 10.6 with q = 2), so the same bound is used.
"""

from __future__ import annotations

import numpy as np
import pytest

xe = pytest.importorskip("xeofs")
xr = pytest.importorskip("xarray")

from svdserve.worker import InvalidInputError, svd  # noqa: E402

from tests._check import EPS  # noqa: E402

K = 3


def _field(n_time, seed=0):
    rng = np.random.default_rng(seed)
    lat = np.linspace(-80.0, 80.0, 8)
    lon = np.arange(0.0, 360.0, 30.0)
    n = lat.size * lon.size
    spread = rng.uniform(0.1, 10.0, n)
    modes = np.linalg.qr(rng.standard_normal((n, K)))[0].T * 10.0  # orthonormal patterns ×10
    pcs = np.linalg.qr(rng.standard_normal((n_time, K)))[0] * np.array([30.0, 15.0, 5.0])
    x = pcs @ modes + 1e-3 * rng.standard_normal((n_time, n))
    x = x * spread + 100.0
    x[:, 5] = 3.0  # a constant feature
    x = x.reshape(n_time, lat.size, lon.size)
    x[:, :4, :3] = np.nan  # "land": whole (4, 3) chunks
    return xr.DataArray(x, dims=("time", "lat", "lon"), name="t2m",
                        coords={"time": np.arange(n_time), "lat": lat, "lon": lon})


def _store(da, tmp_path):
    path = str(tmp_path / "field.zarr")
    da.to_dataset().to_zarr(path, encoding={"t2m": {"chunks": (da.shape[0], 4, 3)}},
                            mode="w")
    return path


def _xeofs(da, **kw):
    model = xe.single.EOF(n_modes=K, **kw)
    model.fit(da, dim="time")
    comps = model.components().stack(f=("lat", "lon")).values  # (mode, feature), NaN on land
    scores = model.scores(normalized=False).values  # (mode, time)
    return model.explained_variance().values, comps, scores


def _check(res, da, ref, tol):
    var, comps, scores = ref
    m = da.shape[0]
    s1 = res.S[0]
    np.testing.assert_allclose(res.S**2 / (m - 1), var, rtol=0, atol=2 * tol * s1**2 / (m - 1))
    keep = ~np.isnan(comps[0])
    vt = np.asarray(res.Vt)[:, keep]
    signs = np.sign(np.sum(vt * comps[:, keep], axis=1))
    np.testing.assert_allclose(vt * signs[:, None], comps[:, keep], atol=5 * tol)  # unit vectors: Wedin, see the docstring
    u = np.asarray(res.U).T * res.S[:, None] * signs[:, None]
    np.testing.assert_allclose(u, scores, atol=5 * tol * s1)


@pytest.mark.parametrize("n_time", [150, 40], ids=["tall", "wide"])
@pytest.mark.parametrize("kw", [{"use_coslat": True}, {"standardize": True},
                                {"standardize": True, "use_coslat": True}],
                         ids=["coslat", "standardize", "both"])
@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_against_xeofs(tmp_path, n_time, kw, method):
    da = _field(n_time)
    path = _store(da, tmp_path)
    n = da.shape[1] * da.shape[2]
    tol = 500 * np.sqrt(max(n_time, n)) * EPS  # see the module docstring
    res = svd(path, K, array="t2m", sample_dims=("time",), missing="mask", center=True,
              method=method, n_iter=2, weights="coslat" if kw.get("use_coslat") else None,
              standardize=kw.get("standardize", False), client=False)
    _check(res, da, _xeofs(da, **kw), tol)
    assert res.report["scaling"]["standardize"] == kw.get("standardize", False)
    assert res.report["input"]["absent_chunks"] > 0  # the all-land chunks were never written


@pytest.mark.parametrize("shape", [(120, 24), (24, 120)], ids=["tall", "wide"])
@pytest.mark.parametrize("method", ["exact", "randomized", "sketch"])
def test_scaling_costs_no_pass(shape, method):
    """The same passes and reads with and without weights and standardize."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal(shape) @ np.diag(rng.uniform(1, 3, shape[1])) + 4.0
    kw = {"method": method, "center": True, "client": False, "panel_bytes": 8 * shape[1] * 16,
          "n_iter": 1}
    plain = svd(a, 4, **kw)
    w = rng.uniform(0.5, 1.5, shape[1])
    weighted = svd(a, 4, weights=w, **kw)
    assert (weighted.passes, weighted.reads) == (plain.passes, plain.reads)
    if method == "sketch" and shape[0] > shape[1]:
        return  # refused (test_standardize_refusals)
    std = svd(a, 4, weights=w, standardize=True, **kw)
    assert (std.passes, std.reads) == (plain.passes, plain.reads)


def test_standardize_refusals():
    a = np.random.default_rng(2).standard_normal((60, 10))
    for kw in ({"method": "sketch", "center": True}, {"method": "randomized", "n_iter": 0,
                                                      "center": True},
               {"method": "exact"}):
        with pytest.raises(InvalidInputError) as exc:
            svd(a, 2, standardize=True, client=False, **kw)
        assert exc.value.field == "standardize"
    for bad in ("cos", [1.0, -1.0], [np.nan] * 10, [1.0] * 7):
        with pytest.raises(InvalidInputError) as exc:
            svd(a, 2, weights=bad, client=False)
        assert exc.value.field == "weights"
    with pytest.raises(InvalidInputError, match="latitude") as exc:
        svd(a, 2, weights="coslat", client=False)
    assert exc.value.field == "weights"


def _two_fields(n_time, seed=3):
    """Two variables on different grids sharing ``time``, coupled through one mode."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_time)
    pcs = np.linalg.qr(rng.standard_normal((n_time, K)))[0] * np.array([40.0, 20.0, 8.0])
    sst = (pcs @ rng.standard_normal((K, 20)) + 1e-3 * rng.standard_normal((n_time, 20))) \
        * rng.uniform(0.5, 4.0, 20) + 15.0
    slp = (pcs @ rng.standard_normal((K, 18)) + 1e-3 * rng.standard_normal((n_time, 18))) \
        * 100.0 + 1000.0
    a = xr.DataArray(sst.reshape(n_time, 4, 5), dims=("time", "lat", "lon"), name="sst",
                     coords={"time": t, "lat": np.linspace(-40, 40, 4), "lon": np.arange(5.0)})
    b = xr.DataArray(slp.reshape(n_time, 3, 6), dims=("time", "latitude", "longitude"),
                     name="slp", coords={"time": t, "latitude": np.linspace(-30, 30, 3),
                                         "longitude": np.arange(6.0)})
    return a, b


@pytest.mark.parametrize("n_time", [80, 24], ids=["tall", "wide"])
@pytest.mark.parametrize("stored", [True, False], ids=["zarr-group", "in-memory"])
def test_multivariate_against_xeofs(tmp_path, n_time, stored):
    """A list of variables (xeofs: each scaled on its own, then concatenated, no whole-variable
    normalisation), standardised and coslat-weighted; components split back per variable."""
    a, b = _two_fields(n_time)
    model = xe.single.EOF(n_modes=K, standardize=True, use_coslat=True)
    model.fit([a, b], dim="time")
    var = model.explained_variance().values
    comps = [c.stack(f=c.dims[1:]).values for c in model.components()]
    if stored:
        path = str(tmp_path / "ds.zarr")
        xr.Dataset({"sst": a, "slp": b}).to_zarr(path, mode="w")
        source, array = path, ["sst", "slp"]
    else:
        source, array = [a, b], None
    res = svd(source, K, array=array, sample_dims=("time",), center=True, standardize=True,
              weights="coslat", method="exact", client=False)
    tol = 500 * np.sqrt(38) * EPS  # Weyl / Wedin as in the module docstring (gaps >= 0.2 σ₁)
    np.testing.assert_allclose(res.S**2 / (n_time - 1), var, rtol=0,
                               atol=2 * tol * res.S[0] ** 2 / (n_time - 1))
    vt = np.asarray(res.Vt)
    signs = np.sign(np.sum(vt[:, :20] * comps[0], axis=1))
    for entry, ref, name, shape in zip(res.report["variables"], comps, ("sst", "slp"),
                                       ((4, 5), (3, 6))):
        lo, hi = entry["columns"]
        np.testing.assert_allclose(vt[:, lo:hi] * signs[:, None], ref, atol=5 * tol)
        assert entry["name"] == name and tuple(entry["shape"][1:]) == shape
    fractions = np.sum([e["mode_fraction"] for e in res.report["variables"]], axis=0)
    np.testing.assert_allclose(fractions, 1.0, atol=10 * EPS)  # unit-norm components
    energy = sum(e["energy_fraction"] for e in res.report["variables"])
    assert abs(energy - 1.0) <= 10 * EPS
    assert len(res.report["variables"][1]["coords"]["latitude"]) == 3


def test_multivariate_errors(tmp_path):
    a, b = _two_fields(30)
    with pytest.raises(InvalidInputError) as exc:
        svd([a, b.isel(time=slice(0, 20))], 2, sample_dims=("time",), client=False)
    assert exc.value.field == "array"
    with pytest.raises(InvalidInputError) as exc:
        svd(np.zeros((4, 4)), 2, array=["x", "x"], client=False)
    assert exc.value.field == "array"


def test_energy_target_on_the_weighted_field():
    """An energy target (exact and the blocked randomized QB) counts the energy of the
    weighted field: both pick the rank NumPy's SVD of (A − mean)·diag(w) needs."""
    rng = np.random.default_rng(4)
    a = (rng.standard_normal((300, 6)) @ rng.standard_normal((6, 40))
         + 1e-3 * rng.standard_normal((300, 40)))
    w = np.r_[np.full(20, 0.01), np.ones(20)]  # the first half nearly switched off
    s = np.linalg.svd((a - a.mean(axis=0)) * w, compute_uv=False)
    want = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), 0.85) + 1)
    assert want == 4  # unweighted it would be 5: the test tells the two apart
    for method in ("exact", "randomized"):
        res = svd(a, energy=0.85, weights=w, center=True, method=method, client=False,
                  block_size=2, panel_bytes=8 * 40 * 64)
        assert res.rank == want, method


def test_in_memory_dataarray_against_xeofs():
    """One xarray DataArray in memory: its own latitude gives "coslat", the result keeps its
    dimensions and coordinates (tolerance as in the module docstring)."""
    da = _field(60).fillna(0.0)  # in memory, no land: xeofs and the matrix agree directly
    res = svd(da, K, sample_dims=("time",), center=True, weights="coslat", method="exact",
              client=False)
    n = da.shape[1] * da.shape[2]
    _check(res, da, _xeofs(da, use_coslat=True), 500 * np.sqrt(max(60, n)) * EPS)
    assert res.labels["feature_dims"] == ["lat", "lon"]
    np.testing.assert_array_equal(res.labels["coords"]["lat"][0], da["lat"].values)


@pytest.mark.parametrize("standardize", [False, True])
def test_exact_reapply_route_with_scaling(standardize):
    """σ₁/σ_k = 1e4.4 > 1e3: U is formed by re-reading the panels as pass 1 read them
    (unscaled when the standard deviations came after pass 1) and applying the tree's Q to
    U_R of R·D. Tolerances: σ by Weyl, 100·√m·ε·σ₁; U by Davis–Kahan, that over the
    smallest gap between the 16 leading singular values (the graded spectrum halves each
    step)."""
    rng = np.random.default_rng(1)
    m, n = 300, 20
    u = np.linalg.qr(rng.standard_normal((m, n)))[0]
    v = np.linalg.qr(rng.standard_normal((n, n)))[0]
    a = (u * np.logspace(0, -6, n)) @ v.T * rng.uniform(0.5, 3, n) + 2.0
    w = rng.uniform(0.5, 2.0, n)
    res = svd(a, 15, method="exact", center=True, standardize=standardize, weights=w,
              client=False, panel_bytes=8 * n * 50)
    assert res.report["u_route"] == "reapply"
    x = a - a.mean(axis=0)
    if standardize:
        x = x / np.maximum(x.std(axis=0), np.finfo(np.float32).eps)
    uu, s, _ = np.linalg.svd(x * w, full_matrices=False)
    err = 100 * np.sqrt(m) * EPS * s[0]
    np.testing.assert_allclose(res.S, s[:15], rtol=0, atol=err)
    gap = np.min(-np.diff(s[:16]))
    cos = np.abs(np.sum(res.U * uu[:, :15], axis=0))
    np.testing.assert_allclose(cos, 1.0, rtol=0, atol=err / gap)
