"""docker-compose.yml's topology as separate OS processes: 1 scheduler, 3 workers, the API.

Each service's ``command`` and ``environment`` come from the compose file
(see :mod:`._compose` for the mapping to loopback). Jobs go through the
client library over HTTP, like a user on the Docker host would.

Killing a "container" is ``SIGKILL`` to its process group: for a worker, the
Dask nanny and its worker process together, as ``docker kill`` would.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from distributed import Client as DaskClient

from svdserve.client import Client

from ._helpers import (
    CHUNK_ROWS,
    NO_WORKERS_TIMEOUT,
    PANEL_BYTES,
    api_url,
    check_factors,
    ensure_workers,
    finish,
    make_matrix,
    scheduler_address,
    start_topology,
    wait_for_progress,
    wait_not_ready,
    wait_ready,
    worker_procs_by_address,
)

pytestmark = pytest.mark.slow

K = 5
WORKERS = 3


@pytest.fixture(scope="module")
def topo(tmp_path_factory):
    variables = {  # what a user would put in .env next to docker-compose.yml
        "SVDSERVE_PANEL_BYTES": str(PANEL_BYTES),
        "SVDSERVE_NO_WORKERS_TIMEOUT": str(NO_WORKERS_TIMEOUT),
        "SVDSERVE_WORKER_MEMORY": "1GiB",
    }
    topo = start_topology(tmp_path_factory.mktemp("topology"), variables, WORKERS)
    try:
        yield topo
    finally:
        topo.close()


@pytest.fixture(scope="module")
def api(topo):
    with Client(api_url(topo), timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def matrix(topo, api):
    """120,000 × 40 in 300-row chunks: 400 panels, so that pass 1 lasts long enough
    (about a second) for a worker to be killed in the middle of it."""
    A = make_matrix(120_000)
    url = api.upload(A, str(topo.volumes["data"] / "many-panels.zarr"), chunks=CHUNK_ROWS)
    return A, url


@pytest.fixture(scope="module")
def small_matrix(topo, api):
    """6,000 × 40 in 3,000-row chunks: 2 panels (a quick job)."""
    A = make_matrix(6_000, 40, seed=1)
    url = api.upload(A, str(topo.volumes["data"] / "few-panels.zarr"), chunks=3_000)
    return A, url


def test_job_through_the_client_matches_lapack(topo, api, small_matrix):
    A, url = small_matrix
    ensure_workers(topo, WORKERS)
    job = api.submit(url, rank=K, method="exact")
    res = job.result(timeout=120)
    assert job.state == "succeeded", job.error
    check_factors(A, res.U, res.S, res.Vt, K)
    # the result lies on the shared results volume, where the workers wrote U
    assert job["result"]["url"].startswith(str(topo.volumes["results"]) + "/")
    # ... and a user on the Docker host, without the volume, reads it over HTTP
    with Client(api_url(topo), result_access="http") as remote:
        over_http = remote.get(job.id).result(timeout=30)
        check_factors(A, over_http.U, over_http.S, over_http.Vt, K)


def test_job_spreads_over_all_workers(topo, api, matrix):
    """Every worker process runs tasks of the job: the scale-out is real."""
    A, url = matrix
    ensure_workers(topo, WORKERS)

    def executed(dask_worker):
        return dask_worker.state.executed_count

    with DaskClient(scheduler_address(topo), timeout=30, set_as_default=False) as dc:
        before = dc.run(executed)
        job = api.submit(url, rank=K)
        res = job.result(timeout=120)
        after = dc.run(executed)
    check_factors(A, res.U, res.S, res.Vt, K)
    assert len(after) == WORKERS
    ran = {addr: after[addr] - before.get(addr, 0) for addr in after}
    assert all(n > 0 for n in ran.values()), ran


@pytest.fixture(scope="module")
def one_worker_killed(topo, api, matrix):
    """A job during which the busiest worker is SIGKILLed mid-pass (run once, checked twice):
    at the first progress poll that sees a pass under way, pass 1 or, when the poll came
    late under load, the U pass."""
    A, url = matrix
    ensure_workers(topo, WORKERS)
    with DaskClient(scheduler_address(topo), timeout=30, set_as_default=False) as dc:
        job = api.submit(url, rank=K)
        progress = wait_for_progress(job, lambda p: 3 <= p["done"] < p["total"])
        # the worker holding the most intermediate results: its loss costs the most
        holdings = dc.has_what()
        procs = worker_procs_by_address(topo, dc)
        victim = max(procs, key=lambda a: len(holdings.get(a, ())))
        held = len(holdings.get(victim, ()))
        procs[victim].kill()
    finish(job, topo, 120)
    return {"A": A, "job": job, "victim": victim, "held": held, "killed_at": dict(progress)}


def test_worker_killed_mid_pass_job_still_succeeds(topo, one_worker_killed):
    run = one_worker_killed
    job = run["job"]
    assert job.state == "succeeded", f"{job.error}\n{topo.logs('api')}"
    assert run["killed_at"]["done"] < run["killed_at"]["total"]
    assert run["held"] > 0, "the killed worker held no results: nothing was recomputed"
    res = job.result(timeout=30)
    check_factors(run["A"], res.U, res.S, res.Vt, K)


def test_lost_worker_is_noted_on_the_job(one_worker_killed):
    job, victim = one_worker_killed["job"], one_worker_killed["victim"]
    assert job.state == "succeeded", job.error
    port = victim.rsplit(":", 1)[-1]
    assert any(port in note and "worker" in note.lower() for note in job.notes), job.notes


def test_workers_replaced_in_time_job_still_succeeds(topo, api, matrix):
    """Every worker dies and new ones join within the no-worker timeout (what
    ``restart: unless-stopped`` does for crashed containers): the job goes on,
    every intermediate result recomputed on the new workers."""
    A, url = matrix
    ensure_workers(topo, WORKERS)
    job = api.submit(url, rank=K)
    wait_for_progress(job, lambda p: p["pass"] == 1 and p["done"] >= 3)
    old = topo.running("worker")
    for _ in range(WORKERS):  # replacements boot (a few seconds) while the old ones die
        topo.start("worker")
    for proc in old:
        proc.kill()
    finish(job, topo, 120)
    assert job.state == "succeeded", f"{job.error}\n{topo.logs('api')}"
    res = job.result(timeout=30)
    check_factors(A, res.U, res.S, res.Vt, K)


def test_all_workers_killed_job_fails_worker_lost_in_bounded_time(topo, api, matrix):
    """``SVDSERVE_NO_WORKERS_TIMEOUT`` (8 s here, 60 s by default in the compose
    file) bounds how long a job waits for a worker to come back."""
    A, url = matrix
    grace = NO_WORKERS_TIMEOUT
    ensure_workers(topo, WORKERS)
    job = api.submit(url, rank=K)
    wait_for_progress(job, lambda p: p["pass"] == 1 and p["done"] >= 3)
    t0 = time.monotonic()
    for proc in topo.running("worker"):
        proc.kill()
    # the API tells the truth about the cluster meanwhile
    resp = wait_not_ready(topo)
    assert resp.status_code == 503, resp.text
    assert resp.json()["ready"] is False and resp.json()["workers"] == 0, resp.text
    finish(job, topo, grace + 60)
    elapsed = time.monotonic() - t0
    assert job.state == "failed", job.data
    assert job.error["type"] == "worker_lost", job.error
    message = job.error["message"].lower()
    assert "worker" in message and ("gone" in message or "lost" in message), message
    # bounded: the grace period (workers may come back within it), plus a few polls
    assert grace - 1 <= elapsed <= grace + 30, (elapsed, grace)
    ensure_workers(topo, WORKERS)  # scale back up for the next test


def test_scheduler_killed_job_fails_clearly_and_api_stays_up(topo, api, matrix, small_matrix):
    """Decision: a job whose scheduler dies fails (``worker_lost``, the message
    names the scheduler); it is not retried. The API stays up, ``/v1/ready``
    says 503 until a scheduler and workers are back, then new jobs run."""
    A, url = matrix
    ensure_workers(topo, WORKERS)
    job = api.submit(url, rank=K)
    wait_for_progress(job, lambda p: p["pass"] == 1 and p["done"] >= 3)
    (scheduler,) = topo.running("scheduler")
    t0 = time.monotonic()
    scheduler.kill()
    finish(job, topo, 60)
    assert time.monotonic() - t0 < 60
    assert job.state == "failed", job.data
    assert job.error["type"] == "worker_lost", job.error
    assert "scheduler" in job.error["message"].lower(), job.error
    # the API process is up and says what it knows
    assert api.health()["status"] == "ok"
    resp = wait_not_ready(topo)
    assert resp.status_code == 503, resp.text
    assert resp.json()["ready"] is False and resp.json()["workers"] == 0, resp.text
    # Dask workers leave when their scheduler is gone (the compose restart policy
    # starts them again); they must not linger half-connected.
    deadline = time.monotonic() + 30
    while topo.running("worker") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not topo.running("worker"), topo.logs("worker")
    # restart: the scheduler on its address, then the workers
    topo.start("scheduler")
    topo.wait_healthy("scheduler", 60)
    for _ in range(WORKERS):
        topo.start("worker")
    info = wait_ready(topo, WORKERS, 90)
    assert info["ready"] is True
    A2, url2 = small_matrix
    again = api.submit(url2, rank=K)
    res = again.result(timeout=120)
    check_factors(A2, res.U, res.S, res.Vt, K)
    assert np.all(np.diff(res.S) <= 0)
