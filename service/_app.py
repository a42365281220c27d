"""The FastAPI application and its lifespan.

Start-up: open the SQLite store, start (or connect to) the Dask cluster,
recover jobs a previous run left ``running``, start the dispatcher.
Shutdown: stop the dispatcher, let running jobs stop at their next panel
(they are re-queued as the next attempt), close the clients and the
embedded cluster, close the store.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

import svdserve

from . import _problems
from ._auth import TokenAuth
from ._cluster import Cluster
from ._events import ChangeFeed
from ._metrics import Metrics
from ._middleware import ServiceMiddleware
from ._pages import install_pages, pages_router
from ._results import Results
from ._routes import Services, ops_router, problems, router
from ._runner import Runner
from ._sandbox import Sandbox
from ._schemas import Problem
from ._settings import Settings
from ._store import JobStore
from ._upload_store import STATE_DIR
from ._uploads import is_block_upload, make_store
from ._uploads import router as uploads_router

__all__ = ["create_app"]

log = logging.getLogger("svdserve.service")

_DESCRIPTION = """\
Distributed, out-of-core truncated SVD jobs over Zarr matrices.

Submit a job (`POST /v1/jobs`), follow it (`GET /v1/jobs/{id}?wait=30`), read the
energy report (`/report`) and the factors (`/result/...`, a read-only Zarr store).
Errors are RFC 9457 `application/problem+json`. When tokens are configured every
route except `/v1/health` needs `Authorization: Bearer <token>`.

For people: the jobs at `/`, one job with its energy report drawn at `/jobs/{id}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service.

    Parameters
    ----------
    settings : Settings, optional
        Default: read from the ``SVDSERVE_*`` environment.

    Returns
    -------
    fastapi.FastAPI
        Serve it with uvicorn (``svdserve serve`` does).
    """
    settings = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        feed = ChangeFeed(loop)
        db = settings.database
        await asyncio.to_thread(os.makedirs, os.path.dirname(db) or ".", exist_ok=True)
        if not settings.results_root.startswith("s3://"):
            await asyncio.to_thread(os.makedirs, settings.results_root, exist_ok=True)
        store = await asyncio.to_thread(
            JobStore, db, feed.notify_threadsafe,
            tenant_queued=settings.max_queued_jobs_per_tenant,
            tenant_running=settings.max_running_jobs_per_tenant)
        options = settings.fs_options()
        sandbox = Sandbox([*settings.data_roots, settings.uploads_root], storage_options=options,
                          forbidden=[settings.results_root, db, db + "-wal", db + "-shm",
                                     db + "-journal",
                                     os.path.join(settings.uploads_root, STATE_DIR)])
        results = Results(settings.results_root, options)
        metrics = Metrics(store.count_by_state)
        cluster = Cluster(settings)
        runner = Runner(settings, store, results, cluster, metrics, guard=sandbox.guard())
        app.state.services = Services(settings=settings, store=store, sandbox=sandbox,
                                      results=results, runner=runner, cluster=cluster,
                                      metrics=metrics, feed=feed)
        try:
            await cluster.start()
            await runner.start()
            log.info("svdserve ready: scheduler %s, data roots %s, results %s",
                     cluster.address, settings.data_roots, settings.results_root)
            announce = getattr(app.state, "announce", None)
            if announce:  # set by `svdserve serve`: the pages' address, whatever the log level
                print(announce, flush=True)
            yield
        finally:
            feed.wake_all()
            await runner.stop()
            await cluster.close()
            await asyncio.to_thread(store.close)

    # /docs and /redoc come from _pages, with their assets served locally
    app = FastAPI(title="svdserve", version=svdserve.__version__, description=_DESCRIPTION,
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.auth = TokenAuth(settings.tenant_tokens(), settings.metrics_token
                               and settings.metrics_token.get_secret_value())
    _problems.install(app)
    app.add_middleware(ServiceMiddleware, max_body_bytes=settings.max_body_bytes,
                       streamed=is_block_upload)
    app.state.uploads = make_store(settings)
    app.include_router(router)
    app.include_router(ops_router)
    app.include_router(uploads_router)
    install_pages(app)
    app.state.method_table = [(r.path_regex, frozenset(r.methods))
                              for r in (*router.routes, *ops_router.routes,
                                        *uploads_router.routes, *pages_router.routes)
                              if getattr(r, "methods", None)]

    app.openapi = functools.partial(_openapi, app)
    return app


def _openapi(app: FastAPI) -> dict:
    """The OpenAPI schema with problem details in place of FastAPI's validation errors."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version,
                         description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(problem.pop("$defs", {}))
    components["Problem"] = problem
    validation_problem = problems(422)[422]
    for path_item in schema.get("paths", {}).values():
        for op in path_item.values():
            responses = op.get("responses", {})
            if "422" in responses and "application/json" in responses["422"].get(
                    "content", {}):
                responses["422"] = validation_problem
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    app.openapi_schema = schema
    return schema
