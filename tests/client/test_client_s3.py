"""Uploads and direct result access on S3 (a moto S3 server on loopback).

The job service is replaced by httpx.MockTransport here: what is tested is
the client's S3 path -- writing Zarr to ``s3://`` with storage options,
opening a result group from ``s3://`` (manifest required), and reading a
right-hand side from an ``s3://`` Zarr array.
"""

from __future__ import annotations

import os

import httpx
import numpy as np
import pytest

from svdserve import _manifest
from svdserve.client import Client, StorageAccessError

from svdclient_testlib import job_json

from tests._check import write_fake_result as write_result
from tests._server import moto_s3


@pytest.fixture(scope="module")
def s3():
    with moto_s3("lab", key="test-key", secret="test-secret") as (so, fs):
        yield so, fs


def _client(handler, so, **kw):
    return Client("http://svd.test", http_client=httpx.Client(transport=httpx.MockTransport(handler)),
                  storage_options=so, **kw)


def test_upload_to_s3_uses_the_clients_storage_options(s3):
    import zarr

    so, fs = s3
    c = _client(lambda r: httpx.Response(500), so)
    A = np.random.default_rng(0).standard_normal((50, 7))
    url = c.upload(A, "s3://lab/in/A.zarr", chunks=16)
    assert url == "s3://lab/in/A.zarr"
    z = zarr.open_array(url, mode="r", storage_options=so)
    assert z.chunks == (16, 7) and z.metadata.zarr_format == 3
    np.testing.assert_array_equal(z[...], A)
    with pytest.raises(StorageAccessError, match="overwrite=True"):
        c.upload(A, "s3://lab/in/A.zarr")


def test_result_opened_directly_from_s3(s3, tmp_path):
    so, fs = s3
    rng = np.random.default_rng(1)
    A = rng.standard_normal((60, 5))
    U, s, Vt, _ = write_result(tmp_path / "result.zarr", A, 5, row_chunk=20)
    fs.put(str(tmp_path / "result.zarr"), "lab/results/j/1/result.zarr", recursive=True)
    done = job_json("j", "succeeded", result_url="s3://lab/results/j/1/result.zarr",
                    shape=(60, 5), rank=5)
    c = _client(lambda r: httpx.Response(200, json=done), so, result_access="direct")
    res = c.get("j").result()
    assert res.url == "s3://lab/results/j/1/result.zarr"
    np.testing.assert_array_equal(res.S, s)
    np.testing.assert_array_equal(res.U.compute(), U)
    # b read from an s3:// Zarr array with the same options; full rank: NumPy's answer
    b = rng.standard_normal(60)
    burl = c.upload(b[:, None], "s3://lab/in/b.zarr")
    out = res.lstsq(burl, storage_options=so)
    # κ(A) ≈ 1.5: agreement to ~1e3 eps relative
    np.testing.assert_allclose(out.x[:, 0], np.linalg.lstsq(A, b, rcond=None)[0], rtol=0,
                               atol=1e-12)


def test_s3_result_without_manifest_is_refused(s3, tmp_path):
    so, fs = s3
    write_result(tmp_path / "r.zarr", np.eye(6)[:, :3], 2)
    os.remove(_manifest.path_of(tmp_path / "r.zarr"))
    fs.put(str(tmp_path / "r.zarr"), "lab/results/half/result.zarr", recursive=True)
    half = job_json("h", "succeeded", result_url="s3://lab/results/half/result.zarr")
    c = _client(lambda r: httpx.Response(200, json=half), so, result_access="direct")
    with pytest.raises(StorageAccessError, match="manifest"):
        c.get("h").result()


def test_s3_result_without_storage_options_is_not_direct(s3):
    done = job_json("j", "succeeded", result_url="s3://lab/results/j/1/result.zarr")
    c = _client(lambda r: httpx.Response(200, json=done), None, result_access="direct")
    with pytest.raises(StorageAccessError, match="not readable from this machine"):
        c.get("j").result()
