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

The arithmetic lives in the public functions below (:func:`variances`,
:func:`project`, :func:`unproject`, :func:`covariance`, :func:`precision`,
:func:`log_likelihood`), shared by :class:`PCA` here and by the estimators
:class:`svdserve.PCA` / :class:`svdserve.TruncatedSVD`. They take NumPy arrays
or, for the data argument, dask arrays (the result is then lazy).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PCA", "variances", "project", "unproject", "covariance", "precision",
           "log_likelihood", "whitening_scale"]


def variances(singular_values, n_samples, total_ss, n_features):
    """Explained variance, its ratio and the noise variance of a centred SVD.

    Parameters
    ----------
    singular_values : ndarray of shape (k,)
        The k leading singular values of X − 1μᵀ.
    n_samples : int
        m, at least 2.
    total_ss : float
        ‖X − 1μᵀ‖_F², measured over the whole matrix.
    n_features : int

    Returns
    -------
    explained_variance : ndarray of shape (k,)
        σ² / (m − 1).
    explained_variance_ratio : ndarray of shape (k,)
        σ² / ‖X − 1μᵀ‖_F² (zeros for constant data).
    noise_variance : float
        Mean variance of the min(m, n) − k discarded components (0 when none is).
    """
    s = np.asarray(singular_values, dtype=np.float64)
    dof = n_samples - 1
    explained = s**2 / dof
    total_var = float(total_ss) / dof
    ratio = explained / total_var if total_var > 0 else np.zeros_like(explained)
    n_all = min(n_samples, n_features)
    noise = 0.0
    if s.size < n_all:
        noise = max(total_var - float(np.sum(explained)), 0.0) / (n_all - s.size)
    return explained, ratio, noise


def whitening_scale(explained_variance):
    """√explained_variance, clipped below at eps as scikit-learn does (whitening stays finite)."""
    scale = np.sqrt(explained_variance)
    return np.maximum(scale, np.finfo(scale.dtype).eps)


def project(X, components, mean=None, explained_variance=None):
    """``(X − 1 meanᵀ) Cᵀ``, divided by :func:`whitening_scale` when whitening.

    Parameters
    ----------
    X : ndarray or dask array of shape (n_samples, n_features)
    components : ndarray of shape (k, n_features)
    mean : ndarray of shape (n_features,) or None
        Subtracted after the product (X itself is neither copied nor centred).
    explained_variance : ndarray of shape (k,) or None
        Given: whiten.

    Returns
    -------
    ndarray or dask array of shape (n_samples, k)
    """
    Xt = X @ components.T
    if mean is not None:
        Xt = Xt - (mean @ components.T)[None, :]
    if explained_variance is not None:
        Xt = Xt / whitening_scale(explained_variance)
    return Xt


def unproject(Z, components, mean=None, explained_variance=None):
    """``Z C + 1 meanᵀ`` (Z un-whitened first when ``explained_variance`` is given).

    Parameters
    ----------
    Z : ndarray or dask array of shape (n_samples, k)
    components : ndarray of shape (k, n_features)
    mean : ndarray of shape (n_features,) or None
    explained_variance : ndarray of shape (k,) or None

    Returns
    -------
    ndarray or dask array of shape (n_samples, n_features)
    """
    if explained_variance is not None:
        components = np.sqrt(explained_variance)[:, None] * components
    X = Z @ components
    return X + mean if mean is not None else X


def _scaled(components, explained_variance, noise_variance, whiten):
    if whiten:
        components = components * np.sqrt(explained_variance[:, None])
    diff = np.where(explained_variance > noise_variance, explained_variance - noise_variance,
                    0.0).astype(explained_variance.dtype, copy=False)
    return components, diff


def covariance(components, explained_variance, noise_variance, whiten=False):
    """Covariance of the probabilistic PCA model, ``Cᵀ diag(λ − σ²) C + σ² I``.

    Parameters
    ----------
    components : ndarray of shape (k, n_features)
    explained_variance : ndarray of shape (k,)
    noise_variance : float
    whiten : bool

    Returns
    -------
    ndarray of shape (n_features, n_features)
    """
    components, diff = _scaled(components, explained_variance, noise_variance, whiten)
    cov = (components.T * diff) @ components
    cov.flat[:: cov.shape[0] + 1] += noise_variance
    return cov


def precision(components, explained_variance, noise_variance, whiten=False):
    """Inverse of :func:`covariance` by the matrix inversion lemma (as scikit-learn).

    Returns
    -------
    ndarray of shape (n_features, n_features)
    """
    from scipy import linalg

    n_features = components.shape[1]
    if components.shape[0] == 0:
        return np.eye(n_features) / noise_variance
    if noise_variance == 0.0:
        return linalg.inv(covariance(components, explained_variance, noise_variance, whiten))
    components, diff = _scaled(components, explained_variance, noise_variance, whiten)
    prec = components @ components.T / noise_variance
    prec.flat[:: prec.shape[0] + 1] += 1.0 / diff
    prec = components.T @ linalg.inv(prec) @ components
    prec /= -(noise_variance**2)
    prec.flat[:: prec.shape[0] + 1] += 1.0 / noise_variance
    return prec


def log_likelihood(X, mean, prec):
    """Log-likelihood of each sample under the Gaussian N(mean, prec⁻¹).

    Bishop, *Pattern Recognition and Machine Learning*, 12.2.1 (probabilistic PCA).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    mean : ndarray of shape (n_features,)
    prec : ndarray of shape (n_features, n_features)
        :func:`precision`.

    Returns
    -------
    ndarray of shape (n_samples,)
    """
    Xr = X - mean
    sign, logdet = np.linalg.slogdet(prec)
    logdet = logdet if sign > 0 else -np.inf
    ll = -0.5 * np.sum(Xr * (Xr @ prec), axis=1)
    ll -= 0.5 * (X.shape[1] * math.log(2.0 * math.pi) - logdet)
    return ll


class PCA:
    """Principal component analysis fitted by the svdserve service.

    Built by :meth:`svdserve.client.StoredResult.pca`; not fitted locally
    (the estimator that fits is :class:`svdserve.PCA`).

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
        (self.explained_variance_, self.explained_variance_ratio_,
         self.noise_variance_) = variances(self.singular_values_, n_samples,
                                           total_variance_ss, n_features)

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

    def _whitening(self):
        return self.explained_variance_ if self.whiten else None

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
        return project(X, self.components_, self.mean_, self._whitening())

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
        return unproject(X, self.components_, self.mean_, self._whitening())

    def get_covariance(self) -> np.ndarray:
        """Covariance of the data under the probabilistic PCA model (as scikit-learn)."""
        return covariance(self.components_, self.explained_variance_, self.noise_variance_,
                          self.whiten)

    def get_precision(self) -> np.ndarray:
        """Inverse of :meth:`get_covariance` (as scikit-learn)."""
        return precision(self.components_, self.explained_variance_, self.noise_variance_,
                         self.whiten)

    def score_samples(self, X) -> np.ndarray:
        """Log-likelihood of each sample under the probabilistic PCA model, shape (n_samples,)."""
        X = self._check_X(X, self.n_features_in_, "features")
        return log_likelihood(X, self.mean_, self.get_precision())

    def score(self, X) -> float:
        """Mean log-likelihood of the samples of X (as scikit-learn)."""
        return float(np.mean(self.score_samples(X)))
