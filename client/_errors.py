"""Errors raised by :mod:`svdserve.client`.

One hierarchy, rooted in :class:`SVDServeError`; where a standard-library type
is what a caller would naturally catch, the class subclasses it too::

    SVDServeError
    ├── TransportError (ConnectionError)     the service could not be reached (after retries)
    ├── StorageAccessError (OSError)         a result or upload URL could not be read or written
    ├── InputFileError (ValueError)          a local file is missing or not a readable matrix
    ├── MissingValuesError (ValueError)      a field to project has NaN at unmasked points (.points)
    ├── APIError                             the service answered with an error status
    │   │                                    .type .status_code .request_id .problem .request .response
    │   ├── InvalidRequest (ValueError)      400, 422  (.errors lists the fields at fault)
    │   ├── Unauthorized                     401  missing or wrong bearer token
    │   ├── Forbidden (PermissionError)      403  source outside the data roots
    │   ├── NotFound (LookupError)           404  no such job (or another tenant's), missing source
    │   ├── Conflict                         409  wrong state for the operation, key in flight
    │   ├── PayloadTooLarge                  413
    │   ├── RateLimited                      429  queue full (.retry_after)
    │   ├── ServiceUnavailable               503  not ready (.retry_after)
    │   └── ServerError                      other 5xx
    ├── JobError                             .job (the last job JSON seen)
    │   ├── JobFailed                        the job ended in state "failed" (.type)
    │   └── JobCancelled                     the job ended in state "cancelled"
    └── Timeout (TimeoutError)               waiting for a job took longer than asked

Messages quote the server's problem ``detail`` (and the fields at fault for
validation errors), so ``str(err)`` is a sentence a person can act on.

The kind of an error is its ``.type``, as in the service's contract: for an
:class:`APIError` the last segment of the problem ``type`` URI (``"not-found"``),
for a :class:`JobFailed` the job's ``error.type`` (``"non_finite_values"``, the
``.type`` of the worker's errors).
"""

from __future__ import annotations

import email.utils
import warnings
from datetime import datetime, timezone
from typing import Any

import httpx

__all__ = [
    "SVDServeError",
    "TransportError",
    "StorageAccessError",
    "InputFileError",
    "APIError",
    "InvalidRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "RateLimited",
    "ServiceUnavailable",
    "ServerError",
    "JobError",
    "JobFailed",
    "JobCancelled",
    "Timeout",
]


class SVDServeError(Exception):
    """Base of every error raised by :mod:`svdserve.client`."""


class TransportError(SVDServeError, ConnectionError):
    """The service could not be reached, or the connection broke, after all retries.

    Attributes
    ----------
    request : httpx.Request or None
        The request that failed.
    """

    def __init__(self, message: str, *, request: httpx.Request | None = None):
        super().__init__(message)
        self.request = request


class StorageAccessError(SVDServeError, OSError):
    """A result store or an upload target could not be read or written.

    Raised, for example, when a result group has no ``manifest.json`` (it is
    incomplete and must not be read) or when ``result_access="direct"`` but
    the result URL is not reachable from this machine.
    """


class InputFileError(SVDServeError, ValueError):
    """A local input file is missing, of a format the client cannot read, or not a matrix.

    Raised by :func:`svdserve.client.read_matrix` (``svdserve upload``); the
    message names the file and, for an unknown format, lists the accepted ones.
    """


class MissingValuesError(SVDServeError, ValueError):
    """A field given to :func:`svdserve.client.project_field` has NaN at points the
    result does not mask.

    ``.points`` is an ndarray of their flat feature indices; the message names
    the first ones by their coordinates.
    """

    def __init__(self, message: str, *, points=None):
        super().__init__(message)
        self.points = points


class APIError(SVDServeError):
    """The service answered with an error status (an RFC 9457 problem).

    Attributes
    ----------
    status_code : int
        HTTP status of the answer.
    request_id : str or None
        The ``X-Request-ID`` of the answer (quote it when reporting a bug).
    problem : dict
        The decoded ``application/problem+json`` body (``type``, ``title``,
        ``status``, ``detail``, ``instance``, ``request_id``, ``errors``), or
        ``{"detail": <body text>}`` when the body was not JSON.
    request, response : httpx.Request, httpx.Response
        The exchange that produced the error.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        request_id: str | None = None,
        problem: dict[str, Any] | None = None,
        request: httpx.Request | None = None,
        response: httpx.Response | None = None,
    ):
        super().__init__(message)
        self.status_code = status_code
        self.request_id = request_id
        self.problem = dict(problem or {})
        self.request = request
        self.response = response

    @property
    def detail(self) -> str | None:
        """The server's ``detail`` sentence, if any."""
        return self.problem.get("detail")

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Per-field validation errors (``[{"field": ..., "message": ...}]``)."""
        return list(self.problem.get("errors") or [])

    @property
    def type(self) -> str | None:
        """The kind of problem: last segment of the problem ``type`` URI (``"not-found"``)."""
        t = self.problem.get("type")
        return t.rstrip("/").rsplit("/", 1)[-1] if isinstance(t, str) else None


class InvalidRequest(APIError, ValueError):
    """400 / 422: a parameter is invalid; :attr:`errors` names the fields."""


class Unauthorized(APIError):
    """401: the bearer token is missing or not known to the service."""


class Forbidden(APIError, PermissionError):
    """403: the source lies outside the service's data roots or buckets."""


class NotFound(APIError, LookupError):
    """404: no such job (for this tenant), or the source does not exist."""


class Conflict(APIError):
    """409: the job is in the wrong state for the operation, or an idempotency key is in flight."""


class PayloadTooLarge(APIError):
    """413: the request body is too large."""


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, or None if absent/invalid.

    Accepts both forms of RFC 9110 section 10.2.3: a number of seconds
    (``"3"``, also ``"1.5"``) and an HTTP date (never negative).
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


class _RetryAfterMixin:
    @property
    def retry_after(self) -> float | None:
        """Seconds the service asked us to wait (``Retry-After``), if it said."""
        resp = getattr(self, "response", None)
        return parse_retry_after(resp.headers.get("Retry-After")) if resp is not None else None


class RateLimited(_RetryAfterMixin, APIError):
    """429: the job queue is full; retry after :attr:`retry_after` seconds."""


class ServiceUnavailable(_RetryAfterMixin, APIError):
    """503: the service (or its Dask cluster) is not ready."""


class ServerError(APIError):
    """Any other 5xx answer: a bug or an outage on the service side."""


_STATUS_TO_ERROR: dict[int, type[APIError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_class_for_status(status_code: int) -> type[APIError]:
    """The :class:`APIError` subclass raised for an HTTP status."""
    if status_code in _STATUS_TO_ERROR:
        return _STATUS_TO_ERROR[status_code]
    if status_code >= 500:
        return ServerError
    return APIError


class JobError(SVDServeError):
    """A job ended without a result.

    Attributes
    ----------
    job : dict
        The job JSON (``JobPublic``) as last seen.
    job_id : str
        The job's id.
    """

    def __init__(self, message: str, *, job: dict[str, Any]):
        super().__init__(message)
        self.job = job
        self.job_id = job.get("id")


class JobFailed(JobError):
    """The job ended in state ``failed``.

    Attributes
    ----------
    type : str
        The job's ``error.type``: ``invalid_input``, ``non_finite_values``,
        ``storage_error``, ``worker_lost``, ``cancelled`` or ``internal``.
    """

    def __init__(self, message: str, *, job: dict[str, Any]):
        super().__init__(message, job=job)
        self.type = (job.get("error") or {}).get("type", "internal")

    @property
    def error_type(self) -> str:
        """Deprecated alias of :attr:`type` (its earlier name); warns."""
        warnings.warn("JobFailed.error_type is deprecated; use JobFailed.type",
                      DeprecationWarning, stacklevel=2)
        return self.type


class JobCancelled(JobError):
    """The job ended in state ``cancelled``."""


class Timeout(SVDServeError, TimeoutError):
    """Waiting for a job took longer than the ``timeout`` asked for.

    The job itself keeps running; wait again or cancel it.

    Attributes
    ----------
    job : dict or None
        The job JSON as last seen.
    """

    def __init__(self, message: str, *, job: dict[str, Any] | None = None):
        super().__init__(message)
        self.job = job
