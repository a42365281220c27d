"""The web pages without a browser: log-in, tenant scoping, local assets, offline API docs.

The in-process app (``service`` fixture: the real app on the session's real
Dask cluster, driven by Starlette's TestClient) serves the HTML; the browser
tests (``test_pages_browser.py``) check what a real Chromium does with it.
"""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "service" / "static"
TOKENS = "alice:token-alice-0123,bob:token-bob-4567"
ALICE = {"Authorization": "Bearer token-alice-0123"}
BOB = {"Authorization": "Bearer token-bob-4567"}
SMALL = {"source": {"url": "small.zarr"}, "rank": 2, "method": "exact"}


class _Refs(HTMLParser):
    """Every URL an HTML page makes the browser load or send to (src, href, action)."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "action") and value is not None:
                self.urls.append(value)


def refs(text: str) -> list[str]:
    parser = _Refs()
    parser.feed(text)
    return parser.urls + re.findall(r"url\(\s*['\"]?([^'\")]+)", text)


def login(c, token="token-alice-0123", next_path="/"):
    return c.post("/login", data={"token": token, "next": next_path}, follow_redirects=False)


def test_log_in_once_with_an_http_only_cookie(service):
    with service(tokens=TOKENS) as c:
        page = c.get("/")
        assert page.status_code == 401 and 'name="token"' in page.text
        assert 'method="post"' in page.text  # the token goes in the body, never the URL
        bad = login(c, token="wrong")
        assert bad.status_code == 401 and "not valid" in bad.text
        assert "svdserve_session" not in c.cookies
        ok = login(c, next_path="/jobs/0123456789abcdef0123456789abcdef")
        assert ok.status_code == 303
        assert ok.headers["location"] == "/jobs/0123456789abcdef0123456789abcdef"
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert "token-alice" not in cookie  # a signed session, not the token
        assert c.get("/").status_code == 200
        # an open redirect is refused: only local paths
        for evil in ("//evil.example/x", "/\t/evil.example", "/\\evil.example",
                     "https://evil.example/", "javascript:alert(1)"):
            assert login(c, next_path=evil).headers["location"] == "/", evil
        assert c.get("/v1/jobs").status_code == 200  # the cookie works on the API for reads
        c.post("/logout", follow_redirects=False)
        assert c.get("/").status_code == 401


def test_a_log_in_form_with_too_many_fields_is_a_400_page(service):
    with service(tokens=TOKENS) as c:
        body = "&".join(f"f{i}=x" for i in range(10)) + "&token=token-alice-0123"
        r = c.post("/login", content=body, follow_redirects=False,
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 400 and "send only those fields" in r.text
        assert "svdserve_session" not in c.cookies


def test_a_forged_or_stale_session_is_refused():
    from svdserve.service._auth import SESSION_SECONDS, TokenAuth

    auth = TokenAuth([("alice", "token-a"), ("bob", "token-b")])
    value = auth.session_for("alice", now=1000.0)
    assert auth.tenant_of_session(value, now=1000.0 + SESSION_SECONDS - 1) == "alice"
    assert auth.tenant_of_session(value, now=1000.0 + SESSION_SECONDS + 1) is None
    tenant, expires, sig = value.split(".")
    assert auth.tenant_of_session(f"bob.{expires}.{sig}", now=1000.0) is None
    assert auth.tenant_of_session(f"alice.{int(expires) + 10**6}.{sig}", now=1000.0) is None
    # other tokens, other key: a session does not survive a change of tokens
    assert TokenAuth([("alice", "other")]).tenant_of_session(value, now=1000.0) is None
    assert auth.tenant_of_session("", now=1000.0) is None
    assert auth.tenant_of_session("a.b.c.d", now=1000.0) is None


def test_the_cookie_alone_cannot_change_state_without_the_page_header(service):
    with service(tokens=TOKENS) as c:
        job = c.post("/v1/jobs", json=SMALL, headers=ALICE).json()["id"]
        login(c)
        page = {"X-Svdserve-Page": "1"}
        # a cross-site form could send the cookie, not this header: 401
        for method in ("post", "delete"):
            path = f"/v1/jobs/{job}" + ("/cancel" if method == "post" else "")
            assert getattr(c, method)(path).status_code == 401
        assert c.post("/v1/jobs", json=SMALL).status_code == 401
        assert c.post("/v1/jobs", json=SMALL, headers=page).status_code == 202
        # with the header the cookie acts for its tenant (409: the job may have finished)
        assert c.post(f"/v1/jobs/{job}/cancel", headers=page).status_code in (202, 409)


def test_another_tenants_job_page_is_404(service, wait):
    with service(tokens=TOKENS) as c:
        mine = c.post("/v1/jobs", json=SMALL, headers=ALICE).json()["id"]
        theirs = c.post("/v1/jobs", json=SMALL, headers=BOB).json()["id"]
        wait(c, theirs, headers=BOB)
        assert c.get(f"/jobs/{mine}").status_code == 401  # not logged in: the log-in form
        login(c)
        assert c.get(f"/jobs/{mine}").status_code == 200
        for other in (theirs, theirs[:8], "0" * 32, "not-an-id"):
            r = c.get(f"/jobs/{other}")
            assert r.status_code == 404 and "No such job" in r.text
        assert c.get(f"/v1/jobs/{theirs}").status_code == 404
        # the short id the list and the CLI show leads to the page of the job it names
        r = c.get(f"/jobs/{mine[:8]}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == f"/jobs/{mine}"
        assert c.get(f"/jobs/{mine[:5]}").status_code == 404  # too short to name a job


@pytest.mark.parametrize("tokens", [None, TOKENS])
def test_no_page_refers_to_another_host(service, wait, tokens):
    with service(**({"tokens": tokens} if tokens else {})) as c:
        headers = ALICE if tokens else {}
        job = c.post("/v1/jobs", json=SMALL, headers=headers).json()["id"]
        wait(c, job, headers=headers)
        if tokens:
            assert c.get("/login").status_code == 200
            login(c)
        for path in ("/", f"/jobs/{job}", "/docs", "/redoc", "/login"):
            page = c.get(path, follow_redirects=True)
            assert page.status_code == 200, path
            urls = refs(page.text)
            assert urls, path
            for url in urls:
                parts = urlsplit(url)
                assert not parts.scheme and not parts.netloc, f"{path} refers to {url!r}"
                if url.startswith("/static/"):
                    assert c.get(url).status_code == 200, url
        # the pages' own assets name no host either (the SVG namespace is a name, not a load)
        for asset in STATIC.iterdir():
            text = asset.read_text()
            hosts = set(re.findall(r"https?://([^/\s\"']+)", text)) - {"www.w3.org"}
            assert not hosts, f"{asset.name} refers to {hosts}"


def test_the_dask_dashboard_is_linked_when_the_cluster_has_one(service):
    link = "http://127.0.0.1:8787/status"
    with service(dashboard_link=link) as c:
        assert f'href="{link}" id="dashboard"' in c.get("/").text
    with service() as c:  # an external scheduler and no link configured: none shown
        assert 'id="dashboard"' not in c.get("/").text


def test_pages_send_a_same_origin_content_security_policy(service):
    with service() as c:
        csp = c.get("/").headers["content-security-policy"]
        assert "default-src 'self'" in csp and "connect-src 'self'" in csp
        for path in ("/docs", "/redoc"):
            assert "img-src 'self' data:" in c.get(path).headers["content-security-policy"]
        # ReDoc's bundle is served with its CDN logo replaced by a local icon
        redoc = c.get("/static/redoc.js")
        assert redoc.status_code == 200 and len(redoc.content) > 500_000
        assert b"cdn.redoc.ly" not in redoc.content


def test_static_assets_are_package_data():
    """Every file the pages load is in the wheel: pyproject's package-data covers it."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["svdserve.service"]
    files = [p.name for p in STATIC.iterdir()]
    assert {"pages.js", "plots.js", "svdserve.css", "favicon.svg"} <= set(files)
    for name in files:
        assert any(fnmatch(f"static/{name}", pat) for pat in patterns), name
    from importlib.resources import files as package_files

    installed = package_files("svdserve.service") / "static"
    assert {p.name for p in installed.iterdir()} >= set(files)
