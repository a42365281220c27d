"""The estimators on ``scipy.sparse`` input, where scikit-learn's accept it: ``TruncatedSVD``
(any sparse format) and ``PCA(svd_solver="arpack")`` (implicit centring), against
scikit-learn on the same matrix; in-process backend, through the worker's sparse reader
(the matrix is written as an AnnData CSR group, never densified)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import PCA as SkPCA
from sklearn.decomposition import TruncatedSVD as SkTruncatedSVD

from svdserve import PCA, TruncatedSVD


def counts_like(m, n, seed):
    """Sparse non-negative data with a clear rank-4 structure (gaps above the noise)."""
    rng = np.random.default_rng(seed)
    signal = rng.gamma(2.0, size=(m, 4)) @ rng.gamma(1.0, size=(4, n))
    mask = rng.random((m, n)) < 0.15
    return sp.csr_matrix(np.where(mask, signal + rng.random((m, n)), 0.0))


# Both use the exact method here (arpack -> TSQR at this size) and scikit-learn's ARPACK
# converges to ~1e-10 relative of sigma_1 by default (tol=0: machine precision), so the
# factors agree to ~1e4 eps relative; the components of a gap sigma_k - sigma_{k+1}
# >= 0.05 sigma_1 move by at most eps * sigma_1 / gap ~ 20 eps.
TOL = 1e4 * np.finfo(np.float64).eps


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("shape", [(240, 30), (30, 90)], ids=["tall", "wide"])
def test_pca_arpack_on_sparse_matches_sklearn(fmt, shape):
    X = counts_like(*shape, seed=1).asformat(fmt)
    ours = PCA(4, svd_solver="arpack").fit(X)
    ref = SkPCA(4, svd_solver="arpack", random_state=0).fit(X)
    np.testing.assert_allclose(ours.singular_values_, ref.singular_values_, rtol=TOL)
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_,
                               rtol=TOL)
    np.testing.assert_allclose(ours.components_, ref.components_, atol=TOL)  # same signs
    np.testing.assert_allclose(ours.mean_, ref.mean_, rtol=TOL)
    scale = ref.singular_values_[0]
    np.testing.assert_allclose(ours.transform(X), ref.transform(X), atol=TOL * scale)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_truncated_svd_on_sparse_matches_sklearn(fmt):
    X = counts_like(200, 40, seed=2).asformat(fmt)
    ours = TruncatedSVD(4, algorithm="arpack")
    Z = ours.fit_transform(X)
    ref = SkTruncatedSVD(4, algorithm="arpack", random_state=0)
    Zr = ref.fit_transform(X)
    np.testing.assert_allclose(ours.singular_values_, ref.singular_values_, rtol=TOL)
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_,
                               rtol=TOL)
    np.testing.assert_allclose(ours.components_, ref.components_, atol=TOL)
    np.testing.assert_allclose(Z, Zr, atol=TOL * ref.singular_values_[0])
