"""SQLite job store.

One file, WAL journal, ``synchronous=FULL``: a row is on disk when a method
returns, so the service answers ``202`` only for a job that survives a crash.
The methods are synchronous and serialised by a lock; async code calls them
through ``asyncio.to_thread`` (the runner's job threads call them directly).

Every write bumps the row's ``version`` and calls ``on_change(job_id)``,
which is how long-polling requests learn about a change.

States: :mod:`._states`.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ._errors import ServiceError
from ._states import STATES, TERMINAL

__all__ = ["JobStore", "JobRow", "QueueFull", "WrongState", "TERMINAL", "STATES", "ID_PATTERN",
           "MIN_PREFIX", "PREFIX_PATTERN"]

#: A job's id (and an upload's): ``uuid4().hex``, 32 lowercase hex digits.
ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
#: The shortest prefix of a job id that names it (as git and docker take them).
MIN_PREFIX = 6
#: What may be a prefix of a job id (lowercase hex, shorter than a whole id).
PREFIX_PATTERN = re.compile(r"^[0-9a-f]{1,31}$")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    tenant      TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempt     INTEGER NOT NULL DEFAULT 1,
    request     TEXT NOT NULL,
    params      TEXT NOT NULL,
    progress    TEXT,
    error       TEXT,
    notes       TEXT NOT NULL DEFAULT '[]',
    result      TEXT,
    report      TEXT,
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    updated_at  TEXT NOT NULL,
    version     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_tenant_seq ON jobs (tenant, seq);
CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS pins (
    job_id  TEXT PRIMARY KEY,
    pin     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    tenant     TEXT NOT NULL,
    key        TEXT NOT NULL,
    body_hash  TEXT NOT NULL,
    job_id     TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant, key)
);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class QueueFull(ServiceError):
    """The queue holds ``max_queued`` jobs already."""


class WrongState(ServiceError):
    """The job is in a state that does not allow the operation (the routes answer 409)."""


@dataclass
class JobRow:
    """One job as stored (JSON columns decoded)."""

    seq: int
    id: str
    tenant: str
    state: str
    attempt: int
    request: dict
    params: dict
    progress: dict | None
    error: dict | None
    notes: list = field(default_factory=list)
    result: dict | None = None
    report: dict | None = None
    created_at: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str = ""
    version: int = 0

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


_JSON_COLUMNS = ("request", "params", "progress", "error", "notes", "result", "report")


def _row(r: sqlite3.Row | None) -> JobRow | None:
    if r is None:
        return None
    data = dict(r)
    for col in _JSON_COLUMNS:
        if data[col] is not None:
            data[col] = json.loads(data[col])
    return JobRow(**data)


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


class JobStore:
    """The job table and the idempotency keys.

    Parameters
    ----------
    path : str
        SQLite file (created with its tables if missing).
    on_change : callable, optional
        ``on_change(job_id)`` after every committed change of a job.
    """

    def __init__(self, path: str, on_change: Callable[[str], None] | None = None, *,
                 tenant_queued: int | None = None, tenant_running: int | None = None):
        self.path = path
        self.on_change = on_change
        #: Per-tenant limits (None: none): queued jobs at submit, running jobs at claim.
        self.tenant_queued, self.tenant_running = tenant_queued, tenant_running
        self._served: dict[str, int] = {}  # tenant -> claim counter when last served
        self._claims = 0
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.row_factory = sqlite3.Row
        self._touched: set[str] = set()
        self._cache: OrderedDict[str, JobRow] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.cache_size = 4096
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ helpers
    def _tx(self, durable: bool = True):
        return _Transaction(self, durable)

    def _touch(self, job_id: str) -> None:
        """Mark a job changed by the open transaction (cache refresh + notification)."""
        self._touched.add(job_id)

    def _committed(self, touched: set[str]) -> None:
        """After COMMIT, under the lock: refresh the cache from the committed rows."""
        with self._cache_lock:
            for job_id in touched:
                row = self._get(job_id)
                if row is None:
                    self._cache.pop(job_id, None)
                else:
                    self._cache[job_id] = row
                    self._cache.move_to_end(job_id)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _changed(self, job_ids: set[str]) -> None:
        if self.on_change is not None:
            for job_id in job_ids:
                try:
                    self.on_change(job_id)
                except Exception:  # noqa: BLE001 - a closed loop must not fail a write
                    pass

    def _get(self, job_id: str) -> JobRow | None:
        return _row(self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    # ------------------------------------------------------------------ reads
    def get(self, job_id: str, tenant: str | None = None) -> JobRow | None:
        """The job, or None when it does not exist or belongs to another tenant."""
        row = self.get_cached(job_id)
        if row is None:
            with self._lock:
                row = self._get(job_id)
                if row is not None:
                    with self._cache_lock:
                        self._cache.setdefault(job_id, row)
        if row is None or (tenant is not None and row.tenant != tenant):
            return None
        return row

    def get_cached(self, job_id: str, tenant: str | None = None) -> JobRow | None:
        """The job from memory, or None when it is not cached; never touches the disk.

        Safe to call on an event loop. Every write of this store refreshes the
        cache after its commit, so a cached row is the committed one (the
        store assumes it is the database's only writer).
        """
        with self._cache_lock:
            row = self._cache.get(job_id)
        if row is None or (tenant is not None and row.tenant != tenant):
            return None
        return row

    def list(self, tenant: str, *, state: str | None = None, limit: int = 20,
             before: int | None = None) -> tuple[list[JobRow], int | None]:
        """Newest first; returns the page and the ``seq`` to continue before (or None)."""
        sql, args = "SELECT * FROM jobs WHERE tenant = ?", [tenant]
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        if before is not None:
            sql += " AND seq < ?"
            args.append(before)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit + 1)
        with self._lock:
            rows = [_row(r) for r in self._db.execute(sql, args).fetchall()]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1].seq if more and rows else None)

    def lineage(self, tenant: str, root: str) -> list[JobRow]:
        """The job ``root`` and every update of its chain (``params.update.root``), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE tenant = ? AND (id = ? OR "
                "json_extract(params, '$.update.root') = ?) ORDER BY seq",
                (tenant, root, root)).fetchall()
        return [_row(r) for r in rows]

    def find_prefix(self, prefix: str, tenant: str, *, limit: int = 10) -> list[str]:
        """Ids of ``tenant``'s jobs that start with ``prefix``, oldest first, at most ``limit``.

        A range scan of the ``id`` index (ids are lowercase hex, so every id
        starting with ``prefix`` sorts in ``[prefix, prefix + "g")``), filtered by
        tenant in the same query: another tenant's ids are never returned.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE id >= ? AND id < ? AND tenant = ? "
                "ORDER BY seq LIMIT ?", (prefix, prefix + "g", tenant, limit)).fetchall()
        return [r["id"] for r in rows]

    def get_pin(self, job_id: str) -> dict | None:
        """The pinned source identity stored with the job, or None (older jobs)."""
        with self._lock:
            r = self._db.execute("SELECT pin FROM pins WHERE job_id = ?", (job_id,)).fetchone()
        return None if r is None else json.loads(r["pin"])

    def count_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        with self._lock:
            for state, n in self._db.execute(
                    "SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall():
                counts[state] = n
        return counts

    # ------------------------------------------------------------------ idempotency
    def reserve_key(self, tenant: str, key: str, body_hash: str) -> tuple[str, str | None]:
        """Reserve an idempotency key.

        Returns
        -------
        ("new", None) | ("replay", job_id) | ("mismatch", None) | ("in_flight", None)
        """
        with self._tx() as db:
            row = db.execute("SELECT body_hash, job_id FROM idempotency WHERE tenant = ? "
                             "AND key = ?", (tenant, key)).fetchone()
            if row is None:
                db.execute("INSERT INTO idempotency (tenant, key, body_hash, job_id, created_at)"
                           " VALUES (?, ?, ?, NULL, ?)", (tenant, key, body_hash, now()))
                return "new", None
            if row["body_hash"] != body_hash:
                return "mismatch", None
            if row["job_id"] is None:
                return "in_flight", None
            return "replay", row["job_id"]

    def release_key(self, tenant: str, key: str) -> None:
        """Forget a reservation whose request failed before a job was created."""
        with self._tx() as db:
            db.execute("DELETE FROM idempotency WHERE tenant = ? AND key = ? AND job_id IS NULL",
                       (tenant, key))

    # ------------------------------------------------------------------ writes
    def create(self, tenant: str, request: dict, params: dict, *, notes: list | None = None,
               idempotency_key: str | None = None, max_queued: int | None = None,
               pin: dict | None = None) -> JobRow:
        """Insert a queued job (and bind its idempotency key) in one transaction.

        ``pin`` (the source's identity, :meth:`svdserve.worker.SourcePin.to_json`)
        is stored beside the row, not in it: it can be large and is read
        once per attempt (:meth:`get_pin`). ``created_at`` is stamped under
        the write lock, so creation times follow ``seq``.

        Raises
        ------
        QueueFull
            When ``max_queued`` jobs are queued already, or the tenant has
            :attr:`tenant_queued` jobs queued.
        """
        job_id = uuid.uuid4().hex
        with self._tx() as db:
            ts = now()
            self._check_queue(db, tenant, max_queued)
            db.execute(
                "INSERT INTO jobs (id, tenant, state, attempt, request, params, notes, "
                "created_at, updated_at) VALUES (?, ?, 'queued', 1, ?, ?, ?, ?, ?)",
                (job_id, tenant, _dump(request), _dump(params), _dump(notes or []), ts, ts))
            if pin is not None:
                db.execute("INSERT INTO pins (job_id, pin) VALUES (?, ?)", (job_id, _dump(pin)))
            if idempotency_key is not None:
                db.execute("UPDATE idempotency SET job_id = ? WHERE tenant = ? AND key = ?",
                           (job_id, tenant, idempotency_key))
            self._touch(job_id)
            row = self._get(job_id)
        return row

    def _check_queue(self, db: sqlite3.Connection, tenant: str,
                     max_queued: int | None) -> None:
        """Raise :class:`QueueFull` when the tenant's or the whole queue is full."""
        if self.tenant_queued is not None:
            mine = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND tenant = ?",
                              (tenant,)).fetchone()[0]
            if mine >= self.tenant_queued:
                raise QueueFull(
                    f"tenant {tenant!r} has {mine} jobs queued already, its limit "
                    f"(SVDSERVE_MAX_QUEUED_JOBS_PER_TENANT) is {self.tenant_queued}; wait for "
                    "some to start or cancel some")
        if max_queued is not None:
            queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'"
                                ).fetchone()[0]
            if queued >= max_queued:
                raise QueueFull(f"{queued} jobs are queued already (limit {max_queued})")

    def _next_fair(self, db: sqlite3.Connection) -> tuple[str, str] | None:
        """``(id, tenant)`` of the job to start next: fair between tenants, FIFO within one.

        Among tenants with a queued job and fewer running jobs than
        :attr:`tenant_running`, the one with the fewest running jobs goes first,
        then the one served least recently (round-robin), then the oldest job.
        """
        running = dict(db.execute("SELECT tenant, COUNT(*) FROM jobs WHERE state IN "
                                  "('running', 'cancelling') GROUP BY tenant").fetchall())
        heads = db.execute("SELECT tenant, MIN(seq) FROM jobs WHERE state = 'queued' "
                           "GROUP BY tenant").fetchall()
        limit = self.tenant_running
        candidates = [(running.get(t, 0), self._served.get(t, 0), seq, t) for t, seq in heads
                      if limit is None or running.get(t, 0) < limit]
        if not candidates:
            return None
        _, _, seq, tenant = min(candidates)
        return db.execute("SELECT id FROM jobs WHERE seq = ?", (seq,)).fetchone()["id"], tenant

    def claim_next(self) -> JobRow | None:
        """Move the next queued job (:meth:`_next_fair`) to ``running``; None when
        the queue is empty or every tenant with queued jobs is at its running limit."""
        with self._tx() as db:
            ts = now()
            head = self._next_fair(db)
            if head is None:
                return None
            job_id, tenant = head
            db.execute("UPDATE jobs SET state = 'running', started_at = ?, updated_at = ?, "
                       "progress = NULL, version = version + 1 WHERE id = ?",
                       (ts, ts, job_id))
            self._touch(job_id)
            row = self._get(job_id)
        # served: counted once the claim is committed (a failed commit serves nobody)
        self._claims += 1
        self._served[tenant] = self._claims
        return row

    def active_attempts(self) -> set[tuple[str, str, int]]:
        """``(tenant, job id, attempt)`` of every running or cancelling job."""
        with self._lock:
            return {(r["tenant"], r["id"], r["attempt"]) for r in self._db.execute(
                "SELECT tenant, id, attempt FROM jobs WHERE state IN ('running', 'cancelling')")}

    def set_progress(self, job_id: str, attempt: int, progress: dict) -> None:
        # Progress is not worth an fsync: a crash loses at most the last value.
        with self._tx(durable=False) as db:
            cur = db.execute(
                "UPDATE jobs SET progress = ?, updated_at = ?, version = version + 1 "
                "WHERE id = ? AND attempt = ? AND state IN ('running', 'cancelling')",
                (_dump(progress), now(), job_id, attempt))
            if cur.rowcount:
                self._touch(job_id)

    def finish(self, job_id: str, attempt: int, state: str, *, error: dict | None = None,
               result: dict | None = None, report: dict | None = None,
               notes: list[str] | None = None,
               from_states: tuple[str, ...] = ("running", "cancelling")) -> JobRow | None:
        """Move a running job to a final state; None if it was not in ``from_states``.

        ``notes`` are appended to the job's notes, less those it already has
        (the report repeats what the submit noted about the input).
        """
        assert state in TERMINAL
        marks = ",".join("?" * len(from_states))
        with self._tx() as db:
            ts = now()
            current = self._get(job_id)
            have = list(current.notes if current else [])
            all_notes = have + [n for n in dict.fromkeys(notes or []) if n not in have]
            cur = db.execute(
                f"UPDATE jobs SET state = ?, error = ?, result = ?, report = ?, notes = ?, "
                f"finished_at = ?, updated_at = ?, version = version + 1 "
                f"WHERE id = ? AND attempt = ? AND state IN ({marks})",
                (state, _dump(error), _dump(result), _dump(report), _dump(all_notes), ts, ts,
                 job_id, attempt, *from_states))
            row = None
            if cur.rowcount:
                self._touch(job_id)
                row = self._get(job_id)
        return row

    def requeue(self, job_id: str, attempt: int, note: str) -> JobRow | None:
        """Put a running job back in the queue as attempt + 1."""
        with self._tx() as db:
            ts = now()
            row = self._get(job_id)
            if row is None or row.attempt != attempt or row.state != "running":
                return None
            db.execute(
                "UPDATE jobs SET state = 'queued', attempt = attempt + 1, progress = NULL, "
                "started_at = NULL, notes = ?, updated_at = ?, version = version + 1 "
                "WHERE id = ?", (_dump(row.notes + [note]), ts, job_id))
            self._touch(job_id)
            row = self._get(job_id)
        return row

    def request_cancel(self, job_id: str, tenant: str) -> JobRow | None:
        """Cancel a queued job now, mark a running one ``cancelling``.

        Returns None for an unknown job; raises :class:`WrongState` for a finished one.
        """
        with self._tx() as db:
            ts = now()
            row = self._get(job_id)
            if row is None or row.tenant != tenant:
                return None
            if row.finished:
                raise WrongState(f"job {job_id} is already {row.state}")
            if row.state == "queued":
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', error = ?, finished_at = ?, "
                    "updated_at = ?, version = version + 1 WHERE id = ?",
                    (_dump({"type": "cancelled",
                            "message": "cancelled by request while queued; no work was done"}),
                     ts, ts, job_id))
            elif row.state == "running":
                db.execute("UPDATE jobs SET state = 'cancelling', updated_at = ?, "
                           "version = version + 1 WHERE id = ?", (ts, job_id))
            self._touch(job_id)
            row = self._get(job_id)
        return row

    def delete(self, job_id: str, tenant: str) -> JobRow | None:
        """Delete a finished job (and its idempotency key); None if unknown.

        Raises
        ------
        WrongState
            The job has not finished.
        """
        with self._tx() as db:
            row = self._get(job_id)
            if row is None or row.tenant != tenant:
                return None
            if not row.finished:
                raise WrongState(f"job {job_id} is {row.state}; cancel it first")
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            db.execute("DELETE FROM pins WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM idempotency WHERE job_id = ?", (job_id,))
            self._touch(job_id)
        return row

    def recover(self, max_attempts: int) -> list[tuple[JobRow, JobRow]]:
        """After a restart: re-queue ``running`` jobs as attempt + 1, settle the rest.

        Jobs left ``cancelling`` become ``cancelled``; a job that reached
        ``max_attempts`` is failed; idempotency keys without a job are dropped.

        Returns
        -------
        list of (before, after) rows for every job touched.
        """
        touched = []
        with self._tx() as db:
            ts = now()
            db.execute("DELETE FROM idempotency WHERE job_id IS NULL")
            rows = [_row(r) for r in db.execute(
                "SELECT * FROM jobs WHERE state IN ('running', 'cancelling') ORDER BY seq")]
            for row in rows:
                if row.state == "cancelling":
                    db.execute(
                        "UPDATE jobs SET state = 'cancelled', error = ?, finished_at = ?, "
                        "updated_at = ?, version = version + 1 WHERE id = ?",
                        (_dump({"type": "cancelled",
                                "message": "cancelled by request; the service restarted "
                                           "before the cancellation finished"}),
                         ts, ts, row.id))
                elif row.attempt >= max_attempts:
                    note = (f"the service stopped while attempt {row.attempt} was running; "
                            f"{max_attempts} attempts is the limit")
                    db.execute(
                        "UPDATE jobs SET state = 'failed', error = ?, notes = ?, finished_at = ?,"
                        " updated_at = ?, version = version + 1 WHERE id = ?",
                        (_dump({"type": "worker_lost",
                                "message": f"the service stopped {row.attempt} times while "
                                           "running this job (e.g. it ran out of memory); "
                                           "check the service and worker logs, then resubmit"}),
                         _dump(row.notes + [note]), ts, ts, row.id))
                else:
                    note = (f"the service restarted while attempt {row.attempt} was running; "
                            f"re-queued as attempt {row.attempt + 1}")
                    db.execute(
                        "UPDATE jobs SET state = 'queued', attempt = attempt + 1, "
                        "progress = NULL, started_at = NULL, notes = ?, updated_at = ?, "
                        "version = version + 1 WHERE id = ?",
                        (_dump(row.notes + [note]), ts, row.id))
                self._touch(row.id)
                touched.append((row, self._get(row.id)))
        return touched


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the store's lock.

    After the commit the touched jobs' cached rows are refreshed (still under
    the lock, so the cache follows the commit order) and, once the lock is
    released, ``on_change`` is called for each. ``durable=False`` skips the
    fsync of this commit (``synchronous=NORMAL``: it survives a crash of the
    process, not of the machine).
    """

    def __init__(self, store: JobStore, durable: bool = True):
        self.store, self.durable = store, durable

    def __enter__(self) -> sqlite3.Connection:
        store = self.store
        store._lock.acquire()
        try:
            if not self.durable:
                store._db.execute("PRAGMA synchronous=NORMAL")
            store._touched = set()
            store._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._restore()
            store._lock.release()
            raise
        return store._db

    def _restore(self) -> None:
        if not self.durable:
            self.store._db.execute("PRAGMA synchronous=FULL")

    def __exit__(self, exc_type, exc, tb) -> None:
        store = self.store
        touched: set[str] = set()
        try:
            if exc_type is None:
                try:
                    store._db.execute("COMMIT")
                except sqlite3.Error:
                    # e.g. SQLITE_FULL: a failed COMMIT may leave the transaction
                    # open, and every later BEGIN would fail; end it.
                    _rollback(store._db)
                    store._touched = set()
                    raise
                touched, store._touched = store._touched, set()
                store._committed(touched)
            else:
                _rollback(store._db)
                store._touched = set()
        finally:
            try:
                self._restore()
            finally:
                store._lock.release()
        store._changed(touched)


def _rollback(db: sqlite3.Connection) -> None:
    """End the open transaction, if any (SQLite may have rolled it back itself)."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
