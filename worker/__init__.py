"""svdserve.worker: out-of-core truncated SVD on any Dask cluster.

>>> from svdserve.worker import svd
>>> res = svd("data/A.zarr", 20, method="randomized", n_iter=2)   # doctest: +SKIP
>>> res.U, res.S, res.Vt, res.report["energy_ranks"], res.passes  # doctest: +SKIP

Modules: :mod:`._kernels` (pure NumPy panel kernels), :mod:`._engine` (Dask
futures, tree reductions, progress), :mod:`._tsqr` (exact, Benson et al.),
:mod:`._rsvd` (randomized, Halko et al.), :mod:`._randqb` (rank by energy
target, Yu, Gu & Li), :mod:`._sketch` (one pass, Tropp et al.),
:mod:`._energy` (the report, Gavish–Donoho denoising rank),
:mod:`._store` (result group with manifest), :mod:`._source` (inputs, panels),
:mod:`._cache` (decoded panels kept in worker memory between passes),
:mod:`._pin` (pinned inputs: read exactly what was validated),
:mod:`._layout` (how any chunk grid is cut into panels in bounded memory).
This package never imports :mod:`svdserve.service` or :mod:`svdserve.client`.
"""

from ._api import EXACT_MAX_COLUMNS, choose_method, svd
from ._energy import energy_report
from ._engine import Phase, smallest_memory_limit
from ._layout import Layout, check_layout, plan_layout
from ._plan import SVDParams, plan
from ._errors import (
    InvalidInputError,
    NonFiniteError,
    SourceAccessError,
    SourceChangedError,
    SourceNotFoundError,
    StorageError,
    SVDError,
    WorkerLostError,
)
from ._pin import Limits, SourcePin, check_limits, pin_source
from ._source import DEFAULT_PANEL_BYTES, PanelPlan, SourceInfo, inspect_source, plan_panels
from ._store import SVDResult, load

__all__ = [
    "svd",
    "load",
    "inspect_source",
    "choose_method",
    "energy_report",
    "plan_panels",
    "PanelPlan",
    "plan",
    "SVDParams",
    "plan_layout",
    "check_layout",
    "Layout",
    "smallest_memory_limit",
    "pin_source",
    "SourcePin",
    "Limits",
    "check_limits",
    "SVDResult",
    "SourceInfo",
    "Phase",
    "EXACT_MAX_COLUMNS",
    "DEFAULT_PANEL_BYTES",
    "SVDError",
    "InvalidInputError",
    "SourceNotFoundError",
    "SourceAccessError",
    "SourceChangedError",
    "NonFiniteError",
    "StorageError",
    "WorkerLostError",
]
