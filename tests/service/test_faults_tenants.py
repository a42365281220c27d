"""Two real tenants sharing one service (issue 27, items 5-6).

The job log (issue 20, item 15) is checked in ``test_faults_http.py``, as JSON lines.

In-process apps on the session's real Dask cluster and real SQLite; the
``gate`` fixture holds running jobs in their first progress callback, so what
is queued and what runs is decided by the service, not by timing.
"""

from __future__ import annotations

from svdserve.service._store import JobStore

ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}
TOKENS = "alice:tok-alice,bob:tok-bob"


def submit(c, headers, **fields):
    return c.post("/v1/jobs", json={"source": {"url": "A.zarr"}, "rank": 3, **fields},
                  headers=headers)


def state(c, job_id, headers):
    return c.get(f"/v1/jobs/{job_id}", headers=headers).json()["state"]


def test_a_flooding_tenant_meets_its_own_queue_limit(service, gate, wait):
    with service(tokens=TOKENS, max_concurrent_jobs=1, max_queued_jobs=10,
                 max_queued_jobs_per_tenant=2) as c:
        first = submit(c, ALICE).json()["id"]
        assert gate.entered.wait(30)  # alice's first job runs; the next ones queue
        queued = [submit(c, ALICE) for _ in range(2)]
        assert [r.status_code for r in queued] == [202, 202]
        refused = submit(c, ALICE)
        assert refused.status_code == 429, refused.text
        detail = refused.json()["detail"]
        assert "'alice'" in detail and "SVDSERVE_MAX_QUEUED_JOBS_PER_TENANT" in detail
        assert "is 2" in detail and refused.headers["retry-after"]
        other = submit(c, BOB)  # the other tenant is not starved by alice's flood
        assert other.status_code == 202, other.text
        gate.release()
        for job_id, who in [(first, ALICE), *((r.json()["id"], ALICE) for r in queued),
                            (other.json()["id"], BOB)]:
            assert wait(c, job_id, headers=who)["state"] == "succeeded"


def test_a_tenant_runs_at_most_its_running_limit(service, gate, wait):
    with service(tokens=TOKENS, max_concurrent_jobs=2, max_running_jobs_per_tenant=1) as c:
        a1 = submit(c, ALICE).json()["id"]
        a2 = submit(c, ALICE).json()["id"]
        b1 = submit(c, BOB).json()["id"]
        wait(c, b1, states=("running",), headers=BOB)
        # a free slot, but alice already runs her limit: a2 waits, b1 got the slot
        assert state(c, a1, ALICE) == "running" and state(c, a2, ALICE) == "queued"
        gate.release()
        for job_id, who in ((a1, ALICE), (a2, ALICE), (b1, BOB)):
            assert wait(c, job_id, headers=who)["state"] == "succeeded"


def test_dispatch_is_fair_between_tenants(service, gate, wait):
    """Bob's one job starts right after alice's running one, not behind her queue."""
    with service(tokens=TOKENS, max_concurrent_jobs=1) as c:
        alice = [submit(c, ALICE).json()["id"] for _ in range(3)]
        assert gate.entered.wait(30)
        bob = submit(c, BOB).json()["id"]
        gate.release()
        a = [wait(c, job_id, headers=ALICE) for job_id in alice]
        b = wait(c, bob, headers=BOB)
        assert all(j["state"] == "succeeded" for j in [*a, b])
        # ISO timestamps of one clock compare as strings; a job runs for far
        # longer than their 1 ms resolution, so consecutive starts differ.
        assert a[0]["started_at"] < b["started_at"] < a[1]["started_at"]


def test_store_claims_round_robin_across_tenants(tmp_path):
    store = JobStore(str(tmp_path / "jobs.sqlite"))
    try:
        made = [store.create(t, {}, {}).id for t in ("a", "a", "a", "b", "c")]
        claimed = [store.claim_next().id for _ in range(5)]
        assert store.claim_next() is None
    finally:
        store.close()
    a1, a2, a3, b1, c1 = made
    assert claimed == [a1, b1, c1, a2, a3]
