"""The factors of a finished job, and what to do with them.

``S``, ``mean`` and the report are small and held as NumPy / dicts; ``U``
(m×k) and ``Vt`` (k×n) stay in the result store and are exposed as lazy dask
arrays (:func:`dask.array.from_zarr`), opened either directly from shared
storage or over HTTP from the service (read-only Zarr, same bearer token).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from svdserve import _manifest

from . import _lstsq
from ._eof import NorthErrors, north_errors
from ._errors import StorageAccessError
from ._pca import PCA
from ._report import EnergyReport
from ._storage import is_remote, local_path, open_dask, store_kwargs, write_array

if TYPE_CHECKING:  # pragma: no cover
    import dask.array

    from ._http import HTTPTransport

__all__ = ["StoredResult", "open_job_result"]


def _read_manifest(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """The result group's manifest (written last by the worker) or StorageAccessError."""
    import fsspec

    # fsspec opens local paths, file:// and remote URLs alike; storage
    # options only mean something to the remote ones.
    opts = (storage_options or {}) if is_remote(url) else {}
    try:
        fs, path = fsspec.core.url_to_fs(url, **opts)
        return _manifest.read(fs, path, url)
    except _manifest.ManifestError as exc:
        raise StorageAccessError(str(exc)) from exc
    except Exception as exc:  # OSError, aiohttp and botocore errors share no base class
        raise StorageAccessError(f"could not read the result at {url!r}: {exc}") from exc


def _direct_readable(url: str, storage_options: dict[str, Any] | None) -> bool:
    """Whether this machine can read ``url`` itself (a local directory, or S3/GCS/Azure
    with storage options)."""
    if is_remote(url):
        return url.startswith(("s3://", "s3a://", "gs://", "gcs://", "az://", "abfs://")) and (
            storage_options is not None
        )
    return os.path.isdir(local_path(url))


def open_job_result(
    job: dict[str, Any],
    http: HTTPTransport,
    *,
    result_access: str,
    storage_options: dict[str, Any] | None,
) -> StoredResult:
    """Open the result of a succeeded job, directly from storage or over HTTP.

    Parameters
    ----------
    job : dict
        The job JSON (``JobPublic``); its ``result.url`` is read directly,
        ``result.http`` (or the ``result`` link) over HTTP.
    http : HTTPTransport
        The client's transport: the service URL and its auth headers.
    result_access : {"auto", "direct", "http"}
        ``"auto"`` reads directly when this machine can and falls back to HTTP.
    storage_options : dict or None
        For direct reads of remote (S3, GCS, Azure) results.

    Returns
    -------
    StoredResult

    Raises
    ------
    StorageAccessError
        ``result_access="direct"`` and the result cannot be read from here.
    """
    info = job.get("result") or {}
    url = info.get("url")
    if result_access in ("auto", "direct") and url:
        if _direct_readable(url, storage_options):
            so = storage_options if is_remote(url) else None
            try:
                return StoredResult.open(url, so, job=job)
            except StorageAccessError:
                if result_access == "direct":
                    raise
        elif result_access == "direct":
            raise StorageAccessError(
                f"the result of job {job.get('id')} is at {url!r}, which is not readable "
                "from this machine; use result_access='http' (or 'auto'), mount the "
                "results volume, or pass storage_options for S3"
            )
    http_path = info.get("http") or (job.get("links") or {}).get("result") or (
        f"/v1/jobs/{job['id']}/result"
    )
    return StoredResult.open(
        http.url(http_path), {"headers": dict(http.auth_headers)}, job=job
    )


class StoredResult:
    """Truncated SVD ``A ≈ U diag(S) Vt`` (plus ``mean`` when centred) of a finished job.

    Open it with :meth:`Job.result`, :meth:`Client.result` or :meth:`StoredResult.open`.

    Attributes
    ----------
    U : dask.array.Array of shape (m, k)
        Left singular vectors, lazy, chunked by rows like the input.
    S : ndarray of shape (k,)
        Singular values, non-increasing.
    Vt : dask.array.Array of shape (k, n)
        Right singular vectors (rows); the largest-magnitude entry of each
        row is positive.
    mean : ndarray of shape (n,) or None
        Column means removed before the SVD (``center=True``), else None.
    report : EnergyReport
        The energy report.
    shape : (int, int)
        ``(m, n)`` of the input.
    rank : int
        k, the number of components computed.
    url : str
        Where the factors are read from.
    job : dict or None
        The job JSON, when opened from a job.
    mask : ndarray of shape (n,), bool, or None
        ``missing="mask"`` jobs: features missing in every sample (land
        points of an ocean field); their entries of ``Vt`` are meaningless.
    labels : dict or None
        ``sample_dims`` jobs: the variable's ``dims``, ``shape``,
        ``sample_dims``, ``feature_dims`` and ``coords`` (``{dim: (values,
        attrs)}``, CF-encoded as stored); see :meth:`to_xarray`.
    scale : ndarray of shape (n,) or None
        ``weights``/``standardize`` jobs: the feature scale D applied (weights,
        divided by the standard deviations); the factors are those of
        ``(A − 1 meanᵀ)·D`` (eofs/xeofs), ``Vt / scale`` the unweighted patterns.
    """

    def __init__(
        self,
        group,
        *,
        url: str,
        storage_options: dict[str, Any] | None = None,
        job: dict[str, Any] | None = None,
        report: dict[str, Any] | None = None,
        manifest: dict[str, Any] | None = None,
    ):
        import dask.array as da

        self._group = group
        self.url = url
        self.storage_options = storage_options
        self.job = job
        self.manifest = manifest or {}
        if report is None:
            report = group.attrs.get("report")
        if report is None:
            raise StorageAccessError(f"the result at {url!r} has no energy report attribute")
        self.report = EnergyReport(report)
        self.S = np.asarray(group["S"][...], dtype=np.float64)
        #: Left singular vectors, shape (m, k); None for a ``compute_u=False`` job.
        self.U = da.from_zarr(group["U"]) if "U" in group else None
        self.Vt = da.from_zarr(group["Vt"])
        self.mean = np.asarray(group["mean"][...], dtype=np.float64) if "mean" in group else None
        self.scale = (np.asarray(group["scale"][...], dtype=np.float64) if "scale" in group
                      else None)
        m = int(self.U.shape[0]) if self.U is not None else int(self.report["shape"][0])
        self.shape = (m, int(self.Vt.shape[1]))
        self.rank = int(self.S.shape[0])
        if (self.U is not None and self.U.shape[1] != self.rank) or self.Vt.shape[0] != self.rank:
            raise StorageAccessError(
                f"inconsistent result at {url!r}: U {getattr(self.U, 'shape', None)}, "
                f"S {self.S.shape}, "
                f"Vt {self.Vt.shape}"
            )
        try:
            _manifest.check(self.manifest, group, url)
        except _manifest.ManifestError as exc:
            raise StorageAccessError(str(exc)) from exc
        self._Vt_np: np.ndarray | None = None
        self.mask = np.asarray(group["mask"][...], dtype=bool) if "mask" in group else None
        self.labels = _manifest.read_labels(group)

    @classmethod
    def open(
        cls,
        url: str | os.PathLike,
        storage_options: dict[str, Any] | None = None,
        *,
        job: dict[str, Any] | None = None,
    ) -> "StoredResult":
        """Open a result group (``result.zarr``) from a path or URL.

        Refuses a group without ``manifest.json`` (written last by the
        worker), so nothing half-written is ever read.

        Parameters
        ----------
        url : str
            Local path, ``file://``, ``s3://`` or ``http(s)://`` URL of the group.
        storage_options : dict or None
            fsspec options for remote URLs (S3 credentials/endpoint, HTTP
            ``{"headers": {"Authorization": "Bearer ..."}}``).
        """
        import zarr

        url = os.fspath(url)
        manifest = _read_manifest(url, storage_options)
        try:
            group = zarr.open_group(**store_kwargs(url, storage_options), mode="r")
        except Exception as exc:
            raise StorageAccessError(f"could not open the result group at {url!r}: {exc}") from exc
        return cls(group, url=url, storage_options=storage_options, job=job, manifest=manifest)

    def __repr__(self) -> str:
        m, n = self.shape
        jid = f" job={self.job['id']}" if self.job and "id" in self.job else ""
        return (
            f"<StoredResult{jid} {m}x{n} rank={self.rank} "
            f"method={self.report.get('method', '?')} center={self.center}>"
        )

    # -- basic views -----------------------------------------------------------------------

    @property
    def center(self) -> bool:
        """Whether the SVD is of the centred data (PCA)."""
        return self.mean is not None

    @property
    def method(self) -> str:
        return str(self.report.get("method", ""))

    def _u(self) -> "dask.array.Array":
        if self.U is None:
            raise ValueError(
                "this result has no U: the job ran with compute_u=False (σ and V only); "
                "submit it again with compute_u=True to reconstruct rows or solve least squares"
            )
        return self.U

    @property
    def V(self) -> "dask.array.Array":
        """Right singular vectors as columns, shape (n, k)."""
        return self.Vt.T

    def _vt(self) -> np.ndarray:
        """Vt in memory (k×n is small: it is what every worker holds)."""
        if self._Vt_np is None:
            self._Vt_np = np.asarray(self.Vt.compute(), dtype=np.float64)
        return self._Vt_np

    def _check_rank(self, rank: int | None, *, allow_zero: bool = True) -> int:
        if rank is None:
            return self.rank
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
            raise TypeError(f"rank must be an int, got {rank!r}")
        lo = 0 if allow_zero else 1
        if not lo <= int(rank) <= self.rank:
            raise ValueError(
                f"rank must be between {lo} and {self.rank} (the rank the job computed), "
                f"got {rank!r}; submit a job with a larger rank for more components"
            )
        return int(rank)

    # -- compression ----------------------------------------------------------------------

    def reconstruct(self, rank: int | None = None, rows=None) -> "dask.array.Array":
        """The rank-``rank`` approximation ``U_r diag(S_r) Vt_r`` (+ mean), lazily.

        Parameters
        ----------
        rank : int or None, default=None
            Components used (all k when None).
        rows : slice, array of int or None, default=None
            Rows of A wanted (all when None); only those rows of U are read.

        Returns
        -------
        dask.array.Array of shape (len(rows), n)
        """
        r = self._check_rank(rank)
        U = self._u() if rows is None else self._u()[rows]
        if U.ndim == 1:  # an integer row index
            U = U[None, :]
        out = (U[:, :r] * self.S[:r]) @ self.Vt[:r]
        if self.mean is not None:
            out = out + self.mean[None, :]
        return out

    def denoise_rank(self, noise: float | None = None) -> int:
        """Gavish & Donoho's (2014) optimal hard-threshold rank.

        Parameters
        ----------
        noise : float or None, default=None
            The noise level σ of A = X + σZ, when known: the threshold is then
            λ*(β)·sqrt(max(m, n))·σ (4/√3·sqrt(n)·σ for a square matrix). When
            None, the report's ``suggested_rank["denoise"]`` is used (noise
            estimated by the job, see its ``noise_estimator``).
        """
        if noise is None:
            entry = (self.report.get("suggested_rank") or {}).get("denoise")
            if entry is None:
                raise ValueError("this report has no denoising rank (a result written before "
                                 "it was added); pass noise=")
            return int(entry["rank"])
        m, n = self.shape
        if self.center:
            m -= 1
        beta = min(m, n) / max(m, n)
        lam = math.sqrt(2 * (beta + 1) + 8 * beta / ((beta + 1) + math.sqrt(beta**2 + 14 * beta + 1)))
        tau = lam * math.sqrt(max(m, n)) * float(noise)
        return int(np.sum(self.S > tau))

    def denoise(self, noise: float | None = None, rows=None) -> "dask.array.Array":
        """The reconstruction at the denoising rank (:meth:`denoise_rank`), lazily.

        Hard-thresholds the singular values at Gavish & Donoho's optimal
        threshold: for a low-rank signal in white noise this beats any other
        truncation in mean squared error (asymptotically).
        """
        return self.reconstruct(self.denoise_rank(noise), rows=rows)

    def storage_ratio(self, rank: int | None = None) -> float:
        """Numbers stored by a rank-r truncation relative to A: ``r (m + n + 1) / (m n)``.

        (A centred result also stores the n means.)
        """
        r = self._check_rank(rank)
        m, n = self.shape
        return r * (m + n + 1) / (m * n)

    def error(self, rank: int | None = None, *, relative: bool = False) -> float:
        """Exact Frobenius error ‖A − A_r‖_F of the rank-r reconstruction, from the report.

        It is ``sqrt(total − Σ_{i≤r} σ_i²)`` with the total measured exactly
        in the first pass, so no pass over A is needed. For a centred result
        it is the error of ``reconstruct(r)`` (which adds the mean back).

        Parameters
        ----------
        relative : bool, default=False
            Divide by ‖A‖_F (or ‖A − 1μᵀ‖_F when centred).
        """
        r = self._check_rank(rank)
        err = self.report.residual(r)
        if relative:
            norm = self.report.frobenius_norm
            return err / norm if norm > 0 else 0.0
        return err

    def to_zarr(
        self,
        url: str | os.PathLike,
        rank: int | None = None,
        *,
        array: str | None = None,
        storage_options: dict[str, Any] | None = None,
        chunks: int | tuple[int, int] | None = None,
        overwrite: bool = False,
    ) -> str:
        """Write the rank-r reconstruction as a Zarr v3 array (row-chunked); returns the URL.

        Rows are computed panel by panel (one row-chunk of U at a time), so
        the reconstruction is never held in memory at once.
        """
        if chunks is None:
            chunks = int(self._u().chunks[0][0]) if self._u().chunks[0] else None
        return write_array(
            self.reconstruct(rank),
            os.fspath(url),
            array=array,
            storage_options=storage_options,
            chunks=chunks,
            overwrite=overwrite,
            attributes={
                "svdserve": {"reconstruction_rank": self._check_rank(rank), "result": self.url}
            },
        )

    # -- labelled data --------------------------------------------------------------------

    def to_xarray(self):
        """The result as labelled data on the variable's own dimensions (EOF analysis).

        For a job submitted with ``sample_dims`` (e.g. ``("time",)`` of a
        ``(time, lat, lon)`` field). Names follow xeofs: ``components`` are
        the EOFs (rows of ``Vt``, unit norm), ``scores`` the principal
        components ``U·diag(S)`` (xeofs' unnormalized scores).

        Returns
        -------
        xarray.Dataset
            Lazy where it is large: ``components``, ``scores`` and ``mean``
            are dask arrays read from the result store on ``.compute()`` /
            ``.values``, like :attr:`U`; the per-mode values are NumPy.
            ``components`` (mode, *feature dims), NaN at masked points;
            ``scores`` (*sample dims, mode), absent for ``compute_u=False``;
            ``singular_values``, ``explained_variance`` (σ²/(m − 1)) and
            ``explained_variance_ratio`` (σ² / total energy, the total
            variance when centred) along ``mode`` (1, 2, …); ``mean``
            (*feature dims, NaN at masked points) when centred. Coordinates
            are restored and CF-decoded (times become datetimes).

        Raises
        ------
        ImportError
            xarray is not installed (``pip install 'svdserve[xarray]'``).
        ValueError
            The job ran without ``sample_dims`` (its input was a plain matrix).
        """
        try:
            import xarray as xr
        except ImportError as exc:  # pragma: no cover - the extra is installed by make test
            raise ImportError("to_xarray needs xarray: pip install 'svdserve[xarray]'") from exc
        import dask.array as da

        if self.labels is None:
            raise ValueError("this result has no dimensions to map back to: its job ran on a "
                             "matrix without sample_dims; submit the variable with sample_dims "
                             "(e.g. ['time']) to get labelled EOFs")
        lab = self.labels
        size = dict(zip(lab["dims"], lab["shape"]))
        fdims, sdims = list(lab["feature_dims"]), list(lab["sample_dims"])
        fshape, sshape = [size[d] for d in fdims], [size[d] for d in sdims]
        k, m = self.rank, self.shape[0]
        vt = self.Vt.astype(np.float64)
        if self.mask is not None:
            vt = da.where(self.mask, np.nan, vt)
        data = {"components": (["mode", *fdims], vt.reshape(k, *fshape))}
        if self.U is not None:
            scores = self.U.astype(np.float64) * self.S
            data["scores"] = ([*sdims, "mode"], scores.reshape(*sshape, k))
        total = self.report.total_energy
        var = self.S**2
        data["singular_values"] = (["mode"], self.S)
        data["explained_variance"] = (["mode"], var / (m - 1) if m > 1 else var * np.nan)
        data["explained_variance_ratio"] = (["mode"], var / total if total else var * np.nan)
        if self.mean is not None:
            mean = self.mean.copy()
            if self.mask is not None:
                mean[self.mask] = np.nan
            data["mean"] = (fdims, da.from_array(mean.reshape(fshape)))
        coords = {"mode": np.arange(1, k + 1)}
        for dim, (values, attrs) in lab["coords"].items():
            coords[dim] = xr.Variable(dim, values, dict(attrs))
        ds = xr.Dataset(data, coords=coords,
                        attrs={"method": self.method, "center": int(self.center),
                               "masked_features": int(self.mask.sum()) if self.mask is not None
                               else 0})
        return xr.decode_cf(ds)

    def north_errors(self, n_modes: int | None = None, *,
                     n_eff: int | float | Literal["lag1"] | None = None) -> NorthErrors:
        """Eigenvalue sampling errors λ_i·√(2/N) (North et al. 1982) and degenerate pairs.

        Reads S (and, for ``n_eff="lag1"``, the first ``n_modes`` columns of U);
        see :func:`svdserve.client.north_errors`.
        """
        return north_errors(self, n_modes, n_eff=n_eff)

    # -- PCA ------------------------------------------------------------------------------

    def pca(self, n_components: int | None = None, *, whiten: bool = False) -> PCA:
        """A fitted PCA with scikit-learn's names, from a centred SVD.

        Equal (within rounding) to ``sklearn.decomposition.PCA(n_components,
        svd_solver="full").fit(X)`` on the same data, signs included.

        Raises
        ------
        ValueError
            If the job was not submitted with ``center=True``.
        """
        if self.mean is None:
            raise ValueError(
                "PCA needs the SVD of the centred data, but this job ran with center=False; "
                "submit it again with center=True"
            )
        k = self._check_rank(n_components, allow_zero=False)
        return PCA(
            self._vt(),
            self.S,
            self.mean,
            self.shape[0],
            self.report.total_energy,
            n_components=k,
            whiten=whiten,
        )

    # -- least squares ----------------------------------------------------------------------

    def lstsq(
        self,
        b,
        rank: int | Literal["gcv"] | None = None,
        alpha: float | Literal["gcv"] | None = None,
        *,
        array: str | None = None,
        storage_options: dict[str, Any] | None = None,
        rcond: float | None = None,
    ) -> _lstsq.LstsqResult:
        """Solve ``min ‖Ax − b‖₂`` by truncated SVD or Tikhonov regularisation.

        Parameters
        ----------
        b : array-like of shape (m,) or (m, p), dask array, or str
            Right-hand side(s); a string is the URL of a Zarr array (or of a
            group, with ``array=``) read with ``storage_options``.
        rank : int, "gcv" or None, default=None
            TSVD rank (all computed components with σ_i > rcond·σ_1 when
            None; ``"gcv"`` picks the rank minimising the GCV function).
        alpha : float, "gcv" or None, default=None
            Tikhonov parameter; ``"gcv"`` picks it by generalized
            cross-validation (Golub, Heath & Wahba 1979) over α from σ_1
            down to 16·eps·σ_1, so a well-posed problem gets α ≈ 0.
        rcond : float or None
            Cut-off for small σ (default ``eps·max(m, n)``, like NumPy).

        Returns
        -------
        LstsqResult
            ``x``, ``residual_norm``, ``solution_norm``, ``filter_factors``
            (σ_i/(σ_i²+α²) for Tikhonov), ``phi``, ``effective_rank``,
            ``alpha``, ``rank``, ``gcv``, ``gcv_edge`` and ``notes`` (a GCV
            minimum at the edge of the α grid).

        Notes
        -----
        Reads U twice (``Uᵀb`` and the part of b outside range(U)), never A.
        Equals :func:`numpy.linalg.lstsq` when the SVD is exact and full-rank.
        """
        import dask.array as da

        if self.mean is not None:
            raise ValueError(
                "these factors are of the centred matrix A - 1 mean^T (center=True); "
                "least squares needs the SVD of A itself: submit with center=False"
            )
        if isinstance(b, (str, os.PathLike)):
            bd = open_dask(b, array=array, storage_options=storage_options)
        elif isinstance(b, da.Array):
            bd = b
        else:
            bd = da.from_array(np.asarray(b, dtype=np.float64), chunks=-1)
        m = self.shape[0]
        if bd.ndim not in (1, 2) or bd.shape[0] != m:
            raise ValueError(
                f"b must have shape ({m},) or ({m}, p) to match A's {m} rows, got {bd.shape}"
            )
        U = self._u()
        bd = bd.astype(np.float64).rechunk({0: U.chunks[0]})
        beta = np.asarray((U.T @ bd).compute(), dtype=np.float64)
        perp = bd - U @ beta
        perp2 = np.asarray((perp**2).sum(axis=0).compute(), dtype=np.float64)
        return _lstsq.solve(beta, self.S, self._vt(), perp2, m, rank=rank, alpha=alpha, rcond=rcond)
