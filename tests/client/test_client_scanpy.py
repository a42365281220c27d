"""scanpy's ``sc.pp.pca`` reproduced from an svdserve result (``svdserve.client.to_scanpy``).

A counts matrix from a negative binomial with four cell types, log-normalised by
scanpy (``normalize_total`` + ``log1p``), written with ``adata.write_zarr``; the
service decomposes ``X`` of that store (sparse, implicitly centred) and
``to_scanpy`` fills ``obsm``/``varm``/``uns`` as ``sc.pp.pca(svd_solver="arpack")``
does on the same AnnData in memory.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from svdserve.client import to_scanpy

anndata = pytest.importorskip("anndata")
sc = pytest.importorskip("scanpy")
pytestmark = pytest.mark.timeout(300)


def counts(cells: int, genes: int, seed: int) -> sp.csr_matrix:
    """Negative-binomial counts (dispersion 2) of four cell types, ~80 % zeros."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(0.5, 0.6, genes)  # gene means: mostly small
    types = np.exp(rng.normal(0.0, 1.0, (4, genes)))  # each type's fold changes
    mean = base * types[rng.integers(0, 4, cells)]
    r = 2.0
    return sp.csr_matrix(rng.negative_binomial(r, r / (r + mean)).astype(np.float32))


def test_sc_pp_pca_reproduced_from_a_result(client, data_dir):
    adata = anndata.AnnData(X=counts(400, 120, seed=5))
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    assert sp.issparse(adata.X) and adata.X.nnz < 0.5 * 400 * 120
    path = str(data_dir / "cells.zarr")
    # pandas 3 makes obs_names a StringArray, which anndata 0.12 writes only when asked
    with anndata.settings.override(allow_write_nullable_strings=True):
        adata.write_zarr(path)
    ref = adata.copy()
    sc.pp.pca(ref, n_comps=3, svd_solver="arpack")

    result = client.submit(path, array="X", rank=3, method="exact", center=True).result(
        timeout=120)
    to_scanpy(result, adata)

    # scanpy computes in float32 (X is float32, scikit-learn's ARPACK runs in X's dtype);
    # svdserve in float64 from the same float32 values. The float32 products carry a
    # relative error of ~sqrt(n) eps32 ~ 1e-6 of sigma_1, the components move by
    # ~eps32 sigma_1 / (sigma_3 - sigma_4) with a gap here of ~0.3 sigma_1: 1e3 eps32
    # (1.2e-4) bounds both with room, and is 1e4 times below the entries compared.
    tol = 1e3 * np.finfo(np.float32).eps
    uns, want = adata.uns["pca"], ref.uns["pca"]
    np.testing.assert_allclose(uns["variance"], want["variance"], rtol=tol)
    np.testing.assert_allclose(uns["variance_ratio"], want["variance_ratio"], rtol=tol)
    np.testing.assert_allclose(adata.varm["PCs"], ref.varm["PCs"], atol=tol)  # signs too
    scale = np.abs(ref.obsm["X_pca"]).max()
    assert adata.obsm["X_pca"].dtype == ref.obsm["X_pca"].dtype == np.float32
    np.testing.assert_allclose(adata.obsm["X_pca"], ref.obsm["X_pca"], atol=tol * scale)
    assert uns["params"]["zero_center"] is True
    # the centring was implicit: the service read the stored CSR, never a dense copy
    assert result.report.to_dict()["shape"] == [400, 120]
