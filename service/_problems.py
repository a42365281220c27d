"""RFC 9457 problem details for every error response.

Every 4xx/5xx leaves as ``application/problem+json``::

    {"type": "https://svdserve.dev/problems/<code>", "title": ..., "status": ...,
     "detail": ..., "instance": "/v1/jobs", "request_id": "...",
     "errors": [{"field": "body.rank", "message": "..."}]}   # validation only

:class:`ProblemError` is raised by the routes; request validation errors,
Starlette's HTTP errors and unexpected exceptions are converted by the
handlers installed with :func:`install`.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ._errors import ServiceError

__all__ = ["ProblemError", "problem_response", "install", "PROBLEM_BASE", "request_id_of",
           "openapi_problems"]

log = logging.getLogger("svdserve.service")

PROBLEM_BASE = "https://svdserve.dev/problems/"
MEDIA_TYPE = "application/problem+json"

_CODES = {400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found",
          405: "method-not-allowed", 406: "not-acceptable", 409: "conflict",
          413: "content-too-large", 415: "unsupported-media-type",
          422: "validation-error", 429: "too-many-requests", 500: "internal",
          503: "unavailable"}


class ProblemError(ServiceError):
    """An error answered as problem details.

    Parameters
    ----------
    status : int
    detail : str
        A sentence a person can act on.
    errors : list of dict, optional
        ``{"field", "message"}`` items naming the inputs at fault.
    headers : dict, optional
    extra : dict, optional
        Extension members added to the body.
    """

    def __init__(self, status: int, detail: str, *, errors: list[dict] | None = None,
                 headers: dict | None = None, extra: dict | None = None):
        super().__init__(detail)
        self.status, self.detail = status, detail
        self.errors, self.headers, self.extra = errors, headers, extra


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", None) or request.scope.get(
        "svdserve.request_id", "")


def problem_body(status: int, detail: str, *, instance: str, request_id: str,
                 errors: list[dict] | None = None, extra: dict | None = None) -> dict:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + _CODES.get(status, str(status)),
        "title": phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
        "request_id": request_id,
    }
    if errors is not None:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return body


def problem_response(request: Request, status: int, detail: str, **kw: Any) -> JSONResponse:
    headers = kw.pop("headers", None) or {}
    rid = request_id_of(request)
    body = problem_body(status, detail, instance=request.url.path, request_id=rid, **kw)
    headers = {**headers, "X-Request-ID": rid}
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def _field(loc: tuple | list) -> str:
    return ".".join(str(part) for part in loc) or "body"


def _validation_errors(exc: RequestValidationError) -> list[dict]:
    items = []
    for err in exc.errors():
        loc = list(err.get("loc", ()))
        msg = err.get("msg", "invalid value")
        if err.get("type") == "missing":
            msg = "Field required"
        elif err.get("type") == "extra_forbidden":
            msg = "Unknown field; remove it (see the JobCreate schema at /docs)"
        elif err.get("type") == "json_invalid":
            loc = ["body"]
            msg = f"Body is not valid JSON: {err.get('ctx', {}).get('error', msg)}"
        elif err.get("type") == "string_pattern_mismatch" and loc and loc[-1] in ("url",
                                                                                   "array"):
            msg = "must be a path or URL without control characters, not blank"
        elif err.get("type") == "string_pattern_mismatch" and loc[:2] == ["query", "cursor"]:
            msg = "pass back the next_cursor of a previous page"
        elif err.get("type") == "value_error":
            msg = msg.removeprefix("Value error, ")
        items.append({"field": _field(loc), "message": msg})
    return items


async def _on_problem(request: Request, exc: ProblemError) -> JSONResponse:
    return problem_response(request, exc.status, exc.detail, errors=exc.errors,
                            headers=exc.headers, extra=exc.extra)


async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = _validation_errors(exc)
    fields = ", ".join(e["field"] for e in errors)
    return problem_response(request, 422, f"The request is not valid: check {fields}.",
                            errors=errors)


async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route for {request.method} {request.url.path}"
    headers = dict(exc.headers or {})
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        # FastAPI's answer to a body that is not UTF-8 / JSON at all: the same
        # 422 as any other malformed JSON body.
        message = "Body is not valid JSON (UTF-8 encoded)"
        return problem_response(request, 422, message,
                                errors=[{"field": "body", "message": message}])
    if exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
        allowed = _allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
    return problem_response(request, exc.status_code, detail, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts for this path (FastAPI has one route per method).

    ``app.state.method_table`` holds ``(path regex, methods)`` of every route.
    """
    table = getattr(request.app.state, "method_table", ())
    methods: set[str] = set()
    for regex, route_methods in table:
        if regex.match(request.url.path):
            methods |= set(route_methods)
    return sorted(methods)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s (request %s)", request.method, request.url.path,
                  request_id_of(request))
    return problem_response(
        request, 500, "The service failed unexpectedly; quote the request_id when reporting it.")


def install(app: FastAPI) -> None:
    """Register the problem handlers on ``app``."""
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_unexpected)


def openapi_problems(descriptions: dict[int, str], *codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for problem answers (RFC 9457) of these status codes,
    each described by ``descriptions[code]``."""
    ref = {"$ref": "#/components/schemas/Problem"}
    return {code: {"description": descriptions[code],
                   "content": {"application/problem+json": {"schema": ref}}}
            for code in codes}
