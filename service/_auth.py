"""Bearer-token authentication: a token maps to a tenant.

With no tokens configured every caller is the tenant ``"default"``. With
tokens configured, every route except ``/v1/health`` (and the OpenAPI
documents) needs ``Authorization: Bearer <token>``; a missing or unknown
token is a 401 problem. Tokens are compared in constant time, and every
configured token is compared so the time does not depend on which matched.

``GET /metrics`` shows every tenant's activity, so it is an operator
endpoint (:func:`operator_access`): with any token configured it needs the
metrics token (``SVDSERVE_METRICS_TOKEN``); a tenant's token is a 403.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ._problems import ProblemError

__all__ = ["TokenAuth", "Tenant", "current_tenant", "DEFAULT_TENANT", "Operator",
           "operator_access"]

DEFAULT_TENANT = "default"

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


async def current_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """FastAPI dependency: the caller's tenant, or a 401 problem."""
    auth: TokenAuth = request.app.state.auth
    if not auth.enabled:
        return DEFAULT_TENANT
    token = credentials.credentials if credentials is not None else None
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
