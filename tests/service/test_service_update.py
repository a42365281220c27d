"""Issue 26 through the HTTP API: an update job merges appended rows into its parent.

A fresh app per ``service()`` context over the same SQLite file and results
root: leaving the context stops the app (the restart between the parent and
its update), the next context starts it again. Real Dask cluster, real Zarr.
"""

from __future__ import annotations

import numpy as np
import zarr

from tests.service._kit import assert_problem, low_rank, submit, write


def _grow(path, rows):
    z = zarr.open_array(str(path), mode="r+")
    m = z.shape[0]
    z.resize((m + rows.shape[0], z.shape[1]))
    z[m:] = rows
    return m


def test_update_job_after_restart_reads_only_new_rows(service, wait, data_root):
    a = low_rank(330, 12, 4, seed=11)
    path = data_root / "grow_svc.zarr"
    write(path, a[:250], chunks=(100, 12))  # the array will grow inside its last chunk
    body = {"source": {"url": "grow_svc.zarr"}, "rank": 3, "method": "exact", "center": True,
            "compute_u": False}
    with service() as c:
        parent = wait(c, submit(c, body).json()["id"])
        assert parent["state"] == "succeeded", parent
    _grow(path, a[250:])
    with service() as c:  # the service restarted: the state lives in the stored result
        r = submit(c, {"source": {"url": "grow_svc.zarr"}, "update": parent["id"][:8],
                       "compute_u": False})
        assert r.status_code == 202, r.text
        child = wait(c, r.json()["id"])
        assert child["state"] == "succeeded", child
        rep = c.get(f"/v1/jobs/{child['id']}/report").json()
        assert rep["update"]["rows_read"] == 80 and rep["update"]["rows_total"] == 330
        assert rep["update"]["parent_job"] == parent["id"]
        # σ of the grown, centred matrix: 10·√n·ε·σ₁ (two backward-stable TSQRs)
        s = np.linalg.svd(a - a.mean(axis=0), compute_uv=False)[:3]
        np.testing.assert_allclose(rep["singular_values"][:3], s, rtol=0,
                                   atol=10 * np.sqrt(12) * np.finfo(float).eps * s[0])
        chain = c.get("/v1/jobs", params={"lineage": child["id"]}).json()["items"]
        assert [j["id"] for j in chain] == [parent["id"], child["id"]]
        # the old version stays readable
        assert c.get(f"/v1/jobs/{parent['id']}/report").status_code == 200
        # an old row rewritten: the next update fails invalid_input, naming the rows
        zarr.open_array(str(path), mode="r+")[5, 0] = 1.0
        _grow(path, a[:10])
        bad = wait(c, submit(c, {"source": {"url": "grow_svc.zarr"},
                                 "update": child["id"]}).json()["id"])
        assert bad["state"] == "failed" and bad["error"]["type"] == "invalid_input"
        assert f"rows 0:330 changed since job {child['id']}" in bad["error"]["message"]
        assert "submit a full job" in bad["error"]["message"]


def test_update_of_randomized_job_is_422_naming_update(service, wait, data_root):
    write(data_root / "grow_rnd.zarr", low_rank(200, 12, 4, seed=12), chunks=(100, 12))
    with service() as c:
        parent = wait(c, submit(c, {"source": {"url": "grow_rnd.zarr"}, "rank": 2,
                                    "method": "randomized"}).json()["id"])
        r = submit(c, {"source": {"url": "grow_rnd.zarr"}, "update": parent["id"]})
        p = assert_problem(r, 422, "body.update")
        assert "methods that support update: exact" in p["detail"]
        assert_problem(submit(c, {"source": {"url": "grow_rnd.zarr"}, "update": "abcdef12"}),
                       404, "body.update")


def test_sketch_job_update_reads_only_new_rows(service, wait, data_root):
    a = low_rank(300, 12, 4, seed=13)
    path = data_root / "grow_sk.zarr"
    write(path, a[:200], chunks=(100, 12))
    with service() as c:
        parent = wait(c, submit(c, {"source": {"url": "grow_sk.zarr"}, "rank": 2,
                                    "method": "sketch", "random_state": 3}).json()["id"])
        _grow(path, a[200:])
        child = wait(c, submit(c, {"source": {"url": "grow_sk.zarr"},
                                   "update": parent["id"]}).json()["id"])
        assert child["state"] == "succeeded" and child["method"] == "sketch", child
        rep = c.get(f"/v1/jobs/{child['id']}/report").json()
        assert rep["update"]["rows_read"] == 100 and rep["random_state"] == 3
