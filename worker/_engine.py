"""Graph plumbing: where panel kernels run, progress, cancellation, tree reductions.

Two engines share one small interface, so the algorithms are written once:

- :class:`DaskEngine` submits tasks to a ``distributed.Client`` as futures;
  intermediate results (TSQR node factors, Q blocks) stay on the workers
  and are recomputed by the scheduler from their lineage if a worker dies.
- :class:`LocalEngine` runs the same tasks lazily in this process (used when
  no client is given and there is no default client).

Each panel task returns ``(result, rows, rows_read, missing)``;
:meth:`Engine.run_pass` adds up ``rows`` (how passes over A are counted) and
``rows_read`` (rows that came from storage rather than the panel cache,
:mod:`._cache`).
"""

from __future__ import annotations

import statistics
import time
from collections import deque

from . import _cache
from ._errors import WorkerLostError, map_exception

__all__ = ["Phase", "LocalEngine", "DaskEngine", "make_engine",
           "smallest_memory_limit", "run_on_workers", "PING_TIMEOUT"]


class Phase(str):
    """Progress label: a ``str`` (``"power (pass 2 of 4)"``) with structure.

    Attributes
    ----------
    name : str
        ``"rechunk"``, ``"stats+qr"``, ``"power"``, ``"range+project"``, ``"tall"``,
        ``"sketch"``, ``"factor"`` or ``"write"``.
    pass_no : int
        The pass over A this step belongs to (for steps that do not read A,
        the last pass made; 0 for the ``"rechunk"`` copy before pass 1).
    passes : int
        Passes over A the whole job makes.
    """

    def __new__(cls, name, pass_no, passes):
        where = f"pass {pass_no}" if pass_no else "before pass 1"
        obj = super().__new__(cls, f"{name} ({where} of {passes})")
        obj.name, obj.pass_no, obj.passes = name, pass_no, passes
        return obj

    def __reduce__(self):
        return (Phase, (self.name, self.pass_no, self.passes))


#: Picks ``(rows, rows_read, counts)`` out of a panel task's result.
_TAIL = slice(1, 4)


def _identity(x):
    return x


def _pick(x, *keys):
    for key in keys:
        x = x[key]
    return x


class _Lazy:
    """A task of the local engine: evaluated once, on first use."""

    __slots__ = ("fn", "args", "value", "done")

    def __init__(self, fn, args):
        self.fn, self.args, self.done = fn, args, False

    def get(self):
        if not self.done:
            args = [a.get() if isinstance(a, _Lazy) else _materialize(a) for a in self.args]
            self.value, self.done = self.fn(*args), True
            self.fn = self.args = None
        return self.value


def _materialize(a):
    from dask.delayed import Delayed

    return a.compute() if isinstance(a, Delayed) else a


class _Engine:
    """Shared logic: passes with progress and cancellation, tree reductions."""

    def __init__(self):
        self.rows_done = 0
        self.rows_read = 0
        self.timings = {}
        self.events = []
        self.phase = None
        self.missing_counts = []  # per panel of the last pass (see run_pass)

    # interface -----------------------------------------------------------
    def submit(self, fn, *args):  # pragma: no cover - abstract
        raise NotImplementedError

    def gather(self, handles):  # pragma: no cover - abstract
        raise NotImplementedError

    def finished(self, handles):  # pragma: no cover - abstract
        """Yield lists of indices of ``handles`` as they finish (each list in order)."""
        raise NotImplementedError

    def completed(self, handles):
        """Yield indices of ``handles`` as they finish."""
        for batch in self.finished(handles):
            yield from batch

    def abort(self, handles):
        """Stop work that is no longer wanted (cancellation, errors)."""

    def settle(self, handles):
        """:meth:`abort`, then wait until none of ``handles`` still runs anywhere."""
        self.abort(handles)

    def scatter(self, value):
        """Make a small value available to tasks (recomputable if a worker dies)."""
        return value

    def put(self, value):
        """Make a large in-memory block available to tasks."""
        return value

    def submit_panel(self, i, fn, *args):
        """Submit panel ``i``'s task (where its cached block lives, if known)."""
        return self.submit(fn, *args)

    def learn_homes(self, handles):
        """Note where each panel's task ran, for :meth:`submit_panel`."""

    def release_cache(self, token):
        """Drop a job's cached panels everywhere."""
        _cache.release(token)

    def memory_limit(self):
        """The smallest worker memory limit in bytes, or None (unknown or unlimited)."""
        return None

    def check_members(self):
        """Note workers that left since the last check (in :attr:`events`)."""

    def peek(self, handles, *keys):
        """Values of ``handle[k1][k2]...`` for each handle, fetching only those parts.

        Returns
        -------
        list, one value per handle.
        """
        return [_pick(v, *keys) for v in self.gather(handles)]

    # shared --------------------------------------------------------------
    def part(self, handle, *keys):
        """Handle to ``handle[k1][k2]...`` (computed where the value lives, before
        any queued panel task)."""
        return self.submit(_pick, handle, *keys)

    def run_pass(self, phase, panels, kernel, args_for, *, task, shift=None,
                 cache=None, progress=None, on_result=None, missing=None):
        """Run ``task`` with ``kernel`` on every panel; report progress after each one.

        The engine knows no reader and no kernel: ``task`` reads a panel and runs
        the kernel on it (:func:`~._tasks.panel_task`); the engine submits it once
        per panel, counts rows and reports progress.

        Parameters
        ----------
        phase : Phase
        panels : list
            Panel arguments (PanelRef, scattered block or delayed block).
        kernel : callable
            ``kernel(block, *args_for(i))``.
        task : callable
            ``task(kernel, panel, shift, cache, missing, *args_for(i))`` returning
            ``(result, rows, rows_read, counts)``.
        shift : handle or None
            The pivot row each panel is shifted by (:func:`~._kernels.prepare_panel`).
        cache : (token, fraction) or None
            Keep decoded panels in worker memory (:mod:`._cache`).
        missing : tuple of float or None
            ``missing="mask"``: markers of missing entries besides NaN
            (:func:`~._tasks.panel_task`); the counts per panel are left in
            :attr:`missing_counts`.
        on_result : callable, optional
            ``on_result(indices, handles)`` as panels finish (a batch: those
            found finished together, in panel order, with handles to their
            tasks' ``(result, rows, rows_read, counts)``), before progress is
            reported (early NaN detection).

        Returns
        -------
        list of handles to each panel's kernel result.
        """
        t0 = time.perf_counter()
        self.phase = phase
        self.check_members()
        tasks = [self.submit_panel(i, task, kernel, p, shift, cache,
                                   missing, *args_for(i))
                 for i, p in enumerate(panels)]
        # Picked out as soon as each panel is done (:meth:`part` runs first), so
        # a caller's fetch never waits behind the next panel's task.
        results = [self.part(h, 0) for h in tasks]
        try:
            done = 0
            for batch in self.finished(tasks):
                if on_result is not None:
                    on_result(batch, [tasks[i] for i in batch])
                for _ in batch:
                    done += 1
                    if progress is not None:
                        progress(done, len(panels), phase)
            self.missing_counts = []
            for rows, read, counts in self.peek(tasks, _TAIL):
                self.rows_done += rows
                self.rows_read += read
                self.missing_counts.append(counts)
            if cache is not None:
                self.learn_homes(results)
            self.check_members()
        except BaseException:
            self.abort(tasks + results)
            raise
        self.timings[phase.name] = self.timings.get(phase.name, 0.0) + time.perf_counter() - t0
        return results

    def tree(self, leaves, merge):
        """Binary reduction tree over ``leaves`` in panel order.

        The shape of the tree depends only on the number of leaves, never
        on timing, so the result is the same on any number of workers.

        Returns
        -------
        root : handle
        nodes : list of (handle, left_child_index_range, right_child_index_range)
            Every internal node, with the leaf ranges below each child, for
            the downward sweep.
        """
        level = [(h, (i, i + 1)) for i, h in enumerate(leaves)]
        nodes = []
        while len(level) > 1:
            nxt = []
            for j in range(0, len(level) - 1, 2):
                (a, ra), (b, rb) = level[j], level[j + 1]
                h = self.submit(merge, a, b)
                nodes.append((h, ra, rb))
                nxt.append((h, (ra[0], rb[1])))
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        return level[0][0], nodes


class LocalEngine(_Engine):
    """Runs tasks in this process, lazily and in panel order."""

    def submit(self, fn, *args):
        return _Lazy(fn, args)

    def gather(self, handles):
        return [h.get() if isinstance(h, _Lazy) else h for h in handles]

    def finished(self, handles):
        for i, h in enumerate(handles):
            h.get()
            yield [i]


#: Seconds one batched fetch of finished futures may take before the engine
#: falls back to fetching them one by one (a worker may have died meanwhile).
_BATCH_TIMEOUT = 10.0


class DaskEngine(_Engine):
    """Runs tasks on a ``distributed`` cluster through futures.

    Parameters
    ----------
    client : distributed.Client
    no_workers_timeout : float
        Seconds the cluster may have no worker at all (or the scheduler may
        be unreachable) while a pass waits, before :class:`WorkerLostError`.
    poll : float
        Seconds between checks of task status and cluster membership.
    interrupt : callable, optional
        Called at every check while waiting; what it raises stops the wait
        (the caller releases the outstanding futures).
    task_deadline : float, optional
        Floor of the deadline (seconds) of a wait in which no task finishes;
        the deadline is ``max(task_deadline, deadline_factor * cost)`` with
        ``cost`` the median time between two task completions so far. Past
        it, workers that do not answer a ping within a quarter of the deadline
        (2 to :data:`PING_TIMEOUT` seconds) are retired as lost, unless none
        answers (:meth:`_retire_hung`). None: no deadline.
    deadline_factor : float, default=10

    Attributes
    ----------
    events : list of str
        Workers that left the cluster during the run (their tasks were
        recomputed by the scheduler from lineage).
    """

    def __init__(self, client, *, no_workers_timeout=60.0, poll=0.01, interrupt=None,
                 task_deadline=None, deadline_factor=10.0):
        super().__init__()
        self.client = client
        self.no_workers_timeout = float(no_workers_timeout)
        self.poll = poll
        self.interrupt = interrupt
        self.task_deadline = None if task_deadline is None else float(task_deadline)
        self.deadline_factor = float(deadline_factor)
        self.gaps = deque(maxlen=1024)  # seconds between task completions (the measured cost)
        self.events = []
        self.phase = None
        self._workers = None
        self._checked = 0.0
        self._empty_since = None
        self.homes = {}

    def submit(self, fn, *args, workers=None, priority=0):
        from dask.delayed import Delayed, delayed

        if any(isinstance(a, Delayed) for a in args):
            return self.client.compute(delayed(fn, pure=False)(*args))
        if workers:
            return self.client.submit(fn, *args, pure=False, workers=workers,
                                      allow_other_workers=True, priority=priority)
        return self.client.submit(fn, *args, pure=False, priority=priority)

    def part(self, handle, *keys):
        return self.submit(_pick, handle, *keys, priority=1)

    def submit_panel(self, i, fn, *args):
        home = self.homes.get(i)
        return self.submit(fn, *args, workers=[home] if home else None)

    def learn_homes(self, handles):
        missing = [i for i in range(len(handles)) if i not in self.homes]
        if not missing:
            return
        try:
            where = self.client.who_has([handles[i] for i in missing])
        except Exception:  # noqa: BLE001 - only a placement hint
            return
        for i in missing:
            addrs = where.get(handles[i].key) or ()
            if addrs:
                self.homes[i] = sorted(addrs)[0]

    def peek(self, handles, *keys):
        # Read the parts where the values live (one call to every worker, no
        # task per part); a value not found in any worker's memory (in
        # flight, or recomputed after a worker left) is fetched by a task.
        if not handles:
            return []
        want = [h.key for h in handles]
        try:
            found = {}
            for got in run_on_workers(self.client, _peek_local, want, keys).values():
                found.update(got)
        except Exception:  # noqa: BLE001 - fall back to tasks below
            found = {}
        out = [found.get(k, _MISSING) for k in want]
        lost = [i for i, v in enumerate(out) if v is _MISSING]
        if lost:
            for i, v in zip(lost, self.gather([self.part(handles[i], *keys) for i in lost])):
                out[i] = v
        return out

    def memory_limit(self):
        try:
            workers = self.client.scheduler_info(n_workers=-1)["workers"]
        except TypeError:  # older signature
            workers = self.client.scheduler_info()["workers"]
        return smallest_memory_limit(workers)

    def release_cache(self, token):
        try:
            run_on_workers(self.client, _cache.release, token)
        except Exception:  # noqa: BLE001 - best effort on a dying cluster
            pass

    def gather(self, handles):
        # A finished future can still be lost (its worker killed) before its
        # value arrives; a plain client.gather would then wait forever on an
        # empty cluster. Once every future is finished, fetch them in one
        # batch under a timeout; on a timeout, one by one under a short one,
        # back under the watchdog.
        out = [None] * len(handles)
        pending = dict(enumerate(handles))
        since = time.monotonic()
        while pending:
            for _ in self.completed(list(pending.values())):
                pass
            keys = list(pending)
            try:
                values = self.client.sync(self.client._gather, [pending[i] for i in keys],
                                          errors="raise", callback_timeout=_BATCH_TIMEOUT)
            except TimeoutError:
                values, since = None, self._tick(since)
            except Exception as exc:  # noqa: BLE001 - mapped to a typed error
                _reraise(exc)
            if values is not None:
                for i, value in zip(keys, values):
                    out[i] = value
                return out
            for i, fut in list(pending.items()):
                try:
                    out[i] = fut.result(timeout=max(self.poll, 0.5))
                except TimeoutError:
                    since = self._tick(since)  # its data may sit on a hung worker
                    continue
                except Exception as exc:  # noqa: BLE001 - mapped to a typed error
                    _reraise(exc)
                del pending[i]
                since = time.monotonic()
        return out

    def finished(self, handles):
        remaining = dict(enumerate(handles))
        since = time.monotonic()
        while remaining:
            # "lost" futures are being recomputed by the scheduler: still pending.
            done = [i for i, f in remaining.items()
                    if f.status in ("finished", "error", "cancelled")]
            self._watch()  # at most once a second: who joined, who left
            if not done:
                since = self._tick(since)
                time.sleep(self.poll)
                continue
            now = time.monotonic()
            self.gaps.append(now - since)
            since = now
            batch = []
            for i in sorted(done):
                fut = remaining.pop(i)
                if fut.status != "finished":
                    try:
                        fut.result(timeout=max(self.poll, 0.5))
                    except TimeoutError:
                        # Its worker died since the check: pending again.
                        remaining[i] = fut
                        continue
                    except Exception as exc:  # noqa: BLE001
                        _reraise(exc)
                batch.append(i)
            if batch:
                yield batch

    def check_members(self):
        self._watch(force=True)

    def deadline(self):
        """Seconds a wait may go without any task finishing (None: no deadline)."""
        if self.task_deadline is None:
            return None
        cost = statistics.median(self.gaps) if self.gaps else 0.0
        return max(self.task_deadline, self.deadline_factor * cost)

    def _tick(self, since):
        """One check while nothing finishes: the interrupt, then the deadline.

        Returns the time the deadline counts from (reset after a check of the workers).
        """
        if self.interrupt is not None:
            self.interrupt()
        limit = self.deadline()
        if limit is None or time.monotonic() - since < limit:
            return since
        self._retire_hung(limit)
        return time.monotonic()

    def _retire_hung(self, limit):
        """Retire workers that do not answer a ping: a hung worker holds its tasks forever
        (the scheduler notices a stopped process only when its heartbeat times out)."""
        try:
            ping = min(PING_TIMEOUT, max(2.0, limit / 4))
            hung, n_workers = self.client.run_on_scheduler(_unresponsive_workers, ping)
            if len(hung) >= n_workers:
                # No worker answers: a pause of the whole cluster (or of this
                # machine), not one hung worker; nobody would be left to recompute.
                return
            if hung:
                self.client.run_on_scheduler(_remove_workers, hung)
        except Exception:  # noqa: BLE001 - best effort; a lost scheduler is _watch's to report
            return
        where = f" during {self.phase}" if self.phase else ""
        for addr in hung:
            self.events.append(
                f"worker {addr} finished no task for {limit:.0f}s and did not answer a ping"
                f"{where} (hung); it was retired as lost and its tasks were recomputed on the "
                "remaining workers")
            if self._workers is not None:
                self._workers.discard(addr)  # noted here, not again as "left"

    def _watch(self, force=False):
        """Note departed workers; give up when none is left for too long.

        At most once a second while waiting; ``force`` (at each pass's start
        and end) checks now, so a worker lost in a short pass is still noted.
        """
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return
        self._checked = now
        try:
            info = self.client.scheduler_info(n_workers=-1)
        except TypeError:  # older signature
            info = self.client.scheduler_info()
        except Exception as exc:  # noqa: BLE001 - the scheduler is gone
            _reraise(exc)
        if "workers" not in info:  # the client holds no scheduler identity: disconnected
            raise WorkerLostError("lost contact with the Dask scheduler (the client is no "
                                  "longer connected to it); check that the cluster is up, "
                                  "then resubmit.")
        workers = set(info["workers"])
        if self._workers is not None:
            for addr in sorted(self._workers - workers):
                where = f" during {self.phase}" if self.phase else ""
                self.events.append(f"worker {addr} left the cluster{where}; "
                                   "its tasks were recomputed on the remaining workers")
        self._workers = workers
        if workers:
            self._empty_since = None
        elif self._empty_since is None:
            self._empty_since = now
        elif now - self._empty_since > self.no_workers_timeout:
            raise WorkerLostError(
                f"every Dask worker is gone and none came back within "
                f"{self.no_workers_timeout:.0f}s; start workers (or check why they "
                "die, e.g. memory limits), then resubmit.")

    def abort(self, handles):
        futures = [h for h in handles if h is not None]
        if futures:
            try:
                self.client.cancel(futures)
            except Exception:  # noqa: BLE001 - best effort on a dying cluster
                pass

    def settle(self, handles, timeout=30.0):
        # A cancelled future's task that already started runs to its end on
        # its worker (Dask cannot stop a running thread): ask the workers until
        # none of them runs one any more. A worker that does not answer (hung)
        # cannot be waited for.
        self.abort(handles)
        keys = [h.key for h in handles if h is not None]
        deadline = time.monotonic() + timeout
        while keys and time.monotonic() < deadline:
            try:
                busy = run_on_workers(self.client, _running_here, keys)
            except Exception:  # noqa: BLE001 - a hung worker or a dying cluster
                return
            if not any(busy.values()):
                return
            time.sleep(0.05)

    def scatter(self, value):
        # A task that returns the value (not client.scatter): the scheduler
        # can recompute it if the worker holding it dies. For small blocks.
        return self.client.submit(_identity, value, pure=False)

    def put(self, value):
        return self.client.scatter(value, broadcast=False, hash=False)


_MISSING = object()

#: Seconds a worker has to answer a ping (:meth:`DaskEngine._retire_hung`) and a
#: ``client.run`` call to answer at all before it is given up (a hung worker never answers).
PING_TIMEOUT = 5.0


def run_on_workers(client, fn, *args, workers=None, timeout=PING_TIMEOUT):
    """``client.run(fn, *args)`` that gives up after ``timeout`` seconds.

    A worker process that is stopped (SIGSTOP) or otherwise hung accepts the
    connection and never answers; a plain ``client.run`` would wait forever.

    Raises
    ------
    TimeoutError
        Some worker did not answer in time.
    """
    return client.sync(client._run, fn, *args, workers=workers, callback_timeout=timeout)


async def _unresponsive_workers(timeout, dask_scheduler=None):
    """On the scheduler: ``(addresses of the workers that do not answer ``identity``
    in time, number of workers asked)``."""
    import asyncio

    async def ping(addr):
        try:
            await asyncio.wait_for(dask_scheduler.rpc(addr).identity(), timeout)
        except Exception:  # noqa: BLE001 - no answer, whatever the reason
            return addr
        return None

    workers = list(dask_scheduler.workers)
    answers = await asyncio.gather(*(ping(a) for a in workers))
    return sorted(a for a in answers if a is not None), len(workers)


async def _remove_workers(addresses, dask_scheduler=None):
    """On the scheduler: remove the workers as lost (their tasks are recomputed)."""
    for addr in addresses:
        if addr in dask_scheduler.workers:
            await dask_scheduler.remove_worker(address=addr, close=True,
                                               stimulus_id=f"svdserve-hung-{time.time()}")


def _running_here(keys, dask_worker=None):
    """On a worker: which of ``keys`` it is still executing (cancelled ones included)."""
    tasks = dask_worker.state.tasks
    busy = ("executing", "long-running", "cancelled", "resumed")
    return [k for k in keys if k in tasks and tasks[k].state in busy]


def _peek_local(keys, path, dask_worker=None):
    """On a worker (``client.run``): ``value[path]`` of each of ``keys`` it holds in memory.

    Values Dask spilled to disk are skipped (the caller fetches those by a
    task): reading one here would load it back into memory whole, on a
    worker that spilled it for want of memory.
    """
    data = dask_worker.data
    fast = getattr(data, "fast", data)  # SpillBuffer: the in-memory part
    out = {}
    for key in keys:
        if key in fast:
            out[key] = _pick(fast[key], *path)
    return out


def _reraise(exc):
    mapped = _map_cluster_error(exc)
    if mapped is exc:
        raise exc
    raise mapped from exc


def _map_cluster_error(exc):
    """Translate distributed's (and the OS's) failures through :data:`._errors.EXC_MAP`
    (:class:`WorkerLostError`, :class:`StorageError`); keep the rest."""
    return map_exception(exc)


def smallest_memory_limit(workers):
    """The smallest memory limit in bytes among Dask workers, None if none is set.

    Parameters
    ----------
    workers : dict
        Worker address to its info (``scheduler_info()["workers"]`` or the
        scheduler's ``identity()["workers"]``), each with ``memory_limit``.
    """
    limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
    limits = [x for x in limits if x > 0]
    return min(limits) if limits else None


def make_engine(client, **options):
    """Pick the engine: the given client, else the default client, else local.

    ``client=False`` runs in this process even when a default client exists.
    """
    if client is False:
        return LocalEngine()
    if client is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
    return LocalEngine() if client is None else DaskEngine(client, **options)

