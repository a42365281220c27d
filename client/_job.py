"""A submitted job, used like a Dask/concurrent.futures future.

``status()``, ``done()``, ``cancel()`` and ``result(timeout)`` ask the service;
``result`` waits with the service's long-poll (``GET /v1/jobs/{id}?wait=S``
answers as soon as the state or progress changes) and can show a tqdm bar.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from ._errors import Conflict, JobCancelled, JobError, JobFailed, Timeout
from ._literals import TERMINAL_STATES
from ._result import open_job_result

if TYPE_CHECKING:  # pragma: no cover
    from ._http import HTTPTransport
    from ._report import EnergyReport
    from ._result import StoredResult

__all__ = ["Job", "Progress", "TERMINAL_STATES"]

#: Longest long-poll asked of the service (the contract caps it at 60 s).
LONG_POLL_MAX = 30
#: If a long-poll answers faster than this with nothing new, pause this long (no hot loop
#: against a service that ignores ``wait``).
_MIN_POLL = 0.2


@dataclass(frozen=True)
class Progress:
    """Where a running job is: ``phase``, pass ``pass_no`` of ``passes``, panels ``done``/``total``.

    ``done``/``total`` count the panels of the current step; :meth:`overall`
    counts the panels of the whole job (every pass, and the copy of a
    ``rechunk`` layout), from ``plan`` (the job's panel plan) when known.
    """

    phase: str
    pass_no: int | None
    passes: int | None
    done: int
    total: int
    plan: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "Progress | None":
        if not data:
            return None
        return cls(
            phase=str(data.get("phase", "")),
            pass_no=data.get("pass"),
            passes=data.get("passes"),
            done=int(data.get("done") or 0),
            total=int(data.get("total") or 0),
            plan=data.get("plan"),
        )

    @property
    def fraction(self) -> float:
        """Panels done in this phase, as a fraction (0 when the total is unknown)."""
        return self.done / self.total if self.total else 0.0

    @property
    def label(self) -> str:
        """``"power (pass 2 of 3)"``, ``"rechunk (before pass 1)"``."""
        if self.pass_no and self.passes:
            return f"{self.phase} (pass {self.pass_no} of {self.passes})"
        return f"{self.phase} (before pass 1)" if self.pass_no == 0 else self.phase

    def overall(self) -> tuple[int, int]:
        """``(done, total)`` panels of the whole job: ``passes`` times the plan's panels,
        plus one more round for the copy of a ``rechunk`` layout.

        A step that reads no panel (``factor``, ``write``) counts as the end of
        its pass; a pass beyond ``passes`` (an adaptive energy target) grows the total.
        """
        panels = int((self.plan or {}).get("panels") or self.total or 1)
        copy = 1 if (self.plan or {}).get("kind") == "rechunk" else 0
        pass_no, passes = int(self.pass_no or 0), int(self.passes or 1)
        total = (max(passes, pass_no) + copy) * panels
        step = min(self.done, self.total) / self.total if self.total else 0.0
        if pass_no == 0:  # the copy before pass 1
            return round(step * panels), total
        before = (pass_no - 1 + copy) * panels
        if self.phase in _NO_READ_PHASES:
            return before + panels, total
        return before + round(step * panels), total

    def __str__(self) -> str:
        pass_s = f" pass {self.pass_no}/{self.passes}" if self.pass_no and self.passes else ""
        return f"{self.phase}{pass_s}: {self.done}/{self.total} panels"


#: Steps that read no panel of A: they come after the reads of their pass.
_NO_READ_PHASES = frozenset({"factor", "write"})


class _Bar:
    """One tqdm bar for the whole job: the panels of all its passes, with an ETA.

    The phase and pass are in the description, set before the count so that a
    new phase never shows the old label; no rate is shown (a panel per
    second says little), only elapsed and remaining time. The clock starts at
    the first progress, not while the job is queued.
    """

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} panels [{elapsed}<{remaining}]"

    def __init__(self, job_id: str):
        from tqdm.auto import tqdm

        self._prefix = f"job {job_id[:8]}"
        self._bar = tqdm(total=None, desc=self._prefix, unit="panel", bar_format=self.FORMAT,
                         file=sys.stderr, dynamic_ncols=True, leave=True)
        self._started = False

    def update(self, state: str, progress: Progress | None) -> None:
        if progress is None:
            self._bar.set_description_str(f"{self._prefix} {state}", refresh=True)
            return
        done, total = progress.overall()
        if not self._started:
            self._started = True
            # reset restarts the clock (the ETA ignores queueing) and draws at 0: with no
            # phase label, since the first progress seen may be late in the job
            self._bar.set_description_str(f"{self._prefix} {state}", refresh=False)
            self._bar.reset(total=total)
        elif total != self._bar.total:
            self._bar.total = total
        self._bar.set_description_str(f"{self._prefix} {state}: {progress.label}",
                                      refresh=False)
        if done >= self._bar.n:
            self._bar.update(done - self._bar.n)
        else:  # a new attempt starts over
            self._bar.n = done
        self._bar.refresh()

    def close(self, state: str) -> None:
        if state == "succeeded" and self._bar.total:
            self._bar.n = self._bar.total
        self._bar.set_description_str(f"{self._prefix} {state}", refresh=False)
        self._bar.refresh()
        self._bar.close()


class JobOwner(Protocol):
    """What a :class:`Job` uses of the :class:`~svdserve.client.Client` that made it."""

    _http: HTTPTransport
    result_access: str
    storage_options: dict[str, Any] | None


class Job:
    """A job on the service: a handle on its JSON, refreshed on demand.

    Created by :meth:`Client.submit`, :meth:`Client.get` and :meth:`Client.jobs`.
    ``job["key"]`` reads the last job JSON seen (``JobPublic`` of the contract).
    """

    def __init__(self, client: JobOwner, data: dict[str, Any]):
        self._client = client
        self._data = dict(data)
        self.id: str = str(data["id"])

    # -- the job JSON -------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    @property
    def data(self) -> dict[str, Any]:
        """The last job JSON seen (a copy)."""
        return dict(self._data)

    @property
    def state(self) -> str:
        """The last state seen, without asking the service (see :meth:`status`)."""
        return str(self._data.get("state"))

    @property
    def error(self) -> dict[str, Any] | None:
        """``{"type": ..., "message": ...}`` of a failed job, else None (last seen)."""
        return self._data.get("error")

    @property
    def notes(self) -> list[str]:
        return list(self._data.get("notes") or [])

    def __repr__(self) -> str:
        prog = Progress.from_json(self._data.get("progress"))
        extra = f" {prog}" if prog and self.state not in TERMINAL_STATES else ""
        return f"<Job {self.id} {self.state}{extra}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- asking the service ---------------------------------------------------------------------

    def refresh(self, wait: float | None = None) -> "Job":
        """Fetch the job JSON again; with ``wait``, long-poll up to that many seconds."""
        params: dict[str, Any] | None = None
        timeout: httpx.Timeout | None = None
        if wait:
            wait_s = int(min(max(1, math.ceil(wait)), 60))
            params = {"wait": wait_s}
            base = self._client._http.timeout
            timeout = httpx.Timeout(
                connect=base.connect, read=(base.read or 0) + wait_s,
                write=base.write, pool=base.pool,
            )
        self._data = self._client._http.get_json(
            f"/v1/jobs/{self.id}", params=params, timeout=timeout
        )
        return self

    def status(self) -> str:
        """Ask the service and return the state: ``queued``, ``running``, ``cancelling``,
        ``succeeded``, ``failed`` or ``cancelled``."""
        return self.refresh().state

    @property
    def progress(self) -> Progress | None:
        """Current progress (asks the service unless the job has finished); None when queued."""
        if self.state not in TERMINAL_STATES:
            self.refresh()
        return Progress.from_json(self._data.get("progress"))

    def done(self) -> bool:
        """Whether the job has finished (succeeded, failed or cancelled)."""
        if self.state in TERMINAL_STATES:
            return True
        return self.refresh().state in TERMINAL_STATES

    def cancelled(self) -> bool:
        """Whether the job ended cancelled."""
        return self.done() and self.state == "cancelled"

    def cancel(self) -> bool:
        """Ask the service to cancel the job (cooperatively, between panels).

        Returns
        -------
        bool
            True if the job is now cancelling or cancelled; False if it had
            already finished (succeeded or failed) and cannot be cancelled.
        """
        try:
            self._data = self._client._http.request(
                "POST", f"/v1/jobs/{self.id}/cancel", idempotent=True
            ).json()
        except Conflict:
            self.refresh()
            return self.state == "cancelled"
        return self.state in {"cancelling", "cancelled"}

    def delete(self) -> None:
        """Delete the finished job and its result (409 Conflict while it runs)."""
        self._client._http.request("DELETE", f"/v1/jobs/{self.id}")

    def report(self) -> "EnergyReport":
        """The energy report (``GET /v1/jobs/{id}/report``; 409 Conflict before success)."""
        from ._report import EnergyReport

        return EnergyReport(self._client._http.get_json(f"/v1/jobs/{self.id}/report"))

    # -- waiting ----------------------------------------------------------------------------

    def wait(
        self,
        timeout: float | None = None,
        *,
        progress: bool = False,
        poll_interval: float | None = None,
    ) -> "Job":
        """Block until the job finishes; return self (whatever the final state).

        Parameters
        ----------
        timeout : float or None, default=None
            Seconds to wait at most (forever when None).
        progress : bool, default=False
            Show a tqdm progress bar on stderr: one bar for the whole job (the
            panels of every pass, with an ETA), the phase in its description.
        poll_interval : float or None, default=None
            Poll every ``poll_interval`` seconds instead of long-polling.

        Raises
        ------
        Timeout
            When ``timeout`` passes first; the job keeps running.
        """
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        bar = _Bar(self.id) if progress else None
        try:
            while True:
                if bar is not None:
                    bar.update(self.state, Progress.from_json(self._data.get("progress")))
                if self.state in TERMINAL_STATES:
                    return self
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Timeout(
                        f"job {self.id} is still {self.state} after {timeout:g} s; "
                        "wait again, or cancel it",
                        job=self.data,
                    )
                if poll_interval is not None:
                    time.sleep(poll_interval if remaining is None else min(poll_interval, remaining))
                    self.refresh()
                    continue
                wait_s = LONG_POLL_MAX if remaining is None else min(LONG_POLL_MAX, remaining)
                before = (self._data.get("state"), self._data.get("progress"))
                t0 = time.monotonic()
                self.refresh(wait=wait_s)
                unchanged = before == (self._data.get("state"), self._data.get("progress"))
                if unchanged and time.monotonic() - t0 < _MIN_POLL:
                    time.sleep(_MIN_POLL)
        finally:
            if bar is not None:
                bar.close(self.state)

    def exception(self, timeout: float | None = None) -> JobError | None:
        """Wait, then return the :class:`JobFailed`/:class:`JobCancelled` the job ended with, or None."""
        self.wait(timeout)
        return self._job_error()

    def _job_error(self) -> JobError | None:
        if self.state == "failed":
            err = self.error or {}
            return JobFailed(
                f"job {self.id} failed ({err.get('type', 'internal')}): "
                f"{err.get('message', 'no message')}",
                job=self.data,
            )
        if self.state == "cancelled":
            return JobCancelled(f"job {self.id} was cancelled", job=self.data)
        return None

    def result(
        self,
        timeout: float | None = None,
        *,
        progress: bool = False,
        poll_interval: float | None = None,
    ) -> "StoredResult":
        """Wait for the job and open its factors.

        Parameters are those of :meth:`wait`.

        Returns
        -------
        StoredResult

        Raises
        ------
        JobFailed
            The job failed; the message quotes the service's error.
        JobCancelled
            The job was cancelled.
        Timeout
            ``timeout`` passed first.
        """
        self.wait(timeout, progress=progress, poll_interval=poll_interval)
        err = self._job_error()
        if err is not None:
            raise err
        return open_job_result(
            self._data, self._client._http, result_access=self._client.result_access,
            storage_options=self._client.storage_options,
        )
