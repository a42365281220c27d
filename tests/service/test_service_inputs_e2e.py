"""Issue 9 end to end: ``python -m svdserve.service`` as a real uvicorn process with
its embedded cluster (two worker processes), real files, real HTTP.

- case 3: a queued job's source swapped for a symlink out of the data roots
  (another matrix, or another tenant's result) fails ``storage_error``;
- case 1: the source deleted mid-job fails ``storage_error``, never ``succeeded``;
- case 8: the embedded scheduler admits only the service (TLS with a
  certificate only the service holds); ``/v1/ready`` shows no address.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import numpy as np
import psutil
import pytest
import zarr

from tests._server import E2E_COLS as COLS
from tests._server import follow_job, http_client, running_server, server_env, write_chunked

pytestmark = pytest.mark.slow

ALICE, BOB = "tok-alice-issue9", "tok-bob-issue9"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs-e2e")
    data, outside = root / "data", root / "outside"
    data.mkdir()
    outside.mkdir()
    rng = np.random.default_rng(3)
    write_chunked(data / "big.zarr", lambda rows: rng.standard_normal((rows, COLS)))
    small = rng.standard_normal((600, COLS))
    for name in ("toctou.zarr", "toctou2.zarr", "alice.zarr"):
        zarr.create_array(str(data / name), shape=small.shape, chunks=(100, COLS),
                          dtype="f8")[...] = small
    zarr.create_array(str(outside / "secret.zarr"), shape=small.shape, chunks=(100, COLS),
                      dtype="f8")[...] = rng.standard_normal((600, COLS))
    return root


@pytest.fixture(scope="module")
def server(base):
    env = server_env(base / "data", base, tokens={"alice": ALICE, "bob": BOB},
                     max_concurrent_jobs=1)
    with running_server(env, token=ALICE, log_path=base / "server.log") as srv:
        yield srv


def http(srv, token):
    return http_client(srv, token)


def follow(c, job_id, timeout=300.0):
    return follow_job(c, job_id, timeout=timeout)[0]


def wait_progress(c, job_id, done, timeout=120.0):
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"/v1/jobs/{job_id}", params={"wait": 2}).json()
        assert job["state"] in ("queued", "running"), f"job ended too early: {job}"
        if job["state"] == "running" and job["progress"] and job["progress"]["done"] >= done:
            return job
        assert time.monotonic() < deadline, job


def swap_for_symlink(path, target):
    os.rename(path, str(path) + ".moved")
    os.symlink(target, path)


@pytest.mark.parametrize("target", ["outside", "alice-result"])
def test_source_swapped_for_symlink_while_queued_fails(server, base, target):
    """Case 3: with the only job slot busy, bob submits a source (202, queued) and
    then replaces it with a symlink out of the data roots: his job fails
    ``storage_error`` and reads nothing there."""
    name = "toctou.zarr" if target == "outside" else "toctou2.zarr"
    with http(server, ALICE) as alice, http(server, BOB) as bob:
        if target == "outside":
            dest = base / "outside" / "secret.zarr"
            # submitting the link itself is refused, as before
            os.symlink(dest, base / "data" / "direct.zarr")
            r = bob.post("/v1/jobs", json={"source": {"url": "direct.zarr"}, "rank": 3})
            assert r.status_code == 403, r.text
        else:
            first = alice.post("/v1/jobs", json={"source": {"url": "alice.zarr"},
                                                 "rank": 3}).json()
            done = follow(alice, first["id"])
            assert done["state"] == "succeeded", done
            dest = base / "results" / "alice" / first["id"] / "1" / "result.zarr" / "U"
            assert dest.exists()
        busy = alice.post("/v1/jobs", json={"source": {"url": "big.zarr"}, "rank": 3}).json()
        wait_progress(alice, busy["id"], 1)
        r = bob.post("/v1/jobs", json={"source": {"url": name}, "rank": 3})
        assert r.status_code == 202 and r.json()["state"] == "queued", r.text
        job_id = r.json()["id"]
        swap_for_symlink(base / "data" / name, dest)
        assert bob.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"  # swapped while queued
        assert follow(alice, busy["id"])["state"] == "succeeded"
        job = follow(bob, job_id)
        assert job["state"] == "failed", job
        assert job["error"]["type"] == "storage_error", job["error"]
        msg = job["error"]["message"]
        assert "changed since the job was submitted" in msg and name in msg, msg
        assert "outside the data roots" in msg, msg
        assert job["result"] is None
        assert not (base / "results" / "bob" / job_id / "1").exists()


def test_source_deleted_mid_job_fails_never_succeeds(server, base):
    """Case 1: ``rm -rf`` of the source once 5 panels are done: the job fails
    ``storage_error`` naming what vanished; no factors of zeros are served."""
    shutil.copytree(base / "data" / "big.zarr", base / "data" / "doomed.zarr")
    with http(server, ALICE) as c:
        job_id = c.post("/v1/jobs", json={"source": {"url": "doomed.zarr"}, "rank": 4,
                                          "method": "exact"}).json()["id"]
        wait_progress(c, job_id, 5)
        shutil.rmtree(base / "data" / "doomed.zarr")
        job = follow(c, job_id)
        assert job["state"] == "failed", job
        assert job["error"]["type"] == "storage_error", job["error"]
        msg = job["error"]["message"]
        assert "doomed.zarr" in msg and ("vanished" in msg or "gone" in msg), msg
        assert job["result"] is None
        assert c.get(f"/v1/jobs/{job_id}/result/zarr.json").status_code == 409


def _foreign_client_connects(address, security):
    from distributed import Client

    async def attempt():
        client = await Client(address, asynchronous=True, timeout=5, security=security)
        await client.close()

    try:
        asyncio.run(asyncio.wait_for(attempt(), 20))
    except Exception:  # noqa: BLE001 - refused, whatever the comm error
        return False
    return True


def test_embedded_cluster_admits_only_the_service(server):
    """Case 8: no other local process can join the embedded scheduler as a client,
    neither in plain TCP nor with a TLS certificate of its own; tenants see the
    number of workers, not the scheduler's address."""
    from distributed.security import Security

    with http(server, BOB) as c:
        body = c.get("/v1/ready").json()
    assert body == {"ready": True, "workers": 2}
    ports = sorted({conn.laddr.port for conn in psutil.Process(server.pid).net_connections("tcp")
                    if conn.status == psutil.CONN_LISTEN} - {server.port})
    assert ports, "the embedded scheduler should listen in the service process"
    for port in ports:
        assert not _foreign_client_connects(f"tcp://127.0.0.1:{port}", None), port
        assert not _foreign_client_connects(f"tls://127.0.0.1:{port}",
                                            Security.temporary()), port
