"""Fixtures of the job-service tests.

- In-process tests build the app with :func:`svdserve.service.create_app` and
  drive it with Starlette's ``TestClient`` (which runs the lifespan); every
  app connects to the session's one real ``LocalCluster`` (``dask_client``
  from ``tests/conftest.py``) and runs the real ``svdserve.worker.svd``.
- End-to-end tests (``test_service_e2e.py``) start ``python -m
  svdserve.service`` as a subprocess with its embedded cluster.

Matrices live in a session data root; each app gets its own SQLite file and
results root.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

import numpy as np
import pytest
import zarr

from tests._check import check_factors
from tests.service._kit import CHUNK_ROWS, M, N, PANEL_BYTES, TRUE_RANK, low_rank, wait_job, write


def pytest_configure(config):
    # Starlette's TestClient on httpx: the suggested replacement is not a dependency.
    config.addinivalue_line("filterwarnings",
                            "ignore:Using `httpx` with `starlette.testclient`")

@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A data root holding every matrix the tests submit, plus things outside it."""
    base = tmp_path_factory.mktemp("svc")
    root = base / "data"
    outside = base / "outside"
    root.mkdir()
    outside.mkdir()
    a = low_rank(M, N, TRUE_RANK)
    write(root / "A.zarr", a, chunks=(CHUNK_ROWS, N))
    wide = low_rank(30, 200, 5, seed=1)
    write(root / "wide.zarr", wide, chunks=(30, 20))
    write(root / "small.zarr", low_rank(12, 8, 3, seed=2), chunks=(6, 8))
    write(root / "vec.zarr", np.arange(100.0), chunks=(50,))
    write(root / "cube.zarr", np.zeros((4, 4, 4)))
    write(root / "empty.zarr", np.zeros((0, 5)), chunks=(1, 5))
    z = zarr.create_array(str(root / "strings.zarr"), shape=(4, 3), dtype=str, chunks=(4, 3))
    z[...] = np.array([["a", "b", "c"]] * 4)
    bad = low_rank(M, 20, 4, seed=3)
    bad[333, 7] = np.nan
    write(root / "nan.zarr", bad, chunks=(CHUNK_ROWS, 20))
    g = zarr.open_group(str(root / "group.zarr"), mode="w")
    g.create_array("first", shape=(50, 10), dtype="f8", chunks=(25, 10))[...] = \
        low_rank(50, 10, 3, seed=4)
    g.create_array("second", shape=(40, 10), dtype="f8", chunks=(20, 10))[...] = \
        low_rank(40, 10, 3, seed=5)
    (root / "sub").mkdir()
    write(root / "sub" / "B.zarr", low_rank(80, 10, 3, seed=6), chunks=(40, 10))
    # outside the root: a valid matrix, reachable only through tricks
    write(outside / "secret.zarr", low_rank(50, 10, 3, seed=7), chunks=(50, 10))
    os.symlink(outside / "secret.zarr", root / "escape.zarr")
    # a directory inside the root whose chunk file is a symlink to outside
    sneaky = root / "sneaky.zarr"
    write(sneaky, low_rank(50, 10, 3, seed=8), chunks=(50, 10))
    chunk = next(p for p in sneaky.rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    os.symlink(next(p for p in (outside / "secret.zarr").rglob("*")
                    if p.is_file() and p.name != "zarr.json"), chunk)
    # a symlink that stays inside the root is fine
    os.symlink(root / "A.zarr", root / "alias.zarr")
    return root


@pytest.fixture(scope="session")
def matrix_a(data_root):
    return np.asarray(zarr.open_array(str(data_root / "A.zarr"), mode="r")[...])


@pytest.fixture
def service(dask_client, data_root, tmp_path):
    """``service(**settings)`` -> context manager yielding a TestClient of a fresh app."""
    from fastapi.testclient import TestClient

    from svdserve.service import Settings, create_app

    @contextmanager
    def make(**overrides):
        kw = dict(scheduler=dask_client.scheduler.address, data_roots=[str(data_root)],
                  results_root=str(tmp_path / "results"),
                  database=str(tmp_path / "jobs.sqlite"), panel_bytes=PANEL_BYTES,
                  progress_interval=0.0)
        kw.update(overrides)
        app = create_app(Settings(**kw))
        with TestClient(app, raise_server_exceptions=False) as client:
            client.app_state = app.state
            yield client

    return make


@pytest.fixture
def wait():
    return wait_job


class Gate:
    """Holds every job inside its first progress callback until opened.

    The real :func:`svdserve.worker.svd` runs; the wrapper only delays the
    service's progress callback, calling it again every 50 ms meanwhile, so
    a cancel is noticed exactly as it would be between two slow panels.
    """

    def __init__(self, monkeypatch):
        import svdserve.service._runner as runner_mod

        self.released = threading.Event()
        self.entered = threading.Event()
        real = runner_mod.svd

        def gated(*args, progress=None, **kw):
            def hold(done, total, phase):
                progress(done, total, phase)
                self.entered.set()
                while not self.released.wait(0.05):
                    progress(done, total, phase)
            return real(*args, progress=hold, **kw)

        monkeypatch.setattr(runner_mod, "svd", gated)

    def release(self):
        self.released.set()


@pytest.fixture
def gate(monkeypatch):
    g = Gate(monkeypatch)
    yield g
    g.release()


@pytest.fixture
def check():
    return check_factors
