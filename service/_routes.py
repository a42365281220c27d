"""HTTP routes of API v1. Handlers validate, store and enqueue; they never compute.

Blocking calls (SQLite, Zarr metadata, file system) go through
``asyncio.to_thread``; the SVD itself runs in the runner's threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import FileResponse
from svdserve.worker import (
    UPDATABLE,
    InvalidInputError,
    SourceAccessError,
    SourceNotFoundError,
    SparsePin,
    check_feature_weights,
    check_layout,
    pin_source,
    plan,
    plan_layout,
    sparse_params,
)

from ._auth import Operator, Tenant
from ._cluster import Cluster
from ._events import ChangeFeed
from ._metrics import CONTENT_TYPE, Metrics
from ._problems import ProblemError, openapi_problems, problem_response
from ._results import Results
from ._runner import Runner
from ._sandbox import Sandbox, SandboxError
from ._schemas import Health, JobCreate, JobList, JobPublic, JobState, Ready
from ._settings import Settings
from ._store import ID_PATTERN, MIN_PREFIX, PREFIX_PATTERN, WrongState, JobRow, JobStore, QueueFull
from ._uploads import check_source

__all__ = ["router", "ops_router", "Services", "to_public"]

#: A short id: any prefix of a job id with at least this many hex digits (as git and docker).

_PROBLEM_DESCRIPTIONS = {
    400: "A job id prefix that is too short or matches several jobs (`candidates`)",
    401: "Missing or invalid bearer token",
    403: "Source outside the configured data roots",
    404: "No such job (or another tenant's), or a missing source / result key",
    409: "The job's state does not allow this (or the idempotency key is in flight)",
    413: "Request body too large",
    422: "Validation failed; `errors` names each field",
    429: "The queue is full; retry after `Retry-After` seconds",
    503: "Not ready: the scheduler is unreachable or has no workers",
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the jobs API's problem responses (RFC 9457)."""
    return openapi_problems(_PROBLEM_DESCRIPTIONS, *codes)


@dataclass
class Services:
    """What the routes need, built by :func:`svdserve.service.create_app`."""

    settings: Settings
    store: JobStore
    sandbox: Sandbox
    results: Results
    runner: Runner
    cluster: Cluster
    metrics: Metrics
    feed: ChangeFeed
    json_cache: dict = field(default_factory=dict)


async def _services(request: Request) -> Services:
    return request.app.state.services


Svc = Annotated[Services, Depends(_services)]

router = APIRouter(prefix="/v1", tags=["jobs"], responses=problems(401))
ops_router = APIRouter(tags=["operations"])

JobId = Annotated[str, Path(description="Job id (32 hex digits), or a unique prefix of it "
                                        "of at least 6 digits (400 with `candidates` when "
                                        "several of your jobs match).", max_length=64)]


# ---------------------------------------------------------------------- helpers
def to_public(row: JobRow) -> JobPublic:
    base = f"/v1/jobs/{row.id}"
    return JobPublic.model_validate({
        "id": row.id, "state": row.state, "created_at": row.created_at,
        "started_at": row.started_at, "finished_at": row.finished_at,
        "updated_at": row.updated_at, "attempt": row.attempt, "request": row.request,
        "plan": (row.params or {}).get("plan"), "shape": (row.params or {}).get("shape"),
        "method": ((row.params or {}).get("svd") or {}).get("resolved"),
        "progress": row.progress, "error": row.error, "notes": row.notes,
        "result": row.result if row.state == "succeeded" else None,
        "links": {"self": base, "report": f"{base}/report", "result": f"{base}/result",
                  "cancel": f"{base}/cancel"},
    })


def _not_found(job_id: str) -> ProblemError:
    return ProblemError(404, f"no job {job_id!r} (for this tenant)")


async def resolve_id(svc: Services, job_id: str, tenant: str) -> str:
    """The full id of the tenant's job named by ``job_id``: the id itself or a unique prefix.

    A prefix of at least :data:`MIN_PREFIX` hex digits names the one job of
    this tenant whose id starts with it; none is a 404, several a 400 listing
    them (``candidates``). Only this tenant's ids are searched, so another
    tenant's jobs are neither found nor listed.
    """
    text = job_id.strip().lower()
    if ID_PATTERN.match(text):
        return text
    if not PREFIX_PATTERN.match(text):
        raise _not_found(job_id)
    if len(text) < MIN_PREFIX:
        raise ProblemError(
            400, f"job id prefix {job_id!r} is too short: give at least {MIN_PREFIX} "
                 "characters of the id (or all 32)",
            errors=[{"field": "path.job_id", "message": f"at least {MIN_PREFIX} characters"}])
    ids = await asyncio.to_thread(svc.store.find_prefix, text, tenant, limit=11)
    if not ids:
        raise _not_found(job_id)
    if len(ids) > 1:
        shown = ids[:10]
        more = " and more" if len(ids) > 10 else ""
        raise ProblemError(
            400, f"job id prefix {job_id!r} is ambiguous: it matches {', '.join(shown)}{more}; "
                 "give more characters",
            errors=[{"field": "path.job_id", "message": "matches several jobs"}],
            extra={"candidates": shown})
    return ids[0]


async def _get_job(svc: Services, job_id: str, tenant: str) -> JobRow:
    job_id = await resolve_id(svc, job_id, tenant)
    # Polled jobs are served from the store's write-through cache, without a
    # thread hop; a miss reads SQLite in a thread.
    row = svc.store.get_cached(job_id)
    if row is None:
        row = await asyncio.to_thread(svc.store.get, job_id)
    if row is None or row.tenant != tenant:
        raise _not_found(job_id)
    return row


def _job_response(svc: Services, row: JobRow) -> Response:
    """The job as JSON, serialised once per version of the row."""
    cached = svc.json_cache.get(row.id)
    if cached is None or cached[0] != row.version:
        cached = (row.version, to_public(row).model_dump_json(by_alias=True).encode())
        svc.json_cache[row.id] = cached
        if len(svc.json_cache) > 4096:
            svc.json_cache.pop(next(iter(svc.json_cache)))
    return Response(cached[1], media_type="application/json")


def _field(name: str) -> str:
    return name if name.startswith("body.") else f"body.{name}"


def _encode_cursor(seq: int | None) -> str | None:
    """The cursor is the position to continue before; treat it as opaque."""
    return None if seq is None else str(seq)


def _body_hash(body: JobCreate) -> str:
    data = body.model_dump(mode="json")
    # Fields added later leave old hashes alone while they hold their defaults.
    for key, default in (("allow_missing_chunks", None), ("compute_u", True), ("update", None),
                         ("energy", None), ("max_rank", None), ("missing", "error"),
                         ("missing_chunks", "fill"), ("weights", None),
                         ("standardize", False), ("precision", "auto")):
        if data.get(key) == default:
            data.pop(key, None)
    if data["source"].get("sample_dims") is None:
        data["source"].pop("sample_dims", None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _location(response: Response, job_id: str) -> None:
    response.headers["Location"] = f"/v1/jobs/{job_id}"


# ---------------------------------------------------------------------- submit
async def _parent(svc: Services, body: JobCreate, tenant: str) -> JobRow:
    """The succeeded, updatable job ``body.update`` names (:mod:`svdserve.worker._update`)."""
    try:
        job_id = await resolve_id(svc, body.update, tenant)
    except ProblemError as exc:
        status = 422 if exc.status == 400 else exc.status  # a malformed id: a bad body field
        raise ProblemError(status, f"update: {exc.detail}", extra=exc.extra, errors=[
            {"field": "body.update", "message": exc.detail}]) from exc
    row = await asyncio.to_thread(svc.store.get, job_id, tenant)
    if row is None:
        raise ProblemError(404, f"update: no job {body.update!r} (for this tenant)",
                           errors=[{"field": "body.update", "message": "no such job"}])
    method = (row.params.get("svd") or {}).get("resolved")
    if method not in UPDATABLE:
        message = (f"update: job {row.id} used method {method!r}, which keeps no state that "
                   f"merges with appended rows; methods that support update: "
                   f"{', '.join(UPDATABLE)}. Submit a full job.")
        raise ProblemError(422, message, errors=[{"field": "body.update", "message": message}])
    svd_params = row.params.get("svd") or {}
    if (body.weights is not None or body.standardize or svd_params.get("weights") is not None
            or svd_params.get("standardize") or "variables" in row.params):
        message = ("update: a weighted, standardised or several-variable job keeps no state "
                   "that merges with appended rows; submit a full job")
        raise ProblemError(422, message, errors=[{"field": "body.update", "message": message}])
    if row.state != "succeeded" or not row.result:
        message = f"update: job {row.id} is {row.state}; only a succeeded job can be updated"
        raise ProblemError(409 if not row.finished else 422, message,
                           errors=[{"field": "body.update", "message": message}])
    return row


def _plan_job(body: JobCreate, shape, parent: JobRow | None):
    """The job's :class:`SVDParams`: from the request, or an update's from its parent's."""
    if parent is None:
        return plan(shape, body.rank, method=body.method, n_oversamples=body.n_oversamples,
                    n_iter=body.n_iter, center=body.center, random_state=body.random_state,
                    compute_u=body.compute_u, energy=body.energy, max_rank=body.max_rank,
                    missing=body.missing, weights=body.weights, standardize=body.standardize,
                    precision=body.precision)
    p = parent.params["svd"]
    return plan(shape, body.rank or parent.result["rank"], method=p["resolved"],
                center=p["center"], random_state=p["random_state"],
                compute_u=body.compute_u, missing=p["missing"])


async def _pin_one(svc: Services, body: JobCreate, array: str | None):
    """``(resolved, pin)`` of one array of the request's source: sandbox, then pin (4xx
    problems naming the field)."""
    try:
        resolved = await asyncio.to_thread(svc.sandbox.resolve, body.source.url,
                                           array)
    except SandboxError as exc:
        raise ProblemError(exc.status, str(exc),
                           errors=[{"field": exc.field, "message": str(exc)}]) from exc
    roots, forbidden = svc.sandbox.guard()
    settings = svc.settings
    try:
        pin = await asyncio.to_thread(
            pin_source, resolved.url, resolved.array, storage_options=resolved.storage_options,
            roots=roots, forbidden=forbidden, missing_chunks=body.missing_chunks,
            panel_bytes=settings.panel_bytes, limits=settings.limits(),
            sample_dims=body.source.sample_dims)
    except SourceNotFoundError as exc:
        raise ProblemError(404, str(exc), errors=[{"field": _field(exc.field),
                                                   "message": str(exc)}]) from exc
    except SourceAccessError as exc:
        raise ProblemError(403, str(exc), errors=[{"field": _field(exc.field),
                                                   "message": str(exc)}]) from exc
    except InvalidInputError as exc:
        raise ProblemError(422, str(exc), errors=[{"field": _field(exc.field),
                                                   "message": str(exc)}]) from exc
    except Exception as exc:  # noqa: BLE001 - unreadable metadata is the caller's input
        message = f"the source could not be opened as a Zarr array: {exc}"
        raise ProblemError(422, message, errors=[{"field": "body.source.url",
                                                  "message": message}]) from exc
    return resolved, pin


async def _validate_variables(svc: Services, body: JobCreate
                              ) -> tuple[dict, list[str], dict]:
    """:func:`_validate_source` for several variables (``array`` a list): each is pinned
    and checked alone; they must share the sample count; the plan is of the concatenation."""
    pins, layouts = [], []
    for name in body.source.array:
        resolved, pin = await _pin_one(svc, body, name)
        layouts.append(await _check_layout(svc, pin))
        pins.append(pin)
    shapes = [list(p.info.shape) for p in pins]
    if len({sh[0] for sh in shapes}) != 1:
        message = (f"the variables must share the sample dimensions; got matrices of shapes "
                   f"{shapes} for {body.source.array}")
        raise ProblemError(422, message, errors=[{"field": "body.source.array",
                                                  "message": message}])
    shape = [shapes[0][0], sum(sh[1] for sh in shapes)]
    try:
        spec = plan(shape, body.rank, method=body.method, n_oversamples=body.n_oversamples,
                    n_iter=body.n_iter, center=body.center, random_state=body.random_state,
                    compute_u=body.compute_u, energy=body.energy, max_rank=body.max_rank,
                    missing=body.missing, weights=body.weights, standardize=body.standardize,
                    precision=body.precision)
        if spec.weights is not None:
            await asyncio.to_thread(check_feature_weights, pins, spec.weights)
    except InvalidInputError as exc:
        raise ProblemError(422, str(exc), errors=[{"field": _field(exc.field),
                                                   "message": str(exc)}]) from exc
    params = {"url": resolved.url, "array": list(body.source.array),
              "shape": shape, "dtype": pins[0].info.dtype, "chunks": list(pins[0].info.chunks),
              "plan": layouts[0], "svd": spec.to_json(),
              "variables": [{"array": n, "shape": sh} for n, sh in
                            zip(body.source.array, shapes)]}
    notes = [note for p in pins for note in p.info.notes] + list(spec.notes)
    return params, notes, {"variables": [p.to_json() for p in pins]}


async def _validate_source(svc: Services, body: JobCreate, parent: JobRow | None = None
                           ) -> tuple[dict, list[str], dict]:
    """Sandbox, pin, metadata, limits and rank checks (an update's from its ``parent``).

    Returns the stored params, the notes and the pinned identity of the
    source (:meth:`svdserve.worker.SourcePin.to_json`).
    """
    if isinstance(body.source.array, list):
        if parent is not None:
            message = "update: several variables cannot be updated; submit a full job"
            raise ProblemError(422, message, errors=[{"field": "body.update",
                                                      "message": message}])
        return await _validate_variables(svc, body)
    resolved, pin = await _pin_one(svc, body, body.source.array)
    info = pin.info
    layout = await _check_layout(svc, pin)
    m, n = info.shape
    try:
        spec = _plan_job(body, info.shape, parent)
        if isinstance(pin, SparsePin):  # its stored orientation fixes the tall view
            spec = sparse_params(pin, spec, update=parent)
        if spec.weights is not None:  # "coslat" needs a latitude, an array the feature shape
            await asyncio.to_thread(check_feature_weights, pin, spec.weights)
    except InvalidInputError as exc:
        raise ProblemError(422, str(exc), errors=[{"field": _field(exc.field),
                                                   "message": str(exc)}]) from exc
    absent = pin.absent_chunks()
    layout.update({key: absent[key] for key in ("n_chunks", "absent_chunks", "fill_value")})
    params = {"url": resolved.url, "array": resolved.array, "shape": [m, n],
              "dtype": info.dtype, "chunks": list(info.chunks), "plan": layout,
              "svd": spec.to_json()}
    if parent is not None:  # lineage: the parent, and the first job of the chain
        params["update"] = {"parent": parent.id, "url": parent.result["url"],
                            "root": (parent.params.get("update") or {}).get("root", parent.id)}
    if info.sample_dims is not None:
        params.update(sample_dims=list(info.sample_dims), dims=list(info.dims),
                      nd_shape=list(info.nd_shape))
    notes = [*info.notes, *([absent["note"]] if absent["note"] else []), *spec.notes]
    if body.allow_missing_chunks is not None:
        notes.append(f"allow_missing_chunks is deprecated: this job reads absent chunks with "
                     f"missing_chunks={body.missing_chunks!r}; send missing_chunks instead")
    return params, notes, pin.to_json()


async def _check_layout(svc: Services, pin) -> dict:
    """The panel layout (stored and shown as `plan`); a 422 when one unavoidable read unit
    does not fit the smallest worker."""
    info, settings = pin.info, svc.settings
    layout = (pin.layout(settings.panel_bytes) if isinstance(pin, SparsePin)
              else plan_layout(info, panel_bytes=settings.panel_bytes))
    try:
        check_layout(layout, await svc.cluster.worker_memory(), settings.memory_fraction,
                     name=pin.ref.name, shape=info.shape, chunks=info.chunks)
    except InvalidInputError as exc:
        raise ProblemError(422, str(exc), errors=[{"field": "body.source",
                                                   "message": str(exc)}]) from exc
    return layout.to_json()


@router.post(
    "/jobs", status_code=202, response_model=JobPublic,
    summary="Submit a job",
    responses={200: {"description": "Idempotent replay: the job created earlier with this "
                                    "Idempotency-Key and body", "model": JobPublic},
               **problems(403, 404, 409, 413, 422, 429)})
async def submit_job(
    body: JobCreate, response: Response, tenant: Tenant, svc: Svc,
    idempotency_key: Annotated[str | None, Header(
        min_length=1, max_length=255, pattern=r"^[!-~]+$",
        description="Retry-safe submission: the same key and body return the same job.")
    ] = None,
) -> JobPublic:
    """Validate the source and parameters, store the job (state `queued`) and answer 202.

    The row is committed before the answer. `rank > min(m, n)` is a 422;
    `rank + n_oversamples > min(m, n)` clips `n_oversamples` and adds a note
    (randomized jobs only). The source is pinned here: the job reads exactly
    the metadata and chunk files checked now, or fails with `storage_error`.
    A layout beyond the sanity limits (`SVDSERVE_MAX_CHUNKS`, `_MAX_PANELS`,
    `_MAX_BAND_BYTES`) or a chunk size < 1 is a 422 naming `body.source`, as
    is a compressed chunk that must be decoded whole but would take more than
    `SVDSERVE_MEMORY_FRACTION` of the smallest worker's memory. The answer's
    `plan` says how the matrix will be cut (panel shape, panels, peak bytes).
    """
    key_reserved = False
    if idempotency_key is not None:
        outcome, job_id = await asyncio.to_thread(svc.store.reserve_key, tenant,
                                                  idempotency_key, _body_hash(body))
        if outcome == "replay":
            row = await asyncio.to_thread(svc.store.get, job_id, tenant)
            if row is not None:
                response.status_code = 200
                _location(response, row.id)
                return to_public(row)
        elif outcome == "mismatch":
            raise ProblemError(
                422, "this Idempotency-Key was used with a different request body; use a new "
                     "key for a different job",
                errors=[{"field": "header.idempotency-key",
                         "message": "already used with a different body"}])
        elif outcome == "in_flight":
            raise ProblemError(409, "a request with this Idempotency-Key is still being "
                                    "processed; retry shortly", headers={"Retry-After": "1"})
        key_reserved = outcome == "new"
    try:
        arrays = body.source.array if isinstance(body.source.array, list) else [
            body.source.array]
        for array in arrays:  # another tenant's upload: 404
            await asyncio.to_thread(check_source, svc.settings, svc.sandbox, body.source.url,
                                    array, tenant)
        parent = None if body.update is None else await _parent(svc, body, tenant)
        params, notes, pin = await _validate_source(svc, body, parent)
        row = await asyncio.to_thread(
            svc.store.create, tenant, body.model_dump(mode="json"), params, notes=notes,
            idempotency_key=idempotency_key if key_reserved else None,
            max_queued=svc.settings.max_queued_jobs, pin=pin)
    except QueueFull as exc:
        if key_reserved:
            await asyncio.to_thread(svc.store.release_key, tenant, idempotency_key)
        raise ProblemError(429, f"the job queue is full ({exc}); retry later",
                           headers={"Retry-After": "5"}) from exc
    except BaseException:
        if key_reserved:
            await asyncio.to_thread(svc.store.release_key, tenant, idempotency_key)
        raise
    svc.metrics.submitted.inc()
    svc.runner.submitted(row)
    _location(response, row.id)
    return to_public(row)


# ---------------------------------------------------------------------- read
@router.get("/jobs/{job_id}", response_model=JobPublic, summary="Get a job",
            responses=problems(400, 404, 422))
async def get_job(
    job_id: JobId, tenant: Tenant, svc: Svc,
    wait: Annotated[float | None, Query(
        ge=0, le=60, description="Long-poll: wait up to this many seconds for a change of "
                                 "state or progress.")] = None,
) -> Any:
    """The job's state, progress, error and result links."""
    job_id = await resolve_id(svc, job_id, tenant)
    if wait:
        event = svc.feed.subscribe(job_id)
        try:
            row = await _get_job(svc, job_id, tenant)
            if not row.finished:
                try:
                    await asyncio.wait_for(event.wait(), timeout=wait)
                except TimeoutError:
                    pass
                row = await _get_job(svc, job_id, tenant)
        finally:
            svc.feed.unsubscribe(job_id, event)
        return _job_response(svc, row)
    return _job_response(svc, await _get_job(svc, job_id, tenant))


@router.get("/jobs", response_model=JobList, summary="List jobs, newest first",
            responses=problems(400, 404, 422))
async def list_jobs(
    tenant: Tenant, svc: Svc,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$",
                                        description="`next_cursor` of the previous page.")
                      ] = None,
    lineage: Annotated[str | None, Query(
        min_length=1, max_length=64, description="A job id (or unique prefix): list its "
        "chain of updates instead, oldest first (the first job, then each update).")] = None,
) -> JobList:
    if lineage is not None:
        row = await _get_job(svc, lineage, tenant)
        root = (row.params.get("update") or {}).get("root", row.id)
        rows = await asyncio.to_thread(svc.store.lineage, tenant, root)
        return JobList(items=[to_public(r) for r in rows])
    before = int(cursor) if cursor is not None else None
    rows, last = await asyncio.to_thread(svc.store.list, tenant, state=state, limit=limit,
                                         before=before)
    return JobList(items=[to_public(r) for r in rows], next_cursor=_encode_cursor(last))


# ---------------------------------------------------------------------- cancel / delete
@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobPublic,
             summary="Cancel a queued or running job",
             responses=problems(400, 404, 409, 422))
async def cancel_job(job_id: JobId, tenant: Tenant, svc: Svc) -> JobPublic:
    """A queued job is cancelled at once; a running one becomes `cancelling` and stops
    at its next panel (its outstanding tasks are released)."""
    job_id = await resolve_id(svc, job_id, tenant)
    try:
        row = await asyncio.to_thread(svc.store.request_cancel, job_id, tenant)
    except WrongState as exc:
        raise ProblemError(409, f"{exc}; only queued or running jobs can be cancelled") from exc
    if row is None:
        raise _not_found(job_id)
    if row.state == "cancelling":
        svc.runner.cancel(job_id)
    svc.runner.wake()
    return to_public(row)


@router.delete("/jobs/{job_id}", status_code=204, response_class=Response,
               summary="Delete a finished job and its results",
               responses=problems(400, 404, 409, 422))
async def delete_job(job_id: JobId, tenant: Tenant, svc: Svc) -> Response:
    job_id = await resolve_id(svc, job_id, tenant)
    try:
        row = await asyncio.to_thread(svc.store.delete, job_id, tenant)
    except WrongState as exc:
        raise ProblemError(409, str(exc)) from exc
    if row is None:
        raise _not_found(job_id)
    await asyncio.to_thread(svc.results.remove, svc.results.job_dir(row.tenant, row.id))
    return Response(status_code=204)


# ---------------------------------------------------------------------- results
@router.get("/jobs/{job_id}/report", response_model=dict[str, Any],
            summary="The energy report of a succeeded job",
            responses=problems(400, 404, 409, 422))
async def get_report(job_id: JobId, tenant: Tenant, svc: Svc) -> dict[str, Any]:
    row = await _get_job(svc, job_id, tenant)
    if row.state != "succeeded" or row.report is None:
        raise ProblemError(409, f"job {row.id} is {row.state}; the report exists once it has "
                                "succeeded")
    return row.report


def _content_type(key: str) -> str:
    if key.endswith(".json") or key.rsplit("/", 1)[-1] in (".zarray", ".zgroup", ".zattrs",
                                                           ".zmetadata"):
        return "application/json"
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


@router.get(
    "/jobs/{job_id}/result/{key:path}",
    summary="Read-only Zarr store of a succeeded job's result",
    response_class=Response,
    responses={200: {"description": "Raw bytes of one key of result.zarr",
                     "content": {"application/octet-stream": {}, "application/json": {}}},
               **problems(400, 404, 409, 422)})
async def get_result_key(job_id: JobId, key: str, tenant: Tenant, svc: Svc) -> Response:
    """Serve `result.zarr` over HTTP, read-only; a missing key is 404 so Zarr can probe.

    Open it with `zarr.open_group("http://host/v1/jobs/{id}/result", mode="r",
    storage_options={"headers": {"Authorization": "Bearer <token>"}})`.
    """
    row = await _get_job(svc, job_id, tenant)
    if row.state != "succeeded" or not row.result:
        raise ProblemError(409, f"job {row.id} is {row.state}; it has no result to serve")
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\x00" in key:
        raise ProblemError(404, f"no key {key!r} in the result")
    url = row.result["url"]
    results = svc.results
    if not await asyncio.to_thread(results.complete, url):
        raise ProblemError(404, "the result is not complete (no manifest)")
    if not results.remote:
        path = await asyncio.to_thread(results.local_file, url, key)
        if path is None:
            raise ProblemError(404, f"no key {key!r} in the result")
        return FileResponse(path, media_type=_content_type(key))
    data = await asyncio.to_thread(results.read, url, key)
    if data is None:
        raise ProblemError(404, f"no key {key!r} in the result")
    return Response(data, media_type=_content_type(key))


router.add_api_route("/jobs/{job_id}/result/{key:path}", get_result_key, methods=["HEAD"],
                     include_in_schema=False, response_class=Response,
                     operation_id="head_result_key")


# ---------------------------------------------------------------------- operations
@ops_router.get("/v1/health", response_model=Health, summary="Liveness")
async def health() -> Health:
    """Always 200 while the process serves HTTP; needs no token."""
    return Health()


@ops_router.get("/v1/ready", response_model=Ready, summary="Readiness",
                responses=problems(401, 503))
async def ready(request: Request, tenant: Tenant, svc: Svc) -> Any:
    """Ready when the scheduler answers and has at least one worker.

    Tenants see the number of workers, never the scheduler's address.
    """
    reachable, workers = await svc.cluster.probe()
    svc.metrics.workers.set(workers)
    body = {"ready": reachable and workers > 0, "workers": workers}
    if body["ready"]:
        return body
    why = "the scheduler is not reachable" if not reachable else "the cluster has no workers"
    return problem_response(request, 503, f"not ready: {why}", extra=body,
                            headers={"Retry-After": "2"})


@ops_router.get("/metrics", summary="Prometheus metrics", response_class=Response,
                responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Metrics"},
                           **problems(401, 403)})
async def metrics(operator: Operator, svc: Svc) -> Response:
    """Every tenant's activity: an operator endpoint (`SVDSERVE_METRICS_TOKEN`)."""
    data = await asyncio.to_thread(svc.metrics.render)
    return Response(data, media_type=CONTENT_TYPE)

