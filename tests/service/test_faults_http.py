"""A real service process: request framing, /metrics, JSON job logs.

Issue 27 items 7-8 and issue 20 item 15: ``python -m svdserve.service``
(:mod:`tests._server`) with two tenants, an operator token for ``/metrics``
and ``SVDSERVE_LOG_FORMAT=json``; requests over raw sockets and httpx.
"""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest

from tests._server import ServerProcess, follow_job, http_client, server_env
from tests.service._kit import low_rank, write

ALICE, BOB, OPERATOR = "tok-alice-1111", "tok-bob-2222", "tok-ops-3333"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("http-faults")
    (root / "data").mkdir()
    write(root / "data" / "m.zarr", low_rank(600, 20, 4, seed=5), chunks=(100, 20))
    bad = low_rank(600, 20, 4, seed=6)
    bad[321, 3] = np.nan
    write(root / "data" / "nan.zarr", bad, chunks=(100, 20))
    env = server_env(root / "data", root, tokens={"alice": ALICE, "bob": BOB},
                     metrics_token=OPERATOR, log_format="json", log_level="info",
                     n_workers=1, worker_processes="false", panel_bytes=100 * 20 * 8)
    srv = ServerProcess(env, token=ALICE, log_path=root / "server.log").start()
    try:
        yield srv
    finally:
        srv.stop()
        srv.kill_all()


def raw_exchange(srv, data: bytes, timeout: float = 20.0) -> tuple[bytes, bool]:
    """Send ``data``; read until the server closes. Returns (bytes read, closed)."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as s:
        s.sendall(data)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except TimeoutError:
            return got, False
    return got, True


def test_content_length_and_transfer_encoding_is_400_and_close(server):
    smuggled = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
    request = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"
               + f"Authorization: Bearer {ALICE}\r\n".encode()
               + b"Content-Type: application/json\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled)
    got, closed = raw_exchange(server, request)
    assert closed, f"the connection stayed open after: {got[:300]!r}"
    assert got.startswith(b"HTTP/1.1 400"), got[:300]
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert got.count(b"HTTP/1.1 ") == 1, "the bytes after the body ran as a second request"
    assert "Transfer-Encoding" in json.loads(body.split(b"\r\n\r\n")[0])["detail"]
    # an ordinary request on a new connection is still served
    ok, _ = raw_exchange(server, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n"
                                 b"Connection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200"), ok[:300]


def test_metrics_is_an_operator_endpoint(server):
    with http_client(server, ALICE) as alice:
        r = alice.get("/metrics")
        assert r.status_code == 403 and "SVDSERVE_METRICS_TOKEN" in r.json()["detail"]
        anonymous = alice.get("/metrics", headers={"Authorization": ""})
        assert anonymous.status_code == 401
    with http_client(server, OPERATOR) as ops:
        r = ops.get("/metrics")
        assert r.status_code == 200 and "svdserve_jobs_submitted_total" in r.text
        # the operator token is not a tenant's: it lists no jobs
        assert ops.get("/v1/jobs").status_code == 401


def job_lines(log_path, job_id):
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)  # every JSON line parses
            if record.get("job") == job_id:
                out.append(record)
    return out


def wait_for_end(log_path, job_id, timeout=30.0):
    """The job's log lines once its ``end`` line is written (it follows the state write)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = job_lines(log_path, job_id)
        if any(r["event"] == "end" for r in lines):
            return lines
        time.sleep(0.1)
    raise AssertionError(f"no end line for job {job_id}: {job_lines(log_path, job_id)}")


def test_json_log_has_one_line_per_job_event(server):
    with http_client(server, BOB) as c:
        ok = c.post("/v1/jobs", json={"source": {"url": "m.zarr"}, "rank": 3,
                                      "method": "randomized", "n_iter": 1}).json()["id"]
        bad = c.post("/v1/jobs", json={"source": {"url": "nan.zarr"}, "rank": 3}).json()["id"]
        assert follow_job(c, ok)[0]["state"] == "succeeded"
        assert follow_job(c, bad)[0]["state"] == "failed"
    lines = wait_for_end(server.log_path, ok)
    assert [r["event"] for r in lines] == ["submit", "start", "pass", "pass", "end"]
    assert all(r["tenant"] == "bob" and r["level"] for r in lines)
    assert [r["pass_no"] for r in lines if r["event"] == "pass"] == [1, 2]
    assert lines[-1]["state"] == "succeeded" and lines[-1]["error_type"] is None
    assert all("\n" not in r["message"] and ok in r["message"] for r in lines)
    failed = wait_for_end(server.log_path, bad)
    assert [r["event"] for r in failed][:2] == ["submit", "start"]
    assert failed[-1]["event"] == "end" and failed[-1]["state"] == "failed"
    assert failed[-1]["error_type"] == "non_finite_values"
    assert "non_finite_values" in failed[-1]["message"]
