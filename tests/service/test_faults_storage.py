"""A results volume that fills and a database that cannot be written (issue 27, items 1-2).

Real parts: a size-limited tmpfs mounted for the results root or the
database (the tests run as root; without ``mount`` they skip, saying so),
the session's real Dask cluster, real SQLite. After each fault the job is
terminal, no attempt directory without a manifest is left under the results
root, and a new job succeeds.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

from tests.service._kit import low_rank, write

#: Rows of the matrix whose U (rows x 4 float64, 1.28 MB) cannot fit the 1 MiB volume.
BIG_ROWS, BIG_COLS, BIG_CHUNK = 40_000, 16, 1_000


@contextmanager
def tmpfs(path, size):
    """A tmpfs of ``size`` mounted at ``path`` (unmounted afterwards)."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a {size} tmpfs at {path} ({r.stderr.strip()}); these "
                    "fault tests need root and mount(8)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory):
    """Write zeros into ``directory/filler`` until the volume is full; returns the path."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return path


def orphans(results_root):
    """Attempt directories under the results root that hold no manifest."""
    out = []
    for dirpath, dirnames, _ in os.walk(results_root):
        rel = os.path.relpath(dirpath, results_root).split(os.sep)
        if len(rel) == 3 and rel[2].isdigit():  # {tenant}/{job}/{attempt}
            if not os.path.isfile(os.path.join(dirpath, "result.zarr", "manifest.json")):
                out.append(dirpath)
            dirnames.clear()
    return out


@pytest.fixture(scope="module")
def big(data_root):
    """A 40,000 x 16 matrix in 1,000-row chunks (40 panels), in the session data root."""
    write(data_root / "big40k.zarr", low_rank(BIG_ROWS, BIG_COLS, 4, seed=11),
          chunks=(BIG_CHUNK, BIG_COLS))
    return "big40k.zarr"


def wait_until(predicate, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")


def test_full_results_volume_fails_the_job_and_gives_the_space_back(service, wait, big,
                                                                     tmp_path):
    results = tmp_path / "results"
    with tmpfs(results, "1m"):
        with service(results_root=str(results), panel_bytes=BIG_CHUNK * BIG_COLS * 8) as c:
            job = c.post("/v1/jobs", json={"source": {"url": big}, "rank": 4,
                                           "method": "randomized", "n_iter": 0}).json()
            done = wait(c, job["id"])
            assert done["state"] == "failed" and done["error"]["type"] == "storage_error"
            assert "No space left on device" in done["error"]["message"]
            # the space is given back: a new job on the same volume succeeds
            again = c.post("/v1/jobs", json={"source": {"url": "A.zarr"}, "rank": 3}).json()
            assert wait(c, again["id"])["state"] == "succeeded"
            assert orphans(results) == []
            assert not os.path.exists(results / "default" / job["id"] / "1")


def test_orphan_attempts_are_swept_at_start_up(service, wait, tmp_path):
    """What an interrupted write left (files, no manifest) goes at start-up,
    and the space it took is free for the next job."""
    results = tmp_path / "results"
    with tmpfs(results, "1m"):
        leftover = results / "default" / ("ab" * 16) / "1" / "result.zarr" / "U" / "c"
        leftover.mkdir(parents=True)
        (leftover / "0").write_bytes(np.random.default_rng(0).bytes(900_000))
        with service(results_root=str(results)) as c:
            assert orphans(results) == []
            job = c.post("/v1/jobs", json={"source": {"url": "A.zarr"}, "rank": 3}).json()
            assert wait(c, job["id"])["state"] == "succeeded"


def test_settle_waits_for_running_tasks_and_drops_queued_ones(dask_client, tmp_path):
    """A cancelled write task that already started would write after the caller
    removed its directory: settle returns only when none still runs."""
    from distributed import Event

    from svdserve.worker._engine import DaskEngine

    def slow_write(i, root):
        open(os.path.join(root, f"started-{i}"), "w").close()
        Event("svdserve-test-go").wait(30)  # runs until the test lets it go
        open(os.path.join(root, f"done-{i}"), "w").close()

    go = Event("svdserve-test-go", client=dask_client)
    eng = DaskEngine(dask_client)
    futures = [dask_client.submit(slow_write, i, str(tmp_path), pure=False) for i in range(6)]
    wait_until(lambda: len(list(tmp_path.glob("started-*"))) == 2, "two tasks starting")
    threading.Timer(0.5, go.set).start()  # the running ones end only after settle began
    eng.settle(futures)
    started = sorted(p.name[8:] for p in tmp_path.glob("started-*"))
    done = sorted(p.name[5:] for p in tmp_path.glob("done-*"))
    assert len(started) == 2 and done == started  # none of them still runs
    go.clear()


def test_unwritable_database_does_not_leave_a_job_running(service, wait, gate, tmp_path,
                                                           caplog):
    """The database's volume fills while a job runs: progress is skipped, the final
    state write is retried, and lands once the volume has room again."""
    caplog.set_level(logging.WARNING, logger="svdserve.service")
    db_dir = tmp_path / "db"
    with tmpfs(db_dir, "2m"):
        with service(database=str(db_dir / "jobs.sqlite"), state_retry_max=0.2) as c:
            job = c.post("/v1/jobs", json={"source": {"url": "A.zarr"}, "rank": 3}).json()
            assert gate.entered.wait(30)
            filler = fill(db_dir)
            gate.release()
            wait_until(lambda: any("could not record" in r.getMessage()
                                   and job["id"] in r.getMessage() for r in caplog.records),
                       "a retried state write")
            assert c.get(f"/v1/jobs/{job['id']}").json()["state"] == "running"
            filler.unlink()  # the volume has room again
            assert wait(c, job["id"])["state"] == "succeeded"
            again = c.post("/v1/jobs", json={"source": {"url": "A.zarr"}, "rank": 3}).json()
            assert wait(c, again["id"])["state"] == "succeeded"
    assert any("progress not recorded" in r.getMessage() for r in caplog.records)
