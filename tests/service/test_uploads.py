"""Matrices uploaded over HTTP (``/v1/uploads``): blocks, checksums, commit, quota,
expiry, tenants, and a job on the committed array.

In-process app (``service`` fixture) on the session's real cluster; blocks
are written by zarr into a real uploads root.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time

import numpy as np
import pytest
import zarr

from tests.service._kit import low_rank

ALICE, BOB = {"Authorization": "Bearer token-alice"}, {"Authorization": "Bearer token-bob"}
TOKENS = "alice:token-alice,bob:token-bob"


def digest_header(data: bytes) -> dict[str, str]:
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    return {"Content-Digest": f"sha-256=:{digest}:"}


def create(c, name="A", shape=(600, 40), dtype="float64", headers=None, **kw):
    return c.post("/v1/uploads", json={"name": name, "shape": list(shape), "dtype": dtype, **kw},
                  headers=headers)


def block_bytes(a: np.ndarray, rec: dict, i: int) -> bytes:
    rows = rec["block_rows"]
    return np.ascontiguousarray(a[i * rows:(i + 1) * rows], dtype="<" + a.dtype.str[1:]).tobytes()


def put(c, rec, i, data, headers=None):
    return c.put(f"/v1/uploads/{rec['id']}/blocks/{i}", content=data,
                 headers={**digest_header(data), **(headers or {})})


def upload_all(c, a, name="A", headers=None, **kw):
    r = create(c, name, a.shape, a.dtype.name, headers=headers, **kw)
    assert r.status_code == 201, r.text
    rec = r.json()
    for i in range(rec["n_blocks"]):
        assert put(c, rec, i, block_bytes(a, rec, i), headers).status_code == 201
    return rec


def test_upload_commit_then_job_equals_lapack(service, wait, check, tmp_path):
    """Blocks of 250 rows (80 kB: over the 64 KiB JSON body limit) -> commit -> job."""
    a = low_rank(600, 40, 6, seed=11)
    with service(uploads_root=str(tmp_path / "up")) as c:
        r = create(c, "A", a.shape, block_rows=250)
        assert r.status_code == 201, r.text
        rec = r.json()
        assert r.headers["Location"] == f"/v1/uploads/{rec['id']}"
        assert (rec["n_blocks"], rec["block_bytes"], rec["missing"]) == (3, 80_000, [[0, 3]])
        for i in range(3):
            assert put(c, rec, i, block_bytes(a, rec, i)).status_code == 201
        # not visible before the commit: neither where it will be, nor the staging area
        target = str(tmp_path / "up" / "default" / "A.zarr")
        staging = str(tmp_path / "up" / ".uploads" / "default" / rec["id"] / "array.zarr")
        for url in (target, staging):
            r = c.post("/v1/jobs", json={"source": {"url": url}, "rank": 5, "method": "exact"})
            assert r.status_code in (403, 404), r.text
        r = c.post(f"/v1/uploads/{rec['id']}/commit")
        assert r.status_code == 200, r.text
        done = r.json()
        assert done["state"] == "committed" and done["source"] == target
        assert done["received"] == [[0, 3]] and done["missing"] == []
        z = zarr.open_array(target, mode="r")
        assert z.metadata.zarr_format == 3 and z.chunks == (250, 40)
        np.testing.assert_array_equal(z[...], a)
        # committing again answers the same
        assert c.post(f"/v1/uploads/{rec['id']}/commit").json()["source"] == target
        r = c.post("/v1/jobs", json={"source": {"url": done["source"]}, "rank": 5,
                                     "method": "exact"})
        assert r.status_code == 202, r.text
        job = wait(c, r.json()["id"])
        assert job["state"] == "succeeded", job
        g = zarr.open_group(job["result"]["url"], mode="r")
        check(g["U"][...], g["S"][...], g["Vt"][...], a, 5)


def test_block_is_idempotent_and_write_once(service, tmp_path):
    a = np.arange(60.0).reshape(20, 3)
    with service(uploads_root=str(tmp_path / "up")) as c:
        rec = create(c, "B", a.shape, block_rows=8).json()
        data = block_bytes(a, rec, 1)
        first, again = put(c, rec, 1, data), put(c, rec, 1, data)
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json()["replayed"] is True and again.json()["rows"] == [8, 16]
        other = block_bytes(a + 1, rec, 1)
        r = put(c, rec, 1, other)
        assert r.status_code == 409, r.text
        assert r.json()["received_sha256"] == hashlib.sha256(data).hexdigest()
        assert c.get(f"/v1/uploads/{rec['id']}").json()["received"] == [[1, 2]]


def test_checksums_are_checked(service, tmp_path):
    a = np.ones((10, 4))
    with service(uploads_root=str(tmp_path / "up")) as c:
        rec = create(c, "C", a.shape).json()
        data = block_bytes(a, rec, 0)
        corrupt = bytearray(data)
        corrupt[5] ^= 0xFF
        r = c.put(f"/v1/uploads/{rec['id']}/blocks/0", content=bytes(corrupt),
                  headers=digest_header(data))
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["errors"][0]["field"] == "header.content-digest"
        r = c.put(f"/v1/uploads/{rec['id']}/blocks/0", content=data)
        assert r.status_code == 422 and "Content-Digest" in r.json()["detail"], r.text
        # the hex form is accepted too
        r = c.put(f"/v1/uploads/{rec['id']}/blocks/0", content=data,
                  headers={"X-Checksum-SHA256": hashlib.sha256(data).hexdigest()})
        assert r.status_code == 201, r.text
        assert c.get(f"/v1/uploads/{rec['id']}").json()["missing"] == []


def test_wrong_block_size_names_the_block(service, tmp_path):
    a = np.ones((25, 4))
    with service(uploads_root=str(tmp_path / "up")) as c:
        rec = create(c, "D", a.shape, block_rows=10).json()
        # block 2 holds rows 20:25 -> 5 x 4 x 8 = 160 bytes
        for data in (block_bytes(a, rec, 2)[:-8], block_bytes(a, rec, 1)):
            r = put(c, rec, 2, data)
            assert r.status_code == 422, r.text
            body = r.json()
            assert "block 2" in body["detail"] and "160 bytes expected" in body["detail"]
            assert body["expected_bytes"] == 160 and body["errors"][0]["field"] == "body"
        r = put(c, rec, 3, block_bytes(a, rec, 2))
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "path.block"


def test_commit_lists_the_missing_blocks(service, tmp_path):
    a = np.ones((50, 2))
    with service(uploads_root=str(tmp_path / "up")) as c:
        rec = create(c, "E", a.shape, block_rows=5).json()
        for i in (0, 1, 2, 5, 9):
            put(c, rec, i, block_bytes(a, rec, i))
        r = c.post(f"/v1/uploads/{rec['id']}/commit")
        assert r.status_code == 409, r.text
        assert r.json()["missing_blocks"] == [[3, 5], [6, 9]]
        assert "5 of 10 blocks are missing (3, 4, 6, 7, 8)" in r.json()["detail"]
        assert not (tmp_path / "up" / "default" / "E.zarr").exists()


def test_quota_is_413_with_the_numbers(service, tmp_path):
    with service(uploads_root=str(tmp_path / "up"), upload_quota_bytes=10_000) as c:
        assert create(c, "F", (100, 10)).status_code == 201  # 8000 bytes
        r = create(c, "G", (50, 10), dtype="float32")  # 2000 more: exactly the limit
        assert r.status_code == 201, r.text
        r = create(c, "H", (1, 1), dtype="uint8")
        assert r.status_code == 413, r.text
        body = r.json()
        assert (body["used"], body["requested"], body["limit"]) == (10_000, 1, 10_000)
        assert "SVDSERVE_UPLOAD_QUOTA_BYTES" in body["detail"]
        listing = c.get("/v1/uploads").json()
        assert listing["used_bytes"] == 10_000 and len(listing["items"]) == 2
        # deleting frees the quota
        assert c.delete(f"/v1/uploads/{listing['items'][0]['id']}").status_code == 204
        assert create(c, "H", (1, 1), dtype="uint8").status_code == 201


def test_uncommitted_uploads_expire(service, tmp_path):
    root = tmp_path / "up"
    with service(uploads_root=str(root), upload_expiry=0.2) as c:
        rec = create(c, "X", (10, 2)).json()
        time.sleep(0.5)  # past the expiry: the next request sweeps it
        r = c.get(f"/v1/uploads/{rec['id']}")
        assert r.status_code == 404 and "0.2 s without a new block" in r.json()["detail"]
        assert c.get("/v1/uploads").json()["items"] == []
        assert not (root / ".uploads" / "default" / rec["id"]).exists()
    with service(uploads_root=str(root)) as c:  # default expiry (a day), swept by the clock
        rec = create(c, "Y", (10, 2)).json()
        store = c.app_state.uploads
        assert store.sweep(now=time.time() + 3600) == 0
        assert store.sweep(now=time.time() + 86400 + 1) == 1
        assert c.get(f"/v1/uploads/{rec['id']}").status_code == 404


def test_sweep_removes_what_a_block_write_left_after_a_delete(tmp_path):
    # A block written while its upload is deleted: zarr makes the chunk's folders again
    # under the upload's directory, which then has no record. The sweep removes it once
    # it is older than the expiry (a younger one may be an upload being created).
    from svdserve.service._upload_store import UploadStore

    store = UploadStore(str(tmp_path), quota_bytes=2**20, expiry=60.0, block_bytes=2**10,
                        max_block_bytes=2**16, max_blocks=100)
    rec = store.create("default", "A", [4, 2], "float64", None)
    store.delete(rec)
    chunk = tmp_path / ".uploads" / "default" / rec.id / "array.zarr" / "c" / "0" / "0"
    chunk.parent.mkdir(parents=True)
    chunk.write_bytes(b"\0" * 64)
    assert store.sweep(now=time.time()) == 0  # too young to tell from a creation
    assert chunk.exists()
    assert store.sweep(now=time.time() + 61) == 1
    assert not (tmp_path / ".uploads" / "default" / rec.id).exists()


def test_tenants_never_see_each_others_uploads(service, wait, tmp_path):
    a = low_rank(40, 6, 3, seed=12)
    with service(uploads_root=str(tmp_path / "up"), tokens=TOKENS) as c:
        rec = upload_all(c, a, "shared-name", headers=ALICE)
        path = f"/v1/uploads/{rec['id']}"
        for method, url in (("GET", path), ("POST", path + "/commit"), ("DELETE", path)):
            assert c.request(method, url, headers=BOB).status_code == 404
        assert put(c, rec, 0, block_bytes(a, rec, 0), BOB).status_code == 404
        source = c.post(path + "/commit", headers=ALICE).json()["source"]
        assert c.get("/v1/uploads", headers=BOB).json()["items"] == []
        job = {"source": {"url": source}, "rank": 2}
        r = c.post("/v1/jobs", json=job, headers=BOB)
        assert r.status_code == 404 and r.json()["errors"][0]["field"] == "body.source.url"
        r = c.post("/v1/jobs", json={"source": {"url": str(tmp_path / "up"),
                                                "array": "alice/shared-name.zarr"}, "rank": 2},
                   headers=BOB)
        assert r.status_code in (403, 404), r.text
        # bob may use the same name for his own upload
        assert create(c, "shared-name", (2, 2), headers=BOB).status_code == 201
        r = c.post("/v1/jobs", json=job, headers=ALICE)
        assert r.status_code == 202, r.text
        assert wait(c, r.json()["id"], headers=ALICE)["state"] == "succeeded"


@pytest.mark.parametrize("body, field", [
    ({"name": "A", "shape": [10], "dtype": "float64"}, "body.shape"),  # a vector
    ({"name": "A", "shape": [0, 5], "dtype": "float64"}, "body.shape"),  # empty
    ({"name": "A", "shape": [2, 3, 4], "dtype": "float64"}, "body.shape"),  # 3-D
    ({"name": "A", "shape": [5, 5], "dtype": "complex128"}, "body.dtype"),
    ({"name": "A", "shape": [5, 5], "dtype": "<U3"}, "body.dtype"),
    ({"name": "A", "shape": [5, 5], "dtype": ">f8"}, "body.dtype"),  # big-endian
    ({"name": "A", "shape": [5, 5], "dtype": "float128"}, "body.dtype"),  # not in Zarr v3
    ({"name": "A", "shape": [5, 5], "dtype": "nonsense"}, "body.dtype"),
    ({"name": "../A", "shape": [5, 5], "dtype": "float64"}, "body.name"),
    ({"name": "A", "shape": [5, 5], "block_rows": 0}, "body.block_rows"),
    ({"name": "A", "shape": [10**6, 10**4], "block_rows": 10**6}, "body.block_rows"),
])
def test_bad_shapes_dtypes_and_names_are_422_naming_the_field(service, tmp_path, body, field):
    with service(uploads_root=str(tmp_path / "up")) as c:
        r = c.post("/v1/uploads", json=body)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert field in [e["field"] for e in r.json()["errors"]], r.json()
        assert not (tmp_path / "up" / ".uploads" / "default").exists()  # nothing reserved


def test_int_upload_runs_and_a_name_is_taken_once(service, wait, tmp_path):
    a = np.arange(48, dtype=np.int32).reshape(12, 4) % 7
    with service(uploads_root=str(tmp_path / "up")) as c:
        rec = upload_all(c, a, "ints", block_rows=5)
        source = c.post(f"/v1/uploads/{rec['id']}/commit").json()["source"]
        assert create(c, "ints", (2, 2)).status_code == 409  # the name is taken
        r = c.post("/v1/jobs", json={"source": {"url": source}, "rank": 2, "method": "exact"})
        assert r.status_code == 202, r.text
        job = wait(c, r.json()["id"])
        s = np.linalg.svd(a.astype(float), compute_uv=False)
        # the exact method is backward stable: σ to a small multiple of eps·σ₁
        np.testing.assert_allclose(c.get(f"/v1/jobs/{job['id']}/report").json()
                                   ["singular_values"], s[:2], rtol=1e-10)
        assert c.delete(f"/v1/uploads/{rec['id']}").status_code == 204
        assert not os.path.exists(source)


def test_an_upload_is_pinned_like_any_source(service, wait, gate, tmp_path):
    """Deleting a committed upload while a job on it is queued fails that job with
    storage_error; it never succeeds on data that vanished."""
    a = low_rank(60, 8, 3, seed=13)
    with service(uploads_root=str(tmp_path / "up"), max_concurrent_jobs=1) as c:
        sources = {}
        for name in ("first", "second"):
            rec = upload_all(c, a, name, block_rows=20)
            sources[name] = (rec["id"], c.post(f"/v1/uploads/{rec['id']}/commit").json()["source"])
        busy = c.post("/v1/jobs", json={"source": {"url": sources["first"][1]}, "rank": 2}).json()
        assert gate.entered.wait(30)  # the only slot is held inside the first job
        queued = c.post("/v1/jobs", json={"source": {"url": sources["second"][1]}, "rank": 2})
        assert queued.status_code == 202, queued.text
        assert c.delete(f"/v1/uploads/{sources['second'][0]}").status_code == 204
        gate.release()
        assert wait(c, busy["id"])["state"] == "succeeded"
        job = wait(c, queued.json()["id"])
        assert job["state"] == "failed" and job["error"]["type"] == "storage_error", job
