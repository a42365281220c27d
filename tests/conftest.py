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
