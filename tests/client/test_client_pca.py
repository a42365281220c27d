"""Unit tests of svdserve.client.PCA against scikit-learn (factors from a dense SVD).

The service-computed version of the same parity is in test_client_service.py.

Tolerance: both sides are the SVD of the same centred matrix by LAPACK
(scikit-learn uses scipy's gesdd, we use numpy's), so components agree to
about ``eps · σ_1 / gap`` and variances to a few ulps of σ_1²; ``1e-10``
relative (≈ 5e5 eps) covers the smallest relative gap of these datasets' first
components (digits: ~1e-3) with margin.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits, load_iris
from sklearn.decomposition import PCA as SkPCA

from svdserve.client import PCA

from tests._check import dense_svd

RTOL = 1e-10  # see module docstring

DATASETS = {
    "iris": (load_iris, 3),  # 150 x 4
    "digits": (load_digits, 20),  # 1797 x 64, has constant (zero-variance) pixels
    "breast_cancer": (load_breast_cancer, 10),  # 569 x 30, features on very different scales
}


def _check_noise_variance(ours, sk):
    # noise_variance_ = (total − captured) / (min(m, n) − k): a difference of two sums the
    # size of the total variance, so its error is ~ eps · total (times the summation
    # length's log and the rank), shared among the discarded components. 1e3 eps · total
    # covers it (breast cancer: total ≈ 4e5 against a noise variance ≈ 2e-3).
    total_var = float(np.sum(sk.explained_variance_) / np.sum(sk.explained_variance_ratio_))
    n_rest = min(sk.n_samples_, sk.n_features_in_) - sk.n_components_
    atol = 1e3 * np.finfo(float).eps * total_var / max(n_rest, 1)
    assert ours.noise_variance_ == pytest.approx(sk.noise_variance_, rel=1e-12, abs=atol)


def _ours(X, k, *, whiten=False, n_components=None):
    U, s, Vt, mean, s_all, total = dense_svd(X, k, center=True)
    return PCA(Vt, s, mean, X.shape[0], total, n_components=n_components, whiten=whiten)


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("whiten", [False, True])
def test_matches_sklearn(name, whiten):
    loader, k = DATASETS[name]
    X = loader().data.astype(np.float64)
    ours = _ours(X, k, whiten=whiten)
    sk = SkPCA(n_components=k, svd_solver="full", whiten=whiten).fit(X)
    scale = np.abs(sk.components_).max()
    # same sign convention: compared without any sign alignment
    np.testing.assert_allclose(ours.components_, sk.components_, rtol=0, atol=RTOL * 1e3 * scale)
    np.testing.assert_allclose(ours.explained_variance_, sk.explained_variance_, rtol=RTOL)
    np.testing.assert_allclose(ours.explained_variance_ratio_, sk.explained_variance_ratio_,
                               rtol=RTOL)
    np.testing.assert_allclose(ours.singular_values_, sk.singular_values_, rtol=RTOL)
    np.testing.assert_allclose(ours.mean_, sk.mean_, rtol=1e-14, atol=1e-14 * np.abs(X).max())
    assert ours.n_components_ == sk.n_components_ == k
    assert ours.n_features_in_ == sk.n_features_in_ == X.shape[1]
    assert ours.n_samples_ == sk.n_samples_
    _check_noise_variance(ours, sk)
    Z = ours.transform(X[:50])
    Z_sk = sk.transform(X[:50])
    np.testing.assert_allclose(Z, Z_sk, rtol=0, atol=1e-8 * np.abs(Z_sk).max())
    np.testing.assert_allclose(ours.inverse_transform(Z), sk.inverse_transform(Z_sk),
                               rtol=0, atol=1e-8 * np.abs(X).max())
    np.testing.assert_allclose(ours.get_covariance(), sk.get_covariance(), rtol=0,
                               atol=1e-8 * np.abs(sk.get_covariance()).max())


def test_fewer_components_than_computed():
    X = load_iris().data
    ours = _ours(X, 4, n_components=2)
    sk = SkPCA(n_components=2, svd_solver="full").fit(X)
    assert ours.components_.shape == (2, 4)
    np.testing.assert_allclose(ours.explained_variance_ratio_, sk.explained_variance_ratio_,
                               rtol=RTOL)
    _check_noise_variance(ours, sk)


def test_full_rank_has_no_noise_variance():
    X = load_iris().data
    assert _ours(X, 4).noise_variance_ == 0.0 == SkPCA(4, svd_solver="full").fit(X).noise_variance_


def test_errors_say_what_is_wrong():
    X = load_iris().data
    ours = _ours(X, 2)
    with pytest.raises(ValueError, match="X has 3 features, but PCA is expecting 4"):
        ours.transform(X[:, :3])
    with pytest.raises(ValueError, match="Expected a 2D array"):
        ours.transform(X[0])
    with pytest.raises(ValueError, match="expecting 2 components"):
        ours.inverse_transform(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="between 1 and 2"):
        _ours(X, 2, n_components=3)
