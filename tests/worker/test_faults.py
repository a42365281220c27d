"""Worker loss on a real multi-process LocalCluster: recomputation, and a bounded failure."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from svdserve.worker import WorkerLostError, svd

from tests._check import check_svd, decaying, to_zarr


def _pids(client):
    return client.run(os.getpid)


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_killed_worker_job_still_correct(tmp_path, method):
    from distributed import Client, LocalCluster

    A = decaying(3000, 30, seed=11, decay=0.8, noise=1e-4)
    url = to_zarr(tmp_path / "A.zarr", A, (100, 30))
    with LocalCluster(n_workers=3, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cl, Client(cl) as c:
        victim = sorted(_pids(c).items())[0]
        killed = threading.Event()

        def progress(done, total, phase):
            if phase.pass_no == 2 and done == 3 and not killed.is_set():
                os.kill(victim[1], signal.SIGKILL)  # the worker process; its nanny restarts it
                killed.set()
            time.sleep(0.05)

        res = svd(url, 5, method=method, client=c, panel_bytes=1, progress=progress)
        assert killed.is_set()
        calm = svd(url, 5, method=method, client=c, panel_bytes=1)
    # Recomputed tasks run the same kernels on the same panels: the same bits.
    assert np.array_equal(res.U, calm.U) and np.array_equal(res.Vt, calm.Vt)
    assert np.array_equal(res.S, calm.S)
    if method == "exact":
        check_svd(res, A, 5)
    assert res.events and any("left the cluster" in e for e in res.events), res.events


def test_all_workers_killed_fails_with_worker_lost(tmp_path):
    """Workers as separate `dask worker --no-nanny` processes: nothing restarts them."""
    import subprocess
    import sys

    from distributed import Client, LocalCluster

    A = decaying(2000, 20, seed=1)
    url = to_zarr(tmp_path / "A.zarr", A, (100, 20))
    dask_cli = os.path.join(os.path.dirname(sys.executable), "dask")
    with LocalCluster(n_workers=0, processes=True, dashboard_address=None) as cl, \
            Client(cl) as c:
        procs = [subprocess.Popen([dask_cli, "worker", cl.scheduler_address, "--no-nanny",
                                   "--nthreads", "1", "--no-dashboard"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for _ in range(2)]
        try:
            c.wait_for_workers(2, timeout=60)

            def progress(done, total, phase):
                if done == 2 and phase.pass_no == 1:
                    for p in procs:
                        p.send_signal(signal.SIGKILL)
                time.sleep(0.05)

            t0 = time.monotonic()
            with pytest.raises(WorkerLostError, match="every Dask worker is gone") as info:
                svd(url, 3, method="exact", client=c, panel_bytes=1, progress=progress,
                    no_workers_timeout=3)
            assert time.monotonic() - t0 < 60  # bounded: 3 s without workers, plus detection
            assert info.value.type == "worker_lost"
        finally:
            for p in procs:
                p.kill()
                p.wait()
