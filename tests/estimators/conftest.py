"""Fixtures of the estimator tests: small matrices, the same matrix as Zarr on disk.

The shared Dask cluster is ``dask_client`` of ``tests/conftest.py``; the
service-backed case lives with the other service tests (``tests/client``).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests._check import to_zarr


@pytest.fixture(scope="module")
def low_rank():
    """300 × 40 float64: rank-8 signal with decaying σ, plus noise 1e-2, offset columns."""
    rng = np.random.default_rng(7)
    u, _ = np.linalg.qr(rng.standard_normal((300, 8)))
    v, _ = np.linalg.qr(rng.standard_normal((40, 8)))
    X = (u * (100.0 * 0.7 ** np.arange(8))) @ v.T
    return X + 1e-2 * rng.standard_normal((300, 40)) + np.linspace(-5, 5, 40)


@pytest.fixture(scope="module")
def low_rank_zarr(low_rank, tmp_path_factory):
    """``low_rank`` stored as Zarr v3 in row chunks of 64 (several panels)."""
    return to_zarr(tmp_path_factory.mktemp("est") / "X.zarr", low_rank, (64, 40))
