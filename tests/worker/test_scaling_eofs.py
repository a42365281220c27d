"""Weighted EOFs against eofs 2.0.0's stored reference solutions (issue 23, item 1).

eofs ships its reference solutions inside the package (``eofs/tests/data``):
an SST anomaly field of shape (time 15, latitude 11, longitude 18) with 21
land points (NaN at every time), and for each weighting (``equal``,
``latitude`` = √cos φ, ``area`` = √(normalised cell area)) the eigenvalues,
EOFs and PCs of ``eofs.standard.Eof(sst, weights=w)`` (centred, ddof = 1),
computed by LAPACK in float64. eofs' own tests compare at ``numpy.ma.allclose``
defaults (rtol 1e-5); we hold ours to the backward-error bounds instead
(ε = 2.2e-16, the same reasoning as ``tests/client/test_client_eof_post.py``):

- eigenvalues: Weyl, |Δλ| ≤ 2‖E‖·σ₁/(m − 1) with ‖E‖ ≲ 100·√n·ε·σ₁ (n = 198),
  ≈ 3e-13·λ₁: ``TOL_VAL = 1e-12`` relative to λ₁;
- EOFs and PCs (relative to their largest entry): Davis–Kahan, ε·λ₁/gap with
  the smallest gap λ₁₃ − λ₁₄ = 0.0178 against λ₁ = 14.6, i.e. 1.8e-13, times
  √n ≈ 14 over the grid: ``TOL_VEC = 1e-11`` (observed ≤ 4e-14);
- the sketch solves two small least-squares problems with Gaussian sketches
  (ΦQ of 15×14, ΨᵀP), whose condition numbers (≈ 1e2 each for such nearly
  square Gaussian matrices) multiply the error: ``TOL_SKETCH = 1e-9``
  (observed ≤ 5e-12). A wrong weight, sign or mode is O(1e-3) or larger.

The field is written by ``xarray.to_zarr`` in chunks of (15, 3, 1): 4 of them
lie entirely over land and are all NaN, so zarr does not write them (absent
chunks read as the fill value NaN); ``missing="mask"`` drops those features as
eofs does. Every method is run: at rank 14 = m − 1 the randomized basis
(l = min(k + p, m) = 15) and the sketch (range 14, core 15) span the whole
centred field, so they are exact up to rounding as well.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

eofs = pytest.importorskip("eofs")
xr = pytest.importorskip("xarray")

from svdserve.worker import svd  # noqa: E402
from svdserve.worker._scaling import feature_weights  # noqa: E402

DATA = os.path.join(os.path.dirname(eofs.__file__), "tests", "data")

# see the module docstring
TOL_VAL, TOL_VEC, TOL_SKETCH = 1e-12, 1e-11, 1e-9


def _load(name):
    return np.load(os.path.join(DATA, f"{name}.npy"))


@pytest.fixture(scope="module")
def sst_store(tmp_path_factory):
    """The reference SST written by xarray.to_zarr with all-land chunks left absent."""
    sst = _load("sst")
    with warnings.catch_warnings():  # land: the mean of an all-NaN column is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        sst = sst - np.nanmean(sst, axis=0)  # as eofs' reference.py prepares it
    da = xr.DataArray(sst, dims=("time", "latitude", "longitude"), name="sst",
                      coords={"time": _load("time"), "latitude": _load("latitude"),
                              "longitude": _load("longitude")})
    path = str(tmp_path_factory.mktemp("eofs") / "sst.zarr")
    da.to_dataset().to_zarr(path, encoding={"sst": {"chunks": (15, 3, 1)}}, mode="w")
    return path, sst


def test_store_has_absent_land_chunks(sst_store):
    path, _ = sst_store
    res = svd(path, 1, array="sst", sample_dims=("time",), missing="mask", client=False)
    assert res.report["input"]["absent_chunks"] == 4  # the all-land chunks were not written


def _sign_match(x, ref):
    """Rows of ``x`` with the sign of ``ref`` (eofs' ``sign_adjustments``)."""
    s = np.sign(np.sum(x * ref, axis=1))
    return x * s[:, None]


@pytest.mark.parametrize("scheme,kind", [("equal", None), ("latitude", "coslat"),
                                         ("area", "area")])
@pytest.mark.parametrize("method", ["exact", "randomized", "sketch"])
def test_against_eofs_reference(sst_store, scheme, kind, method):
    path, sst = sst_store
    res = svd(path, 14, array="sst", sample_dims=("time",), missing="mask", center=True,
              method=method, weights=kind, client=False)
    eig = _load(f"eigenvalues.{scheme}")
    ref_eofs = _load(f"eofs.{scheme}").reshape(14, -1)
    ref_pcs = _load(f"pcs.{scheme}").T
    m = sst.shape[0]
    tol = TOL_SKETCH if method == "sketch" else TOL_VEC
    np.testing.assert_allclose(res.S**2 / (m - 1), eig, rtol=0,
                               atol=(TOL_SKETCH if method == "sketch" else TOL_VAL) * eig[0])
    keep = ~np.isnan(ref_eofs[0])
    assert np.array_equal(res.mask, ~keep)
    vt = _sign_match(np.asarray(res.Vt)[:, keep], ref_eofs[:, keep])
    np.testing.assert_allclose(vt, ref_eofs[:, keep], rtol=0,
                               atol=tol * np.abs(ref_eofs[:, keep]).max())
    pcs = np.asarray(res.U).T * res.S[:, None]  # eofs pcscaling=0: U·S
    pcs = _sign_match(pcs, ref_pcs)
    np.testing.assert_allclose(pcs, ref_pcs, rtol=0, atol=tol * np.abs(ref_pcs).max())
    assert res.passes == {"exact": 2, "randomized": 3, "sketch": 1}[method]
    if kind is not None:
        assert res.report["scaling"]["weights"] == kind
        ref_w = _load(f"weights.{scheme}").ravel()
        np.testing.assert_allclose(res.scale, ref_w, rtol=1e-14)  # the same formula, to ε


def test_area_weights_are_eofs_area_weights(sst_store):
    """√(normalised cell area) with bounds half-way between the coordinates (iris' guessed
    bounds) reproduces eofs' stored weights to rounding (relative 1e-14: a few ε through
    sin and sqrt)."""
    labels = {"dims": ["time", "latitude", "longitude"], "shape": [15, 11, 18],
              "sample_dims": ["time"], "feature_dims": ["latitude", "longitude"],
              "coords": {"latitude": (_load("latitude"), {}),
                         "longitude": (_load("longitude"), {})}}
    for kind, scheme in (("area", "area"), ("coslat", "latitude")):
        w = feature_weights(kind, 11 * 18, labels)
        np.testing.assert_allclose(w, _load(f"weights.{scheme}").ravel(), rtol=1e-14)


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_on_a_dask_cluster(sst_store, dask_client, method):
    """The per-panel scales travel to real workers (two of them): the same answer, bitwise
    as in this process (the same panel plan and seed make the same factors)."""
    path, _ = sst_store
    kw = {"array": "sst", "sample_dims": ("time",), "missing": "mask", "center": True,
          "method": method, "weights": "area"}
    here = svd(path, 14, client=False, **kw)
    there = svd(path, 14, client=dask_client, **kw)
    np.testing.assert_array_equal(there.S, here.S)
    np.testing.assert_array_equal(np.asarray(there.Vt), np.asarray(here.Vt))
    assert (there.passes, there.reads) == (here.passes, here.reads)
