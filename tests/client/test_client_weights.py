"""Weights and standardisation through the real service (issue 23, items 1-2): the HTTP
fields, ``Client.submit(weights=, standardize=)``, the CLI flags, and the 422s naming the
field for bad values.

Tolerance: the exact method is backward stable, so σ agrees with NumPy's SVD of
the densely scaled field to 100·√max(m, n)·ε·σ₁ (Weyl; ``tests/_check``).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from svdserve._cli import main

from tests._check import EPS
from tests.service._kit import assert_problem

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def field(data_dir):
    """A (time 40, lat 6, lon 8) field written by xarray.to_zarr, plus a bare 2-D array."""
    rng = np.random.default_rng(5)
    lat, lon = np.linspace(-60, 60, 6), np.arange(0.0, 360.0, 45.0)
    x = (rng.standard_normal((40, 3)) @ rng.standard_normal((3, 48))
         + 0.01 * rng.standard_normal((40, 48))) * rng.uniform(0.5, 5.0, 48) + 10.0
    da = xr.DataArray(x.reshape(40, 6, 8), dims=("time", "lat", "lon"), name="sst",
                      coords={"lat": lat, "lon": lon})
    da.to_dataset().to_zarr(str(data_dir / "f.zarr"), mode="w")
    xr.DataArray(x, dims=("time", "space"), name="flat").to_dataset().to_zarr(
        str(data_dir / "flat.zarr"), mode="w")
    return data_dir, x, lat


def _dense(x, lat, standardize):
    a = x - x.mean(axis=0)
    if standardize:
        a = a / np.maximum(a.std(axis=0), np.finfo(np.float32).eps)
    w = np.repeat(np.sqrt(np.cos(np.deg2rad(lat))), 8)
    return np.linalg.svd(a * w, compute_uv=False)


@pytest.mark.parametrize("standardize", [False, True])
def test_client_submit_weights(service, client, field, standardize):
    data_dir, x, lat = field
    job = client.submit(str(data_dir / "f.zarr"), 3, array="sst", sample_dims="time",
                        center=True, method="exact", weights="coslat",
                        standardize=standardize)
    res = job.result(timeout=120)
    s = _dense(x, lat, standardize)
    np.testing.assert_allclose(res.S, s[:3], rtol=0, atol=100 * np.sqrt(48) * EPS * s[0])
    assert res.report["scaling"]["weights"] == "coslat"
    assert res.report["scaling"]["standardize"] is standardize
    assert res.scale.shape == (48,)
    assert job.data["request"]["weights"] == "coslat"


def test_cli_submit_weights_flags(service, capsys, field):
    data_dir, x, lat = field
    xr.Dataset({"a": (("time", "p"), x[:, :5]), "b": (("time", "q"), x[:, 5:9])}).to_zarr(
        str(data_dir / "ab.zarr"), mode="w")
    code = main(["submit", str(data_dir / "ab.zarr"), "--rank", "2", "--array", "a",
                 "--array", "b", "--center", "--method", "exact", "--wait", "--json",
                 "--url", service.url, "--token", service.token])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert '"array": [' in out and '"b"' in out
    code = main(["submit", str(data_dir / "f.zarr"), "--rank", "2", "--array", "sst",
                 "--sample-dims", "time", "--center", "--method", "exact", "--weights",
                 "coslat", "--standardize", "--wait", "--json", "--url", service.url,
                 "--token", service.token])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert '"standardize": true' in out and '"weights": "coslat"' in out


def test_bad_weights_are_422_naming_the_field(service, field):
    import httpx

    data_dir, _, _ = field
    url = str(data_dir / "f.zarr")
    base = {"source": {"url": url, "array": "sst", "sample_dims": ["time"]}, "rank": 2,
            "center": True}
    flat = {"source": {"url": str(data_dir / "flat.zarr"), "array": "flat"}, "rank": 2}
    cases = [
        ({**base, "weights": "cos"}, "body.weights"),
        ({**base, "weights": [1.0] * 47}, "body.weights"),  # 48 features
        ({**base, "weights": [[1.0] * 7] * 6}, "body.weights"),  # not (6, 8)
        ({**base, "weights": [-1.0] * 48}, "body.weights"),
        ({**flat, "weights": "coslat"}, "body.weights"),  # no latitude coordinate
        ({**base, "center": False, "standardize": True}, "body.standardize"),
        ({**base, "standardize": "yes"}, "body.standardize"),
        ({**base, "method": "sketch", "standardize": True, "source": {
            **base["source"], "sample_dims": ["lat", "lon"]}}, "body.standardize"),
    ]
    with httpx.Client(base_url=service.url, timeout=60,
                      headers={"Authorization": f"Bearer {service.token}"}) as c:
        for body, fld in cases:
            p = assert_problem(c.post("/v1/jobs", json=body), 422, fld)
            assert "Traceback" not in p["detail"]
        ok = c.post("/v1/jobs", json={**base, "weights": [[1.0] * 8] * 6})  # broadcasts
        assert ok.status_code == 202, ok.text


def test_several_variables_through_the_service(service, client, field):
    """``array`` as a list: each variable pinned at submit, one job, ``variables`` in the
    report; σ as NumPy's SVD of the concatenated, per-feature standardised field (Weyl)."""
    data_dir, x, lat = field
    rng = np.random.default_rng(6)
    slp = x[:, :10] * 3.0 + rng.standard_normal((40, 10))
    path = data_dir / "two.zarr"
    xr.Dataset({"sst": xr.DataArray(x.reshape(40, 6, 8), dims=("time", "lat", "lon"),
                                    coords={"lat": lat}),
                "slp": xr.DataArray(slp, dims=("time", "station"))}).to_zarr(str(path),
                                                                              mode="w")
    job = client.submit(str(path), 3, array=["sst", "slp"], sample_dims="time", center=True,
                        standardize=True, method="exact")
    res = job.result(timeout=120)
    a = np.hstack([x, slp])
    a = (a - a.mean(axis=0)) / a.std(axis=0)
    s = np.linalg.svd(a, compute_uv=False)
    np.testing.assert_allclose(res.S, s[:3], rtol=0, atol=100 * np.sqrt(58) * EPS * s[0])
    names = [(v["name"], v["columns"]) for v in res.report["variables"]]
    assert names == [("sst", [0, 48]), ("slp", [48, 58])]
    import httpx

    with httpx.Client(base_url=service.url, timeout=60,
                      headers={"Authorization": f"Bearer {service.token}"}) as c:
        body = {"source": {"url": str(path), "array": ["sst", "sst"], "sample_dims": ["time"]},
                "rank": 2}
        assert_problem(c.post("/v1/jobs", json=body), 422, "body.source.array")
        body["source"]["array"] = ["sst", "nope"]
        assert_problem(c.post("/v1/jobs", json=body), 404)
        body["source"]["array"] = ["sst", "slp"]
        p = assert_problem(c.post("/v1/jobs", json={**body, "weights": "coslat"}), 422,
                           "body.weights")  # slp (time, station) has no latitude
        assert "station" in p["detail"]
        assert_problem(c.post("/v1/jobs", json={**body, "weights": [1.0] * 48}), 422,
                       "body.weights")  # 58 features in all
        ok = c.post("/v1/jobs", json={**body, "weights": [1.0] * 58})
        assert ok.status_code == 202, ok.text
