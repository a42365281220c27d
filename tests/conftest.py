"""Shared fixtures: one real Dask LocalCluster per test session, matrices, Zarr on disk."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def dask_client():
    """A real scheduler and two real workers (threads in this process, one each)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


@pytest.fixture(scope="session", autouse=True)
def _uploads_root(tmp_path_factory):
    """Services started by tests without an uploads root (``SVDSERVE_UPLOADS_ROOT``,
    default ``./uploads``) keep their uploads in a temporary directory, not in the
    checkout; servers started as subprocesses inherit it."""
    import os

    old = os.environ.get("SVDSERVE_UPLOADS_ROOT")
    os.environ["SVDSERVE_UPLOADS_ROOT"] = str(tmp_path_factory.mktemp("uploads"))
    yield
    if old is None:
        os.environ.pop("SVDSERVE_UPLOADS_ROOT", None)
    else:
        os.environ["SVDSERVE_UPLOADS_ROOT"] = old
