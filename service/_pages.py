"""Web pages served by the service: the tenant's jobs (``/``) and one job (``/jobs/{id}``).

Every asset is local: the pages' script and style sheet are package data
(``service/static/``, served at ``/static``), and the OpenAPI pages
``/docs`` and ``/redoc`` load Swagger UI and ReDoc from the pinned
``fastapi-offline`` package (``/static/apidocs``), so they render on a
machine without internet. The pages send a Content-Security-Policy that
allows their own origin only.

Auth is the API's: with tokens configured a page asks for a token once
(``GET``/``POST /login``; the token travels in the form body) and sets an
``HttpOnly`` session cookie (:mod:`._auth`) that the pages' script sends to
the JSON endpoints. A job of another tenant is 404 on the pages as in the
API. The list and the job page are HTML shells; ``static/pages.js`` fills
them from ``/v1/jobs`` (polling) and ``/v1/jobs/{id}`` (long-polling), and
``static/plots.js`` draws the energy report as SVG.
"""

from __future__ import annotations

import asyncio
import html
import importlib.util
import re
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

import svdserve

from ._auth import SESSION_COOKIE, SESSION_SECONDS, TokenAuth, page_tenant
from ._states import STATES
from ._store import ID_PATTERN, MIN_PREFIX, PREFIX_PATTERN

__all__ = ["pages_router", "install_pages", "dashboard_link"]

pages_router = APIRouter(include_in_schema=False)

_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_APIDOCS = "/static/apidocs"
#: /docs and /redoc: Swagger UI starts from an inline script, ReDoc styles inline and
#: runs a blob: worker; still nothing from another origin.
_DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' blob:; "
             "worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
             "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
             "frame-ancestors 'none'")
#: ReDoc's sidebar shows a logo from its CDN: served with our icon in its place.
_REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
_redoc_js: list[bytes] = []


def install_pages(app: FastAPI) -> None:
    """Add the pages, the static assets and the offline ``/docs`` and ``/redoc``.

    The app must be built with ``docs_url=None, redoc_url=None``.
    """
    app.include_router(pages_router)  # first: its /static/redoc.js goes before the mounts
    app.mount("/static/apidocs", StaticFiles(packages=[("fastapi_offline", "static")]),
              name="apidocs")
    app.mount("/static", StaticFiles(packages=[("svdserve.service", "static")]), name="static")


def dashboard_link(request: Request) -> str | None:
    """The Dask dashboard's address, if the cluster has one.

    ``SVDSERVE_DASHBOARD_LINK`` when set (an external scheduler whose
    dashboard the browser reaches at another address); else the embedded
    cluster's, when bokeh is installed (``make demo`` installs the
    ``dashboard`` extra).
    """
    services = getattr(request.app.state, "services", None)
    if services is None:
        return None
    if services.settings.dashboard_link:
        return services.settings.dashboard_link
    local = services.cluster.local
    if local is None or importlib.util.find_spec("bokeh") is None:
        return None
    try:
        return local.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard service: no link
        return None


# ---------------------------------------------------------------------- HTML
def _page(request: Request, title: str, main: str, *, page: str, tenant: str | None,
          job: str = "", status: int = 200) -> HTMLResponse:
    """One page: the header (links, tenant, log out), ``main`` and the scripts."""
    esc = html.escape
    auth: TokenAuth = request.app.state.auth
    dash = dashboard_link(request) if tenant is not None else None
    nav = ['<a href="/">Jobs</a>', '<a href="/docs">API docs</a>']
    if dash:
        nav.append(f'<a href="{esc(dash)}" id="dashboard" target="_blank" '
                   f'rel="noopener">Dask dashboard</a>')
    who = ""
    if tenant is not None and auth.enabled:
        who = (f'<span class="who">tenant <b>{esc(tenant)}</b></span><form method="post" '
               f'action="/logout"><button type="submit">Log out</button></form>')
    scripts = ('<script src="/static/plots.js" defer></script>'
               '<script src="/static/pages.js" defer></script>') if page in ("jobs", "job") else ""
    text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · svdserve</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/svdserve.css">{scripts}
</head><body data-page="{page}" data-job="{esc(job)}">
<header><a class="brand" href="/">svdserve</a><nav>{"".join(nav)}</nav>{who}</header>
<main>{main}</main>
<noscript><p>These pages need JavaScript; the JSON API is described at /docs.</p></noscript>
<footer class="small">svdserve {esc(svdserve.__version__)}</footer>
</body></html>"""
    return HTMLResponse(text, status_code=status, headers={
        "Content-Security-Policy": _CSP, "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"})


def _login_page(request: Request, next_path: str, notice: str = "",
                status: int = 401) -> HTMLResponse:
    esc = html.escape
    msg = f'<p class="notice" id="notice">{esc(notice)}</p>' if notice else ""
    main = f"""<section class="login"><h1>Log in</h1>
<p>This service needs a token (the one you give the client as <code>SVDSERVE_TOKEN</code>).
It is asked once and kept in a session cookie for 12 hours.</p>{msg}
<form method="post" action="/login"><label for="token">Token</label>
<input type="password" id="token" name="token" autocomplete="current-password" required autofocus>
<input type="hidden" name="next" value="{esc(next_path)}">
<button type="submit" id="login">Log in</button></form></section>"""
    return _page(request, "Log in", main, page="login", tenant=None, status=status)


def _not_found_page(request: Request, tenant: str, job_id: str) -> HTMLResponse:
    main = (f'<h1>No such job</h1><p>There is no job <code>{html.escape(job_id)}</code> '
            f'for tenant <b>{html.escape(tenant)}</b>. <a href="/">All jobs</a></p>')
    return _page(request, "No such job", main, page="missing", tenant=tenant, status=404)


#: A local path: one slash, then printable ASCII only (browsers drop tabs and
#: newlines from URLs, so "/\t/evil.example" would otherwise leave the site).
_LOCAL_PATH = re.compile(r"^/(?![/\\])[\x21-\x7e]*$")


def _safe_next(value: str | None) -> str:
    """A local path to go to after logging in (never another site)."""
    if not value or not _LOCAL_PATH.match(value) or "\\" in value:
        return "/"
    return value


def _tenant_or_login(request: Request) -> str | HTMLResponse:
    tenant = page_tenant(request)
    if tenant is None:
        return _login_page(request, request.url.path)
    return tenant


_LIST = """<h1>Jobs</h1>
<section class="toolbar"><div id="filters" role="group" aria-label="state">{buttons}</div>
<span id="status" class="small"></span></section>
<table id="jobs"><thead><tr><th>job</th><th>state</th><th>progress</th><th>method</th>
<th>shape</th><th>rank</th><th>submitted</th><th>elapsed</th></tr></thead>
<tbody id="jobs-body"></tbody></table>
<nav class="pager"><button id="newer" disabled>← newer</button>
<button id="older" disabled>older →</button></nav>"""

_JOB = """<h1>Job <span class="mono" id="job-id">{job}</span> <span id="state" class="state"></span></h1>
<span id="status" class="small"></span>
<div class="actions"><button id="cancel" hidden>Cancel</button>
<button id="delete" class="danger" hidden>Delete</button></div>
<section id="error" hidden></section>
<div class="grid2"><section><h2>Summary</h2><div id="summary"></div></section>
<section><h2>Progress</h2><div id="progress"></div>
<h2>Plan</h2><div id="plan"></div></section></div>
<section id="notes-box" hidden><h2>Notes</h2><ul id="notes"></ul></section>
<section id="report-box" hidden><h2>Energy report</h2><div id="report-facts"></div>
<div id="plots"></div></section>
<section><h2>Links</h2><div id="links"></div></section>
<section><h2>Request</h2><pre id="request"></pre></section>"""


# ---------------------------------------------------------------------- routes
@pages_router.get("/", response_class=HTMLResponse)
async def jobs_page(request: Request) -> Response:
    """The tenant's jobs, newest first, updated live."""
    tenant = _tenant_or_login(request)
    if isinstance(tenant, Response):
        return tenant
    buttons = '<button data-state="" aria-pressed="true">all</button>' + "".join(
        f'<button data-state="{s}" aria-pressed="false">{s}</button>' for s in STATES)
    return _page(request, "Jobs", _LIST.format(buttons=buttons), page="jobs", tenant=tenant)


@pages_router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(request: Request, job_id: str) -> Response:
    """One job: progress, plan, notes, error, request, links and the report's plots."""
    tenant = _tenant_or_login(request)
    if isinstance(tenant, Response):
        return tenant
    store = request.app.state.services.store
    row = store.get_cached(job_id) if ID_PATTERN.match(job_id) else None
    if row is None and ID_PATTERN.match(job_id):
        row = await asyncio.to_thread(store.get, job_id)
    elif row is None and len(job_id) >= MIN_PREFIX and PREFIX_PATTERN.match(job_id):
        # the short id the list and the CLI show: the one job of this tenant it names
        ids = await asyncio.to_thread(store.find_prefix, job_id, tenant, limit=2)
        if len(ids) == 1:
            return RedirectResponse(f"/jobs/{ids[0]}", status_code=303)
    if row is None or row.tenant != tenant:
        return _not_found_page(request, tenant, job_id)
    return _page(request, f"Job {job_id[:8]}", _JOB.format(job=job_id), page="job",
                 tenant=tenant, job=job_id)


@pages_router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/") -> Response:  # noqa: A002 - query name
    if page_tenant(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_page(request, _safe_next(next), status=200)


@pages_router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Check the token of the form and set the session cookie (the token stays out of URLs)."""
    try:
        form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=4)
    except ValueError:  # more fields than the page's form has
        return _login_page(request, "/", "The log-in form takes a token (and the page to "
                                         "go to next); send only those fields.", status=400)
    token = (form.get("token") or [""])[0].strip()
    next_path = _safe_next((form.get("next") or ["/"])[0])
    auth: TokenAuth = request.app.state.auth
    if not auth.enabled:
        return RedirectResponse(next_path, status_code=303)
    tenant = auth.tenant_for(token)
    if tenant is None:
        return _login_page(request, next_path, "That token is not valid: check it and try "
                                               "again.")
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(SESSION_COOKIE, auth.session_for(tenant), max_age=SESSION_SECONDS,
                        httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


@pages_router.post("/logout")
async def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@pages_router.get("/docs", response_class=HTMLResponse)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI, its assets served from this service."""
    return _docs_csp(get_swagger_ui_html(
        openapi_url=request.app.openapi_url, title="svdserve - Swagger UI",
        oauth2_redirect_url="/docs/oauth2-redirect",
        swagger_js_url=f"{_APIDOCS}/swagger-ui-bundle.js",
        swagger_css_url=f"{_APIDOCS}/swagger-ui.css",
        swagger_favicon_url="/static/favicon.svg",
        swagger_ui_parameters={"validatorUrl": None}))


@pages_router.get("/docs/oauth2-redirect", response_class=HTMLResponse)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@pages_router.get("/redoc", response_class=HTMLResponse)
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc, its script served from this service, no web fonts."""
    return _docs_csp(get_redoc_html(
        openapi_url=request.app.openapi_url, title="svdserve - ReDoc",
        redoc_js_url="/static/redoc.js", redoc_favicon_url="/static/favicon.svg",
        with_google_fonts=False))


@pages_router.get("/static/redoc.js")
async def redoc_js() -> Response:
    """``fastapi_offline``'s ReDoc bundle with the CDN logo replaced by a local icon."""
    if not _redoc_js:
        from importlib.resources import files

        data = (files("fastapi_offline") / "static" / "redoc.standalone.js").read_bytes()
        _redoc_js.append(data.replace(_REDOC_LOGO, b"/static/favicon.svg"))
    return Response(_redoc_js[0], media_type="text/javascript",
                    headers={"Cache-Control": "public, max-age=3600"})


def _docs_csp(response: HTMLResponse) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = _DOCS_CSP
    return response
