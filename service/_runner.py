"""The job runner: one dispatcher, bounded concurrency, cooperative cancel.

The dispatcher (an asyncio task started in the lifespan) claims the next
queued job -- fair between tenants, FIFO within one (:meth:`JobStore.claim_next`)
-- while fewer than ``max_concurrent_jobs`` run, and runs each in a
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
like a result is left behind: the core waits for its write tasks to stop
before it re-raises, and the results root is swept of attempt directories
without a manifest that no running job owns at start-up and after every job
(:meth:`Results.sweep`).

Faults:

- Cancel and shutdown interrupt a pass within milliseconds, even while no
  panel finishes (the core polls :meth:`_Control.check` while it waits).
- A pass in which no task finishes within the deadline
  (``SVDSERVE_TASK_DEADLINE``, scaled by the measured task cost) retires
  workers that do not answer a ping, as lost workers.
- Progress writes are best effort: a database that refuses one is logged, the
  job goes on. State writes (succeeded, failed, cancelled, re-queued) are
  retried with backoff (at most ``SVDSERVE_STATE_RETRY_MAX`` seconds apart)
  until the database takes them; if the service stops first, the job is
  still ``running`` in the database and is re-queued at the next start.
- An error raised after shutdown began (a closed client) re-queues the job.

Every job event is one log line (logger ``svdserve.service``, with the
fields ``event``, ``job``, ``tenant`` and more as ``extra``): ``submit``,
``start``, ``pass``, ``end`` (with ``state`` and ``error_type``), ``requeue``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
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
    map_exception,
    pin_source,
    plan,
    svd,
)

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
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.cancel = threading.Event()
        self.stop = threading.Event()

    def check(self) -> None:
        """Raise when the job should stop now (the core calls it while it waits)."""
        if self.cancel.is_set():
            raise CancelRequested(f"job {self.job_id} cancelled")
        if self.stop.is_set():
            raise ServiceStopping(f"service stopping; job {self.job_id} re-queued")


def job_event(event: str, job: JobRow, message: str, *args, level: int = logging.INFO,
              **fields) -> None:
    """One log line for a job event; ``fields`` go to the record (JSON logs show them)."""
    extra = {"event": event, "job": job.id, "tenant": job.tenant, "attempt": job.attempt,
             **fields}
    log.log(level, "job %s " + message, job.id, *args, extra=extra)


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
        await asyncio.to_thread(self.sweep)
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

    def submitted(self, row: JobRow) -> None:
        """A job was accepted: log it and wake the dispatcher."""
        params, req = row.params, row.request
        method = (params.get("svd") or {}).get("resolved") or req.get("method")
        rank = (f"rank {req['rank']}" if req.get("rank") is not None
                else f"energy {req.get('energy')}")
        job_event("submit", row, "submitted by tenant %s: %s, %s, method %s", row.tenant,
                  "x".join(map(str, params.get("shape") or ())) or "?", rank, method,
                  method=method, shape=params.get("shape"))
        self.wake()

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
                    ctl = _Control(job.id)
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
        await asyncio.to_thread(self.sweep)

    def sweep(self) -> None:
        """Remove attempt directories with no manifest that no running job owns."""
        try:
            self.results.sweep(self.store.active_attempts)
        except (OSError, sqlite3.Error):
            log.warning("could not sweep the results root %s", self.results.root,
                        exc_info=True)

    # ------------------------------------------------------------------ one job (thread)
    def _execute(self, job: JobRow, ctl: _Control) -> None:
        row = self.store.get(job.id)
        if row is None or row.state == "cancelling":
            ctl.cancel.set()
        job_event("start", job, "started (attempt %d, tenant %s)", job.attempt, job.tenant)
        out = self.results.url(job.tenant, job.id, job.attempt)
        last = {"key": None, "t": 0.0, "pass": 0, "passes": 0, "state": None,
                "warned": False}
        try:
            ctl.check()
            self.results.prepare(out)
            res = self._svd(job, ctl, out, self._progress_callback(job, ctl, last))
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
            if ctl.stop.is_set():  # e.g. the client closed under a job that did not stop
                log.warning("job %s: %s after shutdown began; re-queued", job.id,
                            type(exc).__name__)
                self._requeue(job)
                return
            self.results.remove_attempt(job.tenant, job.id, job.attempt)
            self._finish(job, "failed", error=_error_of(exc, job))
            return

        self._succeed(job, res, out)

    def _svd(self, job: JobRow, ctl: _Control, out: str, progress) -> SVDResult:
        """Run the core on the job's pinned source with its stored spec, writing to ``out``."""
        req, params = job.request, job.params
        source = params["url"]
        options = options_for(source, self.settings.fs_options())
        # Jobs stored before missing_chunks existed said allow_missing_chunks (default false).
        missing_chunks = req.get("missing_chunks") or (
            "fill" if req.get("allow_missing_chunks") else "error")
        # The source pinned at submit: svd re-lists it before the first read
        # and after the last, and every read checks its chunk against it.
        pinned = self.store.get_pin(job.id)
        if pinned is not None and "variables" in pinned:  # several variables, each pinned
            source = [SourcePin.from_json(p).with_options(storage_options=options)
                      for p in pinned["variables"]]
        elif pinned is not None:
            source = SourcePin.from_json(pinned).with_options(storage_options=options)
        else:  # a job stored before pins existed: pin it now, inside the roots
            roots, forbidden = self.guard
            source = pin_source(source, params.get("array"), storage_options=options,
                                roots=roots, forbidden=forbidden,
                                missing_chunks=missing_chunks,
                                panel_bytes=self.settings.panel_bytes,
                                limits=self.settings.limits(),
                                sample_dims=params.get("sample_dims"))
        return svd(source, spec=_svd_params(job), execution=self.settings.execution(),
                   missing_chunks=missing_chunks, client=self.cluster.sync_client,
                   storage_options=options, out=out,
                   out_storage_options=self.results.out_options, progress=progress,
                   interrupt=ctl.check)

    def _progress_callback(self, job: JobRow, ctl: _Control, last: dict):
        """``progress(done, total, phase)`` for the core: stores progress (throttled,
        best effort) in the job row, notes the pass in ``last`` and raises on cancel
        or stop."""
        interval = self.settings.progress_interval

        def progress(done: int, total: int, phase: Phase) -> None:
            ctl.check()
            self.metrics.panels.inc()
            if phase.pass_no != last["pass"] and phase.pass_no:
                job_event("pass", job, "pass %d of %d (%s)", phase.pass_no, phase.passes,
                          phase.name, pass_no=phase.pass_no, passes=phase.passes,
                          phase=phase.name)
            last["pass"], last["passes"] = phase.pass_no, phase.passes
            now = time.monotonic()
            key = (phase.name, phase.pass_no)
            state = {"phase": phase.name, "pass": phase.pass_no, "passes": phase.passes,
                     "done": int(done), "total": int(total), "plan": job.params.get("plan")}
            if state == last["state"]:
                return
            if key != last["key"] or done >= total or now - last["t"] >= interval:
                last["key"], last["t"], last["state"] = key, now, state
                self._write_progress(job, state, last)

        return progress

    def _write_progress(self, job: JobRow, state: dict, last: dict) -> None:
        """Progress is best effort: a database that refuses it does not stop the job."""
        try:
            self.store.set_progress(job.id, job.attempt, state)
        except sqlite3.Error as exc:
            if not last["warned"]:  # once per job, not once per panel
                last["warned"] = True
                log.warning("job %s: progress not recorded (%s: %s); the job goes on",
                            job.id, type(exc).__name__, exc)

    def _write_state(self, job: JobRow, what: str, fn, *args, **kwargs):
        """A job-state write, retried with backoff until the database takes it.

        Returns what ``fn`` returns, or :data:`_NOT_WRITTEN` when the service
        stopped first (the job is still ``running`` in the database and is
        re-queued at the next start).
        """
        pause = 0.1
        while True:
            try:
                return fn(*args, **kwargs)
            except sqlite3.Error as exc:
                if self._stopping:
                    log.warning("job %s: could not record %s (%s: %s) before the service "
                                "stopped; it is re-queued at the next start", job.id, what,
                                type(exc).__name__, exc)
                    return _NOT_WRITTEN
                log.warning("job %s: could not record %s (%s: %s); retrying in %.1f s",
                            job.id, what, type(exc).__name__, exc, pause)
            time.sleep(pause)
            pause = min(2 * pause, self.settings.state_retry_max)

    def _succeed(self, job: JobRow, res: SVDResult, out: str) -> None:
        """Record a finished run -- unless a cancel arrived after its last panel."""
        result = {"url": out, "http": f"/v1/jobs/{job.id}/result",
                  "shape": list(job.params["shape"]), "rank": int(res.S.size),
                  "method": res.method}
        # the run's events, then what the report says a user must know (report["notes"])
        events = [str(e) for e in res.events] + list(res.report.get("notes") or [])
        # res.report is JSON-safe already (svdserve.worker.energy_report)
        done = self._write_state(job, "its success", self.store.finish, job.id, job.attempt,
                                 "succeeded", result=result, report=res.report, notes=events,
                                 from_states=("running",))
        if done is _NOT_WRITTEN:
            return
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
        after = self._write_state(
            job, "its re-queue", self.store.requeue, job.id, job.attempt,
            f"the service stopped while attempt {job.attempt} was running; "
            f"re-queued as attempt {job.attempt + 1}")
        if after is _NOT_WRITTEN:
            return
        if after is None:  # cancelled meanwhile
            self._finish(job, "cancelled", error={
                "type": "cancelled", "message": "cancelled while the service stopped"})
            return
        job_event("requeue", job, "re-queued as attempt %d (the service stopped)",
                  after.attempt)

    def _finish(self, job: JobRow, state: str, *, error: dict) -> None:
        row = self._write_state(job, f"its end ({state})", self.store.finish, job.id,
                                job.attempt, state, error=error)
        if row is not None and row is not _NOT_WRITTEN:
            self._observe(row)

    def _observe(self, row: JobRow) -> None:
        error = row.error or {}
        job_event("end", row, "%s%s", row.state,
                  f" ({error.get('type')}): {error.get('message')}" if error else "",
                  level=logging.INFO if row.state == "succeeded" else logging.WARNING,
                  state=row.state, error_type=error.get("type"))
        self.metrics.finished.labels(row.state).inc()
        seconds = _seconds(row.started_at, row.finished_at)
        if seconds is not None:
            self.metrics.duration.labels(row.state).observe(seconds)


#: What :meth:`Runner._write_state` returns when the service stopped before the write.
_NOT_WRITTEN = object()


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
    return plan(params["shape"], req.get("rank"), method=req["method"],
                n_oversamples=req["n_oversamples"], n_iter=req["n_iter"], center=req["center"],
                random_state=req["random_state"],
                compute_u=req.get("compute_u", True), energy=req.get("energy"),
                max_rank=req.get("max_rank"), missing=req.get("missing", "error"))
