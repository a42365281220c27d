"""The client: submit jobs, look them up, upload matrices, open results.

It talks to the service over HTTP only (``docs/contracts.md`` section 2) and
never imports :mod:`svdserve.service`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from typing import Any, Literal

import httpx
import numpy as np

from ._http import DEFAULT_TIMEOUT, HTTPTransport
from ._job import Job
from ._literals import METHODS, Method
from ._report import EnergyReport
from ._result import StoredResult
from ._storage import absolute_url, is_remote, write_array
from ._upload import upload_http, zarr_name

__all__ = ["Client", "DEFAULT_URL"]

#: Where the client looks when neither ``base_url`` nor ``SVDSERVE_URL`` is given.
DEFAULT_URL = "http://localhost:8000"


def settings_from_env(environ: dict[str, str] | None = None) -> dict[str, str | None]:
    """``SVDSERVE_URL`` and ``SVDSERVE_TOKEN``: the only environment the client reads."""
    env = os.environ if environ is None else environ
    return {"url": env.get("SVDSERVE_URL") or None, "token": env.get("SVDSERVE_TOKEN") or None}


def normalize_source(source: str | os.PathLike) -> str:
    """The ``source.url`` sent to the service.

    URLs (``s3://``, ``file://``, ...) and absolute paths are sent as given; a
    relative path is taken from the current directory, as every command-line
    tool does (and as :meth:`Client.upload` writes it), and sent as its
    absolute path, whether or not it exists here. A client on another
    machine names a source by the service's absolute path (``/data/A.zarr``).
    """
    source = os.fspath(source)
    if is_remote(source) or source.startswith("file://") or os.path.isabs(source):
        return source
    return os.path.abspath(source)


def _eof_fields(missing, weights, standardize) -> dict[str, Any]:
    """The request's ``missing`` / ``weights`` / ``standardize`` (absent at their defaults)."""
    out: dict[str, Any] = {} if missing == "error" else {"missing": missing}
    if weights is not None:
        out["weights"] = weights if isinstance(weights, str) else \
            np.asarray(weights, dtype=float).tolist()
    if standardize:
        out["standardize"] = True
    return out


def _missing_chunks_fields(missing_chunks, allow_missing_chunks) -> dict[str, Any]:
    """The job fields for absent chunks, sent only when set (older services refuse
    unknown fields); the deprecated ``allow_missing_chunks`` warns."""
    fields: dict[str, Any] = {}
    if missing_chunks is not None:
        if missing_chunks not in ("fill", "error"):
            raise ValueError(f"missing_chunks must be 'fill' or 'error', got "
                             f"{missing_chunks!r}")
        fields["missing_chunks"] = missing_chunks
    if allow_missing_chunks is not None:
        warnings.warn("allow_missing_chunks is deprecated: absent chunks read as the fill "
                      "value by default; pass missing_chunks='error' to refuse them",
                      DeprecationWarning, stacklevel=3)
        fields["allow_missing_chunks"] = bool(allow_missing_chunks)
    return fields


class Client:
    """Client of an svdserve service.

    Parameters
    ----------
    base_url : str or None, default=None
        Service root; None reads ``SVDSERVE_URL``, else ``http://localhost:8000``.
    token : str or None, default=None
        Bearer token; None reads ``SVDSERVE_TOKEN`` (no auth when unset).
    timeout : float, default=30.0
        Seconds per request (a long-poll adds its wait).
    max_retries : int, default=3
        Retries on connection errors, 429 and 502/503/504 (honouring
        ``Retry-After``) with exponential backoff.
    backoff_factor : float, default=0.5
        First backoff delay in seconds; doubles with each retry.
    http_client : httpx.Client or None, default=None
        Inject your own (proxies, ``httpx.MockTransport`` in tests); it is not
        closed by :meth:`close`.
    storage_options : dict or None, default=None
        fsspec options for ``s3://`` storage (credentials, ``endpoint_url``...)
        used by :meth:`upload` and for direct result access.
    result_access : {"auto", "direct", "http"}, default="auto"
        How :meth:`Job.result` reads the factors: ``"direct"`` from the
        result's storage URL (a shared path, or S3 with ``storage_options``),
        ``"http"`` from the service (``/v1/jobs/{id}/result``, same token),
        ``"auto"`` direct when readable from here, else HTTP.

    Examples
    --------
    >>> from svdserve.client import Client
    >>> c = Client("http://localhost:8000")                      # doctest: +SKIP
    >>> job = c.submit("data/A.zarr", rank=20)                   # doctest: +SKIP
    >>> res = job.result(progress=True)                          # doctest: +SKIP
    >>> res.S[:3], res.error(10), res.storage_ratio(10)          # doctest: +SKIP
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        backoff_factor: float = 0.5,
        http_client: httpx.Client | None = None,
        storage_options: dict[str, Any] | None = None,
        result_access: Literal["auto", "direct", "http"] = "auto",
        **transport_options: Any,
    ):
        env = settings_from_env()
        if result_access not in ("auto", "direct", "http"):
            raise ValueError(
                f"result_access must be 'auto', 'direct' or 'http', got {result_access!r}"
            )
        self._http = HTTPTransport(
            base_url or env["url"] or DEFAULT_URL,
            token=token if token is not None else env["token"],
            timeout=timeout,
            max_retries=max_retries,
            backoff_factor=backoff_factor,
            http_client=http_client,
            **transport_options,
        )
        self.storage_options = storage_options
        self.result_access = result_access

    @property
    def base_url(self) -> str:
        return self._http.base_url

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def close(self) -> None:
        """Close the HTTP connection pool (not an injected ``http_client``)."""
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- service -----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /v1/health``."""
        return self._http.get_json("/v1/health")

    def ready(self) -> dict[str, Any]:
        """``GET /v1/ready`` (raises :class:`ServiceUnavailable` when not ready, after retries)."""
        return self._http.get_json("/v1/ready")

    # -- jobs --------------------------------------------------------------------------------

    def submit(
        self,
        source: Any,
        rank: int | None = None,
        *,
        array: str | list[str] | None = None,
        method: Method = "auto",
        n_oversamples: int = 10,
        n_iter: int = 2,
        center: bool = False,
        random_state: int = 0,
        compute_u: bool = True,
        missing_chunks: Literal["fill", "error"] | None = None,
        allow_missing_chunks: bool | None = None,
        idempotency_key: str | None = None,
        energy: float | None = None,
        max_rank: int | None = None,
        sample_dims: str | list[str] | tuple[str, ...] | None = None,
        missing: Literal["error", "mask"] = "error",
        weights: str | Any | None = None,
        standardize: bool = False,
    ) -> Job:
        """Submit a truncated-SVD job.

        Parameters
        ----------
        source : str, path-like, ndarray or dask array
            Zarr array or group inside a data root of the service: a path, a
            ``file://`` URL, or ``s3://bucket/key``. A relative path is taken
            from the current directory and sent as its absolute path; from
            another machine, give the service's absolute path. A NumPy
            (memmap) or dask array of shape (m, n) is uploaded over HTTP first
            (:meth:`upload`, named ``array-<12 hex digits>``; see
            :meth:`uploads`, :meth:`delete_upload`).
        rank : int or None
            Components k ≥ 1 (≤ min(m, n)); exactly one of ``rank`` and ``energy``.
        array : str, list of str or None, default=None
            Array inside the group at ``source``; a list decomposes several
            variables sharing the sample dimensions together (multivariate EOF,
            ``report["variables"]`` gives each one's columns of ``Vt``).
        method : {"auto", "exact", "randomized", "sketch"}, default="auto"
            ``exact`` (TSQR, every singular value), ``randomized`` (Halko et
            al.), ``sketch`` (one pass, Tropp et al. 2019), ``auto`` lets
            the service pick.
        n_oversamples : int, default=10
        n_iter : int, default=2
            Power iterations of the randomized method.
        center : bool, default=False
            Remove column means first (PCA).
        random_state : int, default=0
        compute_u : bool, default=True
            False: σ and V only (one pass over A for ``exact``); the result has
            no ``U``, so ``reconstruct`` and ``lstsq`` are unavailable.
        missing_chunks : {"fill", "error"} or None, default=None (the service's "fill")
            A chunk the array's metadata implies but its store lacks is the
            fill value in Zarr (zarr does not write chunks equal to it):
            ``"fill"`` reads it so (the job's notes and ``report["input"]``
            give the count); ``"error"`` fails the job with ``invalid_input``,
            naming the chunk and its row range (to catch half-finished uploads).
        allow_missing_chunks : bool or None, default=None
            Deprecated (a DeprecationWarning): True is ``missing_chunks="fill"``,
            False is ``"error"``.
        idempotency_key : str or None, default=None
            Sent as ``Idempotency-Key``; a fresh one is made when None. Every
            retry of this call reuses it, so a retried submit never makes two jobs.
        energy : float or None, default=None
            Instead of ``rank``: the smallest rank capturing this fraction of
            ‖A‖²_F (of the total variance with ``center``), as
            ``PCA(n_components=energy)``; the report's ``energy_target`` says
            how it was found.
        max_rank : int or None, default=None
            With ``energy``: the largest rank returned.
        sample_dims : str or sequence of str or None, default=None
            Decompose an N-D variable of an xarray-written store (``array``
            names it) as the matrix samples × features: these dimensions are
            the rows, the others are flattened (C order) into the columns.
            ``sample_dims=["time"]`` on ``(time, lat, lon)`` is EOF analysis;
            :meth:`StoredResult.to_xarray` maps the result back. Required when
            the array is not 2-D.
        missing : {"error", "mask"}, default="error"
            ``"mask"``: features missing (NaN or ``_FillValue``) in every
            sample are masked (recorded as ``StoredResult.mask``); features
            missing in only some samples fail the job. ``"error"``: any NaN
            fails it (``non_finite_values``).
        weights : {"coslat", "area"}, array-like or None, default=None
            Feature weights applied inside the passes (the EOFs of the weighted
            field, as eofs and xeofs): ``"coslat"`` (√cos latitude from the
            ``lat``/``latitude`` coordinate of an N-D store), ``"area"``
            (√ normalised cell area, eofs' ``"area"``), or one non-negative
            number per feature (shape (n,) or the feature dimensions' shape).
            The result's ``scale`` holds the weights applied.
        standardize : bool, default=False
            Divide each feature by its standard deviation (correlation
            EOFs, xeofs' ``standardize=True``); needs ``center=True``.

        Returns
        -------
        Job
        """
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if (rank is None) == (energy is None):
            raise ValueError(f"give exactly one of rank and energy; got rank={rank!r}, "
                             f"energy={energy!r}")
        body = {
            "source": {"url": None, "array": array},
            "rank": rank,
            "method": method,
            "n_oversamples": n_oversamples,
            "n_iter": n_iter,
            "center": bool(center),
            "random_state": random_state,
            "compute_u": bool(compute_u),
        }
        body.update(_missing_chunks_fields(missing_chunks, allow_missing_chunks),
                    **_eof_fields(missing, weights, standardize))
        if sample_dims is not None:
            body["source"]["sample_dims"] = (
                [sample_dims] if isinstance(sample_dims, str) else list(sample_dims))
        if energy is not None:
            del body["rank"]
            body["energy"] = energy
            if max_rank is not None:
                body["max_rank"] = max_rank
        key = idempotency_key or str(uuid.uuid4())
        # an in-memory array is uploaded last, once the request is known to be well formed
        body["source"]["url"], uploaded = self._source_url(source)
        try:
            response = self._http.request(
                "POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}
            )
        except BaseException:
            if uploaded is not None:  # no job will read it: give the tenant's quota back
                with contextlib.suppress(Exception):  # the submit's error is the one to see
                    self._delete_upload_if_any(uploaded)
            raise
        return Job(self, response.json())

    def _source_url(self, source: Any) -> tuple[str, str | None]:
        """``(the URL a job names, the upload's name or None)``: a path or URL as given,
        an in-memory array uploaded over HTTP."""
        if isinstance(source, (str, os.PathLike)):
            return normalize_source(source), None
        if not (hasattr(source, "shape") and hasattr(source, "dtype")):
            raise TypeError(
                f"source must be a path or URL of a Zarr array, or a NumPy/dask array to "
                f"upload; got {type(source).__name__} (np.asarray(x) first)")
        name = f"array-{uuid.uuid4().hex[:12]}"
        return normalize_source(self.upload(source, name, via="http")), name

    def get(self, job_id: str) -> Job:
        """The job with this id, or with the one id of this tenant's jobs that starts with
        ``job_id`` (at least 6 characters, as the short ids printed by the CLI).

        Raises :class:`NotFound` if unknown to this tenant, :class:`InvalidRequest`
        (``.problem["candidates"]``) if the prefix matches several jobs.
        """
        return Job(self, self._http.get_json(f"/v1/jobs/{job_id}"))

    def jobs(self, state: str | None = None, *, limit: int | None = None) -> list[Job]:
        """Jobs of this tenant, newest first, following pagination.

        Parameters
        ----------
        state : str or None
            Only jobs in this state.
        limit : int or None
            At most this many (all when None).
        """
        out: list[Job] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {}
            if state:
                params["state"] = state
            if limit is not None:
                params["limit"] = min(limit - len(out), 100)
            if cursor:
                params["cursor"] = cursor
            page = self._http.get_json("/v1/jobs", params=params)
            out.extend(Job(self, item) for item in page.get("items", []))
            cursor = page.get("next_cursor")
            if not cursor or (limit is not None and len(out) >= limit):
                return out[:limit] if limit is not None else out

    def cancel(self, job_id: str) -> Job:
        """Cancel a job (id or unique prefix); returns it (409 :class:`Conflict` if it
        already finished)."""
        return Job(
            self,
            self._http.request("POST", f"/v1/jobs/{job_id}/cancel", idempotent=True).json(),
        )

    def delete(self, job_id: str) -> None:
        """Delete a finished job (id or unique prefix) and its result."""
        self._http.request("DELETE", f"/v1/jobs/{job_id}")

    def report(self, job_id: str) -> EnergyReport:
        """The energy report of a succeeded job (id or unique prefix)."""
        return EnergyReport(self._http.get_json(f"/v1/jobs/{job_id}/report"))

    def result(self, job_id: str, timeout: float | None = None, *, progress: bool = False):
        """Wait for a job and open its result (see :meth:`Job.result`)."""
        return self.get(job_id).result(timeout, progress=progress)

    # -- data -------------------------------------------------------------------------------

    def upload(
        self,
        arr,
        url: str | os.PathLike,
        storage_options: dict[str, Any] | None = None,
        chunks: int | tuple[int, int] | None = None,
        *,
        array: str | None = None,
        overwrite: bool = False,
        via: Literal["auto", "storage", "http"] = "auto",
        block_rows: int | None = None,
        progress: bool = True,
    ) -> str:
        """Write a matrix as Zarr v3 where the service can read it; return its source.

        Two ways: straight to storage (a path on a volume shared with the
        service, or ``s3://``), or over HTTP through the service's upload API
        (``/v1/uploads``) when ``url`` is a bare name such as ``"A"`` (no
        ``/``, no scheme) or ``via="http"``: for a client that shares no
        storage with the service. Over HTTP the matrix goes in row blocks,
        each checksummed; the client holds one block at a time (a NumPy
        memmap or a dask array is read block by block), an interrupted
        upload resumes where it stopped when called again with the same
        name, and the service commits the array atomically under the
        tenant's upload root.

        Parameters
        ----------
        arr : ndarray, numpy.memmap, dask array or zarr array of shape (m, n)
        url : str or path-like
            Destination: a local path or ``s3://bucket/key``; or, over HTTP,
            the array's name among this tenant's uploads (``.zarr`` appended).
        storage_options : dict or None
            fsspec options for S3 (default: the client's ``storage_options``).
        chunks : int, (int, int) or None
            Rows per chunk (whole rows; default ~16 MiB per chunk). Row
            chunks are what the service's panels align with. Over HTTP an int
            is the rows per block.
        array : str or None
            Write into a group at ``url`` under this name (submit with ``array=``).
        overwrite : bool, default=False
            Replace an existing array. Over HTTP: delete this tenant's upload
            of that name first, committed or not (a job that pinned it and has
            not yet read it then fails with ``storage_error``).
        via : {"auto", "storage", "http"}, default="auto"
            ``"auto"``: HTTP for a bare name, storage for a path or URL.
        block_rows : int or None, default=None
            Over HTTP: rows per block (one Zarr chunk); default: the service's
            choice, about 16 MiB of whole rows.
        progress : bool, default=True
            Over HTTP: a progress bar for uploads of 32 MiB or more.

        Returns
        -------
        str
            The URL written, or over HTTP the committed array's path on the
            service (pass it to :meth:`submit`).
        """
        if via not in ("auto", "storage", "http"):
            raise ValueError(f"via must be 'auto', 'storage' or 'http', got {via!r}")
        bare = isinstance(url, str) and "/" not in url and os.sep not in url and ":" not in url
        if via == "http" or (via == "auto" and bare):
            if array is not None:
                raise ValueError(f"array= applies to storage uploads only, got array={array!r} "
                                 f"for the upload {os.fspath(url)!r} over HTTP; drop it")
            if block_rows is None and isinstance(chunks, (int, np.integer)):
                block_rows = int(chunks)
            if overwrite:
                self._delete_upload_if_any(os.fspath(url))
            return upload_http(self._http, arr, os.fspath(url), block_rows=block_rows,
                               progress=progress)
        so = storage_options if storage_options is not None else self.storage_options
        return write_array(
            arr, os.fspath(url), array=array, storage_options=so, chunks=chunks,
            overwrite=overwrite,
        )

    def uploads(self) -> list[dict[str, Any]]:
        """This tenant's uploads over HTTP (``GET /v1/uploads``), newest first."""
        return self._http.get_json("/v1/uploads")["items"]

    def delete_upload(self, upload: str) -> None:
        """Delete an upload, committed or not, given its id or its name."""
        if not self._delete_upload_if_any(upload):
            self._http.request("DELETE", f"/v1/uploads/{upload}")  # the service's 404

    def _delete_upload_if_any(self, upload: str) -> bool:
        """Delete the upload with this id or name if this tenant has one; whether it had."""
        for item in self.uploads():
            if upload == item["id"] or zarr_name(upload) == item["name"]:
                self._http.request("DELETE", f"/v1/uploads/{item['id']}")
                return True
        return False

    # -- results ----------------------------------------------------------------------------

    def open_result(
        self, url: str, storage_options: dict[str, Any] | None = None
    ) -> StoredResult:
        """Open a result group by URL (e.g. a ``result.zarr`` on shared storage)."""
        url = absolute_url(url)
        if storage_options is None and is_remote(url):
            storage_options = self.storage_options
        return StoredResult.open(url, storage_options)
