"""Minka's choice of the PCA dimension from the whole spectrum (``n_components="mle"``).

T. P. Minka, *Automatic choice of dimensionality for PCA*, NIPS 2000, pp. 598-604,
as scikit-learn computes it (``sklearn.decomposition._pca``): the Laplace
approximation of the evidence of each rank, the most probable rank returned.
"""

from __future__ import annotations

from math import lgamma, log, pi

import numpy as np

__all__ = ["assess_dimension", "infer_dimension"]

_EPS = 1e-15


def assess_dimension(spectrum, rank, n_samples):
    """Log-likelihood of a rank-``rank`` model of data with this spectrum.

    Parameters
    ----------
    spectrum : ndarray of shape (n_features,)
        Variances of every principal component, non-increasing.
    rank : int
        1 <= rank < n_features.
    n_samples : int

    Returns
    -------
    float
    """
    n_features = spectrum.shape[0]
    if not 1 <= rank < n_features:
        raise ValueError(f"the tested rank should be in [1, n_features - 1]; got {rank}")
    if spectrum[rank - 1] < _EPS:
        return -np.inf  # negligible variance: never the maximum, and log() would misbehave
    pu = -rank * log(2.0)
    for i in range(1, rank + 1):
        pu += lgamma((n_features - i + 1) / 2.0) - log(pi) * (n_features - i + 1) / 2.0
    pl = -float(np.sum(np.log(spectrum[:rank]))) * n_samples / 2.0
    v = max(_EPS, float(np.sum(spectrum[rank:])) / (n_features - rank))
    pv = -log(v) * n_samples * (n_features - rank) / 2.0
    m = n_features * rank - rank * (rank + 1.0) / 2.0
    pp = log(2.0 * pi) * (m + rank) / 2.0
    filled = np.array(spectrum, dtype=np.float64)
    filled[rank:] = v
    pa = 0.0
    for i in range(rank):
        diff = (spectrum[i] - spectrum[i + 1:]) * (1.0 / filled[i + 1:] - 1.0 / filled[i])
        pa += float(np.sum(np.log(diff))) + (n_features - i - 1) * log(n_samples)
    return pu + pl + pv + pp - pa / 2.0 - rank * log(n_samples) / 2.0


def infer_dimension(spectrum, n_samples):
    """The rank in [1, n_features − 1] maximising :func:`assess_dimension`."""
    spectrum = np.asarray(spectrum, dtype=np.float64)
    ll = np.full(spectrum.shape[0], -np.inf)
    for rank in range(1, spectrum.shape[0]):
        ll[rank] = assess_dimension(spectrum, rank, n_samples)
    return int(np.argmax(ll))
