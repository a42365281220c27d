"""scikit-learn's own PCA and TruncatedSVD tests, ported to svdserve's estimators.

From ``sklearn/decomposition/tests/test_pca.py`` and ``test_truncated_svd.py``
(scikit-learn 1.9.1), same data, same assertions, same tolerances (each
cited where it is not scikit-learn's ``assert_allclose`` default rtol=1e-7).
Left out: sparse inputs (not accepted), the array API, the solver
negotiation internals (``_fit_svd_solver``), arpack's strict rank limit, and
``fit_transform == fit().transform`` for the randomized method: svdserve's
``fit_transform`` returns U·S of the decomposition without another pass over
X, which differs from X·V by the (small) randomized approximation error.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from sklearn import datasets
from sklearn.decomposition import PCA as SkPCA
from sklearn.utils._testing import assert_allclose, assert_array_less

from svdserve import PCA, TruncatedSVD
from svdserve._mle import assess_dimension, infer_dimension

iris = datasets.load_iris()
# scikit-learn's five solver names map to three methods here ("covariance_eigh" runs what
# "full" runs, "arpack" what "auto" runs: test_solver_names_map_to_methods); each method once.
PCA_SOLVERS = ["full", "randomized", "auto"]


@pytest.mark.parametrize("svd_solver", PCA_SOLVERS)
@pytest.mark.parametrize("n_components", range(1, iris.data.shape[1]))
def test_pca(svd_solver, n_components):
    X = iris.data
    pca = PCA(n_components=n_components, svd_solver=svd_solver)
    X_r = pca.fit(X).transform(X)
    assert X_r.shape[1] == n_components
    X_r2 = pca.fit_transform(X)
    assert_allclose(X_r, X_r2)
    cov = pca.get_covariance()
    precision = pca.get_precision()
    assert_allclose(np.dot(cov, precision), np.eye(X.shape[1]), atol=1e-12)


@pytest.mark.parametrize("solver", PCA_SOLVERS)
def test_whitening(solver):
    rng = np.random.RandomState(0)
    n_samples, n_features, n_components, rank = 100, 80, 30, 50
    X = np.dot(rng.randn(n_samples, rank),
               np.dot(np.diag(np.linspace(10.0, 1.0, rank)), rng.randn(rank, n_features)))
    X[:, :50] *= 3
    assert X.std(axis=0).std() > 43.8
    pca = PCA(n_components=n_components, whiten=True, svd_solver=solver, random_state=0,
              iterated_power=7)
    X_whitened = pca.fit_transform(X.copy())
    assert X_whitened.shape == (n_samples, n_components)
    assert_allclose(X_whitened, pca.transform(X), rtol=5e-4)
    assert_allclose(X_whitened.std(ddof=1, axis=0), np.ones(n_components))
    assert_allclose(X_whitened.mean(axis=0), np.zeros(n_components), atol=1e-12)
    X_unwhitened = PCA(n_components=n_components, svd_solver=solver).fit(X).transform(X)
    assert X_unwhitened.std(axis=0).std() == pytest.approx(74.1, rel=1e-1)


@pytest.mark.parametrize("X", [
    np.random.RandomState(0).randn(100, 80),
    datasets.make_classification(100, 80, n_informative=78, random_state=0)[0],
    np.random.RandomState(0).randn(10, 100),
], ids=["random-tall", "correlated-tall", "random-wide"])
@pytest.mark.parametrize("svd_solver", PCA_SOLVERS)
def test_pca_explained_variance_empirical(X, svd_solver):
    pca = PCA(n_components=2, svd_solver=svd_solver, random_state=0)
    X_pca = pca.fit_transform(X)
    assert_allclose(pca.explained_variance_, np.var(X_pca, ddof=1, axis=0))
    expected = sorted(np.linalg.eig(np.cov(X, rowvar=False))[0], reverse=True)[:2]
    assert_allclose(pca.explained_variance_, np.real(expected), rtol=5e-3)


@pytest.mark.parametrize("svd_solver", PCA_SOLVERS)
def test_pca_singular_values(svd_solver):
    rng = np.random.RandomState(0)
    X = rng.randn(100, 80)
    pca = PCA(n_components=2, svd_solver=svd_solver, random_state=rng)
    X_trans = pca.fit_transform(X)
    assert_allclose(np.sum(pca.singular_values_**2), np.linalg.norm(X_trans, "fro") ** 2)
    assert_allclose(pca.singular_values_, np.sqrt(np.sum(X_trans**2, axis=0)))
    X = rng.randn(100, 110)  # wide
    pca = PCA(n_components=3, svd_solver=svd_solver, random_state=rng)
    X_trans = pca.fit_transform(X)
    X_trans /= np.sqrt(np.sum(X_trans**2, axis=0))
    X_trans[:, 0] *= 3.142
    X_trans[:, 1] *= 2.718
    pca.fit(np.dot(X_trans, pca.components_))
    assert_allclose(pca.singular_values_, [3.142, 2.718, 1.0])


@pytest.mark.parametrize("svd_solver", PCA_SOLVERS)
def test_pca_check_projection(svd_solver):
    rng = np.random.RandomState(0)
    X = rng.randn(100, 3) * 0.1
    X[:10] += np.array([3, 4, 5])
    Xt = 0.1 * rng.randn(1, 3) + np.array([3, 4, 5])
    Yt = PCA(n_components=2, svd_solver=svd_solver).fit(X).transform(Xt)
    Yt /= np.sqrt((Yt**2).sum())
    assert_allclose(np.abs(Yt[0][0]), 1.0, rtol=5e-3)


@pytest.mark.parametrize("svd_solver", PCA_SOLVERS)
def test_pca_check_projection_list(svd_solver):
    X_trans = PCA(n_components=1, svd_solver=svd_solver, random_state=0).fit_transform(
        [[1.0, 0.0], [0.0, 1.0]])
    assert X_trans.shape == (2, 1)
    assert_allclose(X_trans.mean(), 0.00, atol=1e-12)
    assert_allclose(X_trans.std(), 0.71, rtol=5e-3)


@pytest.mark.parametrize("svd_solver", ["full", "arpack", "randomized"])
@pytest.mark.parametrize("whiten", [False, True])
def test_pca_inverse(svd_solver, whiten):
    rng = np.random.RandomState(0)
    X = rng.randn(50, 3)
    X[:, 1] *= 0.00001
    X += [5, 4, 3]
    pca = PCA(n_components=2, svd_solver=svd_solver, whiten=whiten).fit(X)
    assert_allclose(X, pca.inverse_transform(pca.transform(X)), rtol=5e-6)


@pytest.mark.parametrize("solver", ["full", "randomized"])
@pytest.mark.parametrize("data", [iris.data, iris.data.T], ids=["tall", "wide"])
def test_n_components_none(data, solver):
    assert PCA(svd_solver=solver).fit(data).n_components_ == min(iris.data.shape)


@pytest.mark.parametrize("svd_solver", ["auto", "full"])
def test_n_components_mle(svd_solver):
    X = np.random.RandomState(0).randn(600, 10)
    assert PCA(n_components="mle", svd_solver=svd_solver).fit(X).n_components_ == 1


def test_pca_dim():
    rng = np.random.RandomState(0)
    X = rng.randn(100, 5) * 0.1
    X[:10] += np.array([3, 4, 5, 1, 2])
    pca = PCA(n_components="mle", svd_solver="full").fit(X)
    assert pca.n_components == "mle"
    assert pca.n_components_ == 1


@pytest.mark.parametrize("X, n_components, n_components_validated", [
    (iris.data, 0.95, 2),
    (iris.data, 0.01, 1),
    (np.random.RandomState(0).rand(5, 20), 0.5, 2),
])
def test_infer_dim_by_explained_variance(X, n_components, n_components_validated):
    pca = PCA(n_components=n_components, svd_solver="full").fit(X)
    assert pca.n_components == pytest.approx(n_components)
    assert pca.n_components_ == n_components_validated


@pytest.mark.parametrize("svd_solver", PCA_SOLVERS)
def test_pca_score(svd_solver):
    n, p = 1000, 3
    rng = np.random.RandomState(0)
    X = rng.randn(n, p) * 0.1 + np.array([3, 4, 5])
    pca = PCA(n_components=2, svd_solver=svd_solver).fit(X)
    ll1 = pca.score(X)
    h = -0.5 * np.log(2 * np.pi * np.exp(1) * 0.1**2) * p
    assert_allclose(ll1 / h, 1, rtol=5e-2)
    assert ll1 > pca.score(rng.randn(n, p) * 0.2 + np.array([3, 4, 5]))
    assert ll1 > PCA(n_components=2, whiten=True, svd_solver=svd_solver).fit(X).score(X)


def test_pca_score3():
    n, p = 200, 3
    rng = np.random.RandomState(0)
    Xl = rng.randn(n, p) + rng.randn(n, 1) * np.array([3, 4, 5]) + np.array([1, 0, 7])
    Xt = rng.randn(n, p) + rng.randn(n, 1) * np.array([3, 4, 5]) + np.array([1, 0, 7])
    ll = [PCA(n_components=k, svd_solver="full").fit(Xl).score(Xt) for k in range(p)]
    assert np.argmax(ll) == 1


@pytest.mark.parametrize("svd_solver", PCA_SOLVERS)
def test_pca_sanity_noise_variance(svd_solver):
    X, _ = datasets.load_digits(return_X_y=True)
    pca = PCA(n_components=30, svd_solver=svd_solver, random_state=0).fit(X)
    assert np.all((pca.explained_variance_ - pca.noise_variance_) >= 0)


@pytest.mark.parametrize("svd_solver", ["arpack", "randomized"])
def test_pca_score_consistency_solvers(svd_solver):
    X, _ = datasets.load_digits(return_X_y=True)
    pca_full = PCA(n_components=30, svd_solver="full", random_state=0).fit(X)
    pca_other = PCA(n_components=30, svd_solver=svd_solver, random_state=0).fit(X)
    assert_allclose(pca_full.score(X), pca_other.score(X), rtol=5e-6)


@pytest.mark.parametrize("svd_solver", ["full", "randomized"])
def test_pca_zero_noise_variance_edge_cases(svd_solver):
    rng = np.random.RandomState(0)
    X = rng.randn(100, 3) * 0.1 + np.array([3, 4, 5])
    pca = PCA(n_components=3, svd_solver=svd_solver).fit(X)
    assert pca.noise_variance_ == 0
    pca.score(X)
    pca.fit(X.T)
    assert pca.noise_variance_ == 0
    pca.score(X.T)


@pytest.mark.parametrize("svd_solver", PCA_SOLVERS)
def test_pca_deterministic_output(svd_solver):
    rng = np.random.RandomState(0)
    X = rng.rand(10, 10)
    out = np.array([PCA(n_components=2, svd_solver=svd_solver, random_state=rng)
                    .fit_transform(X)[0] for _ in range(20)])
    assert_allclose(out, np.tile(out[0, :], 20).reshape(20, 2))


@pytest.mark.parametrize("svd_solver", PCA_SOLVERS)
def test_pca_dtype_preservation(svd_solver):
    X = np.random.RandomState(0).rand(1000, 4)
    pca_64 = PCA(n_components=3, svd_solver=svd_solver, random_state=0).fit(X)
    pca_32 = PCA(n_components=3, svd_solver=svd_solver, random_state=0).fit(
        X.astype(np.float32))
    assert pca_64.components_.dtype == np.float64
    assert pca_32.components_.dtype == np.float32
    assert pca_64.transform(X).dtype == np.float64
    assert pca_32.transform(X.astype(np.float32)).dtype == np.float32
    assert_allclose(pca_64.components_, pca_32.components_, rtol=1e-3, atol=1e-3)
    X_i64 = np.random.RandomState(0).randint(0, 1000, (1000, 4))
    pca_i64 = PCA(n_components=3, svd_solver=svd_solver, random_state=0).fit(X_i64)
    pca_i32 = PCA(n_components=3, svd_solver=svd_solver, random_state=0).fit(
        X_i64.astype(np.int32))
    assert pca_i64.components_.dtype == pca_i32.components_.dtype == np.float64
    assert pca_i32.transform(X_i64.astype(np.int32)).dtype == np.float64
    assert_allclose(pca_i64.components_, pca_i32.components_, rtol=1e-4)


def test_pca_n_components_mostly_explained_variance_ratio():
    X, y = datasets.load_iris(return_X_y=True)
    n_components = PCA().fit(X, y).explained_variance_ratio_.cumsum()[-2]
    assert PCA(n_components=n_components).fit(X, y).n_components_ == X.shape[1]


def test_mle_redundant_data():
    X, _ = datasets.make_classification(n_features=20, n_informative=1, n_repeated=18,
                                        n_redundant=1, n_clusters_per_class=1,
                                        random_state=42)
    assert PCA(n_components="mle").fit(X).n_components_ == 1


def test_infer_dim_1():
    n, p = 1000, 5
    rng = np.random.RandomState(0)
    X = (rng.randn(n, p) * 0.1 + rng.randn(n, 1) * np.array([3, 4, 5, 1, 2])
         + np.array([1, 0, 7, 4, 6]))
    spect = PCA(n_components=p, svd_solver="full").fit(X).explained_variance_
    ll = np.array([assess_dimension(spect, k, n) for k in range(1, p)])
    assert ll[1] > ll.max() - 0.01 * n


def test_infer_dim_2_and_3():
    n, p = 1000, 5
    rng = np.random.RandomState(0)
    X = rng.randn(n, p) * 0.1
    X[:10] += np.array([3, 4, 5, 1, 2])
    X[10:20] += np.array([6, 0, 7, 2, -1])
    spect = PCA(n_components=p, svd_solver="full").fit(X).explained_variance_
    assert infer_dimension(spect, n) > 1
    n = 100
    X = rng.randn(n, p) * 0.1
    X[:10] += np.array([3, 4, 5, 1, 2])
    X[10:20] += np.array([6, 0, 7, 2, -1])
    X[30:40] += 2 * np.array([-1, 1, -1, 1, -1])
    spect = PCA(n_components=p, svd_solver="full").fit(X).explained_variance_
    assert infer_dimension(spect, n) > 2


def test_assess_dimension_bad_rank_and_small_eigenvalues():
    spectrum = np.array([1, 1e-30, 1e-30, 1e-30])
    for rank in (0, 5):
        with pytest.raises(ValueError, match=r"should be in \[1, n_features - 1\]"):
            assess_dimension(spectrum, rank, 10)
    assert assess_dimension(spectrum, rank=1, n_samples=10) > -np.inf
    for rank in (2, 3):
        assert assess_dimension(spectrum, rank, 10) == -np.inf
    assert infer_dimension(spectrum, 10) == 1


def test_assess_dimension_rank_one():
    X = np.ones((9, 6))
    _, s, _ = np.linalg.svd(X, full_matrices=True)
    assert_allclose(s[1:], np.zeros(5), atol=1e-12)
    assert np.isfinite(assess_dimension(s, rank=1, n_samples=9))
    for rank in range(2, 6):
        assert assess_dimension(s, rank, 9) == -np.inf


def test_fit_mle_too_few_samples():
    X, _ = datasets.make_classification(n_samples=20, n_features=21, random_state=42)
    with pytest.raises(ValueError,
                       match="n_components='mle' is only supported if n_samples >= n_features"):
        PCA(n_components="mle", svd_solver="full").fit(X)


def test_mle_simple_case():
    X = np.random.RandomState(0).randn(1000, 10)
    X[:, -1] = np.mean(X[:, :-1], axis=-1)
    assert PCA("mle", svd_solver="full").fit(X).n_components_ == 9


def test_pca_randomized_svd_n_oversamples():
    X = np.random.RandomState(0).randn(1_000, 100)
    pca_randomized = PCA(n_components=1, svd_solver="randomized", n_oversamples=100,
                         random_state=0).fit(X)
    pca_full = PCA(n_components=1, svd_solver="full").fit(X)
    assert_allclose(np.abs(pca_randomized.components_), np.abs(pca_full.components_))


def test_feature_names_out():
    names = PCA(n_components=2).fit(iris.data).get_feature_names_out()
    assert_array_equal([f"pca{i}" for i in range(2)], names)


def test_variance_correctness():
    # As scikit-learn's (its 1000 × 200 shrunk to 300 × 60 to stay quick):
    # explained_variance_ against the unbiased sample covariance.
    rng = np.random.RandomState(0)
    X = rng.randn(300, 60)
    pca = PCA().fit(X)
    pca_var = pca.explained_variance_ / pca.explained_variance_ratio_
    true_var = np.var(X, ddof=1, axis=0).sum()
    np.testing.assert_allclose(pca_var, true_var)


@pytest.mark.parametrize("sk_name, same_as", [("covariance_eigh", "full"), ("arpack", "auto")])
def test_solver_names_map_to_methods(sk_name, same_as):
    X = np.random.RandomState(0).randn(60, 8)
    a = PCA(n_components=3, svd_solver=sk_name).fit(X)
    b = PCA(n_components=3, svd_solver=same_as).fit(X)
    assert a.report_["method"] == b.report_["method"] == "exact"
    assert_array_equal(a.components_, b.components_)


# -- signs and agreement with scikit-learn's full solver (not in its tests, same idea) ----


@pytest.mark.parametrize("shape", [(120, 9), (9, 120)], ids=["tall", "wide"])
@pytest.mark.parametrize("whiten", [False, True])
def test_same_signed_components_as_sklearn_full(shape, whiten):
    # Both are LAPACK-accurate SVDs of the same centred matrix with the same sign rule
    # (largest |entry| of each component positive): the difference is rounding, a few
    # hundred eps relative to σ_1 for this κ ≈ 10 matrix; 1e-10 leaves room.
    rng = np.random.RandomState(3)
    X = rng.randn(*shape) @ np.diag(np.linspace(1, 10, shape[1])) + 2.0
    ours = PCA(n_components=4, whiten=whiten).fit(X)
    ref = SkPCA(n_components=4, whiten=whiten, svd_solver="full").fit(X)
    for name in ("components_", "explained_variance_", "explained_variance_ratio_",
                 "singular_values_", "mean_"):
        assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-10, atol=1e-10)
    assert_allclose(ours.noise_variance_, ref.noise_variance_, rtol=1e-10)
    assert_allclose(ours.score_samples(X), ref.score_samples(X), rtol=1e-10)
    assert_allclose(ours.get_precision(), ref.get_precision(), rtol=1e-8, atol=1e-10)
    assert_allclose(ours.transform(X), ref.transform(X), rtol=1e-10, atol=1e-10)


# -- TruncatedSVD (test_truncated_svd.py) ----------------------------------------------


@pytest.fixture(scope="module")
def X_tfidf():
    # The dense form of scikit-learn's X_sparse: a 60 × 55 tf-idf-like matrix.
    from sklearn.utils.fixes import _sparse_random_array

    X = _sparse_random_array((60, 55), density=0.2, format="csr",
                             rng=np.random.RandomState(42))
    X.data[:] = 1 + np.log(X.data)
    return X.toarray()


def test_tsvd_solvers(X_tfidf):
    svd_a = TruncatedSVD(30, algorithm="arpack")
    svd = TruncatedSVD(30, algorithm="randomized", random_state=42, n_oversamples=100)
    Xa = svd_a.fit_transform(X_tfidf)[:, :6]
    Xr = svd.fit_transform(X_tfidf)[:, :6]
    assert_allclose(Xa, Xr, rtol=2e-3)
    comp_a, comp = np.abs(svd_a.components_), np.abs(svd.components_)
    assert_allclose(comp_a[:9], comp[:9], rtol=1e-3)
    assert_allclose(comp_a[9:], comp[9:], atol=1e-2)


@pytest.mark.parametrize("n_components", (10, 25, 41, 55))
def test_tsvd_attributes(n_components, X_tfidf):
    tsvd = TruncatedSVD(n_components).fit(X_tfidf)
    assert tsvd.n_components == n_components
    assert tsvd.components_.shape == (n_components, X_tfidf.shape[1])


@pytest.mark.parametrize("algorithm", ["arpack", "randomized"])
def test_tsvd_too_many_components(X_tfidf, algorithm):
    with pytest.raises(ValueError):
        TruncatedSVD(n_components=56, algorithm=algorithm).fit(X_tfidf)


@pytest.mark.parametrize("algo", ["arpack", "randomized"])
def test_tsvd_inverse_transform(algo, X_tfidf):
    tsvd = TruncatedSVD(n_components=52, random_state=42, algorithm=algo)
    Xinv = tsvd.inverse_transform(tsvd.fit_transform(X_tfidf))
    assert_allclose(Xinv, X_tfidf, rtol=1e-1, atol=2e-1)


def test_tsvd_integers(X_tfidf):
    tsvd = TruncatedSVD(n_components=6)
    assert tsvd.fit_transform(X_tfidf.astype(np.int64)).shape == (60, 6)


@pytest.mark.parametrize("n_components", [10, 20])
@pytest.mark.parametrize("solver", ["arpack", "randomized"])
def test_tsvd_explained_variance(X_tfidf, n_components, solver):
    svd = TruncatedSVD(n_components, algorithm=solver)
    X_tr = svd.fit_transform(X_tfidf)
    assert_array_less(0.0, svd.explained_variance_ratio_)
    assert_array_less(svd.explained_variance_ratio_.sum(), 1.0)
    true_ratio = np.var(X_tr, axis=0) / np.var(X_tfidf, axis=0).sum()
    assert_allclose(svd.explained_variance_ratio_, true_ratio)


@pytest.mark.parametrize("solver", ["arpack", "randomized"])
def test_tsvd_explained_variance_components_10_20(X_tfidf, solver):
    svd_10 = TruncatedSVD(10, algorithm=solver, n_iter=10).fit(X_tfidf)
    svd_20 = TruncatedSVD(20, algorithm=solver, n_iter=10).fit(X_tfidf)
    assert_allclose(svd_10.explained_variance_ratio_, svd_20.explained_variance_ratio_[:10],
                    rtol=5e-3)
    assert svd_20.explained_variance_ratio_.sum() > svd_10.explained_variance_ratio_.sum()


@pytest.mark.parametrize("solver", ["arpack", "randomized"])
def test_tsvd_singular_values_consistency(solver):
    rng = np.random.RandomState(0)
    X = rng.randn(100, 80)
    pca = TruncatedSVD(n_components=2, algorithm=solver, random_state=rng).fit(X)
    X_pca = pca.transform(X)
    assert_allclose(np.sum(pca.singular_values_**2.0), np.linalg.norm(X_pca, "fro") ** 2.0,
                    rtol=1e-2)
    assert_allclose(pca.singular_values_, np.sqrt(np.sum(X_pca**2.0, axis=0)), rtol=1e-2)


@pytest.mark.parametrize("solver", ["arpack", "randomized"])
def test_tsvd_singular_values_expected(solver):
    rng = np.random.RandomState(0)
    X = rng.randn(100, 110)
    pca = TruncatedSVD(n_components=3, algorithm=solver, random_state=rng)
    X_pca = pca.fit_transform(X)
    X_pca /= np.sqrt(np.sum(X_pca**2.0, axis=0))
    X_pca[:, 0] *= 3.142
    X_pca[:, 1] *= 2.718
    pca.fit(np.dot(X_pca, pca.components_))
    assert_allclose(pca.singular_values_, [3.142, 2.718, 1.0], rtol=1e-14)


def test_truncated_svd_eq_pca(X_tfidf):
    X_c = X_tfidf - X_tfidf.mean(axis=0)
    params = dict(n_components=10, random_state=42)
    Xt_svd = (svd := TruncatedSVD(algorithm="arpack", **params)).fit_transform(X_c)
    Xt_pca = (pca := PCA(svd_solver="arpack", **params)).fit_transform(X_c)
    assert_allclose(Xt_svd, Xt_pca, rtol=1e-9)
    assert_allclose(pca.mean_, 0, atol=1e-9)
    assert_allclose(svd.components_, pca.components_)


@pytest.mark.parametrize("algorithm", ["arpack", "exact"])
def test_tsvd_fit_transform(X_tfidf, algorithm):
    # Exact methods only: see the module docstring for the randomized U·S.
    svd = TruncatedSVD(n_components=5, n_iter=7, random_state=42, algorithm=algorithm)
    assert_allclose(svd.fit_transform(X_tfidf), svd.fit(X_tfidf).transform(X_tfidf))
