"""What the estimators of :mod:`svdserve.estimators` share below scikit-learn's API.

- :class:`Data`: the training or test matrix, whatever form it came in (NumPy,
  dask, a Zarr path or URL, a ``zarr.Array``, an xarray ``DataArray``),
  with :meth:`Data.lazy` giving it as a dask array (samples × features)
  without reading it;
- :func:`decompose`: one truncated SVD on the chosen backend -- this process
  (:func:`svdserve.worker.svd` with ``client=False``), a Dask cluster
  (``distributed.Client``) or a service (``svdserve.client.Client``: a path is
  submitted as it is, any other matrix uploaded over HTTP first) -- as one
  :class:`Factors`, whichever ran it.

The backends are imported when used: :mod:`svdserve.client` never imports
:mod:`svdserve.worker`, and neither part imports this module.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Data", "Factors", "decompose", "backend_of", "as_data"]


@dataclass
class Data:
    """A matrix of samples × features, as the user gave it.

    Attributes
    ----------
    kind : {"memory", "sparse", "dask", "path", "zarr"}
        ``memory``: ``obj`` is an ndarray; ``sparse``: a ``scipy.sparse`` CSR
        matrix in memory (decomposed from a temporary AnnData CSR Zarr group,
        or uploaded sparse to a service: never densified); ``dask``: a dask array (an
        xarray DataArray arrives as one of these two, stacked by
        ``sample_dims``); ``path``: a path or URL of a Zarr array or group;
        ``zarr``: a ``zarr.Array``.
    obj : ndarray, dask array, str or zarr.Array
    array : str or None
        Array inside the group at a ``path``.
    storage_options : dict or None
    sample_dims : tuple of str or None
        For a ``path`` holding an N-D variable.
    """

    kind: str
    obj: object
    array: str | None = None
    storage_options: dict | None = None
    sample_dims: tuple | None = None
    _lazy: object = field(default=None, repr=False)

    @property
    def in_memory(self) -> bool:
        return self.kind in ("memory", "sparse")

    def lazy(self):
        """The matrix as a dask array of shape (n_samples, n_features), not read.

        Returns
        -------
        ndarray (``memory``) or dask.array.Array
        """
        if self.kind in ("memory", "sparse", "dask"):
            return self.obj
        if self._lazy is None:
            self._lazy = _open_lazy(self)
        return self._lazy

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(x) for x in self.lazy().shape)

    @property
    def dtype(self):
        return np.dtype(self.lazy().dtype)


def _open_lazy(data):
    import dask.array as da

    if data.kind == "zarr":
        x = da.from_zarr(data.obj)
    elif data.sample_dims is not None:
        import xarray as xr

        ds = xr.open_zarr(data.obj, storage_options=data.storage_options,
                          consolidated=False, mask_and_scale=True)
        name = data.array or _only_variable(ds, data.obj)
        return stack_samples(ds[name], data.sample_dims)
    else:
        x = da.from_zarr(data.obj, component=data.array, storage_options=data.storage_options)
    if x.ndim != 2:
        raise ValueError(
            f"the array at {data.obj!r} has shape {x.shape}; give sample_dims= (the "
            "dimensions that are the samples) to view an N-D variable as a matrix")
    return x


def _only_variable(ds, where):
    names = list(ds.data_vars)
    if len(names) != 1:
        raise ValueError(f"the store at {where!r} holds the variables {names}; name one "
                         "with array=")
    return names[0]


def stack_samples(xarr, sample_dims):
    """An xarray DataArray as the matrix samples × features (C order within each).

    Parameters
    ----------
    xarr : xarray.DataArray
    sample_dims : sequence of str or None
        The dimensions that are the samples (the first dimension when None).

    Returns
    -------
    ndarray or dask array of shape (prod(sample sizes), prod(other sizes))
    """
    dims = tuple(xarr.dims)
    samples = tuple(sample_dims) if sample_dims is not None else dims[:1]
    unknown = [d for d in samples if d not in dims]
    if unknown:
        raise ValueError(f"sample_dims {unknown!r} are not dimensions of the DataArray "
                         f"{xarr.name!r}, whose dimensions are {dims!r}")
    features = tuple(d for d in dims if d not in samples)
    ordered = xarr.transpose(*samples, *features)
    m = int(np.prod([xarr.sizes[d] for d in samples]))
    return ordered.data.reshape(m, -1)


def as_data(X, *, array=None, storage_options=None, sample_dims=None) -> Data | None:
    """The :class:`Data` of an input that is not an in-memory array-like, else None.

    NumPy arrays, lists and data frames give None: the estimator validates
    them with scikit-learn's ``validate_data`` instead.
    """
    dims = None if sample_dims is None else (
        (sample_dims,) if isinstance(sample_dims, str) else tuple(sample_dims))
    if isinstance(X, (str, os.PathLike)):
        return Data("path", os.fspath(X), array, storage_options, dims)
    module = type(X).__module__.split(".")[0]
    if module == "scipy":
        import scipy.sparse as sp

        if sp.issparse(X):
            return Data("sparse", sp.csr_matrix(X))
    if module == "zarr":
        return Data("zarr", X)
    if module == "xarray":
        x = stack_samples(X, dims)
        return Data("memory" if isinstance(x, np.ndarray) else "dask", x)
    if module == "dask":
        return Data("dask", X)
    return None


@dataclass
class Factors:
    """One truncated SVD ``A ≈ U diag(S) Vt`` (of ``A − 1 meanᵀ`` when centred).

    Attributes
    ----------
    U : ndarray, dask array or None
        Shape (m, k), signs matching ``Vt``; lazy when the backend stored it.
    S : ndarray of shape (k,)
    Vt : ndarray of shape (k, n)
    mean : ndarray of shape (n,) or None
    n_samples : int
    total_ss : float
        ‖A − 1 meanᵀ‖_F² (centred) or ‖A‖_F², measured over the whole matrix.
    s_all : ndarray or None
        Every singular value (the exact method).
    mask : ndarray of shape (n,), bool, or None
        Features masked as missing everywhere (``missing="mask"``).
    report : dict
        The energy report.
    scale : ndarray of shape (n,) or None
        The feature scale D of ``weights``/``standardize`` (the factors are
        then those of ``(A − 1 meanᵀ)·D``).
    """

    U: object
    S: np.ndarray
    Vt: np.ndarray
    mean: np.ndarray | None
    n_samples: int
    total_ss: float
    s_all: np.ndarray | None
    mask: np.ndarray | None
    report: dict
    scale: np.ndarray | None = None


def backend_of(client) -> str:
    """``"local"``, ``"dask"`` or ``"service"`` for an estimator's ``client``; else TypeError."""
    if client is None:
        return "local"
    from svdserve.client import Client as ServiceClient

    if isinstance(client, ServiceClient):
        return "service"
    from distributed import Client as DaskClient

    if isinstance(client, DaskClient):
        return "dask"
    raise TypeError(f"client must be None (this process or the default Dask client), a "
                    f"distributed.Client or an svdserve.client.Client; got {client!r}")


def decompose(data: Data, *, client, rank=None, energy=None, center, method, n_oversamples,
              n_iter, random_state, missing="error", panel_bytes=None,
              compute_u=True, **scaling) -> Factors:
    """Run one truncated SVD of ``data`` where ``client`` says.

    Parameters
    ----------
    data : Data
    client : None, distributed.Client or svdserve.client.Client
        None: an in-memory matrix in this process; any other input on the
        default Dask client if there is one, else in this process.
    rank, energy, center, method, n_oversamples, n_iter, random_state, missing, compute_u :
        As :func:`svdserve.worker.svd` takes them (``compute_u=False``: no U, one
        pass fewer for the exact method).
    panel_bytes : int or None
        Panel budget (this process or a Dask cluster; a service uses its own).
    **scaling
        ``weights=`` and ``standardize=`` of :func:`svdserve.worker.svd`, passed
        on as given (the EOF estimator's ``use_coslat`` and ``standardize``).

    Returns
    -------
    Factors
    """
    kw = dict(method=method, n_oversamples=n_oversamples, n_iter=n_iter, center=center,
              random_state=random_state, energy=energy, missing=missing,
              compute_u=compute_u, **scaling)
    if backend_of(client) == "service":
        return _on_service(data, client, rank, kw)
    from svdserve.worker import svd

    if client is None and data.in_memory:
        client = False  # the matrix is here already: sending it to a cluster only costs
    if data.kind == "sparse":
        return _sparse_here(data.obj, rank, client, panel_bytes, kw)
    res = svd(data.obj, rank, client=client, array=data.array,
              storage_options=data.storage_options, sample_dims=data.sample_dims,
              panel_bytes=panel_bytes, **kw)
    return _factors(res)


def _sparse_here(X, rank, client, panel_bytes, kw):
    """A scipy.sparse matrix through the worker's sparse reader: written to a temporary
    AnnData CSR group (its values and indices only), decomposed, deleted."""
    import shutil
    import tempfile

    from svdserve.client import write_sparse
    from svdserve.worker import svd

    folder = tempfile.mkdtemp(prefix="svdserve-sparse-")
    try:
        path = write_sparse(X, os.path.join(folder, "X.zarr"))
        res = svd(path, rank, client=client, panel_bytes=panel_bytes, **kw)
        fac = _factors(res)
        if fac.U is not None:
            fac.U = np.asarray(fac.U)  # read before the store goes
        return fac
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _on_service(data, client, rank, kw):
    """Submit to the service: a path as it is; any other matrix uploaded over HTTP
    first (:meth:`svdserve.client.Client.upload`), its upload deleted once the job
    ended or the upload failed."""
    if data.kind == "path":
        job = client.submit(data.obj, rank, array=data.array, sample_dims=data.sample_dims,
                            **kw)
        return _factors(job.result())
    from svdserve.client import NotFound

    name = f"estimator-{uuid.uuid4().hex[:12]}"
    try:  # an upload cut short is deleted too: it would hold its quota until it expired
        source = client.upload(data.lazy(), name, via="http")
        return _factors(client.submit(source, rank, **kw).result())
    finally:
        try:
            client.delete_upload(name)
        except NotFound:  # the upload was never created (refused, or a transport failure)
            pass


def _factors(res):
    """:class:`Factors` of a :class:`svdserve.worker.SVDResult` or a
    :class:`svdserve.client.StoredResult` (their U stays as it is: lazy when stored)."""
    report = res.report
    rep = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    norm = float(rep["frobenius_norm"])
    total = rep.get("total_energy")
    s_all = rep.get("singular_values_all")
    mean, mask = res.mean, res.mask
    return Factors(U=res.U, S=np.asarray(res.S, dtype=np.float64),
                   Vt=np.asarray(res.Vt, dtype=np.float64),
                   mean=None if mean is None else np.asarray(mean, dtype=np.float64),
                   n_samples=int(rep["shape"][0]),
                   total_ss=float(total) if total is not None else norm**2,
                   s_all=None if s_all is None else np.asarray(s_all, dtype=np.float64),
                   mask=None if mask is None else np.asarray(mask, dtype=bool), report=rep,
                   scale=None if getattr(res, "scale", None) is None
                   else np.asarray(res.scale, dtype=np.float64))
