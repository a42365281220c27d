"""PCA from a centred truncated SVD, with scikit-learn's attribute names and behaviour.

For data X (m samples × n features) with column means μ, the service computes
the SVD of X − 1μᵀ implicitly (``center=True``); then, exactly as in
:class:`sklearn.decomposition.PCA` with ``svd_solver="full"``:

- ``components_ = Vt[:k]`` with the sign convention of scikit-learn ≥ 1.5's
  ``svd_flip(u_based_decision=False)``: the largest-magnitude entry of each
  component is positive (the worker applies that convention);
- ``explained_variance_ = σ² / (m − 1)``;
- ``explained_variance_ratio_ = σ² / ‖X − 1μᵀ‖_F²`` -- the total variance is
  measured exactly during the first pass, so the ratio is right even though
  only k singular values were computed;
- ``noise_variance_`` is the mean of the variances of the discarded
  components, ``(‖X − 1μᵀ‖_F² − Σ_{i≤k} σ_i²) / ((m − 1)(min(m, n) − k))``,
  which likewise needs only the total.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PCA"]


class PCA:
    """Principal component analysis fitted by the svdserve service.

    Built by :meth:`svdserve.client.StoredResult.pca`; not fitted locally.

    Parameters
    ----------
    components : ndarray of shape (k, n_features)
        Right singular vectors of the centred data.
    singular_values : ndarray of shape (k,)
    mean : ndarray of shape (n_features,)
    n_samples : int
    total_variance_ss : float
        ‖X − 1μᵀ‖_F², the sum of squares of the centred data.
    n_components : int or None, default=None
        Components kept (all k when None).
    whiten : bool, default=False
        As scikit-learn: divide the projections by ``sqrt(explained_variance_)``.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
    explained_variance_ : ndarray of shape (n_components,)
    explained_variance_ratio_ : ndarray of shape (n_components,)
    singular_values_ : ndarray of shape (n_components,)
    mean_ : ndarray of shape (n_features,)
    n_components_ : int
    n_features_in_ : int
    n_samples_ : int
    noise_variance_ : float
    """

    def __init__(
        self,
        components: np.ndarray,
        singular_values: np.ndarray,
        mean: np.ndarray,
        n_samples: int,
        total_variance_ss: float,
        *,
        n_components: int | None = None,
        whiten: bool = False,
    ):
        components = np.asarray(components, dtype=np.float64)
        singular_values = np.asarray(singular_values, dtype=np.float64)
        k, n_features = components.shape
        if n_components is None:
            n_components = k
        n_components = int(n_components)
        if not 1 <= n_components <= k:
            raise ValueError(
                f"n_components must be between 1 and {k} (the rank the job computed), "
                f"got {n_components!r}; submit a job with a larger rank for more components"
            )
        n_samples = int(n_samples)
        if n_samples < 2:
            raise ValueError(f"PCA needs at least 2 samples, got {n_samples}")
        self.whiten = bool(whiten)
        self.n_samples_ = n_samples
        self.n_features_in_ = int(n_features)
        self.n_components_ = n_components
        self.n_components = n_components
        self.mean_ = np.asarray(mean, dtype=np.float64).reshape(-1)
        if self.mean_.shape != (n_features,):
            raise ValueError(
                f"mean has shape {self.mean_.shape}, expected ({n_features},)"
            )
        self.components_ = np.ascontiguousarray(components[:n_components])
        self.singular_values_ = singular_values[:n_components].copy()
        self.explained_variance_ = self.singular_values_**2 / (n_samples - 1)
        total_var = float(total_variance_ss) / (n_samples - 1)
        self.explained_variance_ratio_ = (
            self.explained_variance_ / total_var if total_var > 0 else
            np.zeros_like(self.explained_variance_)
        )
        n_all = min(n_samples, n_features)
        if n_components < n_all:
            rest = total_var - float(np.sum(self.explained_variance_))
            self.noise_variance_ = max(rest, 0.0) / (n_all - n_components)
        else:
            self.noise_variance_ = 0.0

    def __repr__(self) -> str:
        return (
            f"PCA(n_components={self.n_components_}, whiten={self.whiten}) "
            f"fitted on {self.n_samples_} x {self.n_features_in_}"
        )

    def _check_X(self, X, n_cols: int, what: str) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(
                f"Expected a 2D array, got an array of shape {X.shape}; reshape your data "
                "with X.reshape(-1, 1) for a single feature or X.reshape(1, -1) for one sample"
            )
        if X.shape[1] != n_cols:
            raise ValueError(
                f"X has {X.shape[1]} features, but PCA is expecting {n_cols} {what} as input."
            )
        return X

    def _scale(self) -> np.ndarray:
        scale = np.sqrt(self.explained_variance_)
        # as scikit-learn: clip near-zero variances so whitening stays finite
        return np.maximum(scale, np.finfo(scale.dtype).eps)

    def transform(self, X) -> np.ndarray:
        """Project X onto the principal components.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
        """
        X = self._check_X(X, self.n_features_in_, "features")
        Xt = X @ self.components_.T
        Xt -= (self.mean_ @ self.components_.T)[None, :]
        if self.whiten:
            Xt /= self._scale()
        return Xt

    def inverse_transform(self, X) -> np.ndarray:
        """Map projections back to feature space.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components)

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
        """
        X = self._check_X(X, self.n_components_, "components")
        if self.whiten:
            return X @ (np.sqrt(self.explained_variance_)[:, None] * self.components_) + self.mean_
        return X @ self.components_ + self.mean_

    def get_covariance(self) -> np.ndarray:
        """Covariance of the data under the probabilistic PCA model (as scikit-learn)."""
        components = self.components_
        exp_var = self.explained_variance_
        if self.whiten:
            components = components * np.sqrt(exp_var[:, None])
        exp_var_diff = np.maximum(exp_var - self.noise_variance_, 0.0)
        cov = (components.T * exp_var_diff) @ components
        cov.flat[:: cov.shape[0] + 1] += self.noise_variance_
        return cov
