"""Shared pieces of the job-service tests: the test matrices and waiting for a job.

Imported by ``conftest.py`` and the test modules alike (never ``from conftest import``).
"""

from __future__ import annotations

import time

import numpy as np
import zarr

__all__ = ["M", "N", "TRUE_RANK", "CHUNK_ROWS", "PANEL_BYTES", "low_rank", "write", "wait_job"]

#: Shape and rank of the main test matrix; chunk rows give 12 panels with the
#: panel budget below.
M, N, TRUE_RANK = 600, 40, 6
CHUNK_ROWS = 50
PANEL_BYTES = CHUNK_ROWS * N * 8  # one chunk per panel


def low_rank(m, n, rank, *, noise=1e-3, seed=0):
    """A matrix of numerical rank ``rank`` plus small noise, decaying spectrum."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, rank)))
    v, _ = np.linalg.qr(rng.standard_normal((n, rank)))
    s = 10.0 ** -np.linspace(0, 2, rank) * 100
    return (u * s) @ v.T + noise * rng.standard_normal((m, n))


def write(path, array, chunks=None, **kw):
    z = zarr.create_array(str(path), shape=array.shape, dtype=array.dtype,
                          chunks=chunks or array.shape, **kw)
    if array.size:
        z[...] = array
    return z


def wait_job(client, job_id, states=("succeeded", "failed", "cancelled"), timeout=60.0,
             headers=None):
    """Long-poll ``job_id`` until its state is in ``states``; returns the job JSON."""
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        r = client.get(f"/v1/jobs/{job_id}", params={"wait": 2}, headers=headers)
        assert r.status_code == 200, r.text
        job = r.json()
        if job["state"] in states:
            return job
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout} s: {job}")


PROBLEM = "application/problem+json"


def submit(client, body=None, headers=None, **fields):
    """POST a job (default: rank 4 of ``A.zarr``) through a TestClient; the response."""
    body = dict(body or {"source": {"url": "A.zarr"}, "rank": 4}, **fields)
    return client.post("/v1/jobs", json=body, headers=headers)


def assert_problem(r, status, field=None):
    """An RFC 9457 problem+json answer of this status (naming ``field``); returns the body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    p = r.json()
    assert p["status"] == status
    assert p["type"].startswith("https://svdserve.dev/problems/")
    assert p["title"] and p["detail"] and p["instance"] and p["request_id"]
    assert r.headers["x-request-id"] == p["request_id"]
    if field is not None:
        fields = [e["field"] for e in p.get("errors") or []]
        assert field in fields, p
    return p
