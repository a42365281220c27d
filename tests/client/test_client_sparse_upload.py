"""Sparse matrices uploaded without densifying: ``Client.upload(scipy.sparse)`` over HTTP and
to storage, ``svdserve upload file.npz`` and ``file.h5ad``; each store is opened again by
anndata's own reader (``anndata.io.read_elem``) and compared bit for bit.

Against the real service (subprocess, real HTTP); the service runs on this
machine, so the tests read the committed group from its ``source`` path.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

from svdserve._cli import main
from tests.client.test_client_upload import recording_client

anndata = pytest.importorskip("anndata")
pytestmark = pytest.mark.timeout(300)


def read_back(source: str, array: str | None = None) -> sp.csr_matrix:
    group = zarr.open_group(source, mode="r")
    group = group[array] if array else group
    assert dict(group.attrs)["encoding-type"] == "csr_matrix"
    return anndata.io.read_elem(group)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_upload_sparse_over_http_sends_csr_blocks_only(service, fmt):
    x = sp.random(300, 400, density=0.02, format=fmt, random_state=7, dtype=np.float32)
    client, sent = recording_client(service)
    with client:
        source = client.upload(x, f"sparse-{fmt}", block_rows=64)
    back = read_back(source)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back.toarray(), x.toarray())
    assert [i for i, _ in sent] == list(range(5))  # 300 rows in blocks of 64
    # never densified: indptr (rows + 1 per block) + int32 indices + float32 values
    assert sum(b for _, b in sent) == (300 + 5) * 8 + x.nnz * 8
    assert sum(b for _, b in sent) < 300 * 400 * 4 / 10


def test_submit_a_sparse_matrix_uploads_it_first(client):
    x = sp.random(200, 30, density=0.2, format="csr", random_state=8)
    job = client.submit(x, rank=4, method="exact", center=True)
    result = job.result(timeout=120)
    dense = x.toarray()
    s = np.linalg.svd(dense - dense.mean(axis=0), compute_uv=False)
    # exact (TSQR) is backward stable: |error of s_i| <= c * eps * s_1, and s_1/s_4 < 2 here
    np.testing.assert_allclose(result.S, s[:4], rtol=1e3 * np.finfo(float).eps)
    source = job["request"]["source"]["url"]
    assert any(u["source"] == source and u["format"] == "csr" for u in client.uploads())


def test_upload_sparse_to_storage_into_a_group(client, data_dir):
    x = sp.random(90, 30, density=0.1, format="csc", random_state=9)
    url = client.upload(x, str(data_dir / "store.zarr"), array="X", chunks=16)
    np.testing.assert_array_equal(read_back(url, "X").toarray(), x.toarray())


def test_cli_upload_npz_and_h5ad_layer(service, tmp_path, capsys):
    auth = ["--url", service.url, "--token", service.token]
    x = sp.random(120, 50, density=0.05, format="csr", random_state=10)
    sp.save_npz(tmp_path / "x.npz", x)
    assert main(["upload", str(tmp_path / "x.npz"), "cli-npz", "--http", *auth]) == 0
    out = capsys.readouterr()
    assert f"sparse (CSR, {x.nnz} non-zeros)" in out.err
    np.testing.assert_array_equal(read_back(out.out.strip()).toarray(), x.toarray())
    counts = sp.random(120, 50, density=0.05, format="csr", random_state=11)
    adata = anndata.AnnData(X=x, layers={"counts": counts})
    # pandas 3 makes obs_names a StringArray, which anndata 0.12 writes only when asked
    with anndata.settings.override(allow_write_nullable_strings=True):
        adata.write_h5ad(tmp_path / "x.h5ad")
    assert main(["upload", str(tmp_path / "x.h5ad"), "cli-h5ad", "--layer", "counts",
                 "--chunks", "32", *auth]) == 0
    out = capsys.readouterr()
    np.testing.assert_array_equal(read_back(out.out.strip()).toarray(), counts.toarray())
    assert main(["upload", str(tmp_path / "x.h5ad"), "cli-h5ad-2", "--layer", "nope",
                 *auth]) != 0
    assert "its layers: ['counts']" in capsys.readouterr().err
    dense = anndata.AnnData(X=x.toarray())  # a dense .X goes as a dense array, row blocks
    with anndata.settings.override(allow_write_nullable_strings=True):
        dense.write_h5ad(tmp_path / "d.h5ad")
    assert main(["upload", str(tmp_path / "d.h5ad"), "cli-h5ad-dense", *auth]) == 0
    z = zarr.open_array(capsys.readouterr().out.strip(), mode="r")
    np.testing.assert_array_equal(z[...], x.toarray())


def test_interrupted_sparse_upload_resumes_with_the_missing_blocks_only(service):
    from tests.client.test_client_upload import Interrupted

    x = sp.random(100, 30, density=0.1, format="csr", random_state=12)  # 5 blocks of 20 rows
    c1, sent1 = recording_client(service, fail_at=2)
    with pytest.raises(Interrupted):
        c1.upload(x, "sparse-resumed", block_rows=20)
    c2, sent2 = recording_client(service)
    with pytest.raises(ValueError, match="holds other data in block 0"):
        c2.upload(x * 2, "sparse-resumed", block_rows=20)  # not the same matrix: no mixing
    source = c2.upload(x, "sparse-resumed", block_rows=20)
    assert [i for i, _ in sent1] == [0, 1] and [i for i, _ in sent2] == [2, 3, 4]
    np.testing.assert_array_equal(read_back(source).toarray(), x.toarray())
