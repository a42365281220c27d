"""Client, Job and the HTTP layer against httpx.MockTransport: retries, errors, waiting.

The same calls against the real service are in test_client_service.py.
"""

from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import numpy as np
import pytest

from svdserve.client import (
    APIError,
    Client,
    Conflict,
    Forbidden,
    InvalidRequest,
    JobCancelled,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    StorageAccessError,
    StoredResult,
    SVDServeError,
    Timeout,
    TransportError,
    Unauthorized,
)
from svdserve.client._http import parse_retry_after

from svdclient_testlib import job_json

from tests._check import write_fake_result as write_result

BASE = "http://svd.test"


def problem(status, detail, *, code="x", errors=None, request_id="rid-1", headers=None):
    body = {"type": f"https://svdserve.dev/problems/{code}", "title": httpx.codes.get_reason_phrase(status),
            "status": status, "detail": detail, "instance": "/v1/jobs", "request_id": request_id}
    if errors is not None:
        body["errors"] = errors
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json",
                                                       "X-Request-ID": request_id, **(headers or {})})


class Recorder:
    """A MockTransport handler replaying scripted answers and recording requests."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if callable(answer):
            answer = answer(request)
        if isinstance(answer, Exception):
            raise answer
        return answer


def make_client(handler, **kw):
    sleeps: list[float] = []
    http = httpx.Client(transport=httpx.MockTransport(handler))
    c = Client(BASE, kw.pop("token", None), http_client=http, sleep=sleeps.append, **kw)
    return c, sleeps


# -- requests ------------------------------------------------------------------------------


def test_submit_sends_the_contract_body_and_headers(tmp_path, monkeypatch):
    rec = Recorder(httpx.Response(202, json=job_json("abc", "queued", rank=7),
                                  headers={"Location": "/v1/jobs/abc"}))
    c, _ = make_client(rec, token="s3cret")
    (tmp_path / "A.zarr").mkdir()
    monkeypatch.chdir(tmp_path)
    job = c.submit("A.zarr", 7, array="X", method="exact", n_iter=3, center=True,
                   random_state=5, idempotency_key="key-1")
    (req,) = rec.requests
    assert req.method == "POST" and str(req.url) == f"{BASE}/v1/jobs"
    body = json.loads(req.content)
    assert body == {"source": {"url": str(tmp_path / "A.zarr"), "array": "X"}, "rank": 7,
                    "method": "exact", "n_oversamples": 10, "n_iter": 3, "center": True,
                    "random_state": 5, "compute_u": True}
    assert req.headers["Authorization"] == "Bearer s3cret"
    assert req.headers["Idempotency-Key"] == "key-1"
    assert req.headers["User-Agent"].startswith("svdserve-client/")
    assert job.id == "abc" and job.state == "queued" and job["request"]["rank"] == 7


def test_a_relative_path_is_taken_from_the_current_directory(tmp_path, monkeypatch):
    """One rule (issue 20, item 5): a relative path is the current directory's, existing
    here or not; it is sent absolute, so the service never joins it to its data root."""
    rec = Recorder(httpx.Response(202, json=job_json("abc", "queued")))
    c, _ = make_client(rec)
    monkeypatch.chdir(tmp_path)
    c.submit("matrices/A.zarr", 2)
    c.submit("s3://bucket/A.zarr", 2)
    urls = [json.loads(r.content)["source"]["url"] for r in rec.requests]
    assert urls == [str(tmp_path / "matrices" / "A.zarr"), "s3://bucket/A.zarr"]
    assert "Authorization" not in rec.requests[0].headers
    # a fresh idempotency key per submit
    assert rec.requests[0].headers["Idempotency-Key"] != rec.requests[1].headers["Idempotency-Key"]


def test_env_provides_url_and_token(monkeypatch):
    monkeypatch.setenv("SVDSERVE_URL", "http://env.test:9/")
    monkeypatch.setenv("SVDSERVE_TOKEN", "tok")
    rec = Recorder(httpx.Response(200, json={"status": "ok"}))
    c = Client(http_client=httpx.Client(transport=httpx.MockTransport(rec)))
    assert c.base_url == "http://env.test:9"
    assert c.health() == {"status": "ok"}
    assert rec.requests[0].headers["Authorization"] == "Bearer tok"
    assert str(rec.requests[0].url) == "http://env.test:9/v1/health"


def test_bad_arguments_fail_before_any_request():
    c, _ = make_client(Recorder(httpx.Response(500)))
    with pytest.raises(ValueError, match="method must be one of"):
        c.submit("A.zarr", 2, method="fast")
    with pytest.raises(ValueError, match="result_access"):
        Client(BASE, result_access="nfs")
    with pytest.raises(ValueError, match="http:// or https://"):
        Client("localhost:8000")


# -- retries -------------------------------------------------------------------------------


def test_503_retried_honouring_retry_after_seconds():
    rec = Recorder(problem(503, "not ready", headers={"Retry-After": "2"}),
                   problem(503, "not ready", headers={"Retry-After": "0"}),
                   httpx.Response(200, json={"status": "ok"}))
    c, sleeps = make_client(rec)
    assert c.health() == {"status": "ok"}
    assert sleeps == [2.0, 0.0] and len(rec.requests) == 3


def test_429_retry_after_http_date_and_cap():
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    rec = Recorder(problem(429, "queue full", headers={"Retry-After": format_datetime(when, usegmt=True)}),
                   problem(429, "queue full", headers={"Retry-After": "3600"}),
                   httpx.Response(200, json={"items": [], "next_cursor": None}))
    c, sleeps = make_client(rec)
    assert c.jobs() == []
    assert 28 <= sleeps[0] <= 30  # HTTP date: whole seconds, minus elapsed time
    assert sleeps[1] == 60.0  # capped at max_retry_after


def test_backoff_without_retry_after_then_typed_error():
    rec = Recorder(problem(503, "scheduler unreachable", request_id="r-9"))
    c, sleeps = make_client(rec, max_retries=3, backoff_factor=0.5)
    with pytest.raises(ServiceUnavailable) as info:
        c.health()
    assert len(rec.requests) == 4
    # 0.5 * 2**i with up to 50 % jitter taken off
    for i, s in enumerate(sleeps):
        assert 0.25 * 2**i <= s <= 0.5 * 2**i
    err = info.value
    assert err.status_code == 503 and err.request_id == "r-9"
    assert "scheduler unreachable" in str(err) and "r-9" in str(err)
    assert err.retry_after is None


def test_submit_retries_reuse_the_idempotency_key():
    rec = Recorder(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"),
                   problem(503, "busy", headers={"Retry-After": "1"}),
                   httpx.Response(202, json=job_json("abc", "queued")))
    c, sleeps = make_client(rec)
    job = c.submit("/data/A.zarr", 3)
    assert job.id == "abc" and len(rec.requests) == 4 and sleeps[2] == 1.0
    keys = {r.headers["Idempotency-Key"] for r in rec.requests}
    assert len(keys) == 1
    bodies = {r.content for r in rec.requests}
    assert len(bodies) == 1


def test_post_without_key_is_not_repeated_after_a_read_timeout():
    rec = Recorder(httpx.ReadTimeout("slow"), httpx.Response(200, json={}))
    c, _ = make_client(rec)
    with pytest.raises(TransportError, match="ReadTimeout"):
        c._http.request("POST", "/v1/other", json={})
    assert len(rec.requests) == 1
    # ... but a connection error (the request never left) is retried
    rec2 = Recorder(httpx.ConnectError("refused"), httpx.Response(200, json={}))
    c2, _ = make_client(rec2)
    c2._http.request("POST", "/v1/other", json={})
    assert len(rec2.requests) == 2


def test_unreachable_service_gives_transport_error():
    rec = Recorder(httpx.ConnectError("[Errno 111] Connection refused"))
    c, sleeps = make_client(rec, max_retries=2)
    with pytest.raises(TransportError) as info:
        c.get("abc")
    assert len(rec.requests) == 3 and len(sleeps) == 2
    assert "after 3 attempts" in str(info.value) and "Connection refused" in str(info.value)
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, SVDServeError)


def test_parse_retry_after():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:07 GMT", now=now) == 7.0
    assert parse_retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# -- error mapping -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, cls, std",
    [
        (400, InvalidRequest, ValueError),
        (401, Unauthorized, None),
        (403, Forbidden, PermissionError),
        (404, NotFound, LookupError),
        (409, Conflict, None),
        (413, PayloadTooLarge, None),
        (422, InvalidRequest, ValueError),
        (500, ServerError, None),
        (418, APIError, None),
    ],
)
def test_status_maps_to_error_class(status, cls, std):
    errors = [{"field": "body.rank", "message": "Input should be greater than or equal to 1"}]
    rec = Recorder(problem(status, f"detail {status}", errors=errors if status == 422 else None,
                           request_id=f"req-{status}"))
    c, sleeps = make_client(rec)
    with pytest.raises(cls) as info:
        c.get("abc")
    err = info.value
    assert type(err) is cls and isinstance(err, APIError) and isinstance(err, SVDServeError)
    if std is not None:
        assert isinstance(err, std)
    assert err.status_code == status and err.request_id == f"req-{status}"
    assert err.problem["detail"] == f"detail {status}" and err.detail == f"detail {status}"
    assert err.type == "x"
    assert f"detail {status}" in str(err) and str(err).startswith(str(status))
    assert err.response.status_code == status and err.request.url.path == "/v1/jobs/abc"
    assert sleeps == []  # none of these is retried
    if status == 422:
        assert err.errors == errors and "body.rank: Input should be" in str(err)


def test_non_json_error_body_is_quoted():
    rec = Recorder(httpx.Response(502, text="<html>Bad gateway from nginx</html>"))
    c, sleeps = make_client(rec, max_retries=1)
    with pytest.raises(ServerError, match="Bad gateway from nginx") as info:
        c.get("abc")
    assert info.value.request_id is None and len(sleeps) == 1


def test_rate_limited_exposes_retry_after():
    rec = Recorder(problem(429, "queue is full (100 jobs)", headers={"Retry-After": "7"}))
    c, _ = make_client(rec, max_retries=0)
    with pytest.raises(RateLimited) as info:
        c.submit("/d/A.zarr", 2)
    assert info.value.retry_after == 7.0 and "queue is full" in str(info.value)


# -- jobs ------------------------------------------------------------------------------------


def test_jobs_follows_cursors_and_limit():
    pages = {
        None: {"items": [job_json("j3"), job_json("j2")], "next_cursor": "c1"},
        "c1": {"items": [job_json("j1")], "next_cursor": None},
    }
    rec = Recorder(lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")]))
    c, _ = make_client(rec)
    assert [j.id for j in c.jobs(state="succeeded")] == ["j3", "j2", "j1"]
    assert all(r.url.params["state"] == "succeeded" for r in rec.requests)
    assert [j.id for j in c.jobs(limit=2)] == ["j3", "j2"]
    assert rec.requests[-1].url.params["limit"] == "2"


def _progress(phase, p, done, total, passes=3):
    return {"phase": phase, "pass": p, "passes": passes, "done": done, "total": total}


def test_job_status_progress_done_cancel():
    states = iter([
        job_json("j", "running", progress=_progress("power", 2, 3, 10)),
        job_json("j", "running", progress=_progress("power", 2, 4, 10)),
        job_json("j", "running", progress=_progress("power", 2, 5, 10)),
    ])

    def handler(request):
        if request.url.path.endswith("/cancel"):
            return httpx.Response(202, json=job_json("j", "cancelling"))
        return httpx.Response(200, json=next(states))

    c, _ = make_client(handler)
    job = c.get("j")
    assert job.status() == "running"
    prog = job.progress
    assert (prog.phase, prog.pass_no, prog.passes, prog.done, prog.total) == ("power", 2, 3, 5, 10)
    assert prog.fraction == 0.5 and str(prog) == "power pass 2/3: 5/10 panels"
    assert job.cancel() is True and job.state == "cancelling"
    assert "cancelling" in repr(job)


def test_cancel_of_a_finished_job_returns_false():
    def handler(request):
        if request.url.path.endswith("/cancel"):
            return problem(409, "job j already succeeded", code="conflict")
        return httpx.Response(200, json=job_json("j", "succeeded"))

    c, _ = make_client(handler)
    job = c.get("j")
    assert job.cancel() is False and job.state == "succeeded"
    with pytest.raises(Conflict, match="already succeeded"):
        c.cancel("j")


def test_result_long_polls_with_progress_bar_and_opens_direct(tmp_path, capsys):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((40, 6))
    url = str(tmp_path / "result.zarr")
    write_result(url, A, 3)
    seq = [
        job_json("j", "queued"),
        job_json("j", "running", progress=_progress("stats+qr", 1, 1, 4, passes=2)),
        job_json("j", "running", progress=_progress("stats+qr", 1, 4, 4, passes=2)),
        job_json("j", "running", progress=_progress("project", 2, 2, 4, passes=2)),
        job_json("j", "succeeded", result_url=url, shape=(40, 6), rank=3),
    ]
    rec = Recorder(*[httpx.Response(200, json=s) for s in seq])
    c, _ = make_client(rec)
    job = c.get("j")
    res = job.result(progress=True)
    assert isinstance(res, StoredResult) and res.url == url and res.rank == 3
    assert job.done() and job.state == "succeeded"
    waits = [r.url.params.get("wait") for r in rec.requests[1:]]
    assert waits and all(w is not None and 1 <= int(w) <= 60 for w in waits)
    err = capsys.readouterr().err
    assert "project" in err and "succeeded" in err and "panel" in err


def test_progress_bar_never_shows_a_phase_label_with_another_phases_count(capsys):
    """The first progress seen may be late in the job (a fast pass 1): the bar starts on
    the whole job's count, and a phase label is only ever drawn with a count inside it."""
    plan = {"panels": 10, "kind": "chunks"}

    def running(phase, p, done, total=10):
        return job_json("j", "running", progress=dict(_progress(phase, p, done, total, passes=2),
                                                      plan=plan))

    seq = [job_json("j", "queued"), running("tall", 2, 3), running("tall", 2, 10),
           running("write", 2, 1, 2), job_json("j", "succeeded", result_url="/r")]
    seq[-1]["progress"] = running("write", 2, 2, 2)["progress"]
    c, _ = make_client(Recorder(*[httpx.Response(200, json=s) for s in seq]))
    c.get("j").wait(progress=True)
    err = capsys.readouterr().err
    counts = re.findall(r"(\d+)/(\d+) panels", err)
    assert counts and {int(t) for _, t in counts} == {20}  # one bar: both passes
    assert int(counts[-1][0]) == 20 and "/s" not in err
    labelled = re.findall(r"\(pass (\d) of 2\):\s+\d+%\|[^|]*\| (\d+)/", err)
    assert labelled and all((int(p) - 1) * 10 <= int(d) <= int(p) * 10 for p, d in labelled)


def test_result_raises_job_failed_with_the_servers_message():
    failed = job_json("j", "failed", error={"type": "non_finite_values",
                                            "message": "NaN in rows 100:200 of the input"})
    c, _ = make_client(Recorder(httpx.Response(200, json=failed)))
    job = c.get("j")
    with pytest.raises(JobFailed) as info:
        job.result()
    assert info.value.type == "non_finite_values" and info.value.job_id == "j"
    with pytest.warns(DeprecationWarning, match="JobFailed.type"):
        assert info.value.error_type == "non_finite_values"  # the earlier name, kept
    assert "NaN in rows 100:200" in str(info.value) and "non_finite_values" in str(info.value)
    assert isinstance(job.exception(), JobFailed)


def test_result_raises_job_cancelled():
    c, _ = make_client(Recorder(httpx.Response(200, json=job_json("j", "cancelled"))))
    job = c.get("j")
    with pytest.raises(JobCancelled, match="cancelled"):
        job.result()
    assert job.cancelled()


def test_result_timeout_leaves_the_job_running():
    def slow(request):
        time.sleep(0.05)
        return httpx.Response(200, json=job_json("j", "running"))

    c, _ = make_client(slow)
    job = c.get("j")
    t0 = time.monotonic()
    with pytest.raises(Timeout, match="still running after 0.3 s") as info:
        job.result(timeout=0.3)
    assert time.monotonic() - t0 < 3
    assert isinstance(info.value, TimeoutError) and info.value.job["state"] == "running"


def test_poll_interval_mode_does_not_long_poll():
    rec = Recorder(httpx.Response(200, json=job_json("j", "running")),
                   httpx.Response(200, json=job_json("j", "cancelled")))
    c, _ = make_client(rec)
    job = c.get("j")
    job.wait(poll_interval=0.01)
    assert job.state == "cancelled"
    assert all("wait" not in r.url.params for r in rec.requests)


def test_direct_result_access_errors(tmp_path):
    done = job_json("j", "succeeded", result_url=str(tmp_path / "nowhere.zarr"))
    c, _ = make_client(Recorder(httpx.Response(200, json=done)), result_access="direct")
    with pytest.raises(StorageAccessError, match="not readable from this machine"):
        c.get("j").result()
    os.makedirs(tmp_path / "half.zarr")  # exists but has no manifest: never read
    half = job_json("j", "succeeded", result_url=str(tmp_path / "half.zarr"))
    c2, _ = make_client(Recorder(httpx.Response(200, json=half)), result_access="direct")
    with pytest.raises(StorageAccessError, match="manifest"):
        c2.get("j").result()
