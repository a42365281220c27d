"""N-D variables through the job API (in-process app, real SQLite, real Dask cluster):
``source.sample_dims`` and ``missing``, their 422s, the idempotency hash, and
jobs that succeed (masked land) or fail (partly missing features) with a reason.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import xarray as xr
from tests.service._kit import wait_job
from tests.service._kit import assert_problem

from svdserve.service._routes import _body_hash
from svdserve.service._schemas import JobCreate


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    """Build (time, lat, lon) fields; written into the data root by :func:`_store`."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((30, 1)) @ rng.standard_normal((1, 20)) \
        + 1e-3 * rng.standard_normal((30, 20))
    land = base.copy()
    land[:, [0, 7]] = np.nan
    partly = land.copy()
    partly[4, 3] = np.nan
    return {name: xr.Dataset({"sst": (("time", "lat", "lon"), a.reshape(30, 4, 5))},
                             coords={"lat": np.arange(4.0), "lon": np.arange(5.0)})
            for name, a in (("land", land), ("partly", partly))}


def _store(data_root, fields, name):
    path = data_root / f"nd_{name}.zarr"
    if not path.exists():
        fields[name].to_zarr(str(path), zarr_format=3, consolidated=False)
    return path.name


def post(c, url, **extra):
    source = {"url": url, "array": "sst"}
    source.update(extra.pop("source", {}))
    return c.post("/v1/jobs", json={"source": source, "rank": 2, **extra})


def test_sample_dims_problems(service, data_root, fields):
    url = _store(data_root, fields, "land")
    with service() as c:
        p = assert_problem(post(c, url), 422, "body.source.sample_dims")
        assert "3-D" in p["detail"] and "['time', 'lat', 'lon']" in p["detail"]
        p = assert_problem(post(c, url, source={"sample_dims": ["depth"]}), 422,
                           "body.source.sample_dims")
        assert "'depth'" in p["detail"] and "['time', 'lat', 'lon']" in p["detail"]
        assert_problem(post(c, url, source={"sample_dims": []}), 422, "body.source.sample_dims")
        assert_problem(post(c, url, source={"sample_dims": "time"}), 422,
                       "body.source.sample_dims")
        assert_problem(post(c, url, source={"sample_dims": ["time"]}, missing="drop"), 422,
                       "body.missing")
        p = assert_problem(post(c, url, source={"sample_dims": ["time"]}, rank=21), 422,
                           "body.rank")
        assert "30×20" in p["detail"]


def test_new_fields_at_their_defaults_keep_old_hashes():
    old = {"source": {"url": "A.zarr", "array": None}, "rank": 4}
    h = _body_hash(JobCreate.model_validate(old))
    explicit = _body_hash(JobCreate.model_validate(
        {"source": {"url": "A.zarr", "array": None, "sample_dims": None}, "rank": 4,
         "missing": "error"}))
    dumped = JobCreate.model_validate(old).model_dump(mode="json")
    for key in ("missing", "allow_missing_chunks", "compute_u", "energy", "max_rank",
                "missing_chunks", "weights", "standardize"):
        dumped.pop(key)
    del dumped["source"]["sample_dims"]
    before = hashlib.sha256(json.dumps(dumped, sort_keys=True, separators=(",", ":"))
                            .encode()).hexdigest()
    assert h == explicit == before
    masked = JobCreate.model_validate({**old, "missing": "mask"})
    assert _body_hash(masked) != h


def test_masked_job_succeeds_and_partly_missing_fails(service, data_root, fields):
    with service() as c:
        r = post(c, _store(data_root, fields, "land"), source={"sample_dims": ["time"]},
                 missing="mask", center=True, method="exact")
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["id"])
        assert job["state"] == "succeeded", job
        assert job["result"]["shape"] == [30, 20]
        assert job["request"]["source"]["sample_dims"] == ["time"]
        report = c.get(f"/v1/jobs/{job['id']}/report").json()
        assert report["missing"] == {"mode": "mask", "masked": 2, "kept": 18, "features": 20}
        a = fields["land"]["sst"].values.reshape(30, 20)[:, [j for j in range(20)
                                                               if j not in (0, 7)]]
        s = np.linalg.svd(a - a.mean(axis=0), compute_uv=False)
        # Weyl: 100·√max(m, n)·ε·σ₁ (see tests/_check.py)
        np.testing.assert_allclose(report["singular_values"], s[:2], rtol=0,
                                   atol=100 * np.sqrt(30) * 2.2e-16 * s[0])

        r = post(c, _store(data_root, fields, "partly"), source={"sample_dims": ["time"]},
                 missing="mask")
        job = wait_job(c, r.json()["id"])
        assert job["state"] == "failed"
        assert job["error"]["type"] == "non_finite_values"
        assert "1 feature is missing" in job["error"]["message"]
        assert "lat=0.0, lon=3.0 (1 of 30 samples)" in job["error"]["message"]


def test_named_2d_variable_defaults_sample_dims_with_a_note(service, data_root, fields):
    """Issue 20 item 17: a 2-D variable's dimension names are known; without
    sample_dims its first dimension is the samples, and the job says so."""
    path = data_root / "nd_2d.zarr"
    if not path.exists():
        xr.Dataset({"sst": (("time", "space"), np.ones((30, 4)) * np.arange(1.0, 5.0))}
                   ).to_zarr(str(path), consolidated=False)
    with service() as c:
        r = post(c, path.name, rank=1)
        assert r.status_code == 202, r.text
        assert any(n.startswith("sample_dims not given: using the first dimension 'time'")
                   for n in r.json()["notes"]), r.json()["notes"]
