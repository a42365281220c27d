"""The public entry point :func:`svd`: validation, planning, method choice, output."""

from __future__ import annotations

import numbers
import time
import uuid

import numpy as np

from ._energy import energy_report, spectral_estimate
from ._engine import Phase, make_engine
from ._errors import InvalidInputError
from ._kernels import block_argmax
from ._labels import read_labels
from ._layout import (DEFAULT_MEMORY_FRACTION, MIN_BAND_BYTES, check_layout, plan_layout, rechunk,
                      remove_scratch)
from ._missing import (check_mode, check_none_missing, decide_mask, describe_feature,
                       feature_counts)
from ._randqb import energy_rank, randqb_svd
from ._rsvd import randomized_svd
from ._run import Run
from ._sketch import sketch_svd
from ._source import DEFAULT_PANEL_BYTES, PanelRef, PanelRefs, Source, open_source, read_panel
from ._store import ResultWriter, SVDResult, write_tall_block
from ._tsqr import exact_svd

#: Default share of a worker's memory limit for cached panels (see :mod:`._cache`).
DEFAULT_PANEL_CACHE = 0.3

__all__ = ["svd", "choose_method", "EXACT_MAX_COLUMNS"]

#: ``method="auto"`` picks ``exact`` when the short side is at most this:
#: an n×n R factor per tree node (32 MiB at n = 2048) is cheap and exact
#: gives the whole spectrum. It also picks ``exact`` when the sketch would
#: be at least half as wide as the short side, where randomization saves
#: nothing.
EXACT_MAX_COLUMNS = 2048

_METHODS = ("auto", "exact", "randomized", "sketch")


def _int_param(value, name, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidInputError(f"{name} must be an integer; got {value!r}.", field=name)
    if value < low:
        raise InvalidInputError(f"{name} must be >= {low}; got {value!r}.", field=name)
    return int(value)


def choose_method(method, shape, rank, n_oversamples):
    """Resolve ``method="auto"`` (see :data:`EXACT_MAX_COLUMNS`)."""
    if method not in _METHODS:
        raise InvalidInputError(
            f"method must be one of {', '.join(map(repr, _METHODS))}; got {method!r}.",
            field="method")
    if method != "auto":
        return method
    short = min(shape)
    if short <= EXACT_MAX_COLUMNS or 2 * (rank + n_oversamples) >= short:
        return "exact"
    return "randomized"


def _versions():
    import dask
    import zarr

    import svdserve

    return {"svdserve": svdserve.__version__, "numpy": np.__version__,
            "dask": dask.__version__, "zarr": zarr.__version__}


def _panels_for(src, bounds, engine, pin=None, sliced=False):
    """Panel arguments for each (start, stop) of the tall view.

    ``pin`` overrides the source's pin (the scratch copy of a rechunked
    source, stored in the tall orientation); ``sliced`` reads by byte range.
    """
    wide = src.wide
    if src.kind == "zarr":
        if pin is not None:  # the scratch copy: already in the tall orientation
            return PanelRefs(pin, bounds, False, sliced)
        if src.pin is not None:  # read through the pin, made lazily per panel
            return PanelRefs(src.pin, bounds, wide, sliced)
        return [PanelRef(s, e, wide, array=src.obj, view=src.view) for s, e in bounds]
    if src.kind == "numpy":
        a = src.obj
        return [engine.put(np.ascontiguousarray(a[:, s:e].T if wide else a[s:e]))
                for s, e in bounds]
    x = src.obj.T if wide else src.obj
    x = x.rechunk((tuple(e - s for s, e in bounds), (x.shape[1],)))
    return list(x.to_delayed().ravel())


def _pivot_row(src, panels, markers=None):
    """The tall view's first row in float64: the common shift of a centred run.

    Read like the panels (through the pin, by byte range when they are).
    Non-finite entries (and missing-value ``markers``) become 0, so a NaN in
    row 0 is reported for the first panel only, not spread to every panel by
    the shift, and a masked feature stays exactly zero.
    """
    if src.kind == "dask":
        row = src.obj[0].compute()
    elif isinstance(panels, PanelRefs):
        row = read_panel(PanelRefs(panels.pin, [(0, 1)], panels.wide, panels.sliced)[0])[0]
    elif src.view is not None:
        row = read_panel(PanelRef(0, 1, False, array=src.obj, view=src.view))[0]
    else:
        row = src.obj[0]
    row = np.asarray(row, dtype=np.float64).copy()
    row[~np.isfinite(row)] = 0.0
    for value in markers or ():
        row[row == value] = 0.0
    return row


def _missing_decider(src, bounds, k, labels, state, missing):
    """``decide_missing`` of a run that counts missing values: sets ``state["mask"]``
    after pass 1 (``missing="mask"``), or fails on any (``"error"`` with a CF fill value)."""
    m_t, n_t = src.tall_shape
    n_features, n_samples = (m_t, n_t) if src.wide else (n_t, m_t)
    coords = labels["coords"] if labels else None

    def describe(j):
        return describe_feature(j, src.matrix_view, coords)

    def decide(counts):
        per_feature = feature_counts(counts, bounds, src.wide, n_features)
        if missing == "mask":
            state["mask"] = decide_mask(per_feature, n_samples, rank=k, describe=describe)
        else:
            check_none_missing(per_feature, src.info.fill, describe=describe)
    return decide


def _bounded(src, panel_bytes):
    """An unpinned Zarr array whose chunk band exceeds the budget, as a dask array
    (dask then rechunks it to panels in bounded memory); other sources unchanged."""
    if src.kind != "zarr" or src.pin is not None or src.view is not None:
        return src
    m, n = src.shape
    band = min(src.tall_chunk, max(m, n)) * min(m, n) * 8
    if band <= max(DEFAULT_PANEL_BYTES if panel_bytes is None else panel_bytes, MIN_BAND_BYTES):
        return src
    import dask.array as da

    return Source(src.info, "dask", da.from_array(src.obj, chunks=src.obj.chunks))


def svd(source, rank=None, *, array=None, method="auto", n_oversamples=10, n_iter=2,
        center=False, random_state=0, client=None, storage_options=None, out=None,
        out_storage_options=None, panel_bytes=None, progress=None, no_workers_timeout=60.0,
        compute_u=True, panel_cache=DEFAULT_PANEL_CACHE, allow_missing_chunks=False,
        energy=None, max_rank=None, block_size=16, sketch_sizes=None, n_probes=10,
        sample_dims=None, missing="error", scratch=None,
        memory_fraction=DEFAULT_MEMORY_FRACTION):
    """Truncated SVD of a matrix too large for memory, on Dask.

    ``A ≈ U diag(S) Vt`` (of ``A − 1 meanᵀ`` when ``center=True``), computed
    panel by panel: row bands aligned with the input's chunks, each read by
    one task.

    Parameters
    ----------
    source : zarr.Array, str, os.PathLike, SourcePin, ndarray or dask.array.Array
        The matrix of shape (m, n), or a path / fsspec URL (``s3://...``) of
        a Zarr (format 2 or 3) array or group, or a source pinned earlier
        with :func:`pin_source`. Any real dtype; computed in float64. A Zarr
        source on storage is pinned (metadata digest, chunk stamps): it is
        read exactly as validated, re-listed before the first read and
        after the last, and a change fails with :class:`SourceChangedError`.
    rank : int, optional
        Number of singular triplets k, ``1 <= k <= min(m, n)``. Exactly one
        of ``rank`` and ``energy`` is given.
    array : str, optional
        Path of the array inside a group (may be omitted when the group
        holds exactly one array).
    method : {"auto", "exact", "randomized", "sketch"}, default="auto"
        ``exact``: TSQR, 2 passes, the whole spectrum (:mod:`._tsqr`).
        ``randomized``: Halko et al., ``n_iter + 1`` passes (:mod:`._rsvd`).
        ``sketch``: Tropp et al. 2019, exactly 1 pass (:mod:`._sketch`).
        ``auto``: exact when ``min(m, n) <= 2048`` or the sketch would be
        at least half the short side, else randomized. With ``energy``,
        ``randomized`` (and ``auto`` on a wide short side) means the
        blocked QB of :mod:`._randqb`; ``exact`` picks the rank from the
        whole spectrum.
    n_oversamples : int, default=10
        Extra random test vectors (randomized only); clipped so that
        ``rank + n_oversamples <= min(m, n)``.
    n_iter : int, default=2
        Power iterations (randomized only), one pass over A each.
    center : bool, default=False
        Subtract column means first (PCA), implicitly, at no extra pass and
        as accurately as if the centred matrix had been given: panels are
        shifted by the first row before any arithmetic, so the column
        offsets (1e8 on data of spread 1e-3, say) never enter a rounding
        error.
    random_state : int, default=0
        Seed of the Gaussian test matrix. Same seed, same input and same
        panel plan give the same factors on any number of workers.
    client : distributed.Client, optional
        Cluster to run on; default: the current default client, else a
        synchronous run in this process.
    storage_options : dict, optional
        fsspec options for the source URL (credentials, ``endpoint_url``).
    out : str, optional
        Path or URL of a Zarr group to write the result to (``U`` with row
        chunks like the input, ``S``, ``Vt``, ``mean``, a manifest last).
        The returned ``U``/``Vt`` are then lazy ``zarr.Array``.
    out_storage_options : dict, optional
        fsspec options for ``out``; default ``storage_options``.
    panel_bytes : int, optional
        Byte budget of one panel in float64 (default 128 MiB); a panel is at
        least one chunk.
    progress : callable, optional
        ``progress(done, total, phase)`` after each panel; ``phase`` is a
        :class:`Phase`. An exception raised by it cancels the run and
        propagates unchanged.
    no_workers_timeout : float, default=60
        Seconds a pass may wait on a cluster with no worker at all before
        failing with :class:`WorkerLostError`. Workers that die while others
        remain cost only recomputation (noted in ``res.events``).
    compute_u : bool, default=True
        False: σ and V only (``U`` is None). ``exact`` then makes **one** pass;
        ``randomized`` skips forming U. For a wide matrix U is the small
        factor and is returned anyway (it costs nothing).
    panel_cache : float, default=0.3
        Fraction of each worker's memory limit that may hold decoded panels
        between passes (:mod:`._cache`); later passes then read from memory
        instead of storage. 0 streams every pass. Never lets a worker pass
        60 % of its limit, so it cannot make one spill, pause or die.
    allow_missing_chunks : bool, default=False
        Read chunks that the metadata implies but the store lacks as the
        fill value (arrays sparse on purpose). By default such a chunk fails
        with :class:`InvalidInputError` naming it and its row range.
    energy : float, optional
        Instead of ``rank``: the smallest rank capturing this fraction
        (0 < energy < 1) of ‖A‖²_F (of the total variance when centred),
        the rank ``sklearn.decomposition.PCA(n_components=energy)`` picks.
        Randomized: blocks of ``block_size`` columns, ``n_iter + 1`` passes
        each, until the pass-1 total says the target is met (Yu, Gu & Li
        2018); ``report["energy_target"]`` says how many.
    max_rank : int, optional
        With ``energy``: the largest rank returned (default min(m, n)).
    block_size : int, default=16
        With ``energy`` (randomized): basis columns added per block.
    sketch_sizes : (int, int), optional
        ``method="sketch"``: range and core sketch sizes (default 4k + 1
        and 2(4k + 1) + 1, Tropp et al. 2019 §5.4).
    n_probes : int, default=10
        Gaussian probes of the a-posteriori error estimate of randomized
        and sketch results (``report["error_estimate"]``: a bound on
        ‖A − U S Vᵀ‖₂ failing with probability 10**-n_probes).
    sample_dims : sequence of str, optional
        Decompose an N-D variable (e.g. ``(time, lat, lon)`` of an
        xarray-written store) as the matrix whose rows are these dimensions
        (the samples) and whose columns are the other dimensions flattened
        in C order (the features): EOF analysis with
        ``sample_dims=("time",)``. Required when the array is not 2-D. The
        result then records the dimensions and coordinates
        (``SVDResult.to_xarray()`` in the client).
    missing : {"error", "mask"}, default="error"
        ``"error"``: NaN/Inf fail the job (:class:`NonFiniteError`).
        ``"mask"``: features that are NaN (or the CF ``_FillValue``) in every
        sample are masked: they read as 0, which changes no singular value
        or other singular vector, and ``res.mask`` marks them; features
        missing in only some samples fail the job (:class:`NonFiniteError`
        naming them); a rank above the features kept fails after pass 1
        (``InvalidInputError``, field ``rank``).
    scratch : str, optional
        Directory or URL (shared by every worker) for the one-time raw copy
        made when compressed chunks span more than a panel (a wide matrix in
        row chunks, a tall one in column chunks; :mod:`._layout`). Default:
        next to ``out``, else the system temp directory. Deleted at the end.
    memory_fraction : float, default=0.5
        Refuse (before any read) a layout whose unavoidable per-task
        footprint -- one decoded compressed chunk -- exceeds this share of
        the smallest worker's memory limit.

    Returns
    -------
    SVDResult
        ``U`` of shape (m, k) (None without ``compute_u``), ``S`` of shape
        (k,), ``Vt`` of shape (k, n), ``mean`` of shape (n,) or None,
        ``report``, ``passes`` (passes over A), ``reads`` (of them, how many
        came from storage rather than the panel cache), ``method``.

    Raises
    ------
    InvalidInputError
        Bad parameter or matrix (``.field`` names which), a chunk missing
        from the store, or a layout beyond the sanity limits.
    SourceNotFoundError
        The path, URL or array does not exist.
    NonFiniteError
        NaN/Inf found in pass 1 (``.rows`` gives the first bad panel).
    StorageError
        Reading or writing failed (a corrupt chunk is named);
        :class:`SourceChangedError` when the source changed, vanished or
        now leads outside the allowed roots.
    WorkerLostError
        Workers kept dying, or the scheduler went away.

    Notes
    -----
    A wide matrix (m < n) is decomposed through its transpose and the
    factors swapped back. Signs are fixed so that the largest-magnitude
    entry of each row of ``Vt`` is positive (ties: lowest column).
    Memory per worker: about one panel plus O(n·l), whatever m is and
    whatever the chunk grid (``report["plan"]`` says how the matrix was cut
    and the estimated peak per worker).
    """
    t_start = time.perf_counter()
    missing = check_mode(missing)
    src = open_source(source, array=array, storage_options=storage_options,
                      allow_missing_chunks=allow_missing_chunks, panel_bytes=panel_bytes,
                      sample_dims=sample_dims)
    m, n = src.shape
    energy, cap = _energy_params(rank, energy, max_rank, method, (m, n))
    k = cap if energy is not None else _int_param(rank, "rank", 1)
    if k > min(m, n):
        raise InvalidInputError(
            f"rank must be <= min(m, n) = {min(m, n)} for a {m}×{n} matrix; got {k}.",
            field="rank")
    p = _int_param(n_oversamples, "n_oversamples", 0)
    q = _int_param(n_iter, "n_iter", 0)
    bsz = _int_param(block_size, "block_size", 1)
    probes = _int_param(n_probes, "n_probes", 0)
    if random_state is None:
        random_state = 0
    seed = _int_param(random_state, "random_state", 0)
    if energy is not None and method == "auto":
        resolved = "exact" if min(m, n) <= EXACT_MAX_COLUMNS else "randqb"
    else:
        resolved = choose_method(method, (m, n), k, p)
        if energy is not None and resolved == "randomized":
            resolved = "randqb"
    center = bool(center)

    engine = make_engine(client, no_workers_timeout=no_workers_timeout)
    src = _bounded(src, panel_bytes)
    m_t, n_t = src.tall_shape
    layout = plan_layout(src.info, in_memory=src.kind != "zarr", pinned=src.pin is not None,
                         panel_bytes=panel_bytes)
    check_layout(layout, engine.memory_limit(), memory_fraction,
                 name=src.pin.ref.name if src.pin is not None else "the source",
                 shape=src.shape, chunks=src.info.chunks)
    bounds = layout.bounds()
    compute_u = bool(compute_u) or src.wide  # the tall factor of a wide matrix is its V
    passes = {"exact": 1 + compute_u, "sketch": 1}.get(resolved, q + 1)
    center_cols = center and not src.wide
    token = uuid.uuid4().hex
    out_opts = storage_options if out_storage_options is None else out_storage_options
    scratch_url = None
    labels = read_labels(src)
    # With missing="error", a CF fill value still means "missing" (never data): count it too.
    markers = tuple(src.info.fill or ()) if missing == "mask" or src.info.fill else None
    masked = {}
    try:
        pin = None
        if layout.kind == "rechunk":
            pin, scratch_url = rechunk(
                engine, src, layout, _scratch_dir(scratch, out), out_opts, token=token,
                panel_bytes=panel_bytes, progress=progress, passes=passes)
        panels = _panels_for(src, bounds, engine, pin, layout.sliced)
        run = Run(engine, panels, bounds, (m_t, n_t),
                  center=center_cols, center_rows=center and src.wide,
                  passes=passes, progress=progress, wide=src.wide,
                  pivot=_pivot_row(src, panels, markers) if center_cols else None,
                  cache=(token, float(panel_cache)) if panel_cache else None,
                  missing=markers,
                  decide_missing=None if markers is None else _missing_decider(
                      src, bounds, 1 if energy is not None else k, labels, masked, missing))
        fac = _factor(run, resolved, k, energy=energy, cap=cap, compute_u=compute_u,
                      n_oversamples=p, n_iter=q, seed=seed, probes=probes, block_size=bsz,
                      sketch_sizes=sketch_sizes)
    finally:
        engine.release_cache(token)
        remove_scratch(scratch_url, out_opts)
    t_blocks, sigma, v = fac["t"], fac["sigma"], fac["v"]
    k = fac.get("k", k)

    if src.wide:
        # Vt is the tall factor's transpose: fix signs on its columns.
        best = engine.gather([engine.submit(block_argmax, h, s)
                              for h, (s, _) in zip(t_blocks, bounds)])
        absval = np.array([b[0] for b in best])
        winner = np.argmax(absval, axis=0)  # first panel on ties = lowest index
        vals = np.array([b[1] for b in best])[winner, np.arange(k)]
        signs = np.where(vals < 0, -1.0, 1.0)
    else:
        signs = np.ones(k)
    v = v * signs

    src.verify()  # after the last read: the source is still exactly what was pinned
    url = None
    phase_w = Phase("write", run.pass_no, passes)
    t_w = time.perf_counter()
    if out is not None:
        opts = out_opts
        # U (the tall factor) in panel-aligned chunks: each panel writes whole chunks.
        chunk_out = (src.tall_chunk if layout.kind == "chunks"
                     else bounds[0][1] - bounds[0][0])
        writer = ResultWriter(out, opts, (m, n), k, chunk_out, src.wide, center,
                              with_tall=t_blocks is not None)
        sg = engine.scatter(signs)
        writes = [engine.submit(_write_signed, h, sg, writer.url, writer.options_key,
                                writer.tall_name, s, e, src.wide)
                  for h, (s, e) in zip(t_blocks or (), bounds)]
        for done, _ in enumerate(engine.completed(writes), start=1):
            if progress is not None:
                progress(done, len(writes), phase_w)
        tall = None
        url = writer.url
    else:
        tall = None if t_blocks is None else np.concatenate(engine.gather(t_blocks)) * signs
        if progress is not None:
            progress(1, 1, phase_w)
    engine.timings["write"] = time.perf_counter() - t_w

    rows = engine.rows_done
    n_passes = rows // m_t
    assert rows == n_passes * m_t, f"panel reads {rows} are not whole passes of {m_t} rows"
    reads = engine.rows_read / m_t
    mean = None
    if center:
        mean = run.row_means if src.wide else run.mean
    report = energy_report(sigma, run.total_sumsq, shape=(m, n), method=resolved,
                           center=center, s_all=fac["s_all"], sigma_b=fac.get("sigma_b"),
                           resid_ss=fac.get("resid_ss"), resid_est=fac.get("resid_est"),
                           error_estimate=None if fac.get("probe_norms") is None
                           else spectral_estimate(fac["probe_norms"]))
    timings = {name: round(sec, 6) for name, sec in engine.timings.items()}
    timings["total"] = round(time.perf_counter() - t_start, 6)
    report.update({"passes": n_passes, "reads": reads, "n_oversamples": p, "n_iter": q,
                   "random_state": seed, "timings": timings, "plan": layout.to_json()})
    if resolved == "exact":
        report["u_route"] = fac["u_route"]
    if resolved == "randomized":
        report["n_oversamples_used"] = fac["l"] - k
    if resolved == "sketch":
        report["sketch_sizes"] = fac["sizes"]
    mask = masked.get("mask")
    if mask is not None:
        report["missing"] = {"mode": "mask", "masked": int(mask.sum()),
                             "kept": int(mask.size - mask.sum()), "features": int(mask.size)}
    if energy is not None:
        report["energy_target"] = fac["qb"]
        report["energy_target"]["passes"] = n_passes
        report["energy_target"]["reads"] = reads
        report["suggested_rank"]["energy"] = int(k)
    provenance = {
        "input": {"url": src.info.url, "array": src.info.array, "shape": [m, n],
                  "dtype": src.info.dtype, "chunks": list(src.info.chunks),
                  "zarr_format": src.info.zarr_format,
                  "sample_dims": None if labels is None else labels["sample_dims"]},
        "params": {"rank": k, "method": method, "n_oversamples": p, "n_iter": q,
                   "center": center, "random_state": seed, "panel_bytes": panel_bytes,
                   "compute_u": compute_u, "panel_cache": panel_cache,
                   "energy": energy, "max_rank": cap if energy is not None else None,
                   "block_size": bsz, "n_probes": probes, "missing": missing},
        "method": resolved, "passes": n_passes, "reads": reads, "panels": len(bounds),
        "versions": _versions(), "timings": timings, "events": list(engine.events),
    }
    if src.wide:
        u_small, vt = v, None
    else:
        u_small, vt = None, v.T
    if url is not None:
        writer.finish(S=sigma, small=u_small if src.wide else vt, mean=mean,
                      attrs={"svdserve": provenance, "report": report},
                      mask=mask, labels=labels)
        grp = writer.group
        u_out, vt_out = (grp["U"] if "U" in grp else None), grp["Vt"]
    else:
        u_out, vt_out = (u_small, tall.T) if src.wide else (tall, vt)
    return SVDResult(U=u_out, S=np.asarray(sigma, dtype=float), Vt=vt_out, mean=mean,
                     report=report, passes=n_passes, method=resolved, url=url,
                     provenance=provenance, events=list(engine.events), reads=reads,
                     mask=mask, labels=labels)


def _factor(run, resolved, k, *, energy, cap, compute_u, n_oversamples, n_iter, seed, probes,
            block_size, sketch_sizes):
    """Run the resolved algorithm; the factors as a dict (``t`` None without U)."""
    if resolved == "exact":
        choose = None if energy is None else _rank_by_energy(run, energy, cap)
        fac = exact_svd(run, k if choose is None else choose, compute_u=compute_u)
        if choose is not None:
            fac["qb"] = {"energy": energy, "max_rank": cap, "blocks": 0,
                         "reached": choose.wanted <= cap}
        return fac
    if resolved == "sketch":
        fac = sketch_svd(run, k, random_state=seed, n_probes=probes,
                         sizes=_sizes_param(sketch_sizes))
    elif resolved == "randqb":
        fac = randqb_svd(run, energy=energy, max_rank=cap, block_size=block_size,
                         n_oversamples=n_oversamples, n_iter=n_iter, random_state=seed,
                         n_probes=probes)
    else:
        fac = randomized_svd(run, k, n_oversamples=n_oversamples, n_iter=n_iter,
                             random_state=seed, n_probes=probes, compute_u=compute_u)
    if not compute_u:
        fac["t"] = None
    return fac


def _scratch_dir(scratch, out):
    """Where a rechunked copy goes: ``scratch``, else next to ``out``, else the temp dir."""
    if scratch is not None:
        return str(scratch)
    if out is not None:
        parent = str(out).rstrip("/").rsplit("/", 1)
        return parent[0] if len(parent) == 2 and parent[0] else "."
    import tempfile

    return tempfile.gettempdir()


def _energy_params(rank, energy, max_rank, method, shape):
    """Validate ``rank`` / ``energy`` / ``max_rank``; returns (energy or None, rank cap)."""
    short = min(shape)
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
    cap = short if max_rank is None else _int_param(max_rank, "max_rank", 1)
    if cap > short:
        raise InvalidInputError(f"max_rank must be <= min(m, n) = {short}; got {cap}.",
                                field="max_rank")
    return float(energy), cap


def _rank_by_energy(run, energy, cap):
    """For the exact method: the rank from every singular value and the pass-1 total."""
    def choose(sigma):
        e, s = run.total_sumsq
        choose.wanted = 1 if s == 0.0 else energy_rank(np.ldexp(sigma, -e), np.sqrt(s), energy)
        return max(1, min(choose.wanted, cap))
    choose.wanted = 0
    return choose


def _sizes_param(sizes):
    if sizes is None:
        return None
    if not isinstance(sizes, (tuple, list)) or len(sizes) != 2:
        raise InvalidInputError(f"sketch_sizes must be a pair (range, core); got {sizes!r}.",
                                field="sketch_sizes")
    return (_int_param(sizes[0], "sketch_sizes", 1), _int_param(sizes[1], "sketch_sizes", 1))


def _write_signed(block, signs, url, options_key, name, start, stop, transpose):
    return write_tall_block(block * signs, url, options_key, name, start, stop, transpose)
