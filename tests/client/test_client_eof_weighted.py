"""The client's EOF post-processing on *weighted* results against eofs 2.0.0's stored
reference solutions (issue 23, item 1 with items 5-7): latitude (√cos φ) and area weights.

eofs' conventions for a weighted analysis, which the client follows through the result's
``scale`` (the weights D): the EOFs and PCs are those of the weighted field;
``eofsAsCovariance`` is the covariance of the PCs with the field *as given* (the weights
divided out); ``reconstructedField`` divides the weights out; ``projectField`` weights the
new field first; North's errors depend on the eigenvalues only.

The field is eofs' SST written by ``xarray.to_zarr`` in (15, 3, 1) chunks, 4 of them all land
and absent; the result is written to a store and read back by the client (the source is
deleted first: nothing below reads it). Tolerances as ``test_client_eof_post.py``: 1e-11
relative to the largest entry (Davis–Kahan ε·λ₁/min gap ≈ 1.8e-13, × √n ≈ 14 over the
grid, × 4 for the scalings; a wrong weight is O(1e-2)).
"""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest
import xarray as xr

from svdserve.client import StoredResult, eofs_as_covariance, north_errors, project_field, \
    reconstruct_field
from svdserve.worker import svd

eofs_pkg = pytest.importorskip("eofs")
DATA = os.path.join(os.path.dirname(eofs_pkg.__file__), "tests", "data")
TOL = 1e-11  # see the module docstring


def _load(name):
    return np.load(os.path.join(DATA, f"{name}.npy"))


def _close(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), rtol=0,
                               atol=TOL * np.nanmax(np.abs(b)))


@pytest.fixture(scope="module", params=[("latitude", "coslat"), ("area", "area")],
                ids=["latitude", "area"])
def weighted(request, tmp_path_factory):
    scheme, kind = request.param
    with warnings.catch_warnings():  # land: the mean of an all-NaN column
        warnings.simplefilter("ignore", RuntimeWarning)
        sst = _load("sst") - np.nanmean(_load("sst"), axis=0)
    tmp = tmp_path_factory.mktemp("weighted")
    url, out = str(tmp / "sst.zarr"), str(tmp / "result.zarr")
    xr.DataArray(sst, dims=("time", "latitude", "longitude"), name="sst",
                 coords={"latitude": _load("latitude"), "longitude": _load("longitude")}
                 ).to_dataset().to_zarr(url, encoding={"sst": {"chunks": (15, 3, 1)}})
    svd(url, 14, array="sst", sample_dims=("time",), missing="mask", center=True,
        method="exact", weights=kind, client=False, out=out)
    shutil.rmtree(url)
    return scheme, sst, StoredResult.open(out)


def _signs(maps, ref):
    flat = np.nan_to_num(maps.reshape(len(maps), -1))
    return np.sign(np.sum(flat * np.nan_to_num(ref.reshape(len(ref), -1)), axis=1))


def test_covariance_maps_divide_the_weights_out(weighted):
    scheme, _, res = weighted
    ref = _load(f"eofscov.{scheme}")
    cov = eofs_as_covariance(res, pcscaling=1)
    land = np.isnan(cov)
    assert land.sum() == 14 * 21  # NaN at the 21 land points; eofs' file holds no NaN there
    _close(np.where(land, 0.0, cov * _signs(cov, ref)[:, None, None]), np.where(land, 0.0, ref))


def test_reconstruction_divides_the_weights_out(weighted):
    scheme, sst, res = weighted
    rcon = reconstruct_field(res, [1, 2, 5], add_mean=False).compute()
    _close(rcon, _load(f"rcon.{scheme}"))  # sign-free: U_j σ_j Vt_j
    _close(reconstruct_field(res, add_mean=False).compute(), sst)  # every mode: the field


def test_projection_weights_the_field(weighted):
    scheme, sst, res = weighted
    ref = _load(f"pcs.{scheme}")
    pcs = project_field(res, sst, center=False)
    _close(pcs * _signs(pcs.T, ref.T)[None, :], ref)


def test_north_errors(weighted):
    scheme, _, res = weighted
    _close(north_errors(res).errors, _load(f"errors.{scheme}"))
