"""The HTTP API in process: real app, real LocalCluster, real svdserve.worker.svd.

End-to-end runs against a uvicorn subprocess are in test_service_e2e.py.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import zarr
from svdserve import _manifest
from tests.service._kit import CHUNK_ROWS, M, N, assert_problem, submit, wait_job


# ---------------------------------------------------------------------- lifecycle
def test_lifecycle_progress_result_and_report(service, wait, matrix_a, check):
    with service() as c:
        r = submit(c, rank=5)
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["state"] == "queued" and job["attempt"] == 1
        assert job["request"]["rank"] == 5 and job["request"]["method"] == "auto"
        seen = []
        while job["state"] not in ("succeeded", "failed", "cancelled"):
            job = c.get(f"/v1/jobs/{job['id']}", params={"wait": 5}).json()
            seen.append((job["state"], job["progress"]))
        assert job["state"] == "succeeded", job
        assert any(s == "running" and p is not None for s, p in seen), seen
        assert job["error"] is None and job["finished_at"] and job["started_at"]
        res = job["result"]
        assert res["shape"] == [M, N] and res["rank"] == 5 and res["method"] == "exact"
        assert res["http"] == f"/v1/jobs/{job['id']}/result"
        # layout: {results}/{tenant}/{id}/{attempt}/result.zarr with the manifest
        assert res["url"].endswith(f"/default/{job['id']}/1/result.zarr")
        assert os.path.isfile(_manifest.path_of(res["url"]))
        g = zarr.open_group(res["url"], mode="r")
        check(g["U"][...], g["S"][...], g["Vt"][...], matrix_a, 5)

        report = c.get(f"/v1/jobs/{job['id']}/report")
        assert report.status_code == 200
        rep = report.json()
        s = np.linalg.svd(matrix_a, compute_uv=False)
        np.testing.assert_allclose(rep["singular_values"], s[:5], rtol=1e-8)
        np.testing.assert_allclose(rep["total_energy"], np.sum(matrix_a ** 2), rtol=1e-10)
        assert rep["shape"] == [M, N] and rep["rank"] == 5

        # the result group over HTTP: present keys 200, missing ones 404
        base = f"/v1/jobs/{job['id']}/result"
        meta = c.get(f"{base}/zarr.json")
        assert meta.status_code == 200 and meta.json()["node_type"] == "group"
        assert c.get(_manifest.path_of(base)).status_code == 200
        assert c.head(f"{base}/zarr.json").status_code == 200
        assert_problem(c.get(f"{base}/no-such-key"), 404)
        assert_problem(c.get(f"{base}/../../jobs"), 404)
        assert_problem(c.get(f"{base}/U/%2e%2e/%2e%2e/{_manifest.NAME}"), 404)


def test_wide_matrix_and_group_array(service, wait, data_root, check):
    with service() as c:
        wide = submit(c, {"source": {"url": "wide.zarr"}, "rank": 5}).json()
        grp = submit(c, {"source": {"url": "group.zarr", "array": "second"}, "rank": 3}).json()
        file_url = submit(c, {"source": {"url": f"file://{data_root}/sub/B.zarr"},
                              "rank": 2}).json()
        alias = submit(c, {"source": {"url": "alias.zarr"}, "rank": 2}).json()
        for job, path, k in ((wide, "wide.zarr", 5), (grp, "group.zarr/second", 3),
                             (file_url, "sub/B.zarr", 2), (alias, "A.zarr", 2)):
            done = wait(c, job["id"])
            assert done["state"] == "succeeded", done
            a = zarr.open_array(str(data_root / path), mode="r")[...]
            g = zarr.open_group(done["result"]["url"], mode="r")
            check(g["U"][...], g["S"][...], g["Vt"][...], a, k)


def test_rank_plus_oversamples_is_clipped_with_a_note(service, wait):
    with service() as c:
        r = submit(c, {"source": {"url": "small.zarr"}, "rank": 5, "method": "randomized",
                       "n_oversamples": 10})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["request"]["n_oversamples"] == 10  # the request is kept as sent
        assert any("n_oversamples clipped from 10 to 3" in n and "min(m, n) = 8" in n
                   for n in job["notes"]), job["notes"]
        done = wait(c, job["id"])
        assert done["state"] == "succeeded", done
        assert done["result"]["method"] == "randomized"


def test_nan_input_fails_with_non_finite_values(service, wait):
    with service() as c:
        job = submit(c, {"source": {"url": "nan.zarr"}, "rank": 3}).json()
        done = wait(c, job["id"])
        assert done["state"] == "failed"
        assert done["error"]["type"] == "non_finite_values"
        # NaN at row 333; 20 columns, so a panel holds two 50-row chunks: 300:400
        assert "rows 300:400" in done["error"]["message"], done["error"]
        assert done["result"] is None
        assert_problem(c.get(f"/v1/jobs/{job['id']}/report"), 409)
        results = c.app_state.services.results
        assert not os.path.exists(results.job_dir("default", job["id"]) + "/1")


# ---------------------------------------------------------------------- bad requests
OK = {"source": {"url": "A.zarr"}, "rank": 4}


def body(**changes):
    out = {"source": dict(OK["source"]), "rank": OK["rank"]}
    for key, value in changes.items():
        if key.startswith("source_"):
            out["source"][key[len("source_"):]] = value
        elif value is _DROP:
            out.pop(key)
        else:
            out[key] = value
    return out


_DROP = object()

BAD_REQUESTS = [
    # (case id, body, expected status, field named in `errors`)
    ("rank-string", body(rank="five"), 422, "body.rank"),
    ("rank-numeric-string", body(rank="5"), 422, "body.rank"),
    ("rank-float", body(rank=2.5), 422, "body.rank"),
    ("rank-bool", body(rank=True), 422, "body.rank"),
    ("center-string", body(center="yes"), 422, "body.center"),
    ("n_iter-list", body(n_iter=[2]), 422, "body.n_iter"),
    ("missing-source", body(source=_DROP), 422, "body.source"),
    ("source-not-object", body(source="A.zarr"), 422, "body.source"),
    ("missing-url", {"source": {"array": None}, "rank": 4}, 422, "body.source.url"),
    ("url-wrong-type", body(source_url=42), 422, "body.source.url"),
    ("empty-url", body(source_url=""), 422, "body.source.url"),
    ("blank-url", body(source_url="   "), 422, "body.source.url"),
    ("nul-in-url", body(source_url="A.zarr\x00x"), 422, "body.source.url"),
    ("missing-rank", body(rank=_DROP), 422, "body.rank"),
    ("rank-0", body(rank=0), 422, "body.rank"),
    ("rank-negative", body(rank=-3), 422, "body.rank"),
    ("rank-too-big", body(rank=N + 1), 422, "body.rank"),
    ("rank-too-big-wide", body(source_url="wide.zarr", rank=31), 422, "body.rank"),
    ("n_oversamples-negative", body(n_oversamples=-1), 422, "body.n_oversamples"),
    ("n_iter-huge", body(n_iter=10_000), 422, "body.n_iter"),
    ("random_state-negative", body(random_state=-1), 422, "body.random_state"),
    ("unknown-method", body(method="lanczos"), 422, "body.method"),
    ("unknown-field", body(oversample=10), 422, "body.oversample"),
    ("precision-float16", body(precision="float16"), 422, "body.precision"),
    ("1-d-array", body(source_url="vec.zarr"), 422, "body.source"),
    ("3-d-array", body(source_url="cube.zarr"), 422, "body.source.sample_dims"),
    ("string-dtype", body(source_url="strings.zarr"), 422, "body.source"),
    ("empty-array", body(source_url="empty.zarr"), 422, "body.source"),
    ("missing-path", body(source_url="nope.zarr"), 404, "body.source.url"),
    ("missing-array-in-group", body(source_url="group.zarr", source_array="third"), 404,
     "body.source.array"),
    ("group-needs-array", body(source_url="group.zarr"), 422, "body.source.array"),
    ("not-zarr-dir", body(source_url="sub"), 404, "body.source.url"),
    ("traversal-relative", body(source_url="../outside/secret.zarr"), 403, "body.source.url"),
    ("traversal-inner", body(source_url="sub/../../outside/secret.zarr"), 403,
     "body.source.url"),
    ("traversal-harmless-still-refused", body(source_url="sub/../A.zarr"), 403,
     "body.source.url"),
    ("absolute-elsewhere", body(source_url="/etc"), 403, "body.source.url"),
    ("absolute-missing-elsewhere", body(source_url="/nonexistent/x.zarr"), 403,
     "body.source.url"),
    ("file-url-outside", body(source_url="file:///etc/passwd"), 403, "body.source.url"),
    ("file-url-encoded-traversal", body(source_url="file:///DATA/%2e%2e/outside"), 403,
     "body.source.url"),
    ("file-url-remote-host", body(source_url="file://evil.example/etc"), 422,
     "body.source.url"),
    ("symlink-leaves-root", body(source_url="escape.zarr"), 403, "body.source.url"),
    ("symlinked-chunk-leaves-root", body(source_url="sneaky.zarr"), 403, "body.source.url"),
    ("array-traversal", body(source_url="group.zarr", source_array="../A.zarr"), 403,
     "body.source.array"),
    ("array-absolute", body(source_url="group.zarr", source_array="/first"), 422,
     "body.source.array"),
    ("bucket-not-listed", body(source_url="s3://other-bucket/A.zarr"), 403, "body.source.url"),
    ("unsupported-scheme", body(source_url="http://example.com/A.zarr"), 422,
     "body.source.url"),
]


@pytest.mark.parametrize("case,payload,status,field", BAD_REQUESTS,
                         ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests(service, data_root, case, payload, status, field):
    if case == "file-url-encoded-traversal":
        payload = body(source_url=f"file://{data_root}/%2e%2e/outside/secret.zarr")
    with service() as c:
        r = c.post("/v1/jobs", json=payload)
        p = assert_problem(r, status, field)
        if status == 422 and field.startswith("body.rank") and "too-big" in case:
            assert "min(m, n)" in p["detail"]
        if case == "precision-float16":  # a known field with a bad value, not an unknown one
            said = " ".join(e["message"] for e in p["errors"])
            assert "'auto'" in said and "'float64'" in said, p
        # nothing was stored
        assert c.get("/v1/jobs").json()["items"] == []


def test_malformed_bodies(service):
    with service() as c:
        r = c.post("/v1/jobs", content=b'{"rank": 3,', headers={"content-type":
                                                                 "application/json"})
        assert_problem(r, 422, "body")
        r = c.post("/v1/jobs")
        assert_problem(r, 422, "body")
        r = c.post("/v1/jobs", json=[1, 2, 3])
        assert_problem(r, 422)
        r = c.post("/v1/jobs", content=b"x" * 70_000,
                   headers={"content-type": "application/json"})
        assert_problem(r, 413)


def test_other_errors_are_problems(service):
    with service() as c:
        assert_problem(c.get("/v1/nothing-here"), 404)
        assert_problem(c.put("/v1/jobs"), 405)
        assert_problem(c.get("/v1/jobs/0123456789abcdef0123456789abcdef"), 404)
        assert_problem(c.get("/v1/jobs/not-an-id"), 404)
        assert_problem(c.get("/v1/jobs", params={"state": "sleeping"}), 422, "query.state")
        assert_problem(c.get("/v1/jobs", params={"limit": 0}), 422, "query.limit")
        assert_problem(c.get("/v1/jobs", params={"cursor": "garbage!"}), 422, "query.cursor")
        r = c.get("/v1/jobs/0123456789abcdef0123456789abcdef", params={"wait": 61})
        assert_problem(r, 422, "query.wait")
        # a caller-chosen request id is echoed
        r = c.get("/v1/health", headers={"X-Request-ID": "abc-123"})
        assert r.headers["x-request-id"] == "abc-123"


def test_results_and_database_are_not_sources(service, data_root, tmp_path):
    inside = data_root / "svc-internal"
    with service(results_root=str(inside / "results"),
                 database=str(inside / "jobs.sqlite")) as c:
        job = submit(c, rank=2).json()
        done = wait_job(c, job["id"])
        assert done["state"] == "succeeded"
        for url in (done["result"]["url"], "svc-internal/results",
                    "svc-internal/jobs.sqlite", "svc-internal"):
            assert_problem(submit(c, {"source": {"url": url}, "rank": 1}), 403,
                           "body.source.url")


# ---------------------------------------------------------------------- idempotency
def test_idempotency_key(service):
    with service() as c:
        key = {"Idempotency-Key": "job-7f3a"}
        first = submit(c, headers=key)
        assert first.status_code == 202
        again = submit(c, headers=key)
        assert again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["location"] == first.headers["location"]
        # the same key with a different body is refused, naming the header
        assert_problem(submit(c, headers=key, rank=3), 422, "header.idempotency-key")
        # the same body without a key (or another key) is a new job
        other = submit(c, headers={"Idempotency-Key": "job-other"})
        assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
        # a key still being created (reserved, no job yet) answers 409
        store = c.app_state.services.store
        from svdserve.service._routes import _body_hash
        from svdserve.service._schemas import JobCreate
        h = _body_hash(JobCreate.model_validate({"source": {"url": "A.zarr"}, "rank": 4}))
        assert store.reserve_key("default", "in-flight", h) == ("new", None)
        assert_problem(submit(c, headers={"Idempotency-Key": "in-flight"}), 409)
        # a key whose request failed validation can be used again
        bad = {"Idempotency-Key": "retry-me"}
        assert_problem(submit(c, {"source": {"url": "nope.zarr"}, "rank": 1}, headers=bad),
                       404)
        assert submit(c, headers=bad).status_code == 202


# ---------------------------------------------------------------------- listing
def test_pagination_newest_first_and_state_filter(service, gate, wait):
    with service(max_concurrent_jobs=1) as c:
        ids = [submit(c, rank=1 + i % 3).json()["id"] for i in range(7)]
        assert gate.entered.wait(30)
        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
            page = c.get("/v1/jobs", params=params).json()
            seen += [j["id"] for j in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 3
        assert seen == ids[::-1]  # newest first, each once
        running = c.get("/v1/jobs", params={"state": "running"}).json()["items"]
        assert [j["id"] for j in running] == [ids[0]]
        queued = c.get("/v1/jobs", params={"state": "queued"}).json()["items"]
        assert [j["id"] for j in queued] == ids[:0:-1]
        assert c.get("/v1/jobs", params={"state": "failed"}).json() == {
            "items": [], "next_cursor": None}
        gate.release()
        for i in ids:
            assert wait(c, i)["state"] == "succeeded"


# ---------------------------------------------------------------------- cancel / queue
def _client_tasks(dask_client, client_id):
    def count(dask_scheduler, client_id=client_id):
        cs = dask_scheduler.clients.get(client_id)
        return 0 if cs is None else len(cs.wants_what)
    return dask_client.run_on_scheduler(count)


def test_queue_full_cancel_queued_and_running(service, gate, wait, dask_client):
    with service(max_concurrent_jobs=1, max_queued_jobs=2) as c:
        first = submit(c).json()
        assert gate.entered.wait(30), "the first job never started"
        second = submit(c, rank=2).json()
        third = submit(c, rank=3).json()
        assert c.get(f"/v1/jobs/{first['id']}").json()["state"] == "running"
        assert c.get(f"/v1/jobs/{second['id']}").json()["state"] == "queued"
        full = submit(c, rank=1)
        assert_problem(full, 429)
        assert int(full.headers["retry-after"]) > 0

        # cancelling a queued job is immediate; it never starts
        r = c.post(f"/v1/jobs/{second['id']}/cancel")
        assert r.status_code == 202
        j = r.json()
        assert j["state"] == "cancelled" and j["error"]["type"] == "cancelled"
        assert j["started_at"] is None
        assert submit(c, rank=1).status_code == 202  # room again

        # cancelling the running job: cancelling, then cancelled at the next panel
        client_id = c.app_state.services.cluster.sync_client.id
        assert _client_tasks(dask_client, client_id) > 0  # it holds work on the cluster
        r = c.post(f"/v1/jobs/{first['id']}/cancel")
        assert r.status_code == 202 and r.json()["state"] in ("cancelling", "cancelled")
        done = wait(c, first["id"])
        assert done["state"] == "cancelled", done
        assert done["error"]["type"] == "cancelled" and done["result"] is None
        results = c.app_state.services.results
        assert not os.path.exists(results.job_dir("default", first["id"]) + "/1")
        # a finished job cannot be cancelled again
        assert_problem(c.post(f"/v1/jobs/{first['id']}/cancel"), 409)

        # the queue moves on in order: third runs next (held by the gate)
        assert wait(c, third["id"], states=("running",))["state"] == "running"
        gate.release()
        assert wait(c, third["id"])["state"] == "succeeded"
        # no work of cancelled or finished jobs is left on the cluster
        deadline = time.monotonic() + 20
        while _client_tasks(dask_client, client_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        for job in c.get("/v1/jobs").json()["items"]:
            wait(c, job["id"])
        deadline = time.monotonic() + 20
        while _client_tasks(dask_client, client_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _client_tasks(dask_client, client_id) == 0


def test_cancel_releases_cluster_work(service, gate, wait, dask_client):
    with service() as c:
        job = submit(c).json()
        assert gate.entered.wait(30)
        client_id = c.app_state.services.cluster.sync_client.id
        held = _client_tasks(dask_client, client_id)
        assert held > 0
        assert c.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        assert wait(c, job["id"])["state"] == "cancelled"
        deadline = time.monotonic() + 20
        while _client_tasks(dask_client, client_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _client_tasks(dask_client, client_id) == 0


def test_long_poll_returns_on_change(service, gate):
    with service() as c:
        job = submit(c).json()
        assert gate.entered.wait(30)
        state = c.get(f"/v1/jobs/{job['id']}").json()
        out = {}

        def poll():
            t0 = time.monotonic()
            out["job"] = c.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
            out["seconds"] = time.monotonic() - t0

        t = threading.Thread(target=poll)
        t.start()
        time.sleep(0.5)
        assert "job" not in out  # still waiting: nothing changed
        gate.release()
        t.join(30)
        assert out["seconds"] < 20
        assert (out["job"]["state"], out["job"]["progress"]) != (state["state"],
                                                                 state["progress"])
        # a finished job's long poll answers at once
        assert wait_job(c, job["id"])["state"] == "succeeded"
        t0 = time.monotonic()
        final = c.get(f"/v1/jobs/{job['id']}", params={"wait": 5}).json()
        assert final["state"] == "succeeded" and time.monotonic() - t0 < 1.0


def test_long_poll_times_out_unchanged(service, gate):
    with service(max_concurrent_jobs=1) as c:
        job = submit(c).json()
        assert gate.entered.wait(30)
        # the gated job reports the same progress every 50 ms: no change, no answer
        t0 = time.monotonic()
        r = c.get(f"/v1/jobs/{job['id']}", params={"wait": 1.0})
        assert r.json()["state"] == "running" and time.monotonic() - t0 >= 0.9
        # a queued job behind it does not change either
        queued = submit(c, rank=2).json()
        t0 = time.monotonic()
        r = c.get(f"/v1/jobs/{queued['id']}", params={"wait": 1.0})
        elapsed = time.monotonic() - t0
        assert r.status_code == 200 and r.json()["state"] == "queued"
        assert 0.9 <= elapsed < 5, elapsed
        gate.release()


def test_delete(service, gate, wait):
    with service() as c:
        job = submit(c).json()
        assert gate.entered.wait(30)
        assert_problem(c.delete(f"/v1/jobs/{job['id']}"), 409)
        gate.release()
        done = wait(c, job["id"])
        result_dir = os.path.dirname(done["result"]["url"])
        assert os.path.isdir(result_dir)
        assert c.delete(f"/v1/jobs/{job['id']}").status_code == 204
        assert not os.path.exists(os.path.dirname(result_dir))
        assert_problem(c.get(f"/v1/jobs/{job['id']}"), 404)
        assert_problem(c.delete(f"/v1/jobs/{job['id']}"), 404)


def test_report_and_result_wait_for_success(service, gate):
    with service() as c:
        job = submit(c).json()
        assert gate.entered.wait(30)
        assert_problem(c.get(f"/v1/jobs/{job['id']}/report"), 409)
        assert_problem(c.get(f"/v1/jobs/{job['id']}/result/zarr.json"), 409)


# ---------------------------------------------------------------------- auth
def test_auth_and_tenant_isolation(service, wait, tmp_path):
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("# tenant:token\ncarol:token-carol\n")
    alice = {"Authorization": "Bearer token-alice"}
    bob = {"Authorization": "Bearer token-bob"}
    with service(tokens="alice:token-alice,bob:token-bob", tokens_file=tokens_file) as c:
        assert c.get("/v1/health").status_code == 200  # no token needed
        for method, path in (("get", "/v1/jobs"), ("post", "/v1/jobs"), ("get", "/v1/ready"),
                             ("get", "/metrics"),
                             ("get", "/v1/jobs/0123456789abcdef0123456789abcdef")):
            r = getattr(c, method)(path)
            assert_problem(r, 401)
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert_problem(c.get("/v1/jobs", headers={"Authorization": "Bearer nope"}), 401)
        assert_problem(c.get("/v1/jobs", headers={"Authorization": "Basic dG9rZW4tYWxpY2U="}),
                       401)
        assert c.get("/v1/jobs", headers={"Authorization": "Bearer token-carol"}
                     ).status_code == 200

        job = submit(c, headers=alice).json()
        done = wait(c, job["id"], headers=alice)
        assert done["state"] == "succeeded"
        assert f"/alice/{job['id']}/1/" in done["result"]["url"]
        base = f"/v1/jobs/{job['id']}"
        for method, path in (("get", base), ("get", f"{base}/report"),
                             ("get", f"{base}/result/zarr.json"), ("post", f"{base}/cancel"),
                             ("delete", base)):
            assert_problem(getattr(c, method)(path, headers=bob), 404)
        assert c.get("/v1/jobs", headers=bob).json()["items"] == []
        assert [j["id"] for j in c.get("/v1/jobs", headers=alice).json()["items"]] == [
            job["id"]]
        assert c.get(f"{base}/result/zarr.json", headers=alice).status_code == 200
        # idempotency keys are per tenant
        k = {"Idempotency-Key": "same-key"}
        a = submit(c, headers=alice | k).json()["id"]
        b = submit(c, headers=bob | k).json()["id"]
        assert a != b


def test_token_comparison_is_constant_time_by_construction():
    from svdserve.service._auth import TokenAuth

    auth = TokenAuth([("alice", "a" * 40), ("bob", "short")])
    assert auth.tenant_for("a" * 40) == "alice"
    assert auth.tenant_for("short") == "bob"
    assert auth.tenant_for("a" * 39) is None and auth.tenant_for("") is None
    # every entry is a fixed-length digest: compare_digest sees equal lengths
    assert {len(d) for d, _ in auth._entries} == {32}


# ---------------------------------------------------------------------- ops
def test_health_ready_metrics(service, wait):
    with service() as c:
        assert c.get("/v1/health").json() == {"status": "ok"}
        ready = c.get("/v1/ready")
        assert ready.status_code == 200
        assert ready.json()["ready"] is True and ready.json()["workers"] == 2
        job = submit(c).json()
        assert wait(c, job["id"])["state"] == "succeeded"
        text = c.get("/metrics").text
        assert 'svdserve_jobs{state="succeeded"} 1.0' in text
        assert "svdserve_jobs_submitted_total 1.0" in text
        assert 'svdserve_job_duration_seconds_count{state="succeeded"} 1.0' in text
        panels = [line for line in text.splitlines()
                  if line.startswith("svdserve_panels_processed_total")]
        assert panels and float(panels[0].split()[-1]) >= M // CHUNK_ROWS


def test_not_ready_without_scheduler(service):
    # nothing listens on port 9: the service starts, says 503, keeps retrying
    with service(scheduler="tcp://127.0.0.1:9", connect_timeout=0.5) as c:
        assert c.get("/v1/health").status_code == 200
        p = assert_problem(c.get("/v1/ready"), 503)
        assert p["ready"] is False and p["workers"] == 0
        # jobs are accepted and wait in the queue
        r = submit(c)
        assert r.status_code == 202 and r.json()["state"] == "queued"
        time.sleep(0.3)
        assert c.get(f"/v1/jobs/{r.json()['id']}").json()["state"] == "queued"


# ---------------------------------------------------------------------- restarts
def test_graceful_shutdown_requeues_and_next_start_finishes(service, gate, wait, matrix_a,
                                                            check):
    with service() as c:
        job = submit(c, rank=3).json()
        assert gate.entered.wait(30)
    # the app stopped while the job was inside its first pass
    gate.release()
    with service() as c:
        done = wait(c, job["id"])
        assert done["state"] == "succeeded" and done["attempt"] == 2
        assert any("re-queued as attempt 2" in n for n in done["notes"]), done["notes"]
        assert done["result"]["url"].endswith(f"/{job['id']}/2/result.zarr")
        g = zarr.open_group(done["result"]["url"], mode="r")
        check(g["U"][...], g["S"][...], g["Vt"][...], matrix_a, 3)


def test_recovery_of_jobs_left_running(service, wait, tmp_path):
    """A crash leaves rows 'running'/'cancelling'; the next start settles them."""
    from svdserve.service._store import JobStore

    with service() as c:
        ids = [submit(c, rank=2).json()["id"] for _ in range(3)]
        for i in ids:
            wait(c, i)
    store = JobStore(str(tmp_path / "jobs.sqlite"))
    db = store._db
    db.execute("UPDATE jobs SET state='running', result=NULL, report=NULL, finished_at=NULL "
               "WHERE id=?", (ids[0],))
    db.execute("UPDATE jobs SET state='cancelling', finished_at=NULL WHERE id=?", (ids[1],))
    db.execute("UPDATE jobs SET state='running', attempt=3, finished_at=NULL WHERE id=?",
               (ids[2],))
    store.close()
    with service() as c:
        again = wait(c, ids[0])
        assert again["state"] == "succeeded" and again["attempt"] == 2
        gone = c.get(f"/v1/jobs/{ids[1]}").json()
        assert gone["state"] == "cancelled" and gone["error"]["type"] == "cancelled"
        dead = c.get(f"/v1/jobs/{ids[2]}").json()
        assert dead["state"] == "failed" and dead["error"]["type"] == "worker_lost"
        assert "3 times" in dead["error"]["message"]
