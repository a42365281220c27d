"""Issue 9 in the core: a run reads exactly the matrix it validated, or fails typed.

Real Zarr arrays on disk; the local engine (deterministic panel order, the
progress callback runs between panels) or the session's real Dask cluster.
Each test names the numbered case of issue 9 it covers.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
import zarr

from svdserve.worker import (
    InvalidInputError,
    SourceAccessError,
    SourceChangedError,
    StorageError,
    pin_source,
    plan_panels,
    svd,
)

from tests._server import moto_s3


def write(path, a, chunks, **kw):
    z = zarr.create_array(str(path), shape=a.shape, dtype=a.dtype, chunks=chunks,
                          overwrite=True, **kw)
    z[...] = a
    return z


def matrix(m, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, n)) @ np.diag(0.7 ** np.arange(n))


def _inside_and_outside(tmp_path):
    """A data root holding A.zarr and, outside it, another array S.zarr of the same shape."""
    root, outside = tmp_path / "data", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    write(root / "A.zarr", matrix(100, 10), (50, 10))
    write(outside / "S.zarr", matrix(100, 10, seed=9), (50, 10))
    return root, outside


def chunk_file(path, *coords):
    return os.path.join(str(path), "c", *map(str, coords))


# ---------------------------------------------------------------- 1. deleted mid-run
@pytest.mark.parametrize("when", [5, "last"])
def test_source_deleted_mid_run_fails_never_succeeds(tmp_path, when):
    """Case 1: ``rm -rf`` of the array after 5 panels (or after the very last
    read, where only the final re-listing can notice) fails with
    SourceChangedError; zarr's fill value never stands in for the rows."""
    a = matrix(400, 12)
    src = tmp_path / "A.zarr"
    write(src, a, (20, 12))  # 20 panels of one chunk each

    def progress(done, total, phase):
        last_read = phase.pass_no == phase.passes and done == total and phase.name != "write"
        if (when == "last" and last_read) or (when == 5 and done == 5):
            shutil.rmtree(src, ignore_errors=True)

    with pytest.raises(SourceChangedError, match="vanished|gone") as info:
        svd(str(src), 3, method="exact", panel_bytes=20 * 12 * 8, progress=progress)
    assert str(src) in str(info.value)


# ---------------------------------------------------------------- 2. in-place overwrite
def test_overwrite_between_runs_reads_the_new_array(tmp_path, dask_client):
    """Case 2: three runs on data/X.zarr, then an overwrite with int64 data in other
    chunks: the next run decomposes the new array (no stale per-worker metadata)."""
    path = tmp_path / "X.zarr"
    a = matrix(1000, 20)
    write(path, a, (100, 20))
    for _ in range(3):
        res = svd(str(path), 3, method="exact", client=dask_client, panel_bytes=100 * 20 * 8)
        np.testing.assert_allclose(res.S, np.linalg.svd(a, compute_uv=False)[:3], rtol=1e-10)
    b = np.random.default_rng(1).integers(0, 1000, size=(1000, 20)).astype(np.int64)
    write(path, b, (250, 20))
    res = svd(str(path), 3, method="exact", client=dask_client, panel_bytes=100 * 20 * 8)
    np.testing.assert_allclose(res.S, np.linalg.svd(b.astype(float), compute_uv=False)[:3],
                               rtol=1e-10)


def test_overwrite_after_pinning_fails_naming_the_metadata(tmp_path):
    """Case 2, the pinned view: an array replaced after it was pinned is refused."""
    path = tmp_path / "X.zarr"
    write(path, matrix(100, 10), (10, 10))
    pin = pin_source(str(path))
    write(path, matrix(100, 10).astype(np.float32), (10, 10))
    with pytest.raises(SourceChangedError, match="metadata document zarr.json"):
        svd(pin, 2)


def test_chunk_rewritten_after_pinning_is_named(tmp_path):
    path = tmp_path / "X.zarr"
    z = write(path, matrix(100, 10), (10, 10))
    pin = pin_source(str(path))
    time.sleep(0.01)  # a distinct mtime is not needed (the inode changes), only tidier
    z[30:40] = 1.0
    with pytest.raises(SourceChangedError, match=r"chunk 'c/3/0' \(rows 30:40, columns 0:10\)"):
        svd(pin, 2)


# ---------------------------------------------------------------- 3. swapped for a symlink
def test_chunk_swapped_for_symlink_outside_roots_is_not_read(tmp_path):
    """Case 3 in the core: pinned inside the roots, a chunk then replaced by a
    symlink to a file outside them; the read-time check refuses it."""
    root, outside = _inside_and_outside(tmp_path)
    pin = pin_source(str(root / "A.zarr"), roots=[str(root)])
    os.unlink(chunk_file(root / "A.zarr", 1, 0))
    os.symlink(chunk_file(outside / "S.zarr", 1, 0), chunk_file(root / "A.zarr", 1, 0))
    with pytest.raises(SourceChangedError, match="outside the data roots"):
        svd(pin, 2)


def test_array_directory_swapped_for_symlink_is_refused(tmp_path):
    root, outside = _inside_and_outside(tmp_path)
    pin = pin_source(str(root / "A.zarr"), roots=[str(root)])
    os.rename(root / "A.zarr", root / "old.zarr")
    os.symlink(outside / "S.zarr", root / "A.zarr")
    with pytest.raises(SourceChangedError, match="outside the data roots"):
        svd(pin, 2)


def test_symlinked_chunk_outside_roots_refused_when_pinned(tmp_path):
    root, outside = _inside_and_outside(tmp_path)
    os.unlink(chunk_file(root / "A.zarr", 1, 0))
    os.symlink(chunk_file(outside / "S.zarr", 1, 0), chunk_file(root / "A.zarr", 1, 0))
    with pytest.raises(SourceAccessError, match="'c/1/0'.*outside the data roots"):
        pin_source(str(root / "A.zarr"), roots=[str(root)])


def test_only_chunk_keys_are_checked(tmp_path):
    """Section 9 ("every submit walks the whole tree"): files that are never read,
    even a symlink out of the roots beside the chunks, do not matter."""
    root, outside = tmp_path / "data", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    a = matrix(100, 10)
    write(root / "A.zarr", a, (50, 10))
    os.symlink(outside, root / "A.zarr" / "notes")
    pin = pin_source(str(root / "A.zarr"), roots=[str(root)])
    np.testing.assert_allclose(svd(pin, 2).S, np.linalg.svd(a, compute_uv=False)[:2])


# ---------------------------------------------------------------- 4. metadata that lies
_ZSTD = {"name": "zstd", "configuration": {"level": 0, "checksum": False}}


def lying_array(path, shape, chunks, compressed=False):
    os.makedirs(path)
    doc = {"zarr_format": 3, "node_type": "array", "shape": shape, "data_type": "float64",
           "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
           "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
           "fill_value": 0.0, "codecs": [{"name": "bytes",
                                          "configuration": {"endian": "little"}}]
           + ([_ZSTD] if compressed else [])}
    with open(os.path.join(path, "zarr.json"), "w") as f:
        json.dump(doc, f)
    return os.path.getsize(os.path.join(path, "zarr.json"))


@pytest.mark.parametrize("chunks,compressed,expected", [
    ([10**6, 10**6], False, r"1e\+09 chunks; at most 1000000"),         # too many chunks
    # one huge compressed chunk: it would have to be decoded whole
    ([10**15, 10**6], True, r"more than the 4096 MiB a worker may hold"),
    # one huge raw chunk is read in slices, but 16 rows per 128 MiB panel is 6e13 panels
    ([10**15, 10**6], False, r"makes 6.25e\+13 panels; at most 1000000"),
])
def test_huge_metadata_refused_from_metadata_alone(tmp_path, chunks, compressed, expected):
    """Case 4: a ~400-byte zarr.json claiming shape [10^15, 10^6] is refused with
    the numbers, before any chunk key is listed or any panel planned."""
    size = lying_array(tmp_path / "huge.zarr", [10**15, 10**6], chunks, compressed)
    assert size < 600
    with pytest.raises(InvalidInputError, match=expected) as info:
        svd(str(tmp_path / "huge.zarr"), 5)
    assert info.value.field == "source"
    assert "[1000000000000000, 1000000]" in str(info.value)


def test_panel_plan_is_lazy():
    """Case 4: a plan of 10^13 panels is three integers, not 10^13 tuples."""
    plan = plan_panels(10**15, 10**6, 100, panel_bytes=1)
    assert len(plan) == 10**13
    assert plan[0] == (0, 100) and plan[-1] == (10**15 - 100, 10**15)
    small = plan_panels(1000, 10, 100, panel_bytes=100 * 10 * 8)
    assert list(small) == [(s, s + 100) for s in range(0, 1000, 100)]
    assert small == [(s, s + 100) for s in range(0, 1000, 100)]


# ---------------------------------------------------------------- 5. corrupt or truncated
@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_corrupt_chunk_is_storage_error_naming_chunk_and_array(tmp_path, damage):
    """Case 5: a chunk whose bytes do not decode (zstd) is a StorageError that
    names the chunk key, its rows and the array."""
    path = tmp_path / "A.zarr"
    write(path, matrix(200, 10), (20, 10))  # default codecs: bytes + zstd
    victim = chunk_file(path, 4, 0)
    data = open(victim, "rb").read()
    with open(victim, "wb") as f:
        f.write(data[: len(data) // 2] if damage == "truncate" else data[:8] + b"\x00" * 40)
    with pytest.raises(StorageError, match=r"chunk 'c/4/0' of .*A\.zarr.* \(rows 80:100, "
                                           r"columns 0:10\) could not be read") as info:
        svd(str(path), 2, panel_bytes=20 * 10 * 8)
    assert not isinstance(info.value, SourceChangedError)


# ---------------------------------------------------------------- 6. zero chunk size
def test_zero_chunk_size_is_invalid_input(tmp_path):
    """Case 6: chunk_shape [0, 10] is refused up front (was a ZeroDivisionError)."""
    lying_array(tmp_path / "zero.zarr", [100, 10], [0, 10])
    with pytest.raises(InvalidInputError, match=r"chunk shape \[0, 10\]; every chunk size "
                                                r"must be >= 1"):
        svd(str(tmp_path / "zero.zarr"), 2)


# ---------------------------------------------------------------- 7. missing chunk at rest
def test_missing_chunk_is_invalid_input_naming_first_chunk_and_rows(tmp_path):
    """Case 7: a half-finished upload fails naming the first missing chunk -- in the
    strict mode (issue 20: by default an absent chunk is the fill value, as in Zarr)."""
    path = tmp_path / "A.zarr"
    a = matrix(100, 10)
    write(path, a, (10, 10))
    for i in (7, 3):
        os.remove(chunk_file(path, i, 0))
    with pytest.raises(InvalidInputError, match=r"chunk 'c/3/0' of .* \(rows 30:40, columns "
                                                r"0:10\) is missing .*2 chunks are missing"):
        svd(str(path), 2, missing_chunks="error")


def test_missing_chunks_read_as_fill_value_by_default(tmp_path, dask_client):
    path = tmp_path / "A.zarr"
    a = matrix(100, 10)
    write(path, a, (10, 10))
    os.remove(chunk_file(path, 3, 0))
    res = svd(str(path), 3, method="exact", client=dask_client, panel_bytes=10 * 10 * 8)
    sparse = a.copy()
    sparse[30:40] = 0.0
    np.testing.assert_allclose(res.S, np.linalg.svd(sparse, compute_uv=False)[:3], rtol=1e-10)


def test_pin_round_trips_through_json(tmp_path):
    path = tmp_path / "A.zarr"
    a = matrix(60, 8)
    write(path, a, (20, 8))
    pin = pin_source(str(path), roots=[str(tmp_path)])
    from svdserve.worker import SourcePin

    again = SourcePin.from_json(json.loads(json.dumps(pin.to_json())))
    assert again.ref == pin.ref and np.array_equal(again.stamps, pin.stamps)
    np.testing.assert_allclose(svd(again, 2).S, np.linalg.svd(a, compute_uv=False)[:2])


# ---------------------------------------------------------------- object storage (moto)
@pytest.fixture(scope="module")
def s3():
    with moto_s3("issue9-pins") as (so, fs):
        yield so, fs


def test_s3_source_is_pinned_by_etags(s3):
    """On S3 the pin holds the ETags: a rewritten object fails the run naming the
    chunk; an absent one is the fill value (invalid_input in the strict mode)."""
    so, fs = s3
    a = matrix(60, 8)
    z = zarr.create_array("s3://issue9-pins/A.zarr", shape=a.shape, chunks=(20, 8), dtype="f8",
                          storage_options=so)
    z[...] = a
    pin = pin_source("s3://issue9-pins/A.zarr", storage_options=so)
    assert set(pin.stamps.ravel()) != {""}
    np.testing.assert_allclose(svd(pin, 2, storage_options=so).S,
                               np.linalg.svd(a, compute_uv=False)[:2], rtol=1e-10)
    z[20:40] = 0.5
    with pytest.raises(SourceChangedError, match=r"chunk 'c/1/0' \(rows 20:40.*changed"):
        svd(pin, 2)
    fs.rm("issue9-pins/A.zarr/c/2/0")
    with pytest.raises(InvalidInputError, match=r"chunk 'c/2/0' .*is missing"):
        svd("s3://issue9-pins/A.zarr", 2, storage_options=so, missing_chunks="error")
    b = np.asarray(z[...])
    b[40:60] = 0.0
    for reader in ("direct", "zarr"):
        res = svd("s3://issue9-pins/A.zarr", 2, storage_options=so, method="exact",
                  reader=reader)
        # Exact TSQR: σ to a few ulps of LAPACK's; 1e-10 is headroom.
        np.testing.assert_allclose(res.S, np.linalg.svd(b, compute_uv=False)[:2], rtol=1e-10)
        assert res.report["input"]["absent_chunks"] == 1


def test_sharded_array_is_pinned_by_shard(tmp_path):
    """Sharded arrays: the stored keys are shards (read by byte ranges through the
    guard); a missing shard names its rows in the strict mode, reads as the fill
    value by default."""
    a = matrix(400, 12)
    z = zarr.create_array(str(tmp_path / "sh.zarr"), shape=a.shape, chunks=(20, 12),
                          shards=(100, 12), dtype="f8")
    z[...] = a
    res = svd(str(tmp_path / "sh.zarr"), 3, method="exact", panel_bytes=20 * 12 * 8)
    np.testing.assert_allclose(res.S, np.linalg.svd(a, compute_uv=False)[:3], rtol=1e-10)
    assert res.provenance["panels"] == 20  # panels follow the inner chunks
    os.remove(chunk_file(tmp_path / "sh.zarr", 2, 0))
    with pytest.raises(InvalidInputError, match=r"chunk 'c/2/0' .*\(rows 200:300"):
        svd(str(tmp_path / "sh.zarr"), 3, missing_chunks="error")
    b = a.copy()
    b[200:300] = 0.0
    res = svd(str(tmp_path / "sh.zarr"), 3, method="exact")
    # Exact TSQR on a 400 x 12 matrix: σ agrees with LAPACK to a few ulps; 1e-10 is headroom.
    np.testing.assert_allclose(res.S, np.linalg.svd(b, compute_uv=False)[:3], rtol=1e-10)
    assert res.report["input"]["n_chunks"] == 4 and res.report["input"]["absent_chunks"] == 1
