"""One job, specified once: what it computes (:class:`SVDParams`, made by
:func:`plan`) and how it runs (:class:`Execution`).

The service's submit route calls :func:`plan` on the pinned source's metadata
(a 422 names the field of any :class:`InvalidInputError`) and stores the
result; its runner hands the stored :class:`SVDParams` and the
:class:`Execution` its settings build to :func:`~._api.svd` (``spec=``,
``execution=``), which otherwise builds both from its keyword arguments. So the
rank check, the method choice, the clipping of ``n_oversamples`` and the rule that a wide
matrix's tall factor is always computed live here only, and so do the
execution defaults (:data:`DEFAULT_PANEL_BYTES`, :data:`DEFAULT_PANEL_CACHE`,
:data:`DEFAULT_MEMORY_FRACTION`, :data:`READERS`).
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field

import numpy as np

from ._errors import InvalidInputError
from ._methods import METHODS
from ._missing import check_mode
from ._scaling import check_weights

__all__ = ["SVDParams", "plan", "choose_method", "EXACT_MAX_COLUMNS", "Execution",
           "DEFAULT_PANEL_BYTES", "DEFAULT_PANEL_CACHE", "DEFAULT_MEMORY_FRACTION", "READERS",
           "panel_budget"]

#: Default byte budget of one panel held as float64.
DEFAULT_PANEL_BYTES = 128 * 2**20

#: Default share of a worker's memory limit for cached panels (see :mod:`._cache`).
DEFAULT_PANEL_CACHE = 0.4

#: Share of the smallest worker's memory limit that the unavoidable part of
#: a layout (one decoded chunk, or one row) may take before submit refuses it.
DEFAULT_MEMORY_FRACTION = 0.5

#: Values of the ``reader`` setting: which code decodes the stored chunks.
READERS = ("direct", "zarr")


def panel_budget(panel_bytes):
    """The panel budget in bytes: ``panel_bytes``, or :data:`DEFAULT_PANEL_BYTES` for None."""
    return DEFAULT_PANEL_BYTES if panel_bytes is None else int(panel_bytes)


@dataclass(frozen=True)
class Execution:
    """How a decomposition runs, apart from what it computes (validated when made).

    Attributes
    ----------
    panel_bytes : int or None, default=None
        Byte budget of one panel in float64 (None: :data:`DEFAULT_PANEL_BYTES`).
    panel_cache : float, default=0.4
        Share of each worker's memory limit that may hold decoded panels
        between passes (:mod:`._cache`); 0 streams every pass.
    memory_fraction : float, default=0.5
        Share of the smallest worker's memory limit one decoded chunk may take.
    reader : {"direct", "zarr"}, default="direct"
        What decodes the stored chunks (:mod:`._decode` or zarr's pipeline).
    no_workers_timeout : float, default=60
        Seconds a pass may wait on a cluster with no worker at all.
    task_deadline : float or None, default=None
        Floor of the deadline of a wait on the cluster (None: no deadline).
    task_deadline_factor : float, default=10
        The deadline's multiple of the median time between task completions.

    Raises
    ------
    InvalidInputError
        ``field="reader"`` for a reader not in :data:`READERS`.
    """

    panel_bytes: int | None = None
    panel_cache: float = DEFAULT_PANEL_CACHE
    memory_fraction: float = DEFAULT_MEMORY_FRACTION
    reader: str = "direct"
    no_workers_timeout: float = 60.0
    task_deadline: float | None = None
    task_deadline_factor: float = 10.0

    def __post_init__(self):
        if self.reader not in READERS:
            raise InvalidInputError(f"reader must be one of {', '.join(map(repr, READERS))}; "
                                    f"got {self.reader!r}.", field="reader")

    def engine_options(self):
        """Keyword arguments of :func:`~._engine.make_engine`."""
        return {"no_workers_timeout": self.no_workers_timeout,
                "task_deadline": self.task_deadline,
                "deadline_factor": self.task_deadline_factor}

    def to_json(self):
        """What the provenance records of it."""
        return {"panel_bytes": self.panel_bytes, "panel_cache": self.panel_cache,
                "reader": self.reader}

#: ``method="auto"`` picks ``exact`` when the short side is at most this:
#: an n×n R factor per tree node (32 MiB at n = 2048) is cheap and exact
#: gives the whole spectrum. It also picks ``exact`` when the sketch would
#: be at least half as wide as the short side, where randomization saves
#: nothing.
EXACT_MAX_COLUMNS = 2048


@dataclass(frozen=True)
class SVDParams:
    """The validated parameters of one decomposition of an ``(m, n)`` matrix.

    Attributes
    ----------
    rank : int
        k; with ``energy``, the cap (``max_rank``, default min(m, n)).
    method : str
        As requested (``"auto"`` included).
    resolved : {"exact", "randomized", "randqb", "sketch"}
        The algorithm that runs (``"randqb"``: an energy target, randomized).
    n_oversamples : int
        Clipped so that ``rank + n_oversamples <= min(m, n)``.
    n_iter, random_state, block_size, n_probes : int
    center, compute_u : bool
    energy : float or None
    max_rank : int or None
    sketch_sizes : (int, int) or None
    missing : {"error", "mask"}
    weights : None, "coslat", "area" or (shape, values)
        Feature weights (:func:`~._scaling.check_weights`).
    standardize : bool
        Divide each feature by its standard deviation (:mod:`._scaling`).
    notes : tuple of str
        What was changed from the request, in words (the oversampling clip).
    """

    rank: int
    method: str
    resolved: str
    n_oversamples: int
    n_iter: int
    random_state: int
    center: bool
    compute_u: bool
    energy: float | None = None
    max_rank: int | None = None
    block_size: int = 16
    sketch_sizes: tuple | None = None
    n_probes: int = 10
    missing: str = "error"
    notes: tuple = field(default=())
    weights: object = None
    standardize: bool = False

    def to_json(self):
        return {**asdict(self), "sketch_sizes": None if self.sketch_sizes is None
                else list(self.sketch_sizes), "notes": list(self.notes)}

    @classmethod
    def from_json(cls, data):
        data = dict(data)
        if data.get("sketch_sizes") is not None:
            data["sketch_sizes"] = tuple(data["sketch_sizes"])
        data["notes"] = tuple(data.get("notes", ()))
        if isinstance(data.get("weights"), list):
            data["weights"] = (tuple(data["weights"][0]), tuple(data["weights"][1]))
        return cls(**data)

    def svd_kwargs(self):
        """Keyword arguments of :func:`~._api.svd` that reproduce this plan."""
        kw = {key: getattr(self, key) for key in (
            "method", "n_oversamples", "n_iter", "random_state", "center", "compute_u",
            "energy", "max_rank", "block_size", "sketch_sizes", "n_probes", "missing",
            "standardize")}
        kw["rank"] = None if self.energy is not None else self.rank
        w = self.weights
        kw["weights"] = w if w is None or isinstance(w, str) else np.reshape(w[1], w[0])
        return kw


def int_param(value, name, low):
    """``value`` as an int >= ``low``, else :class:`InvalidInputError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidInputError(f"{name} must be an integer; got {value!r}.", field=name)
    if value < low:
        raise InvalidInputError(f"{name} must be >= {low}; got {value!r}.", field=name)
    return int(value)


def choose_method(method, shape, rank, n_oversamples):
    """Resolve ``method="auto"`` (see :data:`EXACT_MAX_COLUMNS`)."""
    if method not in METHODS:
        raise InvalidInputError(
            f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}.",
            field="method")
    if method != "auto":
        return method
    short = min(shape)
    if short <= EXACT_MAX_COLUMNS or 2 * (rank + n_oversamples) >= short:
        return "exact"
    return "randomized"


def plan(shape, rank=None, *, method="auto", n_oversamples=10, n_iter=2, center=False,
         random_state=0, compute_u=True, energy=None, max_rank=None, block_size=16,
         sketch_sizes=None, n_probes=10, missing="error", weights=None, standardize=False):
    """Validate a job's parameters against the matrix shape and resolve the method.

    Parameters
    ----------
    shape : (int, int)
        ``(m, n)`` of the matrix (the view of an N-D variable).
    rank, method, ... :
        As :func:`~._api.svd` takes them; ``compute_u`` is forced True for a wide
        matrix (m < n), whose tall factor is V (it costs nothing).

    Returns
    -------
    SVDParams

    Raises
    ------
    InvalidInputError
        ``.field`` names the parameter (``rank``, ``energy``, ``max_rank``,
        ``method``, ``n_oversamples``, ...); the message says what was expected.
    """
    m, n = (int(x) for x in shape)
    short = min(m, n)
    energy, cap = _energy_params(rank, energy, max_rank, method, short)
    k = cap if energy is not None else int_param(rank, "rank", 1)
    if k > short:
        raise InvalidInputError(
            f"rank must be <= min(m, n) = {short} for a {m}×{n} matrix; got {k}.",
            field="rank")
    p = int_param(n_oversamples, "n_oversamples", 0)
    missing = check_mode(missing)
    if energy is not None and method == "auto":
        resolved = "exact" if short <= EXACT_MAX_COLUMNS else "randqb"
    else:
        resolved = choose_method(method, (m, n), k, p)
        if energy is not None and resolved == "randomized":
            resolved = "randqb"
    notes = ()
    if energy is None and k + p > short:
        if resolved == "randomized":  # only randomized jobs use oversampling
            notes = (f"n_oversamples clipped from {p} to {short - k} so that "
                     f"rank + n_oversamples <= min(m, n) = {short}",)
        p = short - k
    return SVDParams(
        rank=k, method=method, resolved=resolved, n_oversamples=p,
        n_iter=int_param(n_iter, "n_iter", 0),
        random_state=int_param(0 if random_state is None else random_state,
                               "random_state", 0),
        center=bool(center), energy=energy,
        compute_u=bool(compute_u) or m < n,  # a wide matrix's tall factor is V: always formed
        max_rank=cap if energy is not None else None,
        block_size=int_param(block_size, "block_size", 1),
        sketch_sizes=_sizes_param(sketch_sizes), n_probes=int_param(n_probes, "n_probes", 0),
        missing=missing, notes=notes, weights=check_weights(weights),
        standardize=_standardize_param(standardize, center, resolved, m >= n, n_iter))


def _standardize_param(standardize, center, resolved, tall, n_iter):
    """Validate ``standardize``: it needs centring, and on a tall matrix (features across
    panels) the pass-1 statistics before the passes that use them."""
    if not isinstance(standardize, (bool, int)) or standardize not in (0, 1):
        raise InvalidInputError(f"standardize must be true or false; got {standardize!r}.",
                                field="standardize")
    if not standardize:
        return False
    if not center:
        raise InvalidInputError("standardize=True divides each feature by its standard "
                                "deviation about its mean: give center=True with it.",
                                field="standardize")
    if tall and (resolved in ("sketch", "randqb") or (resolved == "randomized" and not n_iter)):
        raise InvalidInputError(
            f"standardize=True with method={resolved!r} on a matrix with more samples than "
            "features: the standard deviations are known only after the first pass, and this "
            "method's only (or first) pass already needs them (its Gaussian test matrices "
            "would have to be scaled by them; scaling afterwards breaks the error bounds of "
            "Tropp et al. and Halko et al.). Use method='exact', or 'randomized' with "
            "n_iter >= 1.", field="standardize")
    return True


def _energy_params(rank, energy, max_rank, method, short):
    """Validate ``rank`` / ``energy`` / ``max_rank``; returns (energy or None, rank cap)."""
    if energy is None:
        if rank is None:
            raise InvalidInputError("give rank= (components) or energy= (a fraction such as "
                                    "0.99); got neither.", field="rank")
        if max_rank is not None:
            raise InvalidInputError("max_rank caps an energy target; give energy= with it, "
                                    "or drop it and use rank=.", field="max_rank")
        return None, None
    if rank is not None:
        raise InvalidInputError(f"rank and energy are exclusive; got rank={rank!r} and "
                                f"energy={energy!r}. Drop one.", field="energy")
    if isinstance(energy, bool) or not isinstance(energy, numbers.Real) \
            or not 0.0 < float(energy) < 1.0:
        raise InvalidInputError(f"energy must be a fraction with 0 < energy < 1; got "
                                f"{energy!r}.", field="energy")
    if method == "sketch":
        raise InvalidInputError("method='sketch' needs a rank (one pass cannot adapt it); "
                                "use method='randomized' or 'auto' with energy=.",
                                field="method")
    cap = short if max_rank is None else int_param(max_rank, "max_rank", 1)
    if cap > short:
        raise InvalidInputError(f"max_rank must be <= min(m, n) = {short}; got {cap}.",
                                field="max_rank")
    return float(energy), cap


def _sizes_param(sizes):
    if sizes is None:
        return None
    if not isinstance(sizes, (tuple, list)) or len(sizes) != 2:
        raise InvalidInputError(f"sketch_sizes must be a pair (range, core); got {sizes!r}.",
                                field="sketch_sizes")
    return (int_param(sizes[0], "sketch_sizes", 1), int_param(sizes[1], "sketch_sizes", 1))
