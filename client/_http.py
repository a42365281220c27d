"""HTTP transport of the client: one place for auth, user agent, retries and error mapping.

Retries (with exponential backoff and jitter) happen on

- connection errors (the request never reached the service) -- always;
- broken connections and read timeouts -- for requests that are safe to repeat
  (``GET``, ``DELETE``, a cancel, and a submit, which always carries an
  ``Idempotency-Key`` so that the service answers a repeat with the same job);
- ``429 Too Many Requests`` and ``502/503/504`` -- honouring ``Retry-After``
  (seconds or an HTTP date) when the service sends it.

Anything else that is not 2xx becomes an :class:`~svdserve.client.APIError`
subclass chosen by status code, carrying the RFC 9457 problem body.
"""

from __future__ import annotations

import platform
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from ._errors import APIError, TransportError, error_class_for_status, parse_retry_after

# parse_retry_after lives with the errors that use it (RateLimited.retry_after); named here too.
__all__ = ["HTTPTransport", "parse_retry_after", "DEFAULT_TIMEOUT", "RETRY_STATUSES"]

#: Seconds for connect/read/write/pool unless the caller says otherwise.
DEFAULT_TIMEOUT = 30.0
#: Statuses answered by an overloaded or restarting service (or a proxy in front of it).
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Errors raised before the request left this machine: always safe to retry.
_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _user_agent() -> str:
    from svdserve import __version__

    return (
        f"svdserve-client/{__version__} httpx/{httpx.__version__} "
        f"python/{platform.python_version()}"
    )


def _problem_of(response: httpx.Response) -> dict[str, Any]:
    """The decoded problem body, or ``{"detail": text}`` when it is not JSON."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        return body
    text = response.text.strip() if response.content else ""
    return {"detail": text[:500] or response.reason_phrase or f"HTTP {response.status_code}"}


def error_from_response(response: httpx.Response) -> APIError:
    """Build the typed :class:`APIError` for an error response."""
    problem = _problem_of(response)
    status = response.status_code
    request_id = response.headers.get("X-Request-ID") or problem.get("request_id")
    title = problem.get("title") or response.reason_phrase or "Error"
    detail = problem.get("detail")
    message = f"{status} {title}"
    if detail and detail != title:
        message += f": {detail}"
    # Each field once: its message only when the detail does not already say it.
    fields = [
        str(e.get("field", "?")) if e.get("message") and str(e["message"]) in str(detail or "")
        else f"{e.get('field', '?')}: {e.get('message', '')}".strip()
        for e in problem.get("errors") or []
        if isinstance(e, Mapping)
    ]
    if fields:
        message += " (" + "; ".join(fields) + ")"
    if request_id:
        message += f" [request_id={request_id}]"
    cls = error_class_for_status(status)
    try:
        request = response.request
    except RuntimeError:  # a bare httpx.Response built without a request
        request = None
    return cls(
        message,
        status_code=status,
        request_id=request_id,
        problem=problem,
        request=request,
        response=response,
    )


class HTTPTransport:
    """Send requests to one svdserve service, with auth, retries and typed errors.

    Parameters
    ----------
    base_url : str
        The service root, e.g. ``"http://localhost:8000"``.
    token : str or None, default=None
        Bearer token sent as ``Authorization: Bearer <token>``.
    timeout : float or httpx.Timeout, default=30.0
        Default timeout of a request; a long-poll adds its wait to it.
    max_retries : int, default=3
        Retries after the first attempt (so at most ``max_retries + 1`` sends).
    backoff_factor : float, default=0.5
        Delay before retry ``i`` (0-based) is ``backoff_factor * 2**i`` seconds,
        capped at ``backoff_max``, with up to 50 % jitter taken off.
    backoff_max : float, default=30.0
        Longest delay computed by backoff.
    max_retry_after : float, default=60.0
        Longest ``Retry-After`` honoured; a longer one is cut to this.
    http_client : httpx.Client or None, default=None
        Client to send with (e.g. one with an ``httpx.MockTransport`` in
        tests, or proxies). It is not closed by :meth:`close`.
    sleep : callable, default=time.sleep
        Used between retries (tests inject a recorder).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        backoff_factor: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 60.0,
        http_client: httpx.Client | None = None,
        user_agent: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
        self.base_url = str(base_url).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"base_url must start with http:// or https://, got {base_url!r}"
            )
        self.token = token
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.max_retries = int(max_retries)
        self.backoff_factor = float(backoff_factor)
        self.backoff_max = float(backoff_max)
        self.max_retry_after = float(max_retry_after)
        self._sleep = sleep
        self._owns_client = http_client is None
        self._client = http_client if http_client is not None else httpx.Client(timeout=self.timeout)
        self.user_agent = user_agent or _user_agent()

    # -- helpers -------------------------------------------------------------------------

    @property
    def auth_headers(self) -> dict[str, str]:
        """``{"Authorization": "Bearer ..."}`` or ``{}``; also used for HTTP result access."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def url(self, path: str) -> str:
        """Absolute URL of an API path (``"/v1/jobs"``)."""
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url + "/" + path.lstrip("/")

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (0-based)."""
        delay = min(self.backoff_max, self.backoff_factor * (2.0**attempt))
        return delay * (0.5 + 0.5 * random.random())

    def _retry_delay(self, response: httpx.Response, attempt: int) -> float:
        after = parse_retry_after(response.headers.get("Retry-After"))
        if after is None:
            return self.backoff(attempt)
        return min(after, self.max_retry_after)

    # -- the one entry point -------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
        idempotent: bool | None = None,
        content: bytes | list | None = None,
    ) -> httpx.Response:
        """Send a request; retry what is safe to retry; return a 2xx response or raise.

        Parameters
        ----------
        idempotent : bool or None, default=None
            Whether repeating the request after a broken connection is safe.
            None means: yes for GET/HEAD/PUT/DELETE/OPTIONS, and for a POST
            that carries an ``Idempotency-Key``.
        content : bytes, list of bytes-like or None, default=None
            A raw body (an upload's block) instead of ``json``; a list is sent
            as its parts in turn (give ``Content-Length``).

        Raises
        ------
        APIError
            (a subclass chosen by status) for a non-2xx answer after retries.
        TransportError
            when the service cannot be reached after retries.
        """
        method = method.upper()
        all_headers = {"User-Agent": self.user_agent, "Accept": "application/json"}
        all_headers.update(self.auth_headers)
        all_headers.update(headers or {})
        if idempotent is None:
            idempotent = method in {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"} or any(
                k.lower() == "idempotency-key" for k in all_headers
            )
        url = self.url(path)
        if timeout is None:
            timeout = self.timeout
        attempt = 0
        while True:
            try:
                response = self._client.request(
                    method, url, params=params, json=json, headers=all_headers, timeout=timeout,
                    content=content,
                )
            except httpx.TransportError as exc:
                retryable = isinstance(exc, _CONNECT_ERRORS) or idempotent
                if retryable and attempt < self.max_retries:
                    self._sleep(self.backoff(attempt))
                    attempt += 1
                    continue
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise TransportError(
                    f"could not reach the svdserve service at {self.base_url}{tries}: "
                    f"{type(exc).__name__}: {exc or 'no detail'} "
                    "(is it running? check the URL, or set SVDSERVE_URL)",
                    request=getattr(exc, "_request", None),
                ) from exc
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                delay = self._retry_delay(response, attempt)
                response.close()
                self._sleep(delay)
                attempt += 1
                continue
            if response.is_error:
                response.read()
                raise error_from_response(response)
            return response

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def close(self) -> None:
        """Close the underlying httpx client if this transport created it."""
        if self._owns_client:
            self._client.close()
