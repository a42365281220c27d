"""The EOF estimator: xeofs' ``xeofs.single.EOF`` vocabulary on svdserve's out-of-core SVD.

>>> from svdserve import EOF                                          # doctest: +SKIP
>>> model = EOF(n_modes=4, use_coslat=True).fit(sst, dim="time")     # doctest: +SKIP
>>> model.components()          # DataArray (mode, lat, lon), NaN over land  # doctest: +SKIP
>>> model.scores(normalized=True)   # DataArray (mode, time)                 # doctest: +SKIP
>>> model.north_errors()        # Dataset: North et al. (1982) errors per mode  # doctest: +SKIP

The decomposition is the one :class:`svdserve.PCA` runs (:func:`._fitting.decompose`,
on this process, a Dask cluster or a service); the EOF arithmetic (rotation,
North's errors, projection) is :mod:`svdserve.client._eof`'s, applied to the
fitted factors through a small adapter (:class:`FittedEOF`) that looks like a
stored result to it. This module only moves labels: it stacks the sample dims,
keeps the coordinates and puts them back on every output.

Conventions are xeofs 3's: ``components()`` are the unit-norm right singular
vectors (of the weighted field with ``use_coslat``), ``scores()`` are U·σ
(``normalized=True``: U), ``explained_variance()`` is σ²/(m − 1) and its ratio
is over the total variance of the (weighted, standardised) field; with
``rotation=`` the outputs are those of xeofs' ``EOFRotator`` (sorted by
variance, signed so the largest-magnitude entry of each component is positive).
"""

from __future__ import annotations

import os
import warnings
from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from svdserve.client import EnergyReport, north_errors, project_field, rotate

from ._fitting import Data, decompose

__all__ = ["EOF", "FittedEOF", "coslat_weights"]

#: xeofs' solver names (and svdserve's) → the worker's methods.
SOLVERS = {"auto": "auto", "full": "exact", "exact": "exact", "randomized": "randomized",
           "sketch": "sketch"}


class FittedEOF:
    """The fitted factors seen as a stored result by :mod:`svdserve.client._eof`.

    Attributes
    ----------
    U : dask.array.Array of shape (m, k)
        (wrapping the fit's ndarray when it returned U in memory: ``u_in_memory``)
    S : ndarray of shape (k,)
    Vt : ndarray of shape (k, n)
    mean : ndarray of shape (n,) or None
    mask : ndarray of shape (n,), bool, or None
    scale : ndarray of shape (n,) or None
        The feature scale D (weights / standard deviations) of the decomposition.
    labels : dict or None
        One variable's ``dims``, ``shape``, ``sample_dims``, ``feature_dims``,
        ``coords`` (so errors name points by their coordinates); None for
        several variables (the post-processing then sees n flat features).
    report : EnergyReport
    """

    def __init__(self, fac, labels):
        import dask.array as da

        U = fac.U
        self.u_in_memory = isinstance(U, np.ndarray)
        self.U = U if isinstance(U, da.Array) else da.from_array(np.asarray(U), chunks=(
            max(1, 2**22 // max(U.shape[1], 1)), -1))
        self.S, self.Vt, self.mean, self.mask = fac.S, fac.Vt, fac.mean, fac.mask
        self.scale = fac.scale
        self.labels = labels
        self.report = EnergyReport(fac.report)
        self.shape = (int(fac.n_samples), int(fac.Vt.shape[1]))
        self.url = None

    @property
    def rank(self) -> int:
        return int(self.S.size)

    def _vt(self) -> np.ndarray:
        return self.Vt


def _dims(dim) -> tuple:
    return (dim,) if isinstance(dim, str) else tuple(dim)


def _labels(xarr, sdims: tuple) -> dict:
    """The labels of a DataArray viewed as samples × features (xeofs' stacking order)."""
    dims = tuple(xarr.dims)
    unknown = [d for d in sdims if d not in dims]
    if unknown:
        raise ValueError(f"dim {unknown!r} is not a dimension of the DataArray {xarr.name!r}, "
                         f"whose dimensions are {dims!r}; pass dim= the sample dimension(s)")
    fdims = tuple(d for d in dims if d not in sdims)
    if not fdims:
        raise ValueError(f"the DataArray {xarr.name!r} has no dimension left for the features "
                         f"once dim={sdims!r} are the samples")
    coords = {d: (np.asarray(xarr[d].values), dict(xarr[d].attrs)) for d in dims
              if d in xarr.coords}
    return {"dims": list(dims), "shape": [int(xarr.sizes[d]) for d in dims],
            "sample_dims": list(sdims), "feature_dims": list(fdims), "coords": coords,
            "template": xarr}


def _fshape(lab) -> tuple:
    size = dict(zip(lab["dims"], lab["shape"]))
    return tuple(size[d] for d in lab["feature_dims"])


def _sizes(lab, which) -> tuple:
    size = dict(zip(lab["dims"], lab["shape"]))
    return tuple(size[d] for d in lab[which])


def _coords_of(xarr, dims) -> dict:
    """The coordinates of a DataArray that live on ``dims`` only."""
    keep = set(dims)
    return {c: xarr.coords[c] for c in xarr.coords if set(xarr.coords[c].dims) <= keep}


def _open(data, array, storage_options):
    """A Zarr store path → its variable as a lazy DataArray (only metadata and coords read)."""
    import xarray as xr

    with warnings.catch_warnings():  # a store without consolidated metadata is fine here
        warnings.simplefilter("ignore", RuntimeWarning)
        ds = xr.open_zarr(os.fspath(data), storage_options=storage_options,
                          consolidated=None, mask_and_scale=True)
    names = list(ds.data_vars)
    name = array if array is not None else (names[0] if len(names) == 1 else None)
    if name is None or name not in ds:
        raise ValueError(f"the store at {os.fspath(data)!r} holds the variables {names}; "
                         f"name one with EOF(array=...), got array={array!r}")
    return ds[name]


def _same_samples(labels: list) -> None:
    """Every variable of a multivariate fit has the first one's sample dims and coords."""
    first = labels[0]
    for i, lab in enumerate(labels[1:], start=2):
        same = _sizes(lab, "sample_dims") == _sizes(first, "sample_dims") and all(
            np.array_equal(lab["coords"][d][0], first["coords"][d][0])
            for d in first["sample_dims"] if d in first["coords"] and d in lab["coords"])
        if not same:
            raise ValueError(f"variable {i} of the list does not share the samples of the first "
                             f"({dict(zip(first['sample_dims'], _sizes(first, 'sample_dims')))} "
                             f"with the same coordinates); align them first (xr.align)")


#: Coordinate names taken as latitude (xeofs' ``VALID_LATITUDE_NAMES``).
LATITUDE_NAMES = ("latitude", "lats", "lat", "Latitude", "Lats", "Lat", "LATITUDE", "LATS",
                  "LAT")


def coslat_weights(labels) -> np.ndarray:
    """√cos(latitude) of every feature, ndarray of shape (n,) (xeofs' ``use_coslat``:
    ``sqrt(clip(cos(deg2rad(lat)), 0, 1))``), broadcast over the other feature dims."""
    fdims = labels["feature_dims"]
    lat = [d for d in fdims if d in LATITUDE_NAMES and d in labels["coords"]]
    if len(lat) != 1:
        raise ValueError(f"use_coslat=True needs one latitude coordinate among the feature "
                         f"dims {tuple(fdims)!r} (named one of {LATITUDE_NAMES[:3]!r}, in "
                         f"degrees); found {lat!r}")
    w = np.sqrt(np.clip(np.cos(np.deg2rad(labels["coords"][lat[0]][0].astype(float))), 0, 1))
    size = dict(zip(labels["dims"], labels["shape"]))
    shape = [size[d] if d == lat[0] else 1 for d in fdims]
    return np.broadcast_to(w.reshape(shape), [size[d] for d in fdims]).reshape(-1).copy()


def _user_weights(weights, labels) -> np.ndarray:
    """User weights (a DataArray per variable) as one weight per feature, shape (n,)."""
    parts = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    if len(parts) != len(labels):
        raise ValueError(f"weights must be one DataArray per variable ({len(labels)}), got "
                         f"{len(parts)}")
    out = []
    for w, lab in zip(parts, labels):
        fdims = tuple(lab["feature_dims"])
        extra = [d for d in getattr(w, "dims", ("?",)) if d not in fdims]
        if not hasattr(w, "dims") or extra:
            raise ValueError(f"weights must be DataArrays over the feature dims {fdims!r}, got "
                             f"{getattr(w, 'dims', type(w).__name__)!r}")
        size = dict(zip(lab["dims"], lab["shape"]))
        full = w.expand_dims({d: size[d] for d in fdims if d not in w.dims})
        values = np.asarray(full.transpose(*fdims).values, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError(f"weights must be finite and non-negative; the weights of "
                             f"{w.name or 'variable'!r} range from {np.nanmin(values)!r} to "
                             f"{np.nanmax(values)!r} (NaN: {int(np.isnan(values).sum())})")
        out.append(values)
    return np.concatenate(out)


def _seed(random_state) -> int:
    """An int seed for the worker (a service needs one): ints as given, else drawn."""
    if isinstance(random_state, Integral) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _check_dataarray(x) -> None:
    if type(x).__module__.split(".")[0] != "xarray" or not hasattr(x, "dims"):
        raise TypeError(f"data must be an xarray.DataArray, a list of them or the path of a "
                        f"Zarr store, got {type(x).__name__}")


class EOF(BaseEstimator):
    """EOF analysis (PCA of a field) in xeofs' terms, fitted out of core.

    Parameters
    ----------
    n_modes : int, default=2
        Modes computed (and rotated, with ``rotation``).
    center : bool, default=True
        Remove the mean over the samples (xeofs' default).
    standardize : bool, default=False
        Divide each point by its standard deviation (the correlation matrix).
    use_coslat : bool, default=False
        Weight each point by √cos(latitude) (needs a ``lat`` or ``latitude``
        feature coordinate in degrees).
    check_nans : bool, default=True
        Points missing (NaN) at every sample are dropped from the analysis and
        come back as NaN (xeofs' behaviour); a NaN elsewhere is an error naming
        the points. False: any NaN is an error.
    rotation : {None, "varimax", "promax"}, default=None
        Rotate the ``n_modes`` modes as xeofs' ``EOFRotator`` (from the fitted
        factors: the data is not read again).
    power : int, default=4
        Promax power (xeofs' ``power``; ignored for varimax).
    max_iter : int, default=1000
    rtol : float, default=1e-8
        Varimax iterations at most, and its relative tolerance (xeofs' defaults).
    solver : {"auto", "full", "exact", "randomized", "sketch"}, default="auto"
        ``"full"``/``"exact"``: TSQR (every eigenvalue); ``"randomized"``:
        Halko et al. with ``n_iter`` power iterations; ``"sketch"``: one pass.
    n_oversamples : int, default=10
    n_iter : int, default=4
        Power iterations of the randomized solver.
    random_state : int or None, default=None
    client : None, distributed.Client or svdserve.client.Client, default=None
        Where to fit, as :class:`svdserve.PCA`: this process (or the default
        Dask client), a Dask cluster, or a service (a Zarr path it can read
        is submitted as it is, anything else uploaded).
    array : str or list of str, optional
        The variable of a Zarr store given to :meth:`fit` as a path; a list:
        several variables of that store, as one multivariate EOF.
    storage_options : dict, optional
        fsspec options for a store URL.
    panel_bytes : int, optional
        Panel budget when fitting here or on a Dask cluster.

    Attributes
    ----------
    n_modes_ : int
    mean_ : xarray.DataArray
        The mean removed (feature dims), NaN at the dropped points.
    report_ : EnergyReport
        The decomposition's energy report (North's errors in ``report_.north``).
    rotation_ : svdserve.client.Rotation or None
    """

    def __init__(self, n_modes=2, *, center=True, standardize=False, use_coslat=False,
                 check_nans=True, rotation=None, power=4, max_iter=1000, rtol=1e-8,
                 solver="auto", n_oversamples=10, n_iter=4, random_state=None, client=None,
                 array=None, storage_options=None, panel_bytes=None):
        self.n_modes = n_modes
        self.center = center
        self.standardize = standardize
        self.use_coslat = use_coslat
        self.check_nans = check_nans
        self.rotation = rotation
        self.power = power
        self.max_iter = max_iter
        self.rtol = rtol
        self.solver = solver
        self.n_oversamples = n_oversamples
        self.n_iter = n_iter
        self.random_state = random_state
        self.client = client
        self.array = array
        self.storage_options = storage_options
        self.panel_bytes = panel_bytes

    # -- fitting -------------------------------------------------------------------------

    def _check_params(self):
        n = self.n_modes
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
            raise ValueError(f"n_modes must be a positive int, got {n!r}")
        if self.rotation not in (None, "varimax", "promax"):
            raise ValueError(f"rotation must be None, 'varimax' or 'promax', got "
                             f"{self.rotation!r}")
        if self.rotation is not None and n < 2:
            raise ValueError(f"a rotation needs n_modes >= 2, got {n!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {self.solver!r}")

    def _input(self, data, sdims):
        """(Data, [labels per variable], multivariate?) of a DataArray, a list of them or a
        store path (``array`` a list: several variables of the store)."""
        from ._fitting import as_data

        if isinstance(data, (str, os.PathLike)):
            names = self.array if isinstance(self.array, (list, tuple)) else [self.array]
            labels = [_labels(_open(data, name, self.storage_options), sdims) for name in names]
            _same_samples(labels)
            array = [lab["template"].name for lab in labels]
            return Data("path", os.fspath(data), array if len(array) > 1 else array[0],
                        self.storage_options, sdims), labels, len(array) > 1
        if isinstance(data, (list, tuple)) and data:
            return (*self._multivariate(list(data), sdims), True)
        _check_dataarray(data)
        return as_data(data, sample_dims=sdims), [_labels(data, sdims)], False

    def _multivariate(self, arrays, sdims):
        """Several DataArrays sharing the samples: their matrices side by side, lazily
        (``dask.array.concatenate`` of views: nothing is copied before the panels are read)."""
        import dask.array as da

        from ._fitting import stack_samples

        for x in arrays:
            _check_dataarray(x)
        labels = [_labels(x, sdims) for x in arrays]
        _same_samples(labels)
        blocks = [stack_samples(x, sdims) for x in arrays]
        blocks = [b if isinstance(b, da.Array) else da.from_array(b, chunks=(-1, -1))
                  for b in blocks]
        return Data("dask", da.concatenate(blocks, axis=1)), labels

    def _scaling(self, source, labels, weights):
        """The keyword arguments of the decomposition for weights and standardisation:
        ``weights="coslat"`` for a store without user weights (the worker reads its
        latitude), else the product of √cos φ (computed here from each variable's
        latitude coordinate) and the user's weights, one per feature."""
        kw = {}
        if weights is not None:
            w = _user_weights(weights, labels)
            if self.use_coslat:
                w = w * np.concatenate([coslat_weights(lab) for lab in labels])
            kw["weights"] = w
        elif self.use_coslat:
            kw["weights"] = "coslat" if source.kind == "path" else np.concatenate(
                [coslat_weights(lab) for lab in labels])
        if self.standardize:
            kw["standardize"] = True
        return kw

    def fit(self, data, dim="time", weights=None):
        """Fit the EOFs of ``data`` with ``dim`` as the samples.

        Parameters
        ----------
        data : xarray.DataArray, list of DataArray, str or os.PathLike
            The field (in memory or dask-backed, e.g. from ``xr.open_zarr``);
            a list of fields sharing the sample dims (a multivariate EOF: each
            scaled as the parameters say, then side by side along the
            features, as xeofs); or the path of a Zarr store (``array=`` names
            the variable when it holds several, a list of names several
            variables at once), read panel by panel, never loaded.
        dim : str or sequence of str, default="time"
            The sample dimension(s); every other dimension is a feature.
        weights : xarray.DataArray or list of DataArray, optional
            Non-negative weights over (some of) the feature dims, broadcast
            over the others (one per variable for a multivariate fit); they
            multiply the field after centring and standardising, with
            √cos φ when ``use_coslat`` (xeofs' ``weights``).

        Returns
        -------
        self : EOF
        """
        self._check_params()
        sdims = _dims(dim)
        source, labels, multi = self._input(data, sdims)
        fac = decompose(source, client=self.client, rank=int(self.n_modes), center=self.center,
                        method=SOLVERS[self.solver], n_oversamples=self.n_oversamples,
                        n_iter=self.n_iter, random_state=_seed(self.random_state),
                        missing="mask" if self.check_nans else "error",
                        panel_bytes=self.panel_bytes, compute_u=True,
                        **self._scaling(source, labels, weights))
        self._vars = labels
        self._multi = multi
        self._fitted = FittedEOF(fac, None if self._multi else labels[0])
        self.n_modes_ = self._fitted.rank
        self.report_ = self._fitted.report
        self.rotation_ = None
        if self.rotation is not None:
            self.rotation_ = rotate(self._fitted, self.n_modes_, self.rotation,
                                    power=self.power, max_iter=self.max_iter, rtol=self.rtol)
        mean = np.zeros(self._fitted.shape[1]) if fac.mean is None else fac.mean
        self.mean_ = self._features(mean[None, :], "mean", mode=False)
        return self

    # -- labelled outputs -----------------------------------------------------------------

    def _features(self, rows, name, mode=True):
        """(r, n) over every feature → a DataArray per variable ((mode,) *feature dims),
        NaN at the dropped points; the list for a multivariate fit, else the one."""
        import xarray as xr

        out = np.array(rows, dtype=np.float64).reshape(len(rows), -1)
        mask = self._fitted.mask
        if mask is not None:
            out[:, mask] = np.nan
        arrays, start = [], 0
        for lab in self._vars:
            fshape = _fshape(lab)
            size = int(np.prod(fshape, dtype=int))
            part = out[:, start:start + size].reshape(len(out), *fshape)
            start += size
            coords = _coords_of(lab["template"], lab["feature_dims"])
            if mode:
                arrays.append(xr.DataArray(part, dims=("mode", *lab["feature_dims"]), name=name,
                                           coords={"mode": self._modes(len(out)), **coords}))
            else:
                arrays.append(xr.DataArray(part[0], dims=tuple(lab["feature_dims"]), name=name,
                                           coords=coords))
        return arrays if self._multi else arrays[0]

    def _modes(self, n=None):
        return np.arange(1, (self.n_modes_ if n is None else n) + 1)

    def _mode_da(self, values, name):
        import xarray as xr

        return xr.DataArray(np.asarray(values, dtype=np.float64), dims=("mode",),
                            coords={"mode": self._modes(len(values))}, name=name)

    def _sample_da(self, flat, name, sdims, sshape, coords):
        """(r, k) scores → DataArray (mode, *sample dims)."""
        import xarray as xr

        k = flat.shape[1]
        arr = flat.T.reshape(k, *sshape)
        return xr.DataArray(arr, dims=("mode", *sdims), name=name,
                            coords={"mode": self._modes(k), **coords})

    def _rows(self) -> np.ndarray:
        """The components over every feature, (k, n): rotated when fitted so."""
        if self.rotation_ is not None:
            return np.asarray(self.rotation_.components).reshape(self.n_modes_, -1)
        return self._fitted.Vt

    def components(self, normalized=True):
        """The EOFs: DataArray (mode, *feature dims), unit norm, NaN at the dropped points
        (a list of them, one per variable, for a multivariate fit).

        Parameters
        ----------
        normalized : bool, default=True
            False: each multiplied by its singular value (xeofs' convention).
        """
        check_is_fitted(self)
        rows = self._rows()
        if not normalized:
            rows = rows * self._norms()[:, None]
        return self._features(rows, "components")

    def _norms(self):
        return self.rotation_.singular_values if self.rotation_ is not None else self._fitted.S

    def scores(self, normalized=False):
        """The PCs: DataArray (mode, *sample dims), U·σ (``normalized=True``: U, unit norm).

        In memory when the fit returned U in memory (an in-memory field fitted in this
        process), else lazy (dask-backed, read from the stored result when computed).
        """
        check_is_fitted(self)
        f = self._fitted
        u = self.rotation_.scores if self.rotation_ is not None else f.U * f.S
        if normalized:
            u = u / self._norms()
        if f.u_in_memory:  # the fit held U in memory: so do the scores, as xeofs'
            u = np.asarray(u)
        lab = self._vars[0]
        return self._sample_da(u, "scores", tuple(lab["sample_dims"]),
                               _sizes(lab, "sample_dims"),
                               _coords_of(lab["template"], lab["sample_dims"]))

    def singular_values(self):
        """DataArray (mode,): σ (xeofs' ``norms``; pseudo-σ of the rotated modes)."""
        check_is_fitted(self)
        return self._mode_da(self._norms(), "singular_values")

    def explained_variance(self):
        """DataArray (mode,): σ²/(m − 1), the covariance eigenvalues (of the rotated modes
        with ``rotation``)."""
        check_is_fitted(self)
        if self.rotation_ is not None:
            return self._mode_da(self.rotation_.explained_variance, "explained_variance")
        f = self._fitted
        return self._mode_da(f.S**2 / max(f.shape[0] - 1, 1), "explained_variance")

    def explained_variance_ratio(self):
        """DataArray (mode,): the explained variance over the field's total variance,
        measured over every mode in the decomposition's first pass."""
        check_is_fitted(self)
        if self.rotation_ is not None:
            ratio = self.rotation_.explained_variance_ratio
        else:
            f = self._fitted
            ratio = (f.S / f.report.frobenius_norm) ** 2 if f.report.frobenius_norm > 0 \
                else np.zeros(f.rank)
        return self._mode_da(ratio, "explained_variance_ratio")

    def north_errors(self, n_eff=None):
        """North et al.'s (1982) eigenvalue errors of the (unrotated) modes, from the fit only.

        Parameters
        ----------
        n_eff : None, number or "lag1", default=None
            The sample size N: the number of samples (None), a given number,
            or ``"lag1"``, per mode from the lag-1 autocorrelation of its PC
            (computed here from the fitted U; samples must be in time order).

        Returns
        -------
        xarray.Dataset
            On ``mode``: ``eigenvalue``, ``error`` (λ·√(2/N)), ``error_ratio``
            (over the total variance, eofs' ``vfscaled``), ``n_eff`` and
            ``degenerate`` (True where the error bars of this mode and the next
            overlap: do not interpret them separately; the last mode's next is
            not computed, so False). ``attrs["degenerate_pairs"]``: 1-based pairs.
        """
        import xarray as xr

        check_is_fitted(self)
        ne = north_errors(self._fitted, n_eff=n_eff)
        mode = self._modes(ne.eigenvalues.size)
        return xr.Dataset(
            {"eigenvalue": ("mode", ne.eigenvalues), "error": ("mode", ne.errors),
             "error_ratio": ("mode", ne.scaled_errors), "n_eff": ("mode", ne.n_eff),
             "degenerate": ("mode", np.append(ne.degenerate, False))},
            coords={"mode": mode},
            attrs={"degenerate_pairs": [list(p) for p in ne.degenerate_pairs],
                   "n_eff_method": ne.n_eff_method})

    # -- new data -------------------------------------------------------------------------

    def _new_field(self, data):
        """New field(s) with the fitted feature dims → ((r, n) array, sample dims, shape, coords)."""
        arrays = list(data) if isinstance(data, (list, tuple)) else [data]
        if len(arrays) != len(self._vars):
            raise ValueError(f"data must hold {len(self._vars)} variable(s), as the fit; got "
                             f"{len(arrays)}")
        flats = []
        for x, lab in zip(arrays, self._vars):
            fdims = tuple(lab["feature_dims"])
            if not hasattr(x, "dims") or not set(fdims) <= set(x.dims):
                raise ValueError(f"data must be DataArrays with the fitted feature dims "
                                 f"{fdims!r}, got {getattr(x, 'dims', type(x).__name__)!r}")
            sdims = tuple(d for d in x.dims if d not in fdims)
            x = x.transpose(*sdims, *fdims)
            if tuple(x.shape[len(sdims):]) != _fshape(lab):
                raise ValueError(f"data has feature shape {tuple(x.shape[len(sdims):])}, the "
                                 f"fit had {_fshape(lab)} over {fdims!r}")
            sshape = tuple(x.shape[:len(sdims)])
            flats.append(x.data.reshape(int(np.prod(sshape, dtype=int)), -1))
        if len(flats) == 1:
            flat = flats[0]
        elif any(hasattr(f, "dask") for f in flats):
            import dask.array as da

            flat = da.concatenate([da.asarray(f) for f in flats], axis=1)
        else:
            flat = np.concatenate(flats, axis=1)
        return flat, sdims, sshape, _coords_of(x, sdims)

    def transform(self, data, normalized=False):
        """Project a new field on the EOFs (xeofs' ``transform``, eofs' ``projectField``).

        Parameters
        ----------
        data : xarray.DataArray or list of DataArray
            With the fitted feature dims (a list for a multivariate fit); NaN
            allowed at the dropped points only.
        normalized : bool, default=False
            Divide by the singular values (as ``scores(normalized=True)``).

        Returns
        -------
        xarray.DataArray (mode, *sample dims of data)
        """
        check_is_fitted(self)
        flat, sdims, sshape, coords = self._new_field(data)
        f = self._fitted
        if f.mean is not None and self.center:
            flat = flat - f.mean
        proj = project_field(f, flat, f.rank, center=False)  # scales by f.scale (weights)
        if self.rotation_ is not None:
            proj = self._rotate_scores(proj / f.S[: f.rank])
        if normalized:
            proj = proj / self._norms()
        return self._sample_da(proj, "scores", sdims, sshape, coords)

    def _rotate_scores(self, un):
        """Unit-norm projections (r, k) → rotated scores, as :func:`rotate` forms them."""
        rot = self.rotation_
        R = rot.rotation_matrix
        rinv_t = R if rot.method == "varimax" else np.linalg.inv(R).T
        return (un @ rinv_t)[:, rot.order] * (rot.singular_values * rot.signs)

    def inverse_transform(self, scores, normalized=False):
        """The field rebuilt from scores: Σ_modes score·component, unweighted, plus the mean.

        Parameters
        ----------
        scores : xarray.DataArray (mode, *sample dims)
            A subset of modes is allowed (``scores.sel(mode=[1, 2])``).
        normalized : bool, default=False
            Whether the scores are normalised (they are multiplied by the
            singular values first).

        Returns
        -------
        xarray.DataArray (*sample dims, *feature dims), NaN at the dropped points
            (a list of them for a multivariate fit).
        """
        check_is_fitted(self)
        modes = np.asarray(scores["mode"].values if "mode" in scores.coords
                           else self._modes(scores.sizes["mode"]), dtype=int)
        sdims = tuple(d for d in scores.dims if d != "mode")
        sshape = tuple(scores.sizes[d] for d in sdims)
        sc = np.asarray(scores.transpose(*sdims, "mode").values).reshape(-1, modes.size)
        if normalized:
            sc = sc * self._norms()[modes - 1]
        out = sc @ np.nan_to_num(self._rows()[modes - 1])
        f = self._fitted
        if f.scale is not None:  # undo the weights (a zero weight leaves the point unknown)
            with np.errstate(divide="ignore", invalid="ignore"):
                out = out * np.where(f.scale > 0, 1 / np.where(f.scale > 0, f.scale, 1), np.nan)
        if f.mean is not None:
            out = out + f.mean
        return self._sample_fields(out, sdims, sshape, _coords_of(scores, sdims))

    def _sample_fields(self, out, sdims, sshape, coords):
        """(r, n) → DataArray(s) (*sample dims, *feature dims) per variable, NaN where dropped."""
        import xarray as xr

        if self._fitted.mask is not None:
            out = np.array(out)
            out[:, self._fitted.mask] = np.nan
        arrays, start = [], 0
        for lab in self._vars:
            fshape = _fshape(lab)
            size = int(np.prod(fshape, dtype=int))
            part = out[:, start:start + size].reshape(*sshape, *fshape)
            start += size
            arrays.append(xr.DataArray(
                part, dims=(*sdims, *lab["feature_dims"]), name="reconstructed_data",
                coords={**coords, **_coords_of(lab["template"], lab["feature_dims"])}))
        return arrays if self._multi else arrays[0]

    def __sklearn_is_fitted__(self):
        return hasattr(self, "_fitted")
