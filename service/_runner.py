"""The job runner: one dispatcher, bounded concurrency, cooperative cancel.

The dispatcher (an asyncio task started in the lifespan) claims the oldest
queued job while fewer than ``max_concurrent_jobs`` run, and runs each in a
thread of its own pool: :func:`svdserve.worker.svd` blocks, so it gets a
*synchronous* ``distributed.Client`` to the service's scheduler and never
touches the event loop.

The core calls ``progress(done, total, phase)`` after every panel. The
runner's callback writes progress to the job row (throttled) and raises
:class:`CancelRequested` when the job was cancelled -- the core then releases
its outstanding futures and re-raises, so no orphan work keeps the cluster
busy. On shutdown it raises :class:`ServiceStopping` and the job goes back
to the queue as the next attempt.

Outcomes::

    svd returns, manifest present   -> succeeded (cancelled if a cancel won the race)
    SourceChangedError              -> failed, storage_error (the pinned source changed,
                                       vanished or now leads out of the data roots)
    CancelRequested                    -> cancelled, partial result removed
    ServiceStopping                 -> queued again as attempt + 1
    any other SVDError              -> failed, its ``.type`` (non_finite_values,
                                       worker_lost, invalid_input, storage_error, ...)
    KilledWorker, a lost scheduler, -> translated by the worker's one table
    an OSError                         (svdserve.worker._errors.EXC_MAP), then as above
    anything else                   -> failed, internal (logged with traceback)

A failed or cancelled attempt's directory is removed, so nothing that looks
like a result is left behind.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from svdserve.worker import (
    Phase,
    SourcePin,
    StorageError,
    SVDError,
    SVDParams,
    SVDResult,
    pin_source,
    plan,
    svd,
)
from svdserve.worker._errors import map_exception

from ._cluster import Cluster
from ._errors import ServiceError
from ._metrics import Metrics
from ._results import Results
from ._sandbox import options_for
from ._settings import Settings
from ._store import JobRow, JobStore

__all__ = ["Runner", "CancelRequested", "ServiceStopping"]

log = logging.getLogger("svdserve.service")


class CancelRequested(ServiceError):
    """Raised from the progress callback when the job was cancelled."""


class ServiceStopping(ServiceError):
    """Raised from the progress callback when the service shuts down."""


class _Control:
    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.stop = threading.Event()


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


class Runner:
    """Runs queued jobs on the cluster.

    Parameters
    ----------
    settings : Settings
    store : JobStore
    results : Results
    cluster : Cluster
    metrics : Metrics
    guard : tuple of (roots, forbidden), optional
        Local real paths reads must stay inside / out of, for jobs stored
        without a pinned source (:meth:`Sandbox.guard`).
    """

    def __init__(self, settings: Settings, store: JobStore, results: Results,
                 cluster: Cluster, metrics: Metrics, guard: tuple = ((), ())):
        self.guard = guard
        self.settings, self.store, self.results = settings, store, results
        self.cluster, self.metrics = cluster, metrics
        self._pool = ThreadPoolExecutor(max_workers=settings.max_concurrent_jobs,
                                        thread_name_prefix="svdserve-job")
        self._running: dict[str, _Control] = {}
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._dispatcher: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Recover jobs a previous run left behind, then start dispatching."""
        touched = await asyncio.to_thread(self.store.recover, self.settings.max_attempts)
        for before, after in touched:
            log.warning("job %s was %s at start-up (attempt %d): now %s, attempt %d",
                        before.id, before.state, before.attempt, after.state, after.attempt)
            await asyncio.to_thread(self.results.remove_attempt, before.tenant, before.id,
                                    before.attempt)
        self._dispatcher = asyncio.create_task(self._dispatch(), name="svdserve-dispatcher")

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop dispatching; running jobs stop at their next panel and are re-queued."""
        self._stopping = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            try:
                await self._dispatcher
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        for ctl in self._running.values():
            ctl.stop.set()
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            if pending:
                log.warning("%d job(s) did not stop within %.0f s; they will be re-queued at "
                            "the next start", len(pending), timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        """Tell the dispatcher that the queue may have changed."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Ask a running job to stop at its next panel (the row says ``cancelling``)."""
        ctl = self._running.get(job_id)
        if ctl is not None:
            ctl.cancel.set()

    @property
    def running(self) -> int:
        return len(self._running)

    # ------------------------------------------------------------------ dispatch
    async def _dispatch(self) -> None:
        while not self._stopping:
            await self.cluster.check()
            await self.cluster.connected.wait()
            self._wake.clear()
            try:
                while len(self._running) < self.settings.max_concurrent_jobs:
                    job = await asyncio.to_thread(self.store.claim_next)
                    if job is None:
                        break
                    ctl = _Control()
                    self._running[job.id] = ctl
                    task = asyncio.create_task(self._run(job, ctl), name=f"job-{job.id}")
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep the dispatcher alive
                log.exception("dispatcher error; retrying")
                await asyncio.sleep(1.0)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=2.0)
            except TimeoutError:
                pass

    async def _run(self, job: JobRow, ctl: _Control) -> None:
        wait = _seconds(job.created_at, job.started_at)
        if wait is not None and job.attempt == 1:
            self.metrics.queue_wait.observe(wait)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._pool, self._execute, job, ctl)
        except Exception:  # noqa: BLE001 - _execute records its own failures
            log.exception("job %s: runner error", job.id)
        finally:
            self._running.pop(job.id, None)
            self.wake()

    # ------------------------------------------------------------------ one job (thread)
    def _execute(self, job: JobRow, ctl: _Control) -> None:
        row = self.store.get(job.id)
        if row is None or row.state == "cancelling":
            ctl.cancel.set()
        req, params = job.request, job.params
        out = self.results.url(job.tenant, job.id, job.attempt)
        last = {"key": None, "t": 0.0, "pass": 0, "passes": 0, "state": None}
        progress = self._progress_callback(job, ctl, last)

        source = params["url"]
        options = options_for(source, self.settings.fs_options())
        # Jobs stored before missing_chunks existed said allow_missing_chunks (default false).
        missing_chunks = req.get("missing_chunks") or (
            "fill" if req.get("allow_missing_chunks") else "error")
        try:
            if ctl.cancel.is_set():
                raise CancelRequested(f"job {job.id} cancelled")
            self.results.prepare(out)
            # The source pinned at submit: svd re-lists it before the first read
            # and after the last, and every read checks its chunk against it.
            pinned = self.store.get_pin(job.id)
            if pinned is not None:
                source = SourcePin.from_json(pinned).with_options(storage_options=options)
            else:  # a job stored before pins existed: pin it now, inside the roots
                roots, forbidden = self.guard
                source = pin_source(source, params.get("array"), storage_options=options,
                                    roots=roots, forbidden=forbidden,
                                    missing_chunks=missing_chunks,
                                    panel_bytes=self.settings.panel_bytes,
                                    limits=self.settings.limits(),
                                    sample_dims=params.get("sample_dims"))
            res = svd(source, **_svd_params(job).svd_kwargs(),
                      missing_chunks=missing_chunks,
                      panel_cache=self.settings.panel_cache, reader=self.settings.reader,
                      client=self.cluster.sync_client,
                      storage_options=options, out=out,
                      out_storage_options=self.results.out_options,
                      panel_bytes=self.settings.panel_bytes, progress=progress,
                      memory_fraction=self.settings.memory_fraction,
                      no_workers_timeout=self.settings.no_workers_timeout)
            if not self.results.complete(out):
                raise StorageError(f"the result at {out} has no manifest")
        except CancelRequested:
            self.results.remove_attempt(job.tenant, job.id, job.attempt)
            where = (f" during pass {last['pass']} of {last['passes']}" if last["passes"]
                     else " before its first panel finished")
            self._finish(job, "cancelled", error={
                "type": "cancelled",
                "message": f"cancelled by request{where}; outstanding tasks were released"})
            return
        except ServiceStopping:
            self._requeue(job)
            return
        except BaseException as exc:  # noqa: BLE001 - every failure is recorded
            self.results.remove_attempt(job.tenant, job.id, job.attempt)
            self._finish(job, "failed", error=_error_of(exc, job))
            return

        self._succeed(job, res, out)

    def _progress_callback(self, job: JobRow, ctl: _Control, last: dict):
        """``progress(done, total, phase)`` for the core: stores progress (throttled)
        in the job row, notes the pass in ``last`` and raises on cancel or stop."""
        interval = self.settings.progress_interval

        def progress(done: int, total: int, phase: Phase) -> None:
            if ctl.cancel.is_set():
                raise CancelRequested(f"job {job.id} cancelled")
            if ctl.stop.is_set():
                raise ServiceStopping(f"service stopping; job {job.id} re-queued")
            self.metrics.panels.inc()
            last["pass"], last["passes"] = phase.pass_no, phase.passes
            now = time.monotonic()
            key = (phase.name, phase.pass_no)
            state = {"phase": phase.name, "pass": phase.pass_no, "passes": phase.passes,
                     "done": int(done), "total": int(total), "plan": job.params.get("plan")}
            if state == last["state"]:
                return
            if key != last["key"] or done >= total or now - last["t"] >= interval:
                last["key"], last["t"], last["state"] = key, now, state
                self.store.set_progress(job.id, job.attempt, state)

        return progress

    def _succeed(self, job: JobRow, res: SVDResult, out: str) -> None:
        """Record a finished run -- unless a cancel arrived after its last panel."""
        result = {"url": out, "http": f"/v1/jobs/{job.id}/result",
                  "shape": list(job.params["shape"]), "rank": int(res.S.size),
                  "method": res.method}
        # the run's events, then what the report says a user must know (report["notes"])
        events = [str(e) for e in res.events] + list(res.report.get("notes") or [])
        # res.report is JSON-safe already (svdserve.worker.energy_report)
        done = self.store.finish(job.id, job.attempt, "succeeded", result=result,
                                 report=res.report, notes=events, from_states=("running",))
        if done is not None:
            self._observe(done)
            return
        # A cancel arrived after the last panel: the cancel wins, the result goes.
        self.results.remove_attempt(job.tenant, job.id, job.attempt)
        self._finish(job, "cancelled", error={
            "type": "cancelled",
            "message": "cancelled by request just as the job finished; its result was removed"})

    def _requeue(self, job: JobRow) -> None:
        """The service stops: the attempt's output goes, the job is queued again."""
        self.results.remove_attempt(job.tenant, job.id, job.attempt)
        after = self.store.requeue(
            job.id, job.attempt,
            f"the service stopped while attempt {job.attempt} was running; "
            f"re-queued as attempt {job.attempt + 1}")
        if after is None:  # cancelled meanwhile
            self._finish(job, "cancelled", error={
                "type": "cancelled", "message": "cancelled while the service stopped"})

    def _finish(self, job: JobRow, state: str, *, error: dict) -> None:
        row = self.store.finish(job.id, job.attempt, state, error=error)
        if row is not None:
            self._observe(row)

    def _observe(self, row: JobRow) -> None:
        self.metrics.finished.labels(row.state).inc()
        seconds = _seconds(row.started_at, row.finished_at)
        if seconds is not None:
            self.metrics.duration.labels(row.state).observe(seconds)


def _error_of(exc: BaseException, job: JobRow) -> dict:
    """The typed error stored with a failed job."""
    err = map_exception(exc)
    if isinstance(err, SVDError):  # the message says what happened and what to do
        return {"type": err.type, "message": str(err)}
    log.error("job %s failed unexpectedly", job.id, exc_info=exc)
    return {"type": "internal", "message": (
        f"the job failed unexpectedly ({type(exc).__name__}: {exc}); this is a bug in "
        "svdserve, please report it with the job id")}


def _svd_params(job: JobRow) -> SVDParams:
    """The job's validated parameters, as the submit route planned them.

    A job stored before plans were stored (no ``params["svd"]``) is planned
    again from its request, as the route would have.
    """
    if "svd" in job.params:
        return SVDParams.from_json(job.params["svd"])
    req, params = job.request, job.params
    m, n = params["shape"]
    return plan(params["shape"], req.get("rank"), method=req["method"],
                n_oversamples=req["n_oversamples"], n_iter=req["n_iter"], center=req["center"],
                random_state=req["random_state"],
                compute_u=req.get("compute_u", True) or m < n, energy=req.get("energy"),
                max_rank=req.get("max_rank"), missing=req.get("missing", "error"))
