"""``allow_missing_chunks`` through the client library and the CLI (issue 9, case 7),
against the real service: a chunk missing at rest fails the job with
``invalid_input`` naming it, unless the caller opts in to the fill value."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from test_client_cli import run

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def half(data_dir):
    """A 120 x 10 array in 12 chunks of 10 rows, chunk 5 never written."""
    a = np.random.default_rng(0).standard_normal((120, 10)) @ np.diag(0.6 ** np.arange(10))
    path = data_dir / "half.zarr"
    z = zarr.create_array(str(path), shape=a.shape, dtype="f8", chunks=(10, 10))
    z[...] = a
    os.remove(path / "c" / "5" / "0")
    sparse = a.copy()
    sparse[50:60] = 0.0
    return path, sparse


def test_client_submit_allow_missing_chunks(client, half):
    path, sparse = half
    job = client.submit(str(path), 3, method="exact").wait(timeout=120)
    assert job.state == "failed" and job.error["type"] == "invalid_input", job.data
    assert "chunk 'c/5/0'" in job.error["message"] and "rows 50:60" in job.error["message"]

    ok = client.submit(str(path), 3, method="exact", allow_missing_chunks=True)
    assert ok.data["request"]["allow_missing_chunks"] is True
    result = ok.wait(timeout=120).result()
    np.testing.assert_allclose(np.asarray(result.S),
                               np.linalg.svd(sparse, compute_uv=False)[:3], rtol=1e-10)


def test_cli_allow_missing_chunks(service, capsys, half):
    path, _ = half
    code, _, err = run(service, capsys, "submit", str(path), "-k", "2", "--wait",
                       "--no-progress")
    assert code == 1 and "invalid_input" in err and "allow_missing_chunks" in err
    code, out, err = run(service, capsys, "submit", str(path), "-k", "2", "--wait",
                         "--no-progress", "--allow-missing-chunks")
    assert code == 0, err
