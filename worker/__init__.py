"""svdserve.worker: out-of-core truncated SVD on any Dask cluster.

>>> from svdserve.worker import svd
>>> res = svd("data/A.zarr", 20, method="randomized", n_iter=2)   # doctest: +SKIP
>>> res.U, res.S, res.Vt, res.report["energy_ranks"], res.passes  # doctest: +SKIP

Modules, each importing only the ones listed before it (README, "Layout and
development"): :mod:`._errors`, :mod:`._methods`, :mod:`._missing`, :mod:`._scaling`
(weights and standardisation),
:mod:`._view` (an N-D variable as a matrix); :mod:`._spec` (the job, validated
once: :class:`SVDParams`, :class:`Execution`); :mod:`._layout` (how the matrix
is cut into panels, pure planning); :mod:`._guard` (the read-time sandbox),
:mod:`._meta` (metadata, checks), :mod:`._pin` (identity and stamps),
:mod:`._decode` (codecs), :mod:`._read` (every way to read a box),
:mod:`._source` (inputs, panels); :mod:`._cache`, :mod:`._engine` (Dask
futures, tree reductions, progress), :mod:`._rechunk` (the one-time raw copy),
:mod:`._kernels` (pure NumPy panel kernels, on :mod:`._sumsq` and :mod:`._qr`),
:mod:`._tasks` (the panel task), :mod:`._run`; the methods :mod:`._tsqr`
(exact, Benson et al.), :mod:`._rsvd` (randomized, Halko et al.),
:mod:`._randqb` (rank by energy target, Yu, Gu & Li), :mod:`._sketch` (one
pass, Tropp et al.), :mod:`._energy` (the report, Gavish–Donoho denoising
rank); :mod:`._result` (result group with manifest), :mod:`._labels`;
:mod:`._api` (:func:`svd`).
This package never imports :mod:`svdserve.service` or :mod:`svdserve.client`.
"""

from ._api import EXACT_MAX_COLUMNS, check_feature_weights, choose_method, svd
from ._energy import energy_report
from ._engine import Phase, smallest_memory_limit
from ._errors import (
    InvalidInputError,
    NonFiniteError,
    SourceAccessError,
    SourceChangedError,
    SourceNotFoundError,
    StorageError,
    SVDError,
    WorkerLostError,
    map_exception,
)
from ._layout import Layout, PanelPlan, check_layout, plan_layout, plan_panels
from ._meta import Limits, SourceInfo, check_limits
from ._methods import METHODS, Method
from ._pin import SourcePin, pin_source
from ._result import SVDResult, load
from ._source import inspect_source
from ._spec import (
    DEFAULT_MEMORY_FRACTION,
    DEFAULT_PANEL_BYTES,
    DEFAULT_PANEL_CACHE,
    READERS,
    Execution,
    SVDParams,
    plan,
)

__all__ = [
    "svd",
    "check_feature_weights",
    "load",
    "inspect_source",
    "choose_method",
    "energy_report",
    "plan_panels",
    "PanelPlan",
    "plan",
    "SVDParams",
    "Execution",
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
    "Method",
    "METHODS",
    "EXACT_MAX_COLUMNS",
    "DEFAULT_PANEL_BYTES",
    "DEFAULT_PANEL_CACHE",
    "DEFAULT_MEMORY_FRACTION",
    "READERS",
    "map_exception",
    "SVDError",
    "InvalidInputError",
    "SourceNotFoundError",
    "SourceAccessError",
    "SourceChangedError",
    "NonFiniteError",
    "StorageError",
    "WorkerLostError",
]
