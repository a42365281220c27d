"""Absent chunks through the client library and the CLI, against the real service
(issue 9 case 7, issue 20 item 1): a matrix with an all-zero block, uploaded with
zarr's defaults, has no chunk files for that block; the job reads them as the
fill value and says so (plan, notes, ``report["input"]``). ``missing_chunks="error"``
(``--missing-chunks error``) fails such a job with ``invalid_input`` naming the
first absent chunk; the deprecated ``allow_missing_chunks`` still works."""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_client_cli import run

pytestmark = pytest.mark.timeout(300)

NOTE = ("1 of 12 chunks absent, read as fill value 0.0 (Zarr does not store chunks equal "
        "to the fill value)")


@pytest.fixture
def half(client, data_dir):
    """A 120 x 10 matrix uploaded in 12 chunks of 10 rows; rows 50:60 are zero, so
    zarr writes no chunk for them."""
    a = np.random.default_rng(0).standard_normal((120, 10)) @ np.diag(0.6 ** np.arange(10))
    a[50:60] = 0.0
    path = data_dir / "half.zarr"
    client.upload(a, path, chunks=10)
    assert not os.path.exists(path / "c" / "5" / "0")
    return path, a


def test_zero_block_upload_decomposes_end_to_end(client, half):
    path, a = half
    job = client.submit(str(path), 3, method="exact")
    assert NOTE in job.notes and job.data["plan"]["absent_chunks"] == 1
    result = job.wait(timeout=120).result()
    assert job.state == "succeeded", job.data
    # Exact TSQR through the service: σ to a few ulps of LAPACK's; 1e-10 is headroom,
    # and U S Vt reproduces the rank-3 truncation to the same relative accuracy.
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    np.testing.assert_allclose(result.S, s[:3], rtol=1e-10)
    np.testing.assert_allclose(np.asarray(result.reconstruct(3)), (u[:, :3] * s[:3]) @ vt[:3],
                               atol=1e-10 * s[0])
    report = job.report()
    assert report["input"]["absent_chunks"] == 1 and report["input"]["fill_value"] == 0.0
    assert NOTE in report["notes"]
    # noted at submit and again in the report: the finished job says it once
    assert job.notes.count(NOTE) == 1, job.notes

    strict = client.submit(str(path), 3, method="exact", missing_chunks="error")
    assert strict.data["request"]["missing_chunks"] == "error"
    strict.wait(timeout=120)
    assert strict.state == "failed" and strict.error["type"] == "invalid_input", strict.data
    msg = strict.error["message"]
    assert "chunk 'c/5/0'" in msg and "rows 50:60" in msg and "is missing from the store" in msg

    with pytest.warns(DeprecationWarning, match="allow_missing_chunks is deprecated"):
        old = client.submit(str(path), 3, method="exact", allow_missing_chunks=True)
    assert old.data["request"]["allow_missing_chunks"] is True
    assert old.wait(timeout=120).state == "succeeded", old.data
    with pytest.raises(ValueError, match="missing_chunks must be 'fill' or 'error'"):
        client.submit(str(path), 3, missing_chunks="skip")


def test_cli_missing_chunks(service, capsys, half):
    path, _ = half
    code, _, err = run(service, capsys, "submit", str(path), "-k", "2", "--wait",
                       "--no-progress", "--missing-chunks", "error")
    assert code == 1 and "invalid_input" in err and "chunk 'c/5/0'" in err
    code, out, err = run(service, capsys, "submit", str(path), "-k", "2", "--wait",
                         "--no-progress")
    assert code == 0, err
    code, out, err = run(service, capsys, "status", out.split()[0])
    assert code == 0 and f"note      {NOTE}" in out, out + err
