"""A worker that hangs instead of dying (issue 27, items 3-4).

Real parts: ``dask scheduler`` and two ``dask worker`` processes started from
docker-compose.yml's commands as separate OS processes
(:mod:`tests.scaleout._helpers`); a worker is hung with SIGSTOP to its process
group (nanny and worker), as a frozen container would be. The service runs
in-process against that scheduler, with a real SQLite store.
"""

from __future__ import annotations

import importlib
import os
import signal
import sqlite3

import pytest
from distributed import Client as DaskClient

from tests.scaleout._helpers import make_topology, scheduler_address, worker_procs_by_address
from tests.service._kit import low_rank, wait_job, write

pytestmark = pytest.mark.slow

ROWS, COLS, CHUNK = 40_000, 16, 1_000  # 40 panels: a pass lasts long enough to stop a worker
PANEL_BYTES = CHUNK * COLS * 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``(topology, dask client)``: a scheduler and two worker processes."""
    topo = make_topology(tmp_path_factory.mktemp("hung"), {"SVDSERVE_WORKER_MEMORY": "1GiB"})
    try:
        topo.start("scheduler")
        topo.wait_healthy("scheduler", 60)
        for _ in range(2):
            topo.start("worker")
        write(topo.volumes["data"] / "m.zarr", low_rank(ROWS, COLS, 4, seed=3),
              chunks=(CHUNK, COLS))
        write(topo.volumes["data"] / "small.zarr", low_rank(2 * CHUNK, COLS, 4, seed=4),
              chunks=(CHUNK, COLS))
        with DaskClient(scheduler_address(topo), timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            warm_up(client)
            yield topo, client
    finally:
        for proc in topo.procs:  # a stopped process group cannot act on SIGKILL's
            _signal(proc, signal.SIGCONT)  # predecessors; resume it first
        topo.close()


def warm_up(client):
    """Import the core on every worker now, so a job's first tasks do not."""
    client.run(importlib.import_module, "svdserve.worker")


def _signal(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def two_workers(cluster):
    """Two running workers (a retired one is replaced), mapped address -> process."""
    topo, client = cluster
    for proc in topo.running("worker"):
        _signal(proc, signal.SIGCONT)
    while len(client.scheduler_info(n_workers=-1)["workers"]) < 2:
        topo.start("worker")
        client.wait_for_workers(2, timeout=60)
        warm_up(client)
    return worker_procs_by_address(topo, client)


def settings(cluster, **kw):
    topo, _ = cluster
    return dict(scheduler=scheduler_address(topo), data_roots=[str(topo.volumes["data"])],
                panel_bytes=PANEL_BYTES, panel_cache=0.0, **kw)


def submit(c, url="m.zarr"):
    body = {"source": {"url": url}, "rank": 4, "method": "randomized", "n_iter": 1}
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_progress(c, job_id, panels=3):
    """Until pass 1 has ``panels`` panels done (the job is mid-pass)."""
    def moving(job):
        p = job.get("progress") or {}
        return job["state"] != "running" or p.get("pass", 0) > 1 or p.get("done", 0) >= panels
    for _ in range(600):
        job = c.get(f"/v1/jobs/{job_id}", params={"wait": 1}).json()
        if moving(job):
            assert job["state"] == "running", job
            return job
    raise AssertionError(f"job {job_id} made no progress: {job}")


def test_cancel_interrupts_a_pass_in_which_no_task_finishes(service, cluster, two_workers):
    with service(**settings(cluster, task_deadline=600.0)) as c:
        job_id = submit(c)
        wait_progress(c, job_id)
        for proc in two_workers.values():  # nothing can finish any more
            _signal(proc, signal.SIGSTOP)
        assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        done = wait_job(c, job_id, timeout=20)
        assert done["state"] == "cancelled", done
        for proc in two_workers.values():
            _signal(proc, signal.SIGCONT)
        again = submit(c, "small.zarr")
        assert wait_job(c, again, timeout=60)["state"] == "succeeded"


def test_shutdown_with_a_hung_worker_requeues_the_job(service, cluster, two_workers, tmp_path):
    with service(**settings(cluster, task_deadline=600.0)) as c:
        job_id = submit(c)
        wait_progress(c, job_id)
        for proc in two_workers.values():
            _signal(proc, signal.SIGSTOP)
    # the service stopped (what SIGTERM does): the job went back to the queue then,
    # not left running for the next start's recovery, nor failed
    with sqlite3.connect(tmp_path / "jobs.sqlite") as db:
        row = db.execute("SELECT state, attempt, notes FROM jobs WHERE id = ?", (job_id,)
                         ).fetchone()
    assert row[:2] == ("queued", 2), row
    assert "the service stopped while attempt 1 was running; re-queued as attempt 2" in row[2]
    for proc in two_workers.values():
        _signal(proc, signal.SIGCONT)
    with service(**settings(cluster, task_deadline=600.0)) as c:
        done = wait_job(c, job_id, timeout=60)
        assert done["state"] == "succeeded" and done["attempt"] == 2, done


def test_hung_worker_is_retired_and_the_job_succeeds(service, cluster, two_workers):
    # last in the module: it leaves one worker fewer (the fixture would start another)
    with service(**settings(cluster, task_deadline=1.0)) as c:
        job_id = submit(c)
        wait_progress(c, job_id)
        hung, proc = sorted(two_workers.items())[0]
        _signal(proc, signal.SIGSTOP)
        # bound: the 1 s deadline + a 1 s ping, then the lost tasks recompute
        done = wait_job(c, job_id, timeout=60)
        assert done["state"] == "succeeded", done
        assert any(hung in note and "retired as lost" in note for note in done["notes"]), done
        again = submit(c, "small.zarr")
        assert wait_job(c, again, timeout=60)["state"] == "succeeded"
