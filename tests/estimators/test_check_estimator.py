"""scikit-learn's own estimator checks, run on both estimators with the in-process backend.

``parametrize_with_checks`` makes one test per check (47 per estimator in
scikit-learn 1.9.1). None is expected to fail, so ``expected_failed_checks``
is not given: a check that starts failing fails here.
"""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from svdserve import PCA, TruncatedSVD


@parametrize_with_checks([PCA(), PCA(svd_solver="randomized", whiten=True, random_state=0),
                          TruncatedSVD()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
