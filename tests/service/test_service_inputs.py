"""Issue 9 through the job API (in-process app, real SQLite, real Dask cluster):
inputs that change, vanish or lie give a typed failure or a 4xx, never a
wrong ``succeeded``. The cases needing a real uvicorn process (the symlink
swap while queued, deletion mid-job, the embedded cluster's TLS) are in
``test_service_inputs_e2e.py``.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import zarr
from tests.service._kit import assert_problem

from svdserve.service._store import JobStore


@pytest.fixture
def root(tmp_path):
    d = tmp_path / "inputs"
    d.mkdir()
    return d


@pytest.fixture
def svc(service, root, tmp_path):
    """A fresh app whose only data root is ``root``; panels of 10 rows x 20 columns."""
    def make(**kw):
        return service(data_roots=[str(root)], panel_bytes=10 * 20 * 8, **kw)
    return make


def write(path, a, chunks):
    z = zarr.create_array(str(path), shape=a.shape, dtype=a.dtype, chunks=chunks,
                          overwrite=True)
    z[...] = a
    return z


def matrix(m, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, n)) @ np.diag(0.7 ** np.arange(n))


def submit(c, url, rank=3, **extra):
    return c.post("/v1/jobs", json={"source": {"url": url}, "rank": rank, **extra})


def lying_array(path, shape, chunks, compressed=False):
    os.makedirs(path)
    doc = {"zarr_format": 3, "node_type": "array", "shape": shape, "data_type": "float64",
           "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
           "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
           "fill_value": 0.0,
           "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}]
           + ([{"name": "zstd", "configuration": {"level": 0, "checksum": False}}]
              if compressed else [])}
    (path / "zarr.json").write_text(json.dumps(doc))
    return (path / "zarr.json").stat().st_size


# ---------------------------------------------------------------- case 2
def test_overwrite_in_place_gives_the_new_arrays_factors(svc, root, wait):
    """Case 2: three jobs on X.zarr, then an overwrite with int64 data (and other
    chunks): the next job's S is NumPy's for the new data, not stale garbage."""
    a = matrix(1000, 20)
    write(root / "X.zarr", a, (100, 20))
    with svc() as c:
        for _ in range(3):
            job = wait(c, submit(c, "X.zarr", method="exact").json()["id"])
            assert job["state"] == "succeeded", job
        b = np.random.default_rng(1).integers(0, 10**4, size=(1000, 20)).astype(np.int64)
        write(root / "X.zarr", b, (250, 20))
        job = wait(c, submit(c, "X.zarr", method="exact").json()["id"])
        assert job["state"] == "succeeded", job
        S = zarr.open_group(job["result"]["url"], mode="r")["S"][...]
        np.testing.assert_allclose(S, np.linalg.svd(b.astype(float), compute_uv=False)[:3],
                                   rtol=1e-10)


def test_overwrite_while_queued_fails_storage_error(svc, root, wait, gate):
    """Case 2 with the queue: the array is rewritten between submit and run."""
    write(root / "busy.zarr", matrix(100, 20), (10, 20))
    write(root / "X.zarr", matrix(100, 20), (10, 20))
    with svc(max_concurrent_jobs=1) as c:
        busy = submit(c, "busy.zarr").json()
        assert gate.entered.wait(30)  # the only slot is held inside the first job
        queued = submit(c, "X.zarr").json()
        assert c.get(f"/v1/jobs/{queued['id']}").json()["state"] == "queued"
        write(root / "X.zarr", matrix(100, 20).astype(np.float32), (10, 20))
        gate.release()
        assert wait(c, busy["id"])["state"] == "succeeded"
        job = wait(c, queued["id"])
        assert job["state"] == "failed" and job["error"]["type"] == "storage_error", job
        assert "changed since the job was submitted" in job["error"]["message"]
        assert "metadata document zarr.json" in job["error"]["message"]
        assert job["result"] is None


# ---------------------------------------------------------------- cases 4 and 6
@pytest.mark.parametrize("name,shape,chunks,numbers", [
    # case 4: ~400 bytes claiming 10^15 x 10^6; 10^18 chunks / one 7.6e15 MiB chunk
    ("huge.zarr", [10**15, 10**6], [1000, 1000], "has 1e+15 chunks; at most 1000000"),
    ("band.zarr", [10**15, 10**6], [10**15, 10**6], "MiB as float64, more than the 4096 MiB"),
    # case 6: a zero chunk size was a ZeroDivisionError ('internal') in the job
    ("zero.zarr", [100, 10], [0, 10], "chunk shape [0, 10]; every chunk size must be >= 1"),
])
def test_lying_metadata_is_refused_at_submit(svc, root, name, shape, chunks, numbers):
    assert lying_array(root / name, shape, chunks, compressed=name == "band.zarr") < 650
    with svc() as c:
        p = assert_problem(submit(c, name), 422, "body.source")
        assert numbers in p["detail"], p
        assert c.get("/v1/jobs").json()["items"] == []  # nothing was queued


def test_chunk_too_large_for_the_workers_is_a_422_with_the_plan_numbers(svc, root):
    """Issue 11: a compressed chunk that must be decoded whole but cannot fit a worker
    (here: more than 1e-4 of its memory limit) is refused at submit, naming the numbers."""
    write(root / "A.zarr", matrix(200, 500), (200, 500))  # one 800 kB compressed chunk
    with svc(memory_fraction=1e-4) as c:
        p = assert_problem(submit(c, "A.zarr"), 422, "body.source")
        assert "[200, 500]" in p["detail"] and "smallest worker's memory limit" in p["detail"]
        assert c.get("/v1/jobs").json()["items"] == []  # nothing was queued
    with svc() as c:  # the default share accepts it, and the 202 says how it is cut
        job = submit(c, "A.zarr").json()
        assert job["plan"]["kind"] == "chunks" and job["plan"]["panels"] == 1


def test_limits_come_from_the_settings(svc, root):
    write(root / "A.zarr", matrix(100, 20), (10, 20))  # 10 chunks, 10 panels
    with svc(max_chunks=9) as c:
        p = assert_problem(submit(c, "A.zarr"), 422, "body.source")
        assert "has 10 chunks; at most 9 are accepted" in p["detail"]
    with svc(max_panels=5) as c:
        p = assert_problem(submit(c, "A.zarr"), 422, "body.source")
        assert "makes 10 panels; at most 5 are accepted" in p["detail"]


# ---------------------------------------------------------------- case 5
@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_corrupt_chunk_fails_storage_error_naming_chunk_and_array(svc, root, wait, damage):
    write(root / "bad.zarr", matrix(100, 20), (10, 20))  # bytes + zstd
    victim = root / "bad.zarr" / "c" / "6" / "0"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if damage == "truncate"
                       else data[:8] + b"\x00" * 40)
    with svc() as c:
        job = wait(c, submit(c, "bad.zarr").json()["id"])
    assert job["state"] == "failed" and job["error"]["type"] == "storage_error", job
    msg = job["error"]["message"]
    assert "chunk 'c/6/0'" in msg and "bad.zarr" in msg and "rows 60:70" in msg, msg


# ---------------------------------------------------------------- case 7, issue 20 item 1
def test_absent_chunks_are_the_fill_value_unless_strict(svc, root, wait):
    """Absent chunks read as the fill value by default (counted in the 202's plan and
    the notes); ``missing_chunks="error"`` keeps issue 9's invalid_input; the
    deprecated ``allow_missing_chunks`` still works, with a note."""
    a = matrix(100, 20)
    write(root / "half.zarr", a, (10, 20))
    for i in (9, 4, 5):
        os.remove(root / "half.zarr" / "c" / str(i) / "0")
    note = ("3 of 10 chunks absent, read as fill value 0.0 (Zarr does not store chunks "
            "equal to the fill value)")
    with svc() as c:
        r = submit(c, "half.zarr", method="exact")
        assert r.status_code == 202, r.text
        assert note in r.json()["notes"]
        plan = r.json()["plan"]
        assert (plan["n_chunks"], plan["absent_chunks"], plan["fill_value"]) == (10, 3, 0.0)
        job = wait(c, r.json()["id"])
        assert job["state"] == "succeeded", job
        S = zarr.open_group(job["result"]["url"], mode="r")["S"][...]
        sparse = a.copy()
        sparse[40:60] = sparse[90:100] = 0.0
        # Exact TSQR: σ to a few ulps of LAPACK's; 1e-10 is headroom.
        np.testing.assert_allclose(S, np.linalg.svd(sparse, compute_uv=False)[:3], rtol=1e-10)

        job = wait(c, submit(c, "half.zarr", missing_chunks="error").json()["id"])
        assert job["state"] == "failed" and job["error"]["type"] == "invalid_input", job
        msg = job["error"]["message"]
        assert "chunk 'c/4/0'" in msg and "rows 40:50" in msg and "3 chunks" in msg, msg
        assert "missing_chunks='fill'" in msg

        r = submit(c, "half.zarr", method="exact", allow_missing_chunks=False)
        assert r.status_code == 202 and r.json()["request"]["allow_missing_chunks"] is False
        assert r.json()["request"]["missing_chunks"] == "error"
        assert any("allow_missing_chunks is deprecated" in n for n in r.json()["notes"])
        assert wait(c, r.json()["id"])["error"]["type"] == "invalid_input"
        assert_problem(submit(c, "half.zarr", allow_missing_chunks="yes"), 422,
                       "body.allow_missing_chunks")
        assert_problem(submit(c, "half.zarr", allow_missing_chunks=True,
                              missing_chunks="error"), 422, "body.allow_missing_chunks")
        assert_problem(submit(c, "half.zarr", missing_chunks="skip"), 422,
                       "body.missing_chunks")


# ---------------------------------------------------------------- case 3 (at submit), section 9
def test_only_what_is_read_is_checked(svc, root, tmp_path, wait):
    """Section 9: the submit no longer walks the whole source. A symlink out of
    the roots *beside* the chunks is never read, so it does not matter; one in
    place of a chunk is refused (403) -- at submit here, at read time in e2e."""
    outside = tmp_path / "elsewhere"
    write(outside / "S.zarr", matrix(100, 20, seed=5), (10, 20))
    a = matrix(100, 20)
    write(root / "A.zarr", a, (10, 20))
    os.symlink(outside, root / "A.zarr" / "notes")
    write(root / "B.zarr", a, (10, 20))
    os.unlink(root / "B.zarr" / "c" / "3" / "0")
    os.symlink(outside / "S.zarr" / "c" / "3" / "0", root / "B.zarr" / "c" / "3" / "0")
    with svc() as c:
        r = submit(c, "A.zarr")
        assert r.status_code == 202, r.text
        job = wait(c, r.json()["id"])
        assert job["state"] == "succeeded", job
        p = assert_problem(submit(c, "B.zarr"), 403, "body.source.url")
        assert "'c/3/0'" in p["detail"] and "outside the data roots" in p["detail"]


# ---------------------------------------------------------------- section 9
def test_oversampling_note_only_for_randomized_jobs(service, wait):
    with service() as c:
        exact = c.post("/v1/jobs", json={"source": {"url": "small.zarr"}, "rank": 5,
                                         "method": "exact", "n_oversamples": 10}).json()
        assert not any("n_oversamples" in n for n in exact["notes"]), exact["notes"]
        auto = c.post("/v1/jobs", json={"source": {"url": "small.zarr"}, "rank": 5}).json()
        assert not any("n_oversamples" in n for n in auto["notes"]), auto["notes"]  # auto: exact
        assert wait(c, exact["id"])["state"] == "succeeded"
        assert wait(c, auto["id"])["state"] == "succeeded"


def test_created_at_is_stamped_under_the_write_lock(tmp_path):
    """Section 9: a create waiting for the lock must not carry a timestamp from
    before it got the lock, or "newest first" (by seq) is out of order."""
    store = JobStore(str(tmp_path / "jobs.sqlite"))
    try:
        params = {"url": "x"}
        with store._lock:  # another writer holds the lock ...
            waiting = threading.Thread(target=store.create, args=("t", {}, params))
            waiting.start()
            time.sleep(0.3)  # ... while this create is blocked on it
            store.create("t", {}, params)  # re-entrant: commits first
        waiting.join(10)
        rows, _ = store.list("t")
        assert [r.seq for r in rows] == sorted((r.seq for r in rows), reverse=True)
        stamps = [r.created_at for r in rows]
        assert stamps == sorted(stamps, reverse=True), stamps
    finally:
        store.close()


def test_ready_shows_workers_not_the_scheduler_address(service, dask_client):
    with service() as c:
        body = c.get("/v1/ready").json()
        assert body == {"ready": True, "workers": 2}
        assert dask_client.scheduler.address.split("://")[1] not in c.get("/v1/ready").text


# ---------------------------------------------------------------- case 8, external scheduler
def test_external_scheduler_over_tls(service, tmp_path, wait):
    """Case 8 for scale-out: a TLS-only scheduler admits the service when it is given
    the cluster's CA and a client certificate (SVDSERVE_TLS_*), and nobody without."""
    from distributed import LocalCluster
    from distributed.security import Security

    sec = Security.temporary()  # stands in for certificates made with the cluster's CA
    files = {}
    for name, pem in (("ca", sec.tls_ca_file), ("cert", sec.tls_client_cert),
                      ("key", sec.tls_client_key)):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text(pem)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, security=sec,
                      protocol="tls://", host="127.0.0.1", dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        with service(scheduler=cluster.scheduler_address, tls_ca_file=str(files["ca"]),
                     tls_cert_file=str(files["cert"]), tls_key_file=str(files["key"])) as c:
            assert c.get("/v1/ready").json() == {"ready": True, "workers": 1}
            job = c.post("/v1/jobs", json={"source": {"url": "small.zarr"}, "rank": 2}).json()
            assert wait(c, job["id"])["state"] == "succeeded"
        with service(scheduler=cluster.scheduler_address, connect_timeout=1) as c:
            assert c.get("/v1/ready").status_code == 503  # no certificate, no admission


def test_tls_settings_go_together(tmp_path):
    from pydantic import ValidationError

    from svdserve.service import Settings

    with pytest.raises(ValidationError, match="all three or none"):
        Settings(scheduler="tls://127.0.0.1:8786", tls_ca_file=str(tmp_path / "ca.pem"))
    with pytest.raises(ValidationError, match="must be a tls:// address"):
        Settings(scheduler="tcp://127.0.0.1:8786", tls_ca_file="a", tls_cert_file="b",
                 tls_key_file="c")


def test_the_default_upload_block_must_fit_the_largest_block():
    from pydantic import ValidationError

    from svdserve.service import Settings

    with pytest.raises(ValidationError, match="SVDSERVE_UPLOAD_BLOCK_BYTES .* exceeds"):
        Settings(upload_block_bytes=2 * 2**20, upload_max_block_bytes=2**20)
    assert Settings(upload_block_bytes=2**20, upload_max_block_bytes=2**20).upload_block_bytes
