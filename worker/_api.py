"""The public entry point :func:`svd`, one short sequence:

open the source (:func:`~._source.open_source`) → the job spec
(:func:`~._spec.plan` → :class:`~._spec.SVDParams`, with an
:class:`~._spec.Execution`) → the layout (:meth:`~._source.Source.layout`,
:func:`~._layout.check_layout`) → run the algorithm (:func:`_run_algorithm`,
which returns :class:`~._run.Factors`) → fix signs → write → report.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._energy import energy_report, spectral_estimate
from ._engine import DaskEngine, LocalEngine, Phase, make_engine
from ._kernels import block_argmax
from ._labels import read_labels
from ._layout import Layout, check_layout
from ._multi import is_multivariate, open_variables, variables_report
from ._missing import (check_none_missing, decide_mask, describe_feature, feature_counts,
                       missing_chunks_mode)
from ._randqb import energy_rank, randqb_svd
from ._rechunk import rechunk, remove_scratch, scratch_dir
from ._result import ResultWriter, SVDResult, write_tall_block
from ._rsvd import randomized_svd
from ._run import Run
from ._scaling import check_weights, feature_weights, scaling_report
from ._sketch import sketch_svd
from ._source import Source, open_source
from ._spec import EXACT_MAX_COLUMNS, Execution, SVDParams, choose_method, plan
from ._sumsq import sumsq, sumsq_norm
from ._tsqr import exact_svd

__all__ = ["svd", "choose_method", "EXACT_MAX_COLUMNS", "check_feature_weights"]

#: The execution defaults (:class:`Execution`), which :func:`svd`'s keywords take.
_RUN = Execution()


def _versions():
    import dask
    import zarr

    import svdserve

    return {"svdserve": svdserve.__version__, "numpy": np.__version__,
            "dask": dask.__version__, "zarr": zarr.__version__}


def check_feature_weights(source, weights):
    """The weight of every feature of ``source`` (checked as :func:`svd` would at its start).

    Parameters
    ----------
    source : SourcePin, str, array, or a list of them
        What :func:`svd` takes; a pin is not read, only its metadata and coordinates.
    weights : None, "coslat", "area" or array-like

    Returns
    -------
    ndarray of shape (n,) or None

    Raises
    ------
    InvalidInputError
        ``field="weights"``: no latitude coordinate, or a shape that does not fit.
    """
    weights = check_weights(weights) if not isinstance(weights, tuple) else weights
    if is_multivariate(source, None):
        src, variables = open_variables(source, None, sample_dims=None)
        return _weights_of(weights, src.shape[1], None, variables)
    src = open_source(source)
    return feature_weights(weights, src.shape[1], read_labels(src))


def _missing_decider(job):
    """``decide_missing`` of a run that counts missing values: sets ``job.mask`` after
    pass 1 (``missing="mask"``), or fails on any (``"error"`` with a CF fill value)."""
    src, params, bounds = job.src, job.params, job.bounds
    m_t, n_t = src.tall_shape
    n_features, n_samples = (m_t, n_t) if src.wide else (n_t, m_t)
    coords = job.labels["coords"] if job.labels else None
    k = 1 if params.energy is not None else params.rank

    def describe(j):
        return describe_feature(j, src.matrix_view, coords)

    def decide(counts):
        per_feature = feature_counts(counts, bounds, src.wide, n_features)
        if params.missing == "mask":
            job.mask = decide_mask(per_feature, n_samples, rank=k, describe=describe)
        else:
            check_none_missing(per_feature, src.info.fill, describe=describe)
    return decide


def svd(source, rank=None, *, array=None, method="auto", n_oversamples=10, n_iter=2,
        center=False, random_state=0, client=None, storage_options=None, out=None,
        out_storage_options=None, panel_bytes=None, progress=None,
        no_workers_timeout=_RUN.no_workers_timeout, compute_u=True,
        panel_cache=_RUN.panel_cache, missing_chunks="fill",
        allow_missing_chunks=None, energy=None, max_rank=None, block_size=16,
        sketch_sizes=None, n_probes=10, sample_dims=None, missing="error", scratch=None,
        memory_fraction=_RUN.memory_fraction, reader=_RUN.reader, interrupt=None,
        task_deadline=_RUN.task_deadline, task_deadline_factor=_RUN.task_deadline_factor,
        spec=None, execution=None, weights=None, standardize=False):
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
    client : distributed.Client, None or False, optional
        Cluster to run on; default: the current default client, else a
        synchronous run in this process. ``False``: in this process even
        when a default client exists (an in-memory matrix, say, that a
        cluster would only have to be sent).
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
    panel_cache : float, default=0.4
        Fraction of each worker's memory limit that may hold decoded panels
        between passes (:mod:`._cache`); later passes then read from memory
        instead of storage. 0 streams every pass. Never lets a worker pass
        60 % of its limit, so it cannot make one spill, pause or die.
    missing_chunks : {"fill", "error"}, default="fill"
        A chunk that the metadata implies but the store lacks *is* the fill
        value in Zarr (zarr-python does not write chunks equal to it, so an
        all-zero block leaves none): ``"fill"`` reads it so, counted in
        ``report["input"]`` and ``report["notes"]`` ("12 of 400 chunks
        absent, read as fill value 0.0 …"). ``"error"`` (strict, to catch
        half-finished uploads) fails with :class:`InvalidInputError` naming
        the first one and its row range. Either way a chunk that vanishes or
        appears while the job runs is a :class:`SourceChangedError`.
    allow_missing_chunks : bool, optional
        Deprecated (a DeprecationWarning): True is ``missing_chunks="fill"``,
        False is ``missing_chunks="error"``.
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
        ``sample_dims=("time",)``. Required when the array is not 2-D; a
        2-D array with dimension names (xarray-written) defaults to its
        first dimension (``report["notes"]`` says so). The result then
        records the dimensions and coordinates (``SVDResult.to_xarray()``
        in the client).
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
    reader : {"direct", "zarr"}, default="direct"
        How stored chunks are decoded. ``"direct"``: each chunk file is read
        through the pin and decoded by its numcodecs codec straight into the
        panel buffer (:mod:`._decode`; chunks encoded as ``bytes`` plus at most
        one of zstd, gzip, blosc, or a v2 compressor without filters), else
        zarr's pipeline. ``"zarr"``: always zarr's pipeline. The panels are
        bit-identical either way; ``report["plan"]["reader"]`` says which ran.
    interrupt : callable, optional
        Called every few milliseconds while the run waits on the cluster,
        even while no panel finishes; an exception raised by it stops the run
        (outstanding tasks are released) and propagates unchanged, as from
        ``progress``.
    task_deadline : float, optional
        Floor of the deadline of a wait on the cluster (Dask only): when no
        task finishes for ``max(task_deadline, task_deadline_factor × the
        median time between two task completions)`` seconds, workers that
        do not answer a ping (hung, e.g. stopped) are retired as lost; their
        tasks recompute elsewhere (noted in ``res.events``). None: no deadline.
    task_deadline_factor : float, default=10
        See ``task_deadline``.
    spec : SVDParams, optional
        The job's parameters planned already (:func:`plan` on this source's
        shape; the service stores them at submit): used as they are, and
        ``rank`` ... ``missing`` (what to compute) are then not read.
    execution : Execution, optional
        How to run (the service builds it from its settings): used as it is,
        and ``panel_bytes``, ``panel_cache``, ``memory_fraction``, ``reader``,
        ``no_workers_timeout`` and ``task_deadline*`` are then not read.

    weights : {"coslat", "area"} or array-like, optional
        Feature weights D (EOF analysis decomposes ``(A − 1 meanᵀ)·D``, as
        eofs and xeofs do). ``"coslat"``: √cos(latitude), from the latitude
        coordinate (``lat``/``latitude``, written next to the variable by
        ``xarray.to_zarr``) of an N-D source (eofs ``weights="coslat"``,
        xeofs ``use_coslat=True``). ``"area"``: √(cell area / total area)
        with cell bounds half-way between the coordinates (eofs
        ``weights="area"``). An array: non-negative, of shape (n,) or
        broadcastable to the feature shape (the non-sample dimensions).
        Applied to each panel as the kernels receive it, never to the data
        on storage; costs no pass (:mod:`._scaling`).
    standardize : bool, default=False
        Also divide each feature by its standard deviation (ddof = 0,
        floored at float32's ε so a constant feature becomes 0, as xeofs
        does): the correlation-matrix EOFs. Needs ``center=True``. Measured
        in pass 1 (no extra pass); on a tall matrix refused for ``sketch``,
        an ``energy`` target and ``randomized`` with ``n_iter=0``, whose
        first pass already needs it.

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
        from the store with ``missing_chunks="error"``, or a layout beyond
        the sanity limits.
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
    if execution is None:
        execution = Execution(panel_bytes=panel_bytes, panel_cache=panel_cache,
                              memory_fraction=memory_fraction, reader=reader,
                              no_workers_timeout=no_workers_timeout,
                              task_deadline=task_deadline,
                              task_deadline_factor=task_deadline_factor)
    mode = missing_chunks_mode(missing_chunks, allow_missing_chunks)
    variables = None
    if is_multivariate(source, array):
        src, variables = open_variables(source, array, sample_dims=sample_dims,
                                        storage_options=storage_options, missing_chunks=mode,
                                        panel_bytes=execution.panel_bytes)
    else:
        src = open_source(source, array=array, storage_options=storage_options,
                          missing_chunks=mode, panel_bytes=execution.panel_bytes,
                          sample_dims=sample_dims)
    if spec is None:
        spec = plan(src.shape, rank, method=method, n_oversamples=n_oversamples, n_iter=n_iter,
                    center=center, random_state=random_state, compute_u=compute_u,
                    energy=energy, max_rank=max_rank, block_size=block_size,
                    sketch_sizes=sketch_sizes, n_probes=n_probes, missing=missing,
                    weights=weights, standardize=standardize)
    return _run_job(src, spec, execution, t_start, client=client, progress=progress,
                    interrupt=interrupt, out=out, scratch=scratch, variables=variables,
                    out_opts=storage_options if out_storage_options is None
                    else out_storage_options)


def _run_job(src, params, execution, t_start, *, client, progress, interrupt, out, out_opts,
             scratch, variables=None):
    """Cut, run, fix signs, verify the source, write, report: the :class:`SVDResult`."""
    engine = make_engine(client, interrupt=interrupt, **execution.engine_options())
    src, layout = _cut(src, engine, execution)
    labels = read_labels(src)
    if labels is None and variables is not None and len(variables) == 1:
        labels = variables[0]["labels"]  # one in-memory DataArray: its dims and coordinates
    job = _Job(src, params, layout, engine, progress, out, out_opts, labels, execution,
               weights=_weights_of(params.weights, src.shape[1], labels, variables),
               variables=variables)
    run, fac = _run_algorithm(job, scratch=scratch_dir(scratch, out))
    signs, v = _fix_signs(job, fac)
    src.verify()  # after the last read: the source is still exactly what was pinned
    tall, writer = _write_tall(job, run, fac, signs)
    report, provenance = _report(job, run, fac, t_start, execution.to_json())
    return _finish(job, run, fac, v, tall, writer, report, provenance)


@dataclass
class _Job:
    """What the steps of one :func:`svd` call share."""

    src: Source
    params: SVDParams
    layout: Layout
    engine: LocalEngine | DaskEngine
    progress: Callable | None  # progress(done, total, phase)
    out: str | None
    out_opts: dict | None
    labels: dict | None
    execution: Execution
    mask: np.ndarray | None = None
    reader: str | None = None  # what decoded the stored chunks (report["plan"]["reader"])
    weights: np.ndarray | None = None  # feature weights (:mod:`._scaling`)
    variables: list | None = None  # several variables (:mod:`._multi`)
    scale: np.ndarray | None = None  # the feature scale applied, once known

    @property
    def bounds(self):
        return self.layout.bounds()

    def phase_total(self):
        p = self.params
        return {"exact": 1 + p.compute_u, "sketch": 1}.get(p.resolved, p.n_iter + 1)


def _weights_of(weights, n, labels, variables):
    """The feature weights (shape (n,)) of one source, or of each variable in turn."""
    if variables is None or weights is None or not isinstance(weights, str):
        return feature_weights(weights, n, labels)
    return np.concatenate([feature_weights(weights, v["columns"][1] - v["columns"][0],
                                           v["labels"]) for v in variables])


def _cut(src, engine, execution):
    """The layout (:mod:`._layout`), refused before any read when a chunk cannot fit."""
    src = src.bounded(execution.panel_bytes)
    layout = src.layout(execution.panel_bytes)
    check_layout(layout, engine.memory_limit(), execution.memory_fraction, name=src.name,
                 shape=src.shape, chunks=src.info.chunks)
    return src, layout


def _run_algorithm(job, *, scratch):
    """Copy the source if the layout says so, build the :class:`Run`, run the method.

    The panel cache and the scratch copy are released however the run ends.
    """
    src, params, engine, bounds = job.src, job.params, job.engine, job.bounds
    ex = job.execution
    center_cols = params.center and not src.wide
    passes = job.phase_total()
    token = uuid.uuid4().hex
    # With missing="error", a CF fill value still means "missing" (never data): count it too.
    markers = (tuple(src.info.fill or ()) if params.missing == "mask" or src.info.fill
               else None)
    scratch_url = None
    direct = src.decodes_directly(ex.reader)
    job.reader = src.reader_used(job.layout, direct)
    try:
        pin = None
        if job.layout.kind == "rechunk":
            pin, scratch_url = rechunk(engine, src, job.layout, scratch, job.out_opts,
                                       token=token, panel_bytes=ex.panel_bytes,
                                       progress=job.progress, passes=passes, direct=direct)
        panels = src.panels(bounds, engine, scratch=pin, sliced=job.layout.sliced,
                            direct=direct)
        run = Run(engine, panels, bounds, src.tall_shape,
                  center=center_cols, center_rows=params.center and src.wide,
                  passes=passes, progress=job.progress, wide=src.wide,
                  pivot=src.first_row(panels, markers) if center_cols else None,
                  cache=(token, float(ex.panel_cache)) if ex.panel_cache else None,
                  missing=markers,
                  decide_missing=None if markers is None else _missing_decider(job),
                  weights=job.weights, standardize=params.standardize)
        fac = _factor(run, params)
        job.scale = run.scale
        return run, fac
    finally:
        if ex.panel_cache:  # nothing to release otherwise (and no call to a hung worker)
            engine.release_cache(token)
        remove_scratch(scratch_url, job.out_opts)


def _fix_signs(job, fac):
    """Signs making the largest-magnitude entry of each row of Vt positive (ties: lowest
    column); returns ``(signs, v)`` with ``v`` the right factor of the tall view, signed."""
    k = fac.rank
    if not job.src.wide:
        return np.ones(k), fac.v
    # Vt is the tall factor's transpose: fix signs on its columns, panel by panel.
    eng = job.engine
    best = eng.gather([eng.submit(block_argmax, h) for h in fac.tall])
    winner = np.argmax(np.array([b[0] for b in best]), axis=0)  # first panel on ties
    vals = np.array([b[1] for b in best])[winner, np.arange(k)]
    signs = np.where(vals < 0, -1.0, 1.0)
    return signs, fac.v * signs


def _write_tall(job, run, fac, signs):
    """The tall factor, signed: written panel by panel to ``out``, else gathered.

    Returns ``(tall ndarray or None, ResultWriter or None)``.
    """
    src, eng, progress, bounds = job.src, job.engine, job.progress, job.bounds
    m, n = src.shape
    phase = Phase("write", run.pass_no, job.phase_total())
    t0 = time.perf_counter()
    tall = writer = None
    if job.out is not None:
        # U (the tall factor) in panel-aligned chunks: each panel writes whole chunks.
        chunk_out = (src.tall_chunk if job.layout.kind == "chunks"
                     else bounds[0][1] - bounds[0][0])
        writer = ResultWriter(job.out, job.out_opts, (m, n), fac.rank, chunk_out, src.wide,
                              job.params.center, with_tall=fac.tall is not None)
        sg = eng.scatter(signs)
        writes = [eng.submit(_write_signed, h, sg, writer.url, writer.options_key,
                             writer.tall_name, s, e, src.wide)
                  for h, (s, e) in zip(fac.tall or (), bounds)]
        try:
            for done, _ in enumerate(eng.completed(writes), start=1):
                if progress is not None:
                    progress(done, len(writes), phase)
        except BaseException:
            # A write task still running would recreate the files of an attempt
            # the caller removes next: release the queued ones, wait for the rest.
            eng.settle(writes)
            raise
    else:
        if fac.tall is not None:
            tall = np.concatenate(eng.gather(fac.tall)) * signs
        if progress is not None:
            progress(1, 1, phase)
    eng.timings["write"] = time.perf_counter() - t0
    return tall, writer


def _report(job, run, fac, t_start, extra_params):
    """The energy report (:mod:`._energy`) and the provenance of the run."""
    src, params, eng = job.src, job.params, job.engine
    m, n = src.shape
    m_t = src.tall_shape[0]
    n_passes = eng.rows_done // m_t
    assert eng.rows_done == n_passes * m_t, \
        f"panel reads {eng.rows_done} are not whole passes of {m_t} rows"
    reads = eng.rows_read / m_t
    report = energy_report(fac.sigma, run.total_sumsq, shape=(m, n), method=params.resolved,
                           center=params.center, s_all=fac.s_all, sigma_b=fac.sigma_b,
                           resid_ss=fac.resid_ss, resid_est=fac.resid_est,
                           error_estimate=None if fac.probe_norms is None
                           else spectral_estimate(fac.probe_norms))
    timings = {name: round(sec, 6) for name, sec in eng.timings.items()}
    timings["total"] = round(time.perf_counter() - t_start, 6)
    report.update({"passes": n_passes, "reads": reads, "n_oversamples": params.n_oversamples,
                   "n_iter": params.n_iter, "random_state": params.random_state,
                   "timings": timings, "plan": {**job.layout.to_json(), "reader": job.reader}})
    report.update(_method_details(params, fac, n_passes, reads))
    if job.mask is not None:
        mask = job.mask
        report["missing"] = {"mode": "mask", "masked": int(mask.sum()),
                             "kept": int(mask.size - mask.sum()), "features": int(mask.size)}
    if params.energy is not None:
        report["suggested_rank"]["energy"] = int(fac.rank)
    if not params.center and not src.wide:
        # with frobenius_norm: the total variance ‖A‖²_F/m − ‖μ‖² (TruncatedSVD's ratios)
        report["column_mean_norm"] = sumsq_norm(sumsq(run.stats["mean"]))
    if params.weights is not None or params.standardize:
        report["scaling"] = scaling_report(params.weights, job.weights, params.standardize)
    if job.variables is not None:  # squared loadings: the signs do not matter
        vt = (np.concatenate(eng.gather(fac.tall)).T if src.wide else fac.v.T)
        report["variables"] = variables_report(job.variables, vt, fac.sigma)
    _input_notes(report, src)
    prov_params = {**params.to_json(), "rank": fac.rank, **extra_params}
    for key in ("resolved", "notes", "sketch_sizes"):
        prov_params.pop(key)
    if isinstance(params.weights, tuple):  # the values are in the result's "scale"
        prov_params["weights"] = "array"
    info = src.info
    provenance = {
        "input": {"url": info.url, "array": info.array, "shape": [m, n], "dtype": info.dtype,
                  "chunks": list(info.chunks), "zarr_format": info.zarr_format,
                  "sample_dims": None if job.labels is None else job.labels["sample_dims"],
                  **({} if job.variables is None else
                     {"variables": [v["name"] for v in job.variables]})},
        "params": prov_params, "method": params.resolved, "passes": n_passes, "reads": reads,
        "panels": len(job.bounds), "versions": _versions(), "timings": timings,
        "events": list(eng.events),
    }
    return report, provenance


def _input_notes(report, src):
    """``report["input"]``: the absent chunks of a pinned source (count, fill value);
    ``report["notes"]``: what was assumed about the input (absent chunks, sample_dims)."""
    notes = list(src.info.notes)
    if src.pin is not None:
        report["input"] = src.pin.absent_chunks()
        notes += [report["input"]["note"]] if report["input"]["note"] else []
    if notes:
        report.setdefault("notes", []).extend(notes)


def _method_details(params, fac, n_passes, reads):
    """The report's method-specific entries."""
    out = {}
    if params.resolved == "exact":
        out["u_route"] = fac.u_route
    if params.resolved == "randomized":
        out["n_oversamples_used"] = fac.width - fac.rank
    if params.resolved == "sketch":
        out["sketch_sizes"] = fac.sketch_sizes
    if params.energy is not None:
        out["energy_target"] = {**fac.energy_target, "passes": n_passes, "reads": reads}
    return out


def _finish(job, run, fac, v, tall, writer, report, provenance):
    """Write the small factors and the manifest (last); the :class:`SVDResult`."""
    src, params = job.src, job.params
    mean = None
    if params.center:
        mean = run.row_means if src.wide else run.mean
    u_small, vt = (v, None) if src.wide else (None, v.T)
    url = None
    if writer is not None:
        writer.finish(S=fac.sigma, small=u_small if src.wide else vt, mean=mean,
                      attrs={"svdserve": provenance, "report": report},
                      mask=job.mask, labels=job.labels, scale=job.scale)
        grp, url = writer.group, writer.url
        u_out, vt_out = (grp["U"] if "U" in grp else None), grp["Vt"]
    else:
        u_out, vt_out = (u_small, tall.T) if src.wide else (tall, vt)
    return SVDResult(U=u_out, S=np.asarray(fac.sigma, dtype=float), Vt=vt_out, mean=mean,
                     report=report, passes=report["passes"], method=params.resolved, url=url,
                     provenance=provenance, events=list(job.engine.events),
                     reads=report["reads"], mask=job.mask, labels=job.labels,
                     scale=job.scale)


def _factor(run, params):
    """Run the resolved algorithm on ``run``; its :class:`~._run.Factors`."""
    p = params
    if p.resolved == "exact":
        choose = None if p.energy is None else _rank_by_energy(run, p.energy, p.rank)
        fac = exact_svd(run, p.rank if choose is None else choose, compute_u=p.compute_u)
        if choose is not None:
            fac = fac._replace(energy_target={"energy": p.energy, "max_rank": p.rank,
                                              "blocks": 0, "reached": choose.wanted <= p.rank})
        return fac
    if p.resolved == "sketch":
        fac = sketch_svd(run, p.rank, random_state=p.random_state, n_probes=p.n_probes,
                         sizes=p.sketch_sizes)
    elif p.resolved == "randqb":
        fac = randqb_svd(run, energy=p.energy, max_rank=p.rank, block_size=p.block_size,
                         n_oversamples=p.n_oversamples, n_iter=p.n_iter,
                         random_state=p.random_state, n_probes=p.n_probes)
    else:
        fac = randomized_svd(run, p.rank, n_oversamples=p.n_oversamples, n_iter=p.n_iter,
                             random_state=p.random_state, n_probes=p.n_probes,
                             compute_u=p.compute_u)
    return fac if p.compute_u else fac._replace(tall=None)


def _rank_by_energy(run, energy, cap):
    """For the exact method: the rank from every singular value and the pass-1 total."""
    def choose(sigma):
        e, s = run.total_sumsq
        choose.wanted = 1 if s == 0.0 else energy_rank(np.ldexp(sigma, -e), np.sqrt(s), energy)
        return max(1, min(choose.wanted, cap))
    choose.wanted = 0
    return choose


def _write_signed(block, signs, url, options_key, name, start, stop, transpose):
    return write_tall_block(block * signs, url, options_key, name, start, stop, transpose)
