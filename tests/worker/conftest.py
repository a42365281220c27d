"""Fixtures of the worker tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tight_client():
    """Two worker processes limited to 240 MiB each (the nanny pauses a worker at 80 %,
    kills it at 95 %): the out-of-core tests (test_layouts.py, test_sparse.py) share it.

    Not the default client (``set_as_default=False``): it lives for the whole session, and
    a later test's plain dask computation (``xarray.to_zarr``, say) must not land on these
    small workers."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      memory_limit=240 * 2**20, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client
