"""Shared pieces of the scale-out tests: the topology, matrices, waiting, the factor check."""

from __future__ import annotations

import atexit
import os
import time
from pathlib import Path

import httpx
import numpy as np

from ._compose import Proc, Topology, image_env

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
SCHEMA_FILE = REPO / "tests" / "data" / "compose-spec.json"

#: Panel byte budget given to the API: one 300-row × 40-column chunk of
#: float64 (96,000 bytes) per panel, so a 12,000-row matrix makes 40 panels
#: and a job runs long enough (several seconds) to kill a process mid-pass.
PANEL_BYTES = 96_000
ROWS, COLS, CHUNK_ROWS = 12_000, 40, 300
#: Seconds the service waits with no worker at all before failing a job
#: (``SVDSERVE_NO_WORKERS_TIMEOUT``; the compose default is 60).
NO_WORKERS_TIMEOUT = 8


def make_topology(workdir, variables: dict[str, str]) -> Topology:
    """The compose services mapped to loopback (nothing started yet)."""
    topo = Topology(COMPOSE_FILE, workdir, variables=variables, image_env=image_env(DOCKERFILE))
    atexit.register(topo.close)  # in case the session dies before a fixture's teardown
    return topo


def start_services(topo: Topology, workers: int, timeout: float = 90.0) -> Topology:
    """Scheduler, ``workers`` workers and the API, in compose's dependency order, ready for jobs."""
    try:
        topo.start("scheduler")
        topo.wait_healthy("scheduler", timeout)
        for _ in range(workers):
            topo.start("worker")
        topo.start("api")
        topo.wait_healthy("api", timeout)
        wait_ready(topo, workers, timeout)
    except BaseException:
        topo.close()
        raise
    return topo


def start_topology(workdir, variables: dict[str, str], workers: int,
                   timeout: float = 90.0) -> Topology:
    """:func:`make_topology` then :func:`start_services`."""
    return start_services(make_topology(workdir, variables), workers, timeout)


def api_url(topo: Topology) -> str:
    return topo.url("api", 8000)


def scheduler_address(topo: Topology) -> str:
    return topo.url("scheduler", 8786, scheme="tcp")


def ready(topo: Topology, timeout: float = 30.0) -> httpx.Response:
    """``GET /v1/ready`` (the service may take a few seconds when the scheduler is gone)."""
    return httpx.get(api_url(topo) + "/v1/ready", timeout=timeout)


def wait_ready(topo: Topology, workers: int, timeout: float = 60.0) -> dict:
    """Wait until ``/v1/ready`` is 200 with exactly ``workers`` workers."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            resp = ready(topo)
            last = (resp.status_code, resp.text)
            if resp.status_code == 200 and resp.json().get("workers") == workers:
                return resp.json()
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.25)
    raise TimeoutError(f"/v1/ready did not report {workers} workers within {timeout:.0f} s "
                       f"(last answer: {last})\n{topo.logs()}")


def wait_not_ready(topo: Topology, timeout: float = 30.0) -> httpx.Response:
    """Wait until ``/v1/ready`` answers 503 (the API noticed the cluster is down)."""
    deadline = time.monotonic() + timeout
    while True:
        resp = ready(topo)
        if resp.status_code == 503 or time.monotonic() > deadline:
            return resp
        time.sleep(0.2)


def ensure_workers(topo: Topology, n: int, timeout: float = 60.0) -> list[Proc]:
    """Start workers until ``n`` run (like ``docker compose up --scale worker=n``)."""
    while len(topo.running("worker")) < n:
        topo.start("worker")
    wait_ready(topo, n, timeout)
    return topo.running("worker")


def make_matrix(m: int = ROWS, n: int = COLS, seed: int = 0) -> np.ndarray:
    """A dense m×n matrix with a decaying, well separated spectrum (σ_{i+1}/σ_i ≈ 0.85)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return rng.standard_normal((m, n)) * (0.85 ** np.arange(n)) @ q


def check_factors(A: np.ndarray, U, S, Vt, k: int) -> None:
    """Factors against ``numpy.linalg.svd``: shapes, σ, subspaces, reconstruction.

    Tolerances: the exact (TSQR) method is backward stable, so σ agrees to a
    small multiple of eps·σ_1; with gaps σ_i/σ_{i+1} ≈ 1.18 the singular
    vectors agree to about eps·σ_1/gap, far below 1e-8.
    """
    U, S, Vt = np.asarray(U), np.asarray(S), np.asarray(Vt)
    m, n = A.shape
    assert U.shape == (m, k) and S.shape == (k,) and Vt.shape == (k, n)
    u_ref, s_ref, vt_ref = np.linalg.svd(A, full_matrices=False)
    np.testing.assert_allclose(S, s_ref[:k], rtol=1e-10, atol=0)
    # signs: the core makes the largest-magnitude entry of each row of Vt positive
    big = np.argmax(np.abs(vt_ref[:k]), axis=1)
    signs = np.sign(vt_ref[np.arange(k), big])
    np.testing.assert_allclose(Vt, vt_ref[:k] * signs[:, None], atol=1e-8)
    np.testing.assert_allclose(U, u_ref[:, :k] * signs, atol=1e-8)
    np.testing.assert_allclose(U * S @ Vt, u_ref[:, :k] * s_ref[:k] @ vt_ref[:k],
                               atol=1e-8 * s_ref[0])


def wait_for_progress(job, predicate, timeout: float = 60.0) -> dict:
    """Long-poll a job until ``predicate(progress)`` holds; fail if it ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh(wait=1)
        progress = job.get("progress")
        if progress and predicate(progress):
            return progress
        if job.state in ("succeeded", "failed", "cancelled"):
            raise AssertionError(
                f"job {job.id} ended ({job.state}, error {job.error}) before the awaited "
                f"progress; last progress {progress}. Use more panels (smaller chunks).")
    raise TimeoutError(f"job {job.id} did not reach the awaited progress within "
                       f"{timeout:.0f} s (state {job.state}, progress {job.get('progress')})")


def finish(job, topo: Topology, timeout: float):
    """Wait for a job to end; on a time-out fail with its last JSON and the processes' logs."""
    from svdserve.client import Timeout

    try:
        return job.wait(timeout=timeout)
    except Timeout:
        raise AssertionError(f"job {job.id} still {job.state} after {timeout:.0f} s: "
                             f"{job.data}\n{topo.logs(n=60)}") from None


def worker_procs_by_address(topo: Topology, dask_client) -> dict[str, Proc]:
    """Map each worker's address to the process group (compose replica) it runs in."""
    pids = dask_client.run(os.getpid)
    out = {}
    for addr, pid in pids.items():
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            continue
        for proc in topo.running("worker"):
            if proc.pid == group:
                out[addr] = proc
    return out
