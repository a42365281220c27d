"""The pages in a real headless Chromium (Debian's chromium + chromium-driver, via Selenium).

One ``svdserve serve`` process (embedded cluster, tokens for two tenants)
and one browser session for the module; the tests run in file order and the
last one reads the network log the others left. ``.ci/run`` installs the
browser when it is missing; without it these tests skip, saying so.

``SVDSERVE_SCREENSHOTS=docs`` saves the README's screenshots there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from tests._server import follow_job, running_server, server_env, write_chunked
from tests.service._kit import low_rank, write

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium "
           "chromium-driver; .ci/run does it)")

TOKENS = {"alice": "tok-alice-7f3a9c", "bob": "tok-bob-51e2d8"}
#: The long job: 100 panels of 600 x 40 and 7 passes (randomized, n_iter=6), so
#: the list sees its progress move; every test cancels it once it has looked.
LONG_ROWS, LONG_CHUNK = 60_000, 600
LONG = {"source": {"url": "long.zarr"}, "rank": 5, "method": "randomized", "n_iter": 6}
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,900")
SHOTS = os.environ.get("SVDSERVE_SCREENSHOTS")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("pages")
    data, state = base / "data", base / "state"
    data.mkdir()
    state.mkdir()
    rng = np.random.default_rng(0)
    write_chunked(data / "long.zarr", lambda n: rng.standard_normal((n, 40)),
                  rows=LONG_ROWS, chunk=LONG_CHUNK, step=12_000)
    write(data / "small.zarr", low_rank(300, 40, 8, seed=3), chunks=(50, 40))
    bad = low_rank(200, 10, 3, seed=4)
    bad[150, 2] = np.nan
    write(data / "nan.zarr", bad, chunks=(100, 10))
    env = server_env(data, state, tokens=TOKENS, n_workers=1, worker_processes="false",
                     panel_bytes=LONG_CHUNK * 40 * 8, log_level="info")
    # running_server: it must also stop cleanly (exit 0 on SIGINT) at the end
    with running_server(env, token=TOKENS["alice"], log_path=base / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def api(server):
    clients = {t: httpx.Client(base_url=server.url, timeout=60,
                               headers={"Authorization": f"Bearer {k}"})
               for t, k in TOKENS.items()}
    yield clients
    for c in clients.values():
        c.close()


@pytest.fixture(scope="module")
def browser(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="svdserve-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # the driver is given: Selenium Manager (which would download one) never runs
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.svd_network = []  # every Network.* event of the module, for the last test
    try:
        driver.get(server.url + "/")  # not logged in: the log-in form, once
        driver.find_element(By.ID, "token").send_keys(TOKENS["alice"])
        driver.find_element(By.ID, "login").click()
        wait_for(driver, lambda d: d.current_url == server.url + "/")
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)


def network(driver) -> list[dict]:
    """Drain the performance log into ``driver.svd_network``; returns the new events."""
    new = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    new = [m for m in new if m["method"].startswith("Network.")]
    driver.svd_network.extend(new)
    return new


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def fraction(driver, job_id) -> float | None:
    """The job's progress bar in the list (read in one script: the rows are redrawn)."""
    value = driver.execute_script(
        "var b = document.querySelector(arguments[0]);"
        "return b ? b.getAttribute('data-fraction') : null;", f'tr[data-job="{job_id}"] .bar')
    return float(value) if value is not None else None


def rows(driver) -> list[str]:
    """The job ids the list shows, in order (read in one script: the rows are redrawn)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('tr.job')).map(r => r.dataset.job);")


def screenshot(driver, name, height=None):
    if SHOTS:
        if height:
            driver.set_window_size(1280, height)
        driver.execute_script("window.scrollTo(0, 0);")
        driver.save_screenshot(os.path.join(SHOTS, name))
        driver.set_window_size(1280, 900)


def test_cancel_from_the_job_page_cancels(server, api, browser):
    job = api["alice"].post("/v1/jobs", json=LONG).json()["id"]
    browser.get(f"{server.url}/jobs/{job}")
    button = wait_for(browser, lambda d: css(d, "#cancel:not([hidden])"))[0]
    button.click()
    wait_for(browser, lambda d: css(d, "#state")[0].text == "cancelled")
    assert api["alice"].get(f"/v1/jobs/{job}").json()["state"] == "cancelled"
    assert css(browser, "#delete:not([hidden])")  # a finished job can be deleted
    network(browser)


def expected_energy_rank(report, fraction):
    s = np.asarray(report["singular_values_all"] or report["singular_values"])
    cumulative = np.cumsum((s / report["frobenius_norm"]) ** 2)
    # cumulative fractions are right to ~1e-15 (README); 1e-12 absorbs that
    return int(np.argmax(cumulative >= fraction * (1 - 1e-12))) + 1


def test_a_succeeded_job_draws_the_scree_plot_with_k_and_the_90_percent_rank(
        server, api, browser):
    job = api["alice"].post("/v1/jobs", json={"source": {"url": "small.zarr"}, "rank": 6,
                                              "method": "exact"}).json()["id"]
    assert follow_job(api["alice"], job)[0]["state"] == "succeeded"
    report = api["alice"].get(f"/v1/jobs/{job}/report").json()
    network(browser)
    browser.get(f"{server.url}/jobs/{job}")
    wait_for(browser, lambda d: css(d, 'figure[data-chart="storage"]'))
    k_mark = css(browser, 'figure[data-chart="scree"] .m-k')[0]
    assert k_mark.get_attribute("data-x") == "6"
    # the exact method's whole spectrum is drawn: all 40 singular values
    paths = [p.get_attribute("data-points") for p in css(browser, 'figure[data-chart="scree"] path.series')]
    assert paths == ["40", "6"]
    # North's error bars on the 6 kept σ, the overlapping pairs named in the legend
    bars = css(browser, 'figure[data-chart="scree"] path.errbar')
    assert [b.get_attribute("data-points") for b in bars] == ["6"]
    scree_legend = css(browser, 'figure[data-chart="scree"] .legend')[0].text
    assert f"North's error bars (N = {report['north']['n_samples']})" in scree_legend
    r90 = expected_energy_rank(report, 0.9)
    mark90 = css(browser, 'figure[data-chart="energy"] .m-e0.v')[0]
    assert mark90.get_attribute("data-x") == str(r90)
    legend = css(browser, 'figure[data-chart="energy"] .legend')[0].text
    assert f"90 % at rank {r90}" in legend
    # hover shows the values at the nearest rank
    from selenium.webdriver.common.action_chains import ActionChains

    zone = css(browser, 'figure[data-chart="scree"] .zone')[0]
    ActionChains(browser).move_to_element(zone).perform()
    hover = css(browser, 'figure[data-chart="scree"] svg')[0].get_attribute("data-hover")
    assert hover and hover.startswith("rank ") and "σ = " in hover
    weight = page_weight(browser)
    print(f"\njob page transfer: {weight / 1024:.1f} KB")
    assert weight < 200 * 1024, f"the job page transferred {weight} bytes"
    screenshot(browser, "pages-job.png", height=2500)
    network(browser)


def page_weight(driver) -> int:
    """Bytes the page loaded: document, assets and API calls (the encoded body when a
    cached asset transferred less, so a warm cache does not hide weight)."""
    return int(driver.execute_script("""
        var total = 0;
        performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))
          .forEach(function (e) { total += Math.max(e.transferSize, e.encodedBodySize); });
        return total;"""))


def test_a_failed_job_shows_its_error(server, api, browser):
    job = api["alice"].post("/v1/jobs", json={"source": {"url": "nan.zarr"}, "rank": 2}
                            ).json()["id"]
    final = follow_job(api["alice"], job)[0]
    assert final["state"] == "failed"
    browser.get(f"{server.url}/jobs/{job}")
    box = wait_for(browser, lambda d: css(d, "#error:not([hidden]) .message"))[0]
    assert box.text == final["error"]["message"]
    assert "NaN or infinite" in css(browser, "#error .words")[0].text
    assert "non_finite_values" in css(browser, "#error")[0].text
    network(browser)


def test_the_list_updates_while_a_job_runs(server, api, browser):
    job = api["alice"].post("/v1/jobs", json=LONG).json()["id"]
    try:
        browser.get(server.url + "/")
        browser.execute_script("window.__notReloaded = true;")
        first = wait_for(browser, lambda d: (fraction(d, job) or 0) > 0 and fraction(d, job))
        later = wait_for(browser, lambda d: (fraction(d, job) or 0) > first and fraction(d, job))
        assert later > first
        assert browser.execute_script("return window.__notReloaded === true;")  # no reload
        row = browser.execute_script("return document.querySelector(arguments[0]).innerText;",
                                     f'tr[data-job="{job}"]')
        assert "pass" in row and "panels" in row and "randomized" in row
        assert "ETA" in row or "succeeded" in row
        screenshot(browser, "pages-list.png", height=600)
    finally:
        api["alice"].post(f"/v1/jobs/{job}/cancel")
        follow_job(api["alice"], job)
    network(browser)


def test_another_tenants_job_is_not_listed_and_its_page_is_404(server, api, browser):
    theirs = api["bob"].post("/v1/jobs", json={"source": {"url": "small.zarr"}, "rank": 2}
                             ).json()["id"]
    follow_job(api["bob"], theirs)
    mine = api["alice"].get("/v1/jobs").json()["items"]
    browser.get(server.url + "/")
    wait_for(browser, lambda d: len(css(d, "tr.job")) == len(mine))
    assert not css(browser, f'tr[data-job="{theirs}"]')
    network(browser)
    # filters by state, and pages with the API's cursors (two jobs a page here)
    browser.get(server.url + "/?limit=2")
    wait_for(browser, lambda d: len(css(d, "tr.job")) == 2)
    first = rows(browser)
    css(browser, "#older")[0].click()
    wait_for(browser, lambda d: rows(d) and rows(d) != first)
    assert set(rows(browser)).isdisjoint(first)
    css(browser, "#newer")[0].click()
    wait_for(browser, lambda d: rows(d) == first)
    css(browser, '#filters button[data-state="failed"]')[0].click()
    failed = [j["id"] for j in mine if j["state"] == "failed"]
    wait_for(browser, lambda d: rows(d) == failed)
    network(browser)
    browser.get(f"{server.url}/jobs/{theirs}")
    assert css(browser, "h1")[0].text == "No such job"
    statuses = [m["params"]["response"]["status"] for m in network(browser)
                if m["method"] == "Network.responseReceived"
                and m["params"]["response"]["url"].endswith(f"/jobs/{theirs}")]
    assert statuses == [404]
    network(browser)


def test_a_10000_value_spectrum_renders(server, browser):
    """A synthetic exact report of 10,000 singular values, drawn in the page."""
    browser.get(server.url + "/")
    out = browser.execute_script("""
        var n = 10000, k = 50, all = [], fro2 = 0;
        for (var i = 0; i < n; i++) { var s = Math.exp(-i / 900) + 1e-3; all.push(s); fro2 += s * s; }
        var comps = [];
        var report = {shape: [20000, n], rank: k, singular_values: all.slice(0, k),
                      singular_values_all: all, frobenius_norm: Math.sqrt(fro2), components: comps,
                      energy_ranks: [], spectral_gaps: [{rank: 1, ratio: all[0] / all[1]}],
                      suggested_rank: {denoise: {rank: 40, threshold: 0.9, more_than_k: false}},
                      error_estimate: {spectral: all[k], probes: 0}};
        var box = document.createElement('div');
        document.body.appendChild(box);
        var t0 = performance.now();
        var res = SvdPlots.render(box, report);
        box.getBoundingClientRect();  // layout included
        var ms = performance.now() - t0;
        var scree = box.querySelector('figure[data-chart="scree"] path.series');
        return {ms: ms, points: scree.getAttribute('data-points'),
                segments: (scree.getAttribute('d').match(/[ML]/g) || []).length,
                charts: box.querySelectorAll('figure').length};""")
    print(f"\n10,000-value spectrum rendered in {out['ms']:.0f} ms")
    assert out["points"] == "10000" and out["segments"] == 10000 and out["charts"] == 5


def test_no_page_requests_anything_from_another_host(server, browser):
    """Every request the pages (and /docs, /redoc) made, from the browser's network log."""
    browser.get(server.url + "/docs")
    wait_for(browser, lambda d: css(d, ".swagger-ui .opblock"))
    network(browser)
    browser.get(server.url + "/redoc")
    wait_for(browser, lambda d: css(d, "[data-section-id], .api-content"))
    network(browser)
    urls = [m["params"]["request"]["url"] for m in browser.svd_network
            if m["method"] == "Network.requestWillBeSent"]
    here = urlsplit(server.url).netloc
    paths = {urlsplit(u).path for u in urls}
    assert {"/", "/docs", "/redoc", "/static/pages.js", "/static/apidocs/swagger-ui-bundle.js",
            "/static/redoc.js", "/openapi.json"} <= paths
    # chrome:// is the browser's own start page, before the first navigation
    elsewhere = [u for u in urls if urlsplit(u).scheme not in ("data", "blob", "chrome")
                 and urlsplit(u).netloc != here]
    assert not elsewhere, f"requests to another host: {elsewhere}"
    # no token in a URL, nor in the server's log (which has every request line)
    log = open(server.log_path, encoding="utf-8", errors="replace").read()
    assert "GET /jobs/" in log and "pages at http://127.0.0.1:" in log
    for token in TOKENS.values():
        assert not any(token in u for u in urls)
        assert token not in log


@pytest.mark.parametrize("progress", [
    # the copy of a rechunk layout before pass 1, then pass 1 reading, then a no-read step
    {"phase": "rechunk", "pass": 0, "passes": 2, "done": 3, "total": 8,
     "plan": {"kind": "rechunk", "panels": 8}},
    {"phase": "stats+qr", "pass": 1, "passes": 2, "done": 5, "total": 8,
     "plan": {"kind": "rechunk", "panels": 8}},
    {"phase": "factor", "pass": 1, "passes": 2, "done": 0, "total": 1,
     "plan": {"kind": "chunks", "panels": 8}},
    # an energy target's pass beyond the planned ones grows the total
    {"phase": "power", "pass": 4, "passes": 3, "done": 2, "total": 8,
     "plan": {"kind": "chunks", "panels": 8}},
], ids=["rechunk-copy", "rechunk-pass-1", "no-read-step", "beyond-passes"])
def test_the_page_counts_the_whole_job_as_the_cli_does(server, browser, progress):
    from svdserve.client import Progress

    browser.get(server.url + "/")
    got = browser.execute_script(
        "return SvdPages.overall({state: 'running', progress: arguments[0]}).f;", progress)
    done, total = Progress.from_json(progress).overall()
    # the CLI rounds to whole panels; the page keeps the fraction: within half a panel
    assert abs(got - done / total) <= 0.5 / total + 1e-12, (got, done, total)
