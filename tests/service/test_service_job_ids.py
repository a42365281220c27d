"""Short job ids and the sandbox's path messages (issue 20, items 5, 6 and 8).

- Every route that names a job accepts a unique prefix of at least 6 hex
  digits of its id, within the tenant; an ambiguous prefix is a 400 listing
  the candidates; another tenant's ids are never found nor listed.
- A relative source path is taken from the first data root and the error
  quotes what was sent and where it was looked for; a 403 names
  ``SVDSERVE_DATA_ROOTS``; a NumPy file sent as a source says how to convert it.

The ids of two real jobs are rewritten in the real SQLite file (a second
connection, as an operator's ``sqlite3`` shell would) so that they share a
prefix: uuid4 ids sharing 6 hex digits would take thousands of jobs.
"""

from __future__ import annotations

import sqlite3

import numpy as np

from svdserve.service._store import JobStore
from tests.service._kit import assert_problem, submit

ALICE = {"Authorization": "Bearer token-alice"}
BOB = {"Authorization": "Bearer token-bob"}
SMALL = {"source": {"url": "small.zarr"}, "rank": 2}


def _rename(db_path, old, new):
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE jobs SET id = ? WHERE id = ?", (new, old))
        db.execute("UPDATE pins SET job_id = ? WHERE job_id = ?", (new, old))


def test_store_finds_a_prefix_within_the_tenant(tmp_path):
    path = tmp_path / "jobs.sqlite"
    store = JobStore(str(path))
    a1 = store.create("alice", {}, {}).id
    a2 = store.create("alice", {}, {}).id
    b1 = store.create("bob", {}, {}).id
    _rename(path, a1, "abcdef" + "0" * 26)
    _rename(path, a2, "abcdef" + "1" * 26)
    _rename(path, b1, "abcdef" + "2" * 26)
    assert store.find_prefix("abcdef", "alice") == ["abcdef" + "0" * 26, "abcdef" + "1" * 26]
    assert store.find_prefix("abcdef1", "alice") == ["abcdef" + "1" * 26]
    assert store.find_prefix("abcdef2", "alice") == []  # bob's job: not alice's to find
    assert store.find_prefix("abcdef", "bob") == ["abcdef" + "2" * 26]
    assert store.find_prefix("abcdef", "alice", limit=1) == ["abcdef" + "0" * 26]
    store.close()


def test_routes_accept_a_unique_prefix_and_list_an_ambiguous_one(service, wait, tmp_path):
    with service(tokens="alice:token-alice,bob:token-bob") as c:
        ids = []
        for _ in range(2):
            r = submit(c, SMALL, headers=ALICE)
            assert r.status_code == 202, r.text
            ids.append(wait(c, r.json()["id"], headers=ALICE)["id"])
        bobs = submit(c, SMALL, headers=BOB).json()["id"]
        wait(c, bobs, headers=BOB)
        # a unique prefix names the job on every route
        for i in ids:
            assert c.get(f"/v1/jobs/{i[:6]}", headers=ALICE).json()["id"] == i
        assert c.get(f"/v1/jobs/{ids[0][:8].upper()}", headers=ALICE).json()["id"] == ids[0]
        assert "singular_values" in c.get(f"/v1/jobs/{ids[0][:8]}/report", headers=ALICE).json()
        r = c.get(f"/v1/jobs/{ids[0][:8]}/result/zarr.json", headers=ALICE)
        assert r.status_code == 200
        assert c.get(f"/v1/jobs/{ids[0][:7]}", params={"wait": 1},
                     headers=ALICE).json()["id"] == ids[0]
        assert_problem(c.post(f"/v1/jobs/{ids[0][:8]}/cancel", headers=ALICE), 409)
        # bob cannot reach alice's jobs by prefix, and sees none of her ids
        for path in (ids[0][:6], f"{ids[0][:6]}/report"):
            p = assert_problem(c.get(f"/v1/jobs/{path}", headers=BOB), 404)
            assert ids[0] not in str(p) and ids[1] not in str(p)
        assert_problem(c.delete(f"/v1/jobs/{ids[0][:6]}", headers=BOB), 404)
        # too short: 400 naming the path parameter
        p = assert_problem(c.get(f"/v1/jobs/{ids[0][:5]}", headers=ALICE), 400, "path.job_id")
        assert "at least 6" in p["detail"]
        # two of alice's jobs (and one of bob's) share a prefix: 400 with alice's candidates
        db = c.app_state.services.settings.database
        shared = ["0a1b2c" + "3" * 26, "0a1b2c" + "4" * 26]
        for old, new in zip(ids, shared):
            _rename(db, old, new)
        _rename(db, bobs, "0a1b2c" + "5" * 26)
        p = assert_problem(c.get("/v1/jobs/0a1b2c", headers=ALICE), 400, "path.job_id")
        assert p["candidates"] == shared and "ambiguous" in p["detail"]
        assert "0a1b2c" + "5" * 26 not in str(p)  # bob's id is not a candidate
        assert c.get("/v1/jobs/0a1b2c4", headers=ALICE).json()["id"] == shared[1]
        assert c.get("/v1/jobs/0a1b2c", headers=BOB).json()["id"] == "0a1b2c" + "5" * 26
        assert c.delete(f"/v1/jobs/{shared[0][:7]}", headers=ALICE).status_code == 204
        assert c.get("/v1/jobs/0a1b2c", headers=ALICE).json()["id"] == shared[1]


def test_path_messages_say_what_was_sent_and_where_it_was_looked_for(service, data_root):
    with service() as c:
        p = assert_problem(submit(c, source={"url": "nope.zarr"}), 404, "body.source.url")
        assert f"'nope.zarr' (looked for '{data_root / 'nope.zarr'}'" in p["detail"]
        assert "first data root" in p["detail"]
        p = assert_problem(submit(c, source={"url": "/etc"}), 403, "body.source.url")
        assert "SVDSERVE_DATA_ROOTS" in p["detail"] and str(data_root) in p["detail"]
        np.save(data_root / "m_job_ids.npy", np.ones((4, 3)))
        p = assert_problem(submit(c, source={"url": "m_job_ids.npy"}), 422, "body.source.url")
        assert "NumPy .npy file" in p["detail"]
        assert "svdserve upload m_job_ids.npy m_job_ids.zarr" in p["detail"]
