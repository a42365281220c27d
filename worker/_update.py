"""Updating a stored result with appended rows, reading only the new rows.

An *update* (``svd(grown, update=previous)``) decomposes a Zarr array that
grew along its sample axis (``zarr.Array.resize`` plus new chunks) since the
result ``previous`` was computed, reading only the appended rows.

exact (TSQR)
    The n×n triangular factor R of the rows seen so far is a mergeable
    summary of them (Demmel, Grigori, Hoemmen & Langou, "Communication-optimal
    parallel and sequential QR and LU factorizations", SIAM J. Sci. Comput.
    34(1), 2012): R of ``[A_old; A_new]`` is the R of ``QR([R_old; R_new])``.
    With centring the two halves are merged with the mean-difference row
    ``sqrt(m_old·m_new/(m_old + m_new))·(μ_old − μ_new)`` (Chan, Golub &
    LeVeque 1979, in matrix form: :func:`~._kernels.tsqr_merge`, the merge the
    tree already uses), both halves shifted by the same pivot row (row 0 of
    the first job). σ, V and the energy report are therefore those of a full
    recompute, to LAPACK's accuracy (the merge is one more node of a TSQR
    tree). The stored state: R, its subtree mean, the first pass's statistics
    (row count, shifted mean, ‖A‖²_F as a scaled pair), the pivot row and the
    pin (chunk stamps) of the rows read.

    U on the old rows is A_old·V_new·Σ_new⁻¹, which depends on directions of
    A_old beyond the k columns of U_old, so ``U_old·W`` with a small W is not
    exact (its error grows with σ_{k+1}/σ_k). With ``compute_u=True`` (the
    default, as for a full job) an update therefore makes **one** GEMM pass
    over every row, U = A V_k Σ_k⁻¹ re-orthonormalised by a TSQR (the
    ``"gemm"`` route of :mod:`._tsqr`), and reports those rows as read; with
    ``compute_u=False`` only the new rows are read.

sketch (Tropp, Yurtsever, Udell & Cevher 2019)
    The sketches are linear in A. The result keeps X = ΥA, Z = ΦAΨ (summed,
    uncentred), Υ1, Φ1, the tall Y = AΩ and the probe products Aω; the left
    test matrices of a row are drawn from its global row index
    (:func:`~._kernels.panel_tests`). An update adds the appended rows'
    contributions (:func:`update_sketch`): the factors and the error estimate
    are those of a full single-pass sketch of the grown matrix with the same
    seed, to rounding, and no old row of A is read.

randomized
    Power iterations do not merge: :func:`check_method` raises
    :class:`UpdateError` naming the methods that support an update
    (:data:`UPDATABLE`).

The old rows are re-checked, never trusted: every chunk wholly below the old
row count must carry the stamp pinned by the parent job, and the rows of a
chunk the array grew inside (the parent's partial last chunk) must hash to
the SHA-256 the parent stored (one read of those rows, reported as
``rows_checked``). Anything else (old rows changed, the array shrank, its
column count, dtype, chunk grid or location changed) is an
:class:`UpdateError` naming what changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from ._errors import InvalidInputError, UpdateError
from ._kernels import merge_stats, svd_flip_rows, tsqr_leaf
from ._qr import qr_r
from ._pin import SourcePin
from ._result import load
from ._run import Factors
from ._sketch import sketch_factors, sketch_sums, sketch_tests, stream_pass
from ._source import PanelRefs, read_panel
from ._tsqr import gemm_u, tsqr_up, with_ones_direction

__all__ = ["UpdateState", "UPDATABLE", "STATE_GROUP", "load_state", "save_state",
           "check_method", "check_params", "check_growth", "new_bounds", "update_exact",
           "tail_digest", "merge_r", "update_sketch", "align", "update_report"]

#: Methods whose stored state merges exactly with appended rows.
UPDATABLE = ("exact", "sketch")

#: Subgroup of a result group holding the state an update merges into.
STATE_GROUP = "update"


@dataclass
class UpdateState:
    """What a stored result keeps so that appended rows can be merged into it.

    Attributes
    ----------
    parent : str
        URL of the result this state was loaded from.
    job : str or None
        The parent's job id, when the service ran it (for messages).
    method : str
    rows, n : int
        Shape of the tall matrix the parent saw.
    dtype : str
    arrays : dict
        exact: ``r`` (r, n), the upper triangular TSQR factor of those rows
        (centred by ``r_mean``, the column means of the shifted rows as the
        tree computed them, when centred). sketch: ``x`` (kr, n), ``z`` (s, s),
        ``ups1`` (kr,), ``phi1`` (s,): the uncentred sketches summed over the rows.
    sketch : dict or None
        sketch: ``sizes`` ([kr, s]) and ``n_probes``; the tall ``Y`` and the probe
        products stay in the result (``update/y``, ``update/probe``).
    stats : dict
        The first pass's merged statistics (:func:`~._kernels.panel_stats`).
    pivot : ndarray of shape (n,) or None
        The common shift of a centred run (row 0 of the first job).
    pin : SourcePin
    tail : dict or None
        ``{"start", "stop", "sha256"}`` of the rows of the last, partial chunk.
    params : dict
        The parent's job parameters (:meth:`~._spec.SVDParams.to_json`).
    """

    parent: str
    job: str | None
    method: str
    rows: int
    n: int
    dtype: str
    arrays: dict
    sketch: dict | None
    stats: dict
    pivot: np.ndarray | None
    pin: SourcePin
    tail: dict | None
    params: dict

    @property
    def who(self):
        """How messages name the parent."""
        return f"job {self.job}" if self.job else f"the result {self.parent!r}"


def tail_digest(pin, start, stop):
    """SHA-256 of rows ``start:stop`` of a pinned tall matrix, read as float64.

    Parameters
    ----------
    pin : SourcePin
    start, stop : int

    Returns
    -------
    str
        Hex digest (of the C-ordered float64 bytes).
    """
    block = read_panel(PanelRefs(pin, [(start, stop)], False)[0])
    return hashlib.sha256(np.ascontiguousarray(block, dtype=np.float64).tobytes()).hexdigest()


def save_state(group, *, method, state, stats, pivot, pin, params, job=None, tall_writer=None):
    """Write the update state into ``group`` (a result group, before its manifest).

    Nothing is written (and the result cannot be updated) for a source that
    is not a pinned 2-D tall Zarr array, or for a method not in :data:`UPDATABLE`.

    Parameters
    ----------
    group : zarr.Group
    method : str
    state : dict
        ``Factors.state``: exact ``r`` (r, n) and ``r_mean`` (n,) or None; sketch
        ``x`` (kr, n), ``z`` (s, s), ``ups1`` (kr,), ``phi1`` (s,), ``sizes``,
        ``n_probes``, and per block of ``bounds`` the handles ``y`` (rows_i, kr)
        and ``probe`` (rows_i, p).
    stats : dict
    pivot : ndarray of shape (n,) or None
    pin : SourcePin or None
    params : dict
    job : str, optional
    tall_writer : callable, optional
        ``tall_writer(name, handles, bounds, width)`` writes the sketch's tall
        blocks into ``update/<name>`` on the workers.
    """
    if method not in UPDATABLE or pin is None or pin.ref.view is not None:
        return
    m, n = pin.ref.shape
    if m < n:
        return
    sub = group.create_group(STATE_GROUP)
    small = ("r", "r_mean", "x", "z", "ups1", "phi1")
    arrays = {"stats_mean": stats["mean"], "pivot": pivot,
              **{key: state.get(key) for key in small}}
    for name, value in arrays.items():
        if value is not None:
            value = np.asarray(value, dtype=np.float64)
            sub.create_array(name, shape=value.shape, chunks=value.shape,
                             dtype="f8")[...] = value
    extra = {}
    if method == "sketch":
        extra = {"sizes": state["sizes"], "n_probes": state["n_probes"]}
        for name, width in (("y", state["sizes"][0]), ("probe", max(state["n_probes"], 1))):
            sub.create_array(name, shape=(m, width), chunks=(pin.ref.key_chunks[0], width),
                             dtype="f8")
            tall_writer(f"{STATE_GROUP}/{name}", state[name], state["bounds"])
    cm = pin.ref.key_chunks[0]
    start = (m // cm) * cm
    tail = None if start == m else {"start": start, "stop": m,
                                    "sha256": tail_digest(pin, start, m)}
    sub.attrs.update({
        "v": 1, "method": method, "rows": m, "n": n, "dtype": pin.info.dtype, "job": job,
        "stats": {"count": int(stats["count"]), "amax": float(stats["amax"]),
                  "center": bool(stats["center"]), "finite": bool(stats["finite"]),
                  "ss": [int(stats["ss"][0]), float(stats["ss"][1])]},
        "pin": pin.to_json(), "tail": tail, "params": params, **extra})


def load_state(previous, storage_options=None):
    """The :class:`UpdateState` of a stored result.

    Parameters
    ----------
    previous : str, os.PathLike or SVDResult
        The parent result: its URL, or a result object with ``url`` (a
        worker :class:`~._result.SVDResult` or anything with that attribute).
    storage_options : dict, optional

    Raises
    ------
    UpdateError
        The result was not written, or holds no update state (its method
        or its source cannot be updated).
    StorageError
        No finished result there.
    """
    url = previous if isinstance(previous, str) else getattr(previous, "url", None)
    if url is None and hasattr(previous, "__fspath__"):
        url = str(previous)
    if url is None:
        raise UpdateError(f"update=: expected the URL of a stored result or a result written "
                          f"with out=..., got {type(previous).__name__!r} without a url; "
                          "rerun the parent with out= to keep its state", changed="source")
    res = load(url, storage_options)
    import zarr

    grp = zarr.open_group(store=res.url, mode="r", **(
        {"storage_options": storage_options} if storage_options and "://" in res.url else {}))
    if STATE_GROUP not in grp:
        check_method(res.method)
        raise UpdateError(
            f"the result {res.url!r} (method {res.method!r}, shape "
            f"{res.report.get('shape')}) keeps no update state: only {' and '.join(UPDATABLE)} "
            "results of a tall (rows >= columns) 2-D Zarr array on storage, without "
            "weights, standardize or several variables, keep it; submit a full job", changed="source")
    sub = grp[STATE_GROUP]
    a = dict(sub.attrs)
    st = a["stats"]
    stats = {**st, "ss": (st["ss"][0], st["ss"][1]), "mean": np.asarray(sub["stats_mean"][...])}

    def arr(name):
        return np.asarray(sub[name][...]) if name in sub else None

    small = {key: arr(key) for key in ("r", "r_mean", "x", "z", "ups1", "phi1")}
    sketch = ({"sizes": a["sizes"], "n_probes": a["n_probes"]} if a["method"] == "sketch"
              else None)
    return UpdateState(parent=res.url, job=a.get("job"), method=a["method"], rows=a["rows"],
                       n=a["n"], dtype=a["dtype"], arrays=small, sketch=sketch,
                       stats=stats, pivot=arr("pivot"), pin=SourcePin.from_json(a["pin"]),
                       tail=a["tail"], params=a["params"])


def check_method(method):
    """Raise :class:`UpdateError` unless ``method`` can be updated (:data:`UPDATABLE`)."""
    if method not in UPDATABLE:
        raise UpdateError(
            f"update: method {method!r} keeps no state that merges with appended rows "
            f"(randomized power iterations do not merge); methods that support update: "
            f"{', '.join(UPDATABLE)}. Submit a full job, or use method='exact'.",
            changed="method")


def check_params(params):
    """Raise :class:`UpdateError` unless the job's (the parent's) parameters can be updated:
    its method (:func:`check_method`), and no ``missing="mask"`` (the mask is decided from
    every row's counts, which an update does not see)."""
    check_method(params.resolved)
    if params.missing == "mask":
        raise UpdateError("update: a result computed with missing='mask' cannot be updated yet "
                          "(which features are missing everywhere depends on every row); "
                          "submit a full job", changed="method")


def _shape_change(state, src):
    """The first difference in location, columns, dtype, chunks or rows; None if grown."""
    pin, old = src.pin, state.pin
    m, n = src.shape
    if pin is None or pin.ref.view is not None:
        return "source", "a 2-D Zarr array on storage (pinned)", "an unpinned or N-D source"
    if pin.ref.url != old.ref.url:
        return "source", repr(old.ref.url), repr(pin.ref.url)
    if n != state.n:
        return "columns", f"{state.n} columns", f"{n}"
    if src.info.dtype != state.dtype:
        return "dtype", repr(state.dtype), repr(src.info.dtype)
    if tuple(pin.ref.key_chunks) != tuple(old.ref.key_chunks):
        return "chunks", f"chunks {tuple(old.ref.key_chunks)}", f"{tuple(pin.ref.key_chunks)}"
    if m <= state.rows:
        what = "shrank" if m < state.rows else "has no appended rows"
        return "shape", f"more than {state.rows} rows", f"{m} rows (the array {what})"
    return None


def check_growth(state, src):
    """Check that ``src`` is the parent's input with rows appended and the old rows unchanged.

    Parameters
    ----------
    state : UpdateState
    src : Source
        The grown source, opened (and pinned) for this update.

    Returns
    -------
    int
        Old rows re-read to check the parent's partial last chunk (0 if none).

    Raises
    ------
    UpdateError
        ``.changed`` says what: location, columns, dtype, chunks, shape
        (shrunk or not grown) or rows (an old chunk's stamp, or the hash of
        the old rows of the partial last chunk).
    """
    diff = _shape_change(state, src)
    if diff is not None:
        changed, expected, got = diff
        raise UpdateError(
            f"update: the source changed since {state.who} beyond appended rows: {changed} "
            f"expected {expected}, got {got}; submit a full job", changed=changed)
    cm = state.pin.ref.key_chunks[0]
    full = state.rows // cm
    old, now = state.pin.stamps[:full], src.pin.stamps[:full]
    bad = np.argwhere(old != now if state.pin.ref.remote else (old != now).any(axis=-1))
    if bad.size:
        row = int(bad[0][0])
        _rows_changed(state, f"chunk row {row} (rows {row * cm}:{(row + 1) * cm}) was rewritten")
    if state.tail is None:
        return 0
    start, stop = state.tail["start"], state.tail["stop"]
    if tail_digest(src.pin, start, stop) != state.tail["sha256"]:
        _rows_changed(state, f"rows {start}:{stop} (the old partial last chunk) differ")
    return stop - start


def _rows_changed(state, detail):
    raise UpdateError(f"rows 0:{state.rows} changed since {state.who} ({detail}); an update "
                      "can only merge appended rows: submit a full job", changed="rows")


def new_bounds(bounds, start):
    """The panels' row ranges clipped to the appended rows ``start:``.

    Parameters
    ----------
    bounds : list of (int, int)
        The full matrix's panels (chunk-aligned).
    start : int
        The parent's row count.

    Returns
    -------
    list of (int, int)
        The panels holding new rows, the first one starting at ``start`` (inside
        a chunk when the array grew inside its last chunk).
    """
    return [(max(s, start), e) for s, e in bounds if e > start]


def merge_r(old, new):
    """R of two stacked subtrees, as :func:`~._kernels.tsqr_merge` but without forming Q.

    Parameters
    ----------
    old, new : dict
        ``r`` (ndarray of shape (r_i, n)), ``mean`` (ndarray of shape (n,) or None:
        centred subtrees) and ``count``.

    Returns
    -------
    dict with ``r`` (the R factor of ``[R_old; R_new; sqrt(m_o m_n/m)(μ_o − μ_n)ᵀ]``,
    Chan, Golub & LeVeque's row for centred subtrees), ``mean`` and ``count``.
    """
    na, nb = old["count"], new["count"]
    n = na + nb
    blocks, mean = [old["r"], new["r"]], None
    if old["mean"] is not None:
        delta = old["mean"] - new["mean"]
        blocks.append(np.sqrt(na * nb / n) * delta[None, :])
        mean = new["mean"] + delta * (na / n)
    return {"r": qr_r(np.vstack(blocks)), "mean": mean, "count": n}


def _merged_root(run, state, leaves):
    """The root of ``[A_old; A_new]``: the stored R merged with the new rows' tree."""
    eng = run.engine
    new_root, _ = tsqr_up(eng, leaves)
    old = {"r": state.arrays["r"], "mean": state.arrays["r_mean"] if run.center else None,
           "count": state.rows}
    root = merge_r(old, new_root)
    run.stats = merge_stats(state.stats, run.stats)
    return root


def update_exact(run, state, k, *, compute_u, full_run):
    """σ, V (and U) of the grown matrix from the stored R and one pass over the new rows.

    Parameters
    ----------
    run : svdserve.worker._run.Run
        Over the appended rows only, shifted by the parent's pivot.
    state : UpdateState
    k : int or callable
        The rank, or ``k(sigma) -> int`` choosing it (energy target).
    compute_u : bool
        Form U = A V_k Σ_k⁻¹ by one GEMM pass over every row (``full_run()``).
    full_run : callable
        ``full_run(stats) -> Run`` over every row of the grown matrix.

    Returns
    -------
    Factors
        As :func:`~._tsqr.exact_svd`, with ``state`` (the merged R) for the next update.
    """
    leaves = run.first_pass("stats+qr", tsqr_leaf, lambda i: (run.center,))
    t_factor = run.phase("factor", reads=False)
    root = _merged_root(run, state, leaves)
    r, extra = with_ones_direction(root["r"], 1 if callable(k) else k, run.center)
    u_r, sigma, vt = np.linalg.svd(r, full_matrices=False)
    u_r, vt = svd_flip_rows(u_r, vt)
    if callable(k):
        k = min(k(sigma), sigma.size)
    run.tick(t_factor, 1, 1)
    s_all = np.zeros(run.n)
    s_all[: sigma.size] = sigma[: run.n]
    out = Factors(None, s_all[:k], vt[:k].T, k, s_all=s_all,
                  state={"r": root["r"], "r_mean": root["mean"]})
    if not compute_u:
        return out
    if not s_all[k - 1] > 0 or extra:
        raise InvalidInputError(
            f"update: U cannot be formed as A V Σ⁻¹ with σ_{k} = {s_all[k - 1]!r}; ask for "
            "compute_u=False (σ and V) or a rank below the numerical rank", field="compute_u")
    return gemm_u(full_run(run.stats), out, vt, s_all, k)


def _state_rows(url, options_key, start, stop):
    """Rows ``start:stop`` of a parent's stored range sketch and probe products (a task)."""
    import json

    import zarr

    opts = json.loads(options_key)
    kw = {"storage_options": opts} if opts and "://" in url else {}
    sub = zarr.open_group(store=url, mode="r", **kw)[STATE_GROUP]
    return {"y": np.asarray(sub["y"][start:stop]), "probe": np.asarray(sub["probe"][start:stop])}


def _vstack(*blocks):
    return np.vstack(blocks)


def align(engine, handles, bounds, full_bounds):
    """Blocks of rows ``bounds`` regrouped as the panels ``full_bounds`` (each a union of
    consecutive blocks): one handle per panel, stacked where a panel holds several."""
    out, i = [], 0
    for _, stop in full_bounds:
        group = []
        while i < len(bounds) and bounds[i][1] <= stop:
            group.append(handles[i])
            i += 1
        out.append(group[0] if len(group) == 1 else engine.submit(_vstack, *group))
    return out


def update_sketch(run, state, k, *, full_bounds, storage_options):
    """The sketch factors of the grown matrix from the stored sketches and the new rows.

    The sketches are linear in A (Tropp et al. 2019, §3): the new rows add
    their rows to Y = AΩ and Υ_new A_new, Φ_new A_new Ψ to X and Z, with
    Υ, Φ drawn from global row indices (:func:`~._kernels.panel_tests`) and Ω,
    Ψ, the probes from the parent's seed. The factors are then those of a full
    single-pass sketch of the grown matrix with the same seed, to rounding (the
    sums are added in another order); the stored Y and probe rows are read from
    the parent's result, never A's old rows.

    Parameters
    ----------
    run : Run
        Over the appended rows only.
    state : UpdateState
    k : int
    full_bounds : list of (int, int)
        The grown matrix's panels (the blocks of ``tall`` in the result).
    storage_options : dict or None
        To read the parent's result on the workers.

    Returns
    -------
    Factors
        As :func:`~._sketch.sketch_svd`, ``tall`` per panel of ``full_bounds``.
    """
    eng = run.engine
    (kr, s), n_probes = state.sketch["sizes"], state.sketch["n_probes"]
    seed = state.params["random_state"]
    tests = sketch_tests(run.n, kr, s, seed, n_probes)
    new = stream_pass(run, tests, seed)
    run.stats = merge_stats(state.stats, run.stats)
    sums = {key: state.arrays[key] + value for key, value in sketch_sums(eng, new).items()}
    old_b = [(a, min(b, state.rows)) for a, b in full_bounds if a < state.rows]
    key = json.dumps(storage_options or {}, sort_keys=True, default=str)
    old = [eng.submit(_state_rows, state.parent, key, a, b) for a, b in old_b]
    bounds = old_b + list(run.bounds)
    fac = sketch_factors(run, old + list(new), bounds, sums, tests, k, random_state=seed,
                         n_probes=n_probes)
    return fac._replace(tall=align(eng, fac.tall, bounds, full_bounds))


def update_report(state, *, rows_total, rows_appended, rows_read, rows_checked):
    """``report["update"]``: the parent and what the update read.

    Returns
    -------
    dict
        ``parent`` (URL), ``parent_job``, ``rows_old``, ``rows_appended``,
        ``rows_total``, ``rows_read`` (rows read from storage, the U pass's
        included) and ``rows_checked`` (old rows re-read to check the parent's
        partial last chunk).
    """
    return {"parent": state.parent, "parent_job": state.job, "rows_old": state.rows,
            "rows_appended": rows_appended, "rows_total": rows_total, "rows_read": rows_read,
            "rows_checked": rows_checked}
