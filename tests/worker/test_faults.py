"""Worker loss on a real multi-process LocalCluster: recomputation, and a bounded failure.

A worker killed mid-job, for every method: ``SVDCommonTests.test_killed_worker_job_still_correct``
(tests/worker/test_methods.py).
"""

import os
import signal
import time

import pytest

from svdserve.worker import WorkerLostError, svd

from tests._check import decaying, to_zarr


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
