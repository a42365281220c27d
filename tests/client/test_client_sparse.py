"""Issue 24 from the client's side: a sparse AnnData store (CSR ``X``, CSC layer) submitted
by ``Client.submit(url, array=...)`` and by ``svdserve submit --array``, against the real
service; the result is read back and agrees with LAPACK on the densified matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from svdserve._cli import main

from tests._sparse import sparse_low_rank, write_anndata

pytestmark = pytest.mark.timeout(300)


def test_client_and_cli_accept_sparse_stores(service, client, data_dir, capsys):
    x = sparse_low_rank(200, 30, seed=11)
    url = write_anndata(data_dir / "cells.zarr", x)
    dense = x.toarray()
    res = client.submit(url, 3, array="layers/csc", center=True,
                        method="randomized").result(timeout=120)
    ref = np.linalg.svd(dense - dense.mean(axis=0), compute_uv=False)[:3]
    # rank 6 + 1e-9 noise: randomized σ equal LAPACK's far below 1e-9 relative
    np.testing.assert_allclose(res.S, ref, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(res.mean), dense.mean(axis=0), rtol=1e-12)
    assert res.report["centering"]["method"] == "implicit"
    conn = ["--url", service.url, "--token", service.token]
    assert main(["submit", url, "--array", "X", "-k", "2", "--method", "exact", *conn]) == 0
    job_id = capsys.readouterr().out.strip()
    assert main(["wait", job_id, "--timeout", "120", *conn]) == 0
    capsys.readouterr()
    assert main(["report", job_id, "--json", *conn]) == 0
    rep = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(rep["singular_values"],
                               np.linalg.svd(dense, compute_uv=False)[:2], rtol=1e-12)
    assert rep["plan"]["kind"] == "sparse" and rep["plan"]["densify"]
