"""Bearer-token authentication: a token maps to a tenant.

With no tokens configured every caller is the tenant ``"default"``. With
tokens configured, every route except ``/v1/health`` (and the OpenAPI
documents) needs ``Authorization: Bearer <token>``; a missing or unknown
token is a 401 problem. Tokens are compared in constant time, and every
configured token is compared so the time does not depend on which matched.

``GET /metrics`` shows every tenant's activity, so it is an operator
endpoint (:func:`operator_access`): with any token configured it needs the
metrics token (``SVDSERVE_METRICS_TOKEN``); a tenant's token is a 403.

The web pages (:mod:`._pages`) log in once with a token (``POST /login``,
the token in the form body, never in a URL) and get a session cookie
(``HttpOnly``, ``SameSite=Strict``): ``tenant.expiry.signature``, signed with
HMAC-SHA256 under a key derived from the configured tokens, so it survives a
restart and dies when the tokens change. The API accepts that cookie in
place of the header; a state-changing request (``POST``, ``DELETE``)
authenticated by the cookie alone must also carry ``X-Svdserve-Page: 1``, a
header a cross-site form cannot send.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ._problems import ProblemError

__all__ = ["TokenAuth", "Tenant", "current_tenant", "DEFAULT_TENANT", "SESSION_COOKIE",
           "PAGE_HEADER", "SESSION_SECONDS", "page_tenant", "Operator", "operator_access"]

DEFAULT_TENANT = "default"
#: Name of the pages' session cookie.
SESSION_COOKIE = "svdserve_session"
#: Header the pages' script sends with state-changing requests.
PAGE_HEADER = "x-svdserve-page"
#: Lifetime of a page session.
SESSION_SECONDS = 12 * 3600

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`; "
                                                  "needed when tokens are configured.")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenAuth:
    """Maps bearer tokens to tenants.

    Parameters
    ----------
    pairs : list of (tenant, token)
    metrics_token : str, optional
        The operator's token of ``GET /metrics``.
    """

    def __init__(self, pairs: list[tuple[str, str]], metrics_token: str | None = None):
        # Compare fixed-length digests: compare_digest is constant-time only
        # for inputs of equal length.
        self._entries = [(_digest(token), tenant) for tenant, token in pairs]
        self._metrics = None if not metrics_token else _digest(metrics_token)
        self._key = hashlib.sha256(b"svdserve-session\0" + b"".join(
            sorted(d + t.encode() for d, t in self._entries))).digest()

    @property
    def metrics_configured(self) -> bool:
        return self._metrics is not None

    def is_operator(self, token: str | None) -> bool:
        """True for the metrics token, or for anyone when no token is configured at all."""
        if self._metrics is None:
            return not self.enabled
        return bool(token) and hmac.compare_digest(_digest(token), self._metrics)

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def tenant_for(self, token: str | None) -> str | None:
        if not self.enabled:
            return DEFAULT_TENANT
        if not token:
            return None
        presented = _digest(token)
        found = None
        for digest, tenant in self._entries:
            if hmac.compare_digest(presented, digest) and found is None:
                found = tenant
        return found

    def _sign(self, tenant: str, expires: int) -> str:
        return hmac.new(self._key, f"{tenant}.{expires}".encode(), hashlib.sha256).hexdigest()

    def session_for(self, tenant: str, now: float | None = None) -> str:
        """A session cookie value for ``tenant`` (valid :data:`SESSION_SECONDS`)."""
        expires = int(now if now is not None else time.time()) + SESSION_SECONDS
        return f"{tenant}.{expires}.{self._sign(tenant, expires)}"

    def tenant_of_session(self, value: str | None, now: float | None = None) -> str | None:
        """The tenant a session cookie names, or None if it is forged, stale or absent."""
        if not self.enabled:
            return DEFAULT_TENANT
        tenant, _, rest = (value or "").rpartition(".")
        tenant, _, expires = tenant.rpartition(".")
        if not tenant or not expires.isdigit():
            return None
        if not hmac.compare_digest(self._sign(tenant, int(expires)), rest):
            return None
        if int(expires) < (now if now is not None else time.time()):
            return None
        if not any(t == tenant for _, t in self._entries):
            return None
        return tenant


def page_tenant(request: Request) -> str | None:
    """The tenant of the page session in ``request``'s cookie (None: log in first)."""
    auth: TokenAuth = request.app.state.auth
    return auth.tenant_of_session(request.cookies.get(SESSION_COOKIE))


async def current_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """FastAPI dependency: the caller's tenant, or a 401 problem.

    The bearer token decides when it is sent; otherwise the pages' session
    cookie (with :data:`PAGE_HEADER` on a state-changing request).
    """
    auth: TokenAuth = request.app.state.auth
    if not auth.enabled:
        return DEFAULT_TENANT
    token = credentials.credentials if credentials is not None else None
    if token is None and SESSION_COOKIE in request.cookies:
        tenant = page_tenant(request)
        safe = request.method in ("GET", "HEAD") or request.headers.get(PAGE_HEADER) == "1"
        if tenant is not None and safe:
            return tenant
    tenant = auth.tenant_for(token)
    if tenant is None:
        raise ProblemError(
            401,
            "A valid bearer token is required: send `Authorization: Bearer <token>`."
            if token is None else "The bearer token is not valid.",
            headers={"WWW-Authenticate": 'Bearer realm="svdserve"'})
    return tenant


Tenant = Annotated[str, Depends(current_tenant)]


async def operator_access(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """FastAPI dependency of operator endpoints (``/metrics``): a 401 or 403 problem
    unless the caller presents the metrics token (or no token is configured at all)."""
    auth: TokenAuth = request.app.state.auth
    token = credentials.credentials if credentials is not None else None
    if auth.is_operator(token):
        return
    if token is None:
        raise ProblemError(
            401, "/metrics is an operator endpoint: send `Authorization: Bearer <the "
                 "SVDSERVE_METRICS_TOKEN>`.",
            headers={"WWW-Authenticate": 'Bearer realm="svdserve-metrics"'})
    raise ProblemError(
        403, "/metrics is an operator endpoint (it shows every tenant's jobs): a tenant's "
             "token is not accepted; scrape it with the token set in "
             "SVDSERVE_METRICS_TOKEN" + ("" if auth.metrics_configured else
                                         ", which this service does not have set"))


Operator = Annotated[None, Depends(operator_access)]
