"""Issue 24 through the job API (in-process app, real SQLite, real Dask cluster): sparse
AnnData and Binsparse groups are pinned and decomposed like dense arrays; a bad sparse
store is a 4xx at submit or a typed job failure naming the rows."""

from __future__ import annotations

import numpy as np
import pytest
from tests.service._kit import assert_problem, wait_job

from tests._sparse import sparse_low_rank, write_anndata, write_binsparse, write_group


@pytest.fixture
def sparse_root(tmp_path):
    root = tmp_path / "inputs"
    root.mkdir()
    x = sparse_low_rank(300, 40, seed=7)
    write_anndata(root / "cells.zarr", x)
    write_binsparse(root / "bs.zarr", x, "CSC")
    ptr, idx, data = np.array([0, 2, 3, 5, 6]), np.array([0, 3, 1, 2, 4, 0]), np.ones(6)
    write_group(root / "decreasing.zarr", np.array([0, 3, 2, 5, 6]), idx, data, (4, 5))
    write_group(root / "outside.zarr", ptr, np.array([0, 3, 1, 2, 9, 0]), data, (4, 5),
                chunk=2)
    write_group(root / "noindices.zarr", ptr, None, data, (4, 5))
    return root, x


def test_sparse_sources_through_the_api(service, sparse_root):
    root, x = sparse_root
    dense = x.toarray()
    with service(data_roots=[str(root)], panel_bytes=20_000) as c:
        cases = [({"url": "cells.zarr", "array": "X"}, False),
                 ({"url": "cells.zarr", "array": "layers/csc"}, True),
                 ({"url": "bs.zarr"}, True)]
        jobs = []
        for source, center in cases:
            r = c.post("/v1/jobs", json={"source": source, "rank": 3, "method": "randomized",
                                         "center": center})
            assert r.status_code == 202, r.text
            assert r.json()["plan"]["kind"] == "sparse", r.json()["plan"]
            jobs.append((r.json()["id"], center))
        for job_id, center in jobs:
            done = wait_job(c, job_id)
            assert done["state"] == "succeeded", done
            report = c.get(f"/v1/jobs/{job_id}/report").json()
            b = dense - dense.mean(axis=0) if center else dense
            ref = np.linalg.svd(b, compute_uv=False)[:3]
            # rank-6 input + 1e-9 noise: randomized σ agree with LAPACK far below 1e-9
            np.testing.assert_allclose(report["singular_values"], ref, rtol=1e-9)
            assert (report.get("centering") or {}).get("method") == (
                "implicit" if center else None)


def test_bad_sparse_stores_are_4xx_or_typed_failures(service, sparse_root):
    root, _ = sparse_root
    with service(data_roots=[str(root)], panel_bytes=100) as c:
        r = c.post("/v1/jobs", json={"source": {"url": "decreasing.zarr"}, "rank": 2})
        p = assert_problem(r, 422, "body.source")
        assert "indptr is not monotone" in p["detail"]
        r = c.post("/v1/jobs", json={"source": {"url": "noindices.zarr"}, "rank": 2})
        p = assert_problem(r, 404, "body.source.array")
        assert "'indices'" in p["detail"]
        r = c.post("/v1/jobs", json={"source": {"url": "cells.zarr", "array": "X"},
                                     "rank": 2, "missing": "mask"})
        assert r.status_code in (202, 422), r.text
        if r.status_code == 202:  # refused when the job starts: a typed invalid_input
            assert wait_job(c, r.json()["id"])["error"]["type"] == "invalid_input"
        r = c.post("/v1/jobs", json={"source": {"url": "outside.zarr"}, "rank": 2,
                                     "method": "randomized"})
        assert r.status_code == 202, r.text
        done = wait_job(c, r.json()["id"])
        assert done["state"] == "failed"
        assert done["error"]["type"] == "invalid_input"
        assert "indices hold 9 in rows" in done["error"]["message"], done["error"]
