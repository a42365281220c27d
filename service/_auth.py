"""Bearer-token authentication: a token maps to a tenant.

With no tokens configured every caller is the tenant ``"default"``. With
tokens configured, every route except ``/v1/health`` (and the OpenAPI
documents) needs ``Authorization: Bearer <token>``; a missing or unknown
token is a 401 problem. Tokens are compared in constant time, and every
configured token is compared so the time does not depend on which matched.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ._problems import ProblemError

__all__ = ["TokenAuth", "Tenant", "current_tenant", "DEFAULT_TENANT"]

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
    """

    def __init__(self, pairs: list[tuple[str, str]]):
        # Compare fixed-length digests: compare_digest is constant-time only
        # for inputs of equal length.
        self._entries = [(_digest(token), tenant) for tenant, token in pairs]

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
