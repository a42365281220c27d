"""``Client.upload`` over HTTP and ``Client.submit(ndarray)`` against the real service.

The uploads go through ``/v1/uploads`` (the client never writes to the
service's storage); the service runs on this machine, so the tests may read
the committed array from its ``source`` path to compare it bit for bit.
"""

from __future__ import annotations

import os
import tracemalloc

import httpx
import numpy as np
import pytest
import zarr

from svdserve._cli import main
from svdserve.client import Conflict, InvalidRequest, NotFound
from tests._check import check_factors

pytestmark = pytest.mark.timeout(300)


class Interrupted(Exception):
    """Raised from a request hook: the connection 'dies' before a block is sent."""


def recording_client(service, *, fail_at: int | None = None):
    """A Client whose httpx client records every block PUT (index, body bytes)."""
    sent: list[tuple[int, int]] = []

    def hook(request: httpx.Request) -> None:
        if request.method == "PUT" and "/blocks/" in request.url.path:
            if fail_at is not None and len(sent) == fail_at:
                raise Interrupted(request.url.path)
            sent.append((int(request.url.path.rsplit("/", 1)[1]),
                         int(request.headers["content-length"])))

    http = httpx.Client(event_hooks={"request": [hook]}, timeout=60)
    return service.client(http_client=http), sent


def low_rank(m, n, rank, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))


def test_interrupted_upload_resumes_with_the_missing_blocks_only(service):
    A = low_rank(300, 20, 4, seed=21)  # 15 blocks of 20 rows
    c1, sent1 = recording_client(service, fail_at=6)
    with pytest.raises(Interrupted):
        c1.upload(A, "resumed", block_rows=20)
    assert [i for i, _ in sent1] == list(range(6))
    pending = [u for u in c1.uploads() if u["name"] == "resumed.zarr"]
    assert len(pending) == 1 and pending[0]["received"] == [[0, 6]]
    c2, sent2 = recording_client(service)
    with pytest.raises(ValueError, match="holds other data in block 0"):
        c2.upload(A + 1, "resumed", block_rows=20)  # not the same matrix: no mixing
    assert sent2 == []
    source = c2.upload(A, "resumed", block_rows=20)
    assert [i for i, _ in sent2] == list(range(6, 15))  # only the missing blocks, once each
    np.testing.assert_array_equal(zarr.open_array(source, mode="r")[...], A)
    # the committed array is an ordinary source: job -> result as LAPACK's
    res = c2.submit(source, rank=4, method="exact").result(timeout=120)
    check_factors(res.U, res.S, res.Vt, A, 4)
    # a committed name is taken: uploading again is a 409, deleting frees it
    with pytest.raises(Conflict):
        c2.upload(A, "resumed", block_rows=20)
    c2.delete_upload("resumed")
    assert not os.path.exists(source)
    with pytest.raises(NotFound):
        c2.delete_upload("resumed")
    c1.close()
    c2.close()


def test_submit_an_ndarray_uploads_it_first(client):
    A = low_rank(120, 15, 3, seed=22)
    job = client.submit(A, rank=3, method="exact")
    res = job.result(timeout=120)
    check_factors(res.U, res.S, res.Vt, A, 3)
    assert any(u["source"] == job["request"]["source"]["url"] and u["name"].startswith("array-")
               for u in client.uploads())
    with pytest.raises(TypeError, match="upload"):
        client.submit({"not": "an array"}, rank=1)


def test_an_ndarray_whose_submit_is_refused_leaves_no_upload(client):
    before = {u["id"] for u in client.uploads()}
    with pytest.raises(InvalidRequest, match="rank"):  # rank 20 > min(m, n) = 15: a 422
        client.submit(low_rank(120, 15, 3, seed=23), rank=20, method="exact")
    assert {u["id"] for u in client.uploads()} == before  # the quota is given back


def test_memory_is_bounded_by_one_block(service, tmp_path):
    """A 4 MiB memmap in 128 KiB blocks: sent one block at a time, the client's
    allocations peak at a few blocks, never near the matrix."""
    m, n, rows = 2048, 256, 64
    path = tmp_path / "big.f8"
    mm = np.memmap(path, dtype="<f8", mode="w+", shape=(m, n))
    mm[:] = np.arange(m * n, dtype=float).reshape(m, n) % 1013
    mm.flush()
    mm = np.memmap(path, dtype="<f8", mode="r", shape=(m, n))
    c, sent = recording_client(service)
    c.upload(np.ones((2, 2)), "warm-up", progress=False)  # imports and pools: not the upload
    c.delete_upload("warm-up")
    sent.clear()
    block = rows * n * 8
    tracemalloc.start()
    try:
        source = c.upload(mm, "memmapped", block_rows=rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent == [(i, block) for i in range(m // rows)]
    # about 3 blocks are seen (the block buffer, h11's copy of it, small objects); 8
    # blocks (1 MiB) leave room for that; the matrix is 32 blocks, so holding it (or
    # fresh bytes per block left to the garbage collector, ~20 blocks) fails this
    assert peak < 8 * block, peak
    np.testing.assert_array_equal(zarr.open_array(source, mode="r")[...], mm)
    # a dask array is computed one block at a time as well
    import dask.array as da

    d = da.from_array(mm, chunks=(500, n)) * 2
    source2 = c.upload(d, "from-dask", block_rows=300, progress=False)
    np.testing.assert_array_equal(zarr.open_array(source2, mode="r")[...], 2 * mm)
    for name in ("memmapped", "from-dask"):
        c.delete_upload(name)
    c.close()


def test_cli_upload_over_http(service, tmp_path, capsys):
    A = low_rank(50, 6, 2, seed=23).astype(np.float32)
    np.save(tmp_path / "A.npy", A)
    code = main(["upload", "--http", str(tmp_path / "A.npy"), "cli-upload", "--chunks", "16",
                 "--url", service.url, "--token", service.token])
    out, err = capsys.readouterr()
    assert code == 0, err
    source = out.strip().splitlines()[-1]
    assert source.endswith(os.path.join("alice", "cli-upload.zarr"))
    z = zarr.open_array(source, mode="r")
    assert z.dtype == np.float32 and z.chunks == (16, 6)
    np.testing.assert_array_equal(z[...], A)


def test_cli_upload_over_http_overwrite_replaces_a_taken_name(service, tmp_path, capsys):
    """A name taken among the tenant's uploads: without --overwrite exit 1 naming the flag;
    with it the old upload is deleted and the new matrix committed under the same name."""
    first, second = low_rank(30, 4, 2, seed=31), low_rank(40, 4, 2, seed=32)
    np.save(tmp_path / "first.npy", first)
    np.save(tmp_path / "second.npy", second)
    common = ["--url", service.url, "--token", service.token]
    assert main(["upload", str(tmp_path / "first.npy"), "cli-overwrite", *common]) == 0
    capsys.readouterr()
    assert main(["upload", str(tmp_path / "second.npy"), "cli-overwrite", *common]) == 1
    err = capsys.readouterr().err
    assert "exists already" in err and "--overwrite" in err, err
    code = main(["upload", str(tmp_path / "second.npy"), "cli-overwrite", "--overwrite", *common])
    out, err = capsys.readouterr()
    assert code == 0, err
    source = out.strip().splitlines()[-1]
    np.testing.assert_array_equal(zarr.open_array(source, mode="r")[...], second)
    c = service.client()
    assert [u["name"] for u in c.uploads()].count("cli-overwrite.zarr") == 1
    c.delete_upload("cli-overwrite")
    c.close()
