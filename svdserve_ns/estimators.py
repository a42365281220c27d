"""scikit-learn estimators that run out of core: :class:`PCA` and :class:`TruncatedSVD`.

>>> from svdserve import PCA                                      # doctest: +SKIP
>>> pca = PCA(n_components=0.95).fit("data/A.zarr")  # doctest: +SKIP (read panel by panel)
>>> pca.n_components_, pca.explained_variance_ratio_.sum()        # doctest: +SKIP
>>> Z = pca.transform("data/A.zarr")  # doctest: +SKIP (a lazy dask array)

They take scikit-learn's constructor parameters where those apply, keep its
fitted attribute names, pass :func:`sklearn.utils.estimator_checks.check_estimator`,
and fit on the same numerical core as the service:

- in this process (``client=None``; an in-memory matrix never leaves it,
  any other input runs on the default Dask client if one exists);
- on a Dask cluster (``client=distributed.Client(...)``);
- through a service (``client=svdserve.client.Client(url)``; a path or URL
  the service reads is submitted as it is, any other input is uploaded over
  HTTP first and its upload deleted when the job has ended, or the upload failed).

``X`` may be a NumPy array (or anything scikit-learn takes as one), a dask
array, a Zarr path or URL (``array=`` names the array in a group), a
``zarr.Array`` or an xarray ``DataArray`` (samples by ``sample_dims``).
Fitting reads the stored matrix panel by panel in bounded memory;
``transform`` of anything but an in-memory array returns a lazy dask array;
``fit_transform`` returns U·S from the decomposition itself (no other pass).

The PCA arithmetic (projection, whitening, the probabilistic model behind
``score``) is :mod:`svdserve.client._pca`'s, shared with
:meth:`svdserve.client.StoredResult.pca`.
"""

from __future__ import annotations

import copy
from math import sqrt
from numbers import Integral

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    clone,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from svdserve.client._pca import (
    covariance,
    log_likelihood,
    precision,
    project,
    unproject,
    variances,
)

from ._fitting import Data, as_data, decompose
from ._mle import infer_dimension

__all__ = ["PCA", "TruncatedSVD"]

#: scikit-learn's solver names (and svdserve's) → the worker's methods.
SOLVERS = {"auto": "auto", "full": "exact", "covariance_eigh": "exact", "exact": "exact",
           "arpack": "auto", "randomized": "randomized", "sketch": "sketch"}


_SHARED_CONSTRAINTS = {
    "n_oversamples": [Interval(Integral, 0, None, closed="left")],
    "random_state": ["random_state"],
    "client": "no_validation",  # checked by type when fitting (backend_of)
    "sample_dims": [None, str, list, tuple],
    "missing": [StrOptions({"error", "mask"})],
    "array": [None, str],
    "storage_options": [None, dict],
    "panel_bytes": [None, Interval(Integral, 1, None, closed="left")],
}


def _seed(random_state):
    """An int seed for the worker: ints as given, else drawn as scikit-learn would."""
    if isinstance(random_state, Integral) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def total_variance(report):
    """Σ_j var(X_j) (population variances, as ``np.var``) from an uncentred run's
    report: ``‖X‖²_F/m − ‖μ‖²`` with μ the column means measured in the first pass.

    None when the report lacks ``column_mean_norm`` (a wide-stored matrix, or
    a centred run) or when the subtraction would keep fewer than half of
    float64's digits (‖μ‖² within a factor 1 − √ε of ‖X‖²_F/m: an offset
    far larger than the spread), where reading X again is the accurate way.
    """
    mean_norm = report.get("column_mean_norm")
    if mean_norm is None:
        return None
    m = report["shape"][0]
    raw = report["frobenius_norm"] ** 2 / m
    centred = raw - mean_norm ** 2
    if not np.isfinite(raw) or centred <= np.sqrt(np.finfo(np.float64).eps) * raw:
        return None
    return centred


class _SVDEstimator(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """What :class:`PCA` and :class:`TruncatedSVD` share: inputs, backends, transforms."""

    _center = True

    # -- the client is a connection: shared by clones, not pickled ----------------------

    def __sklearn_clone__(self):
        """A clone with the same ``client`` object (scikit-learn would deep-copy it)."""
        params = self.get_params(deep=False)
        client = params.pop("client")
        new = type(self)(**{k: clone(v, safe=False) for k, v in params.items()}, client=client)
        for attr in ("_metadata_request", "_sklearn_output_config"):
            if hasattr(self, attr):
                setattr(new, attr, copy.deepcopy(getattr(self, attr)))
        return new

    def __getstate__(self):
        state = super().__getstate__()
        if state.get("client") is not None:  # a live connection: unpickled as None
            state = {**state, "client": None}
        return state

    # -- inputs -------------------------------------------------------------------------

    def _data(self, X, *, reset):
        """``X`` as :class:`~svdserve._fitting.Data`, checked against the fit when not ``reset``."""
        data = as_data(X, array=self.array, storage_options=self.storage_options,
                       sample_dims=self.sample_dims)
        if data is None:
            X = validate_data(self, X, dtype=[np.float64, np.float32], reset=reset,
                              ensure_min_samples=2 if reset else 1,
                              ensure_min_features=2 if reset and not self._center else 1,
                              # fit: the decomposition's first pass finds NaN/Inf anyway
                              ensure_all_finite=self._finite(reset))
            return Data("memory", X)
        if reset:
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        else:
            n = data.shape[1]
            if n != self.n_features_in_:
                raise ValueError(f"X has {n} features, but {type(self).__name__} is expecting "
                                 f"{self.n_features_in_} features as input.")
        return data

    def _finite(self, reset):
        if reset:
            return False
        return "allow-nan" if self.missing == "mask" else True

    def _dtype(self, data):
        return np.float32 if data.dtype == np.float32 else np.float64

    def _decompose(self, data, rank, energy, method, n_iter, compute_u=True):
        return decompose(data, client=self.client, rank=rank, energy=energy,
                         center=self._center, method=method,
                         n_oversamples=self.n_oversamples, n_iter=n_iter,
                         random_state=_seed(self.random_state), missing=self.missing,
                         panel_bytes=self.panel_bytes, compute_u=compute_u)

    def _common_attributes(self, fac, k, dtype):
        """The attributes both estimators set from the factors (the first ``k``)."""
        self.n_features_in_ = int(fac.Vt.shape[1])
        self.n_samples_ = fac.n_samples
        self.n_components_ = int(k)
        self.components_ = np.ascontiguousarray(fac.Vt[:k], dtype=dtype)
        self.singular_values_ = fac.S[:k].astype(dtype)
        self.mask_ = fac.mask
        self.report_ = fac.report

    def _masked(self, X):
        """Masked features (missing everywhere when fitted) read as 0, as the fit read them."""
        mask = getattr(self, "mask_", None)
        if mask is None or not mask.any():
            return X
        if isinstance(X, np.ndarray):
            X = X.copy()
            X[:, mask] = 0
            return X
        import dask.array as da

        return da.where(mask[None, :], 0, X)

    def _scores(self, fac, data, scale):
        """U[:, :k]·scale from the fit, in the input's form (lazy for a stored matrix)."""
        k = self.n_components_
        U = fac.U[:, :k]
        dtype = self._dtype(data)
        if data.in_memory:
            return (np.asarray(U, dtype=np.float64) * scale).astype(dtype, copy=False)
        import dask.array as da

        if not isinstance(U, da.Array):
            U = da.from_array(U, chunks=(data.lazy().chunks[0], -1))
        return (U * scale).astype(dtype)

    def _transform_data(self, X):
        check_is_fitted(self)
        data = self._data(X, reset=False)
        x = self._masked(data.lazy())
        return x, data

    def _affine(self):
        """``(mean, explained_variance)`` of :func:`project`: None, None (no centring or
        whitening); :class:`PCA` gives its mean, and its variances when whitening."""
        return None, None

    def transform(self, X):
        """Project X on the components: ``(X − mean)·V`` (PCA: whitened when ``whiten``).

        Parameters
        ----------
        X : array-like, dask array, str, zarr.Array or xarray.DataArray
            Of shape (n_samples, n_features).

        Returns
        -------
        X_new : ndarray or dask array of shape (n_samples, n_components_)
            A lazy dask array unless X is in memory.
        """
        x, data = self._transform_data(X)
        out = project(x, self.components_, *self._affine())
        return out.astype(self._dtype(data), copy=False) if data.in_memory else out

    def inverse_transform(self, X):
        """Map projections back to the feature space: ``Z·Vᵀ + mean`` (whitening undone).

        Parameters
        ----------
        X : array-like or dask array of shape (n_samples, n_components_)

        Returns
        -------
        X_original : ndarray or dask array of shape (n_samples, n_features)
        """
        check_is_fitted(self)
        if type(X).__module__.split(".")[0] != "dask":
            X = check_array(X, input_name="X", dtype=[np.float64, np.float32])
        return unproject(X, self.components_, *self._affine())

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.input_tags.allow_nan = self.missing == "mask"
        tags.input_tags.sparse = True  # decomposed by the sparse reader, never densified
        return tags


class PCA(_SVDEstimator):
    """Principal component analysis of a matrix that need not fit in memory.

    scikit-learn's :class:`sklearn.decomposition.PCA` (same parameters where
    they apply, same attributes, same numbers for the exact method), fitted
    by svdserve's out-of-core SVD of the implicitly centred data.

    Parameters
    ----------
    n_components : int, float, "mle" or None, default=None
        int: components kept. float in (0, 1): the smallest number of
        components whose explained variance ratio exceeds it (scikit-learn's
        rule; with the randomized method the rank is found by adaptive
        blocks, Yu, Gu & Li 2018). ``"mle"``: Minka's estimate from the
        whole spectrum (runs the exact method). None: min(n_samples, n_features).
        0: no component (the model is all noise; ``score`` still works).
    copy : bool, default=True
        Accepted for scikit-learn compatibility: X is never modified either way.
    whiten : bool, default=False
        Divide the projections by √explained_variance_ (unit variance each).
    svd_solver : {"auto", "full", "covariance_eigh", "arpack", "randomized", \
            "exact", "sketch"}, default="auto"
        ``"full"`` and ``"covariance_eigh"`` run ``exact`` (TSQR, every
        singular value); ``"arpack"`` and ``"auto"`` run ``exact`` when
        min(n_samples, n_features) <= 2048, else ``randomized``;
        ``"randomized"`` (Halko et al.) and ``"sketch"`` (one pass, Tropp
        et al.) as named.
    iterated_power : int or "auto", default="auto"
        Power iterations of the randomized method, one pass over X each
        (later passes come from the panel cache when it holds X);
        ``"auto"``: 7 when n_components < 0.1·min(n_samples, n_features),
        else 4, as scikit-learn.
    n_oversamples : int, default=10
        Extra random vectors of the randomized method.
    random_state : int, RandomState instance or None, default=None
        Seed of the randomized and sketch methods (an int gives the same
        components on any backend and any number of workers).
    client : None, distributed.Client or svdserve.client.Client, default=None
        Where to fit: None, this process (an in-memory X) or the default
        Dask client if any (a stored or dask X); a Dask cluster; a service
        (a path or URL it reads, else X is uploaded over HTTP for the job).
        Clones share it; pickling drops
        it (a live connection): the unpickled estimator has ``client=None``.
    sample_dims : str or sequence of str, optional
        An N-D variable (a ``DataArray``, or a Zarr path with ``array=``):
        these dimensions are the samples, the others the features.
    missing : {"error", "mask"}, default="error"
        ``"mask"``: features missing (NaN) in every sample are masked
        (``mask_``); they read as 0 when fitting and transforming.
    array : str, optional
        The array inside the Zarr group at a path ``X``.
    storage_options : dict, optional
        fsspec options for a URL ``X`` (``s3://``...).
    panel_bytes : int, optional
        Byte budget of one panel when fitting here or on a Dask cluster.

    Attributes
    ----------
    components_ : ndarray of shape (n_components_, n_features)
    explained_variance_ : ndarray of shape (n_components_,)
    explained_variance_ratio_ : ndarray of shape (n_components_,)
        Of the total variance, measured over all of X (not only the kept part).
    singular_values_ : ndarray of shape (n_components_,)
    mean_ : ndarray of shape (n_features,)
    n_components_ : int
    n_samples_ : int
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when X was a data frame with string column names.
    noise_variance_ : float
        Mean variance of the discarded components (probabilistic PCA).
    mask_ : ndarray of shape (n_features,) or None
        Features masked as missing everywhere (``missing="mask"``).
    report_ : dict
        svdserve's energy report of the decomposition (passes, timings, …).
    """

    _parameter_constraints = {
        "n_components": [Interval(Integral, 0, None, closed="left"),
                         Interval(RealNotInt, 0, 1, closed="neither"),
                         StrOptions({"mle"}), None],
        "copy": ["boolean"],
        "whiten": ["boolean"],
        "svd_solver": [StrOptions(set(SOLVERS))],
        "iterated_power": [StrOptions({"auto"}), Interval(Integral, 0, None, closed="left")],
        **_SHARED_CONSTRAINTS,
    }

    def __init__(self, n_components=None, *, copy=True, whiten=False, svd_solver="auto",
                 iterated_power="auto", n_oversamples=10, random_state=None, client=None,
                 sample_dims=None, missing="error", array=None, storage_options=None,
                 panel_bytes=None):
        self.n_components = n_components
        self.copy = copy
        self.whiten = whiten
        self.svd_solver = svd_solver
        self.iterated_power = iterated_power
        self.n_oversamples = n_oversamples
        self.random_state = random_state
        self.client = client
        self.sample_dims = sample_dims
        self.missing = missing
        self.array = array
        self.storage_options = storage_options
        self.panel_bytes = panel_bytes

    def fit(self, X, y=None):
        """Fit the model on X.

        Parameters
        ----------
        X : array-like, dask array, str, zarr.Array or xarray.DataArray
            Of shape (n_samples, n_features) (a DataArray or an N-D stored
            variable by ``sample_dims``).
        y : ignored

        Returns
        -------
        self : PCA
        """
        self._fit(X, compute_u=False)  # σ, V and the mean: one pass fewer for "exact"
        return self

    def fit_transform(self, X, y=None):
        """Fit on X and return its projections, U·S of the decomposition (no other pass).

        Returns
        -------
        X_new : ndarray or dask array of shape (n_samples, n_components_)
            A dask array when X is not in memory.
        """
        data, fac = self._fit(X)
        scale = sqrt(self.n_samples_ - 1) if self.whiten else fac.S[:self.n_components_]
        return self._scores(fac, data, scale)

    def _fit(self, X, compute_u=True):
        self._validate_params()
        data = self._data(X, reset=True)
        nc = self.n_components
        method = SOLVERS[self.svd_solver]
        energy = rank = None
        if nc is None or nc == "mle":
            m, n = self._shape_here(data)
            if nc == "mle" and m < n:
                raise ValueError("n_components='mle' is only supported if n_samples >= "
                                 f"n_features; got {m} samples and {n} features")
            rank = min(m, n)
            method = "exact" if nc == "mle" else method
        elif isinstance(nc, Integral):
            rank = max(int(nc), 1)  # n_components=0 keeps none of the rank-1 fit
        else:
            energy = float(nc)
        n_iter = self._power_iterations(data, rank)
        fac = self._decompose(data, rank, energy, method, n_iter, compute_u)
        k = self._kept(fac, energy)
        if k > len(fac.S):  # a tie at the energy target, decided as scikit-learn does
            fac = self._decompose(data, k, None, "exact", n_iter, compute_u)
        self._set_attributes(fac, k, self._dtype(data))
        return data, fac

    def _shape_here(self, data):
        """``data.shape``, read from X's metadata in this process (``n_components=None`` or
        ``"mle"`` need it before the fit); a ValueError naming X when it cannot be read."""
        try:
            return data.shape
        except (OSError, ValueError) as exc:  # e.g. a path only the service can read
            raise ValueError(
                f"n_components={self.n_components!r} needs the shape of X, read from its "
                f"metadata in this process, which cannot open {data.obj!r} ({exc}); check "
                "the path, or give n_components as an int or a fraction in (0, 1)") from exc

    def _kept(self, fac, energy):
        """Components kept: scikit-learn's rules for ``"mle"``, 0 and an energy target
        (decided on the whole spectrum when the exact method gave it)."""
        nc, m, n = self.n_components, fac.n_samples, fac.Vt.shape[1]
        if nc == 0:
            return 0
        if nc == "mle":
            return int(infer_dimension(fac.S**2 / (m - 1), m))
        if energy is not None and fac.s_all is not None:
            _, ratio, _ = variances(fac.s_all, m, fac.total_ss, n)
            k = int(np.searchsorted(np.cumsum(ratio), energy, side="right")) + 1
            return min(k, len(fac.s_all))
        return len(fac.S)

    def _power_iterations(self, data, rank):
        """``iterated_power``, with scikit-learn's rule for ``"auto"``: 7 when
        n_components < 0.1·min(n_samples, n_features), else 4."""
        if self.iterated_power != "auto":
            return self.iterated_power
        if rank is None:
            return 4
        try:
            short = min(data.shape)
        except Exception:  # noqa: BLE001 - a path only the service can read: its metadata
            return 4
        return 7 if rank < 0.1 * short else 4

    def _set_attributes(self, fac, k, dtype):
        m, n = fac.n_samples, fac.Vt.shape[1]
        self._common_attributes(fac, k, dtype)
        explained, ratio, noise = variances(fac.S[:k], m, fac.total_ss, n)
        self.mean_ = fac.mean.astype(dtype)
        self.explained_variance_ = explained.astype(dtype)
        self.explained_variance_ratio_ = ratio.astype(dtype)
        self.noise_variance_ = dtype(noise)

    def _affine(self):
        return self.mean_, (self.explained_variance_ if self.whiten else None)

    def get_covariance(self):
        """Covariance of the data under the probabilistic PCA model.

        Returns
        -------
        cov : ndarray of shape (n_features, n_features)
            ``components_ᵀ diag(explained_variance_ − σ²) components_ + σ² I``.
        """
        check_is_fitted(self)
        return covariance(self.components_, self.explained_variance_, self.noise_variance_,
                          self.whiten)

    def get_precision(self):
        """Inverse of :meth:`get_covariance` (matrix inversion lemma).

        Returns
        -------
        precision : ndarray of shape (n_features, n_features)
        """
        check_is_fitted(self)
        return precision(self.components_, self.explained_variance_, self.noise_variance_,
                         self.whiten)

    def score_samples(self, X):
        """Log-likelihood of each sample under the probabilistic PCA model.

        Bishop, *Pattern Recognition and Machine Learning*, 12.2.1; Tipping &
        Bishop 1999.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ll : ndarray of shape (n_samples,)
        """
        x, _ = self._transform_data(X)
        return np.asarray(log_likelihood(x, self.mean_, self.get_precision()))

    def score(self, X, y=None):
        """Mean log-likelihood of the samples of X (see :meth:`score_samples`).

        Returns
        -------
        float
        """
        return float(np.mean(self.score_samples(X)))


class TruncatedSVD(_SVDEstimator):
    """Truncated SVD (latent semantic analysis) of a matrix that need not fit in memory.

    scikit-learn's :class:`sklearn.decomposition.TruncatedSVD`: no centring,
    ``fit_transform`` returns U·Σ, ``transform`` X·V. Parameters as
    :class:`PCA` for the svdserve-specific ones.

    Parameters
    ----------
    n_components : int, default=2
    algorithm : {"randomized", "arpack", "exact", "sketch", "auto"}, default="randomized"
        ``"arpack"`` and ``"auto"`` run ``exact`` (TSQR) when
        min(n_samples, n_features) <= 2048, else ``randomized``.
    n_iter : int, default=5
        Power iterations of the randomized method (one pass over X each).
    n_oversamples : int, default=10
    random_state : int, RandomState instance or None, default=None
    client, sample_dims, missing, array, storage_options, panel_bytes :
        As :class:`PCA`.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
    explained_variance_ : ndarray of shape (n_components,)
        Variance of each column of the training projections U·Σ.
    explained_variance_ratio_ : ndarray of shape (n_components,)
        Of the total variance of X (for a stored X, measured by one more
        read of it).
    singular_values_ : ndarray of shape (n_components,)
    n_components_ : int
    n_samples_ : int
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
    mask_ : ndarray of shape (n_features,) or None
    report_ : dict
    """

    _center = False

    _parameter_constraints = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "algorithm": [StrOptions({"randomized", "arpack", "exact", "sketch", "auto"})],
        "n_iter": [Interval(Integral, 0, None, closed="left")],
        **_SHARED_CONSTRAINTS,
    }

    def __init__(self, n_components=2, *, algorithm="randomized", n_iter=5, n_oversamples=10,
                 random_state=None, client=None, sample_dims=None, missing="error",
                 array=None, storage_options=None, panel_bytes=None):
        self.n_components = n_components
        self.algorithm = algorithm
        self.n_iter = n_iter
        self.n_oversamples = n_oversamples
        self.random_state = random_state
        self.client = client
        self.sample_dims = sample_dims
        self.missing = missing
        self.array = array
        self.storage_options = storage_options
        self.panel_bytes = panel_bytes

    def fit(self, X, y=None):
        """Fit the model on X (see :meth:`fit_transform`).

        Returns
        -------
        self : TruncatedSVD
        """
        self.fit_transform(X)
        return self

    def fit_transform(self, X, y=None):
        """Fit on X and return U·Σ of the decomposition (no other pass over X).

        Parameters
        ----------
        X : array-like, dask array, str, zarr.Array or xarray.DataArray
            Of shape (n_samples, n_features).
        y : ignored

        Returns
        -------
        X_new : ndarray or dask array of shape (n_samples, n_components)
        """
        self._validate_params()
        data = self._data(X, reset=True)
        method = SOLVERS[self.algorithm]
        fac = self._decompose(data, int(self.n_components), None, method, self.n_iter)
        dtype = self._dtype(data)
        self._common_attributes(fac, len(fac.S), dtype)
        scores = self._scores(fac, data, fac.S)
        self.explained_variance_, self.explained_variance_ratio_ = self._variances(
            scores, data, dtype, fac.report)
        return scores

    def _variances(self, scores, data, dtype, report):
        """Variance of each column of U·Σ and its ratio to X's total variance.

        A stored X's total variance comes from the decomposition's first pass
        (``‖X‖²_F/m − ‖μ‖²``, :func:`total_variance`), so X is not read again;
        only where that would lose more than half the digits to cancellation
        (or the report lacks it: a wide-stored matrix) is X read once more.
        """
        if data.kind == "sparse":
            from sklearn.utils.sparsefuncs import mean_variance_axis

            exp_var = np.var(scores.astype(np.float64), axis=0)
            x = self._masked(data.lazy()).astype(np.float64)
            full_var = float(mean_variance_axis(x, axis=0)[1].sum())
        elif data.in_memory:
            exp_var = np.var(scores.astype(np.float64), axis=0)
            full_var = float(np.var(self._masked(data.lazy()), axis=0, dtype=np.float64).sum())
        else:
            import dask

            full_var = total_variance(report)
            if full_var is None:
                x = self._masked(data.lazy()).astype(np.float64)
                exp_var, full_var = dask.compute(scores.astype(np.float64).var(axis=0),
                                                 x.var(axis=0).sum())
            else:
                exp_var = dask.compute(scores.astype(np.float64).var(axis=0))[0]
            full_var = float(full_var)
        ratio = exp_var / full_var if full_var > 0 else np.zeros_like(exp_var)
        return exp_var.astype(dtype), ratio.astype(dtype)
