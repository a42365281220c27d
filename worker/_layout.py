"""How the matrix is cut for reading, whatever its chunk grid: the layout of a run.

A panel is a band of rows of the tall view (:mod:`._source`). Read through
Zarr, a panel is at least one chunk high, so a grid whose chunks span the
whole short side -- a wide matrix stored in row chunks, a tall one in column
chunks, any chunk larger than the panel budget -- would make a worker hold a
whole band of chunks, the whole matrix in the worst case. :func:`plan_layout`
picks one of three layouts so that a worker holds about the panel budget:

``"chunks"``
    One chunk band fits the budget (or :data:`MIN_BAND_BYTES`): panels are
    whole chunk bands, decoded by Zarr (concurrently).
``"slices"``
    The chunks are raw bytes (no compressor, filter or sharding): panels of
    budget rows are read by byte range through the pin
    (:func:`~._pin.read_slices`), cutting through chunks.
``"rechunk"``
    Compressed chunks whose band exceeds the budget: a compressed chunk can
    only be decoded whole. Once, before pass 1, :func:`rechunk` copies the
    matrix chunk by chunk (a task holds one chunk) into a raw scratch Zarr
    array in the tall orientation, pins it, and the passes read it as
    ``"slices"``. The scratch is deleted when the run ends. Cost: one read
    and one write of A, counted in ``reads`` and shown as phase ``rechunk``.

What cannot be avoided is one decoded chunk per task. :func:`check_layout`
refuses, before any work starts, a layout whose unavoidable footprint exceeds
a fraction of the smallest worker's memory. docs/layouts.md gives the reasons
for this design.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np

from ._engine import Phase
from ._errors import InvalidInputError

__all__ = ["Layout", "plan_layout", "check_layout", "rechunk", "remove_scratch",
           "DEFAULT_MEMORY_FRACTION"]

#: Share of the smallest worker's memory limit that the unavoidable part of
#: a layout (one decoded chunk, or one row) may take before submit refuses it.
DEFAULT_MEMORY_FRACTION = 0.5

#: A chunk band up to this size is read straight from the chunks even when
#: the panel budget is smaller: a copy of the whole matrix (or one-row
#: panels) would cost more than the few MiB it saves. Tiny budgets then
#: still mean "one chunk band per panel".
MIN_BAND_BYTES = 16 * 2**20

#: Copies of a panel (as float64) a panel task may hold at once: the read
#: buffer, the shifted or centred copy, and the kernel's workspace.
_PANEL_COPIES = 3
#: Copies of one chunk a rechunk task holds: decoded, the chunk buffer being
#: written, and its encoded bytes.
_CHUNK_COPIES = 3


def _mib(nbytes):
    return f"{nbytes / 2**20:.4g} MiB"


@dataclass(frozen=True)
class Layout:
    """How a run reads the matrix (``report["plan"]``).

    Attributes
    ----------
    kind : {"chunks", "slices", "rechunk", "memory"}
        ``"memory"``: a NumPy or dask input, sliced as panels.
    tall_shape : (int, int)
        ``(m_t, n_t)``: the tall view's shape.
    tall_chunks : (int, int)
        Chunk shape in the tall view's orientation.
    panel_rows : int
        Rows of the tall view per panel (the last may be shorter).
    n_panels : int
    unit_bytes : int
        What a task must hold whatever the panel budget: a decoded chunk
        (compressed chunks) or one row (raw chunks, in-memory input), with
        its copies.
    peak_bytes : int
        Estimated peak per worker, excluding the panel cache: the larger of
        ``unit_bytes`` and a panel as float64 with its working copies.
    reason : str
        Why this layout, in words.
    """

    kind: str
    tall_shape: tuple
    tall_chunks: tuple
    panel_rows: int
    n_panels: int
    unit_bytes: int
    peak_bytes: int
    reason: str

    @property
    def sliced(self):
        """Panels are read by byte range (from the source or the scratch copy)."""
        return self.kind in ("slices", "rechunk")

    def bounds(self):
        """The panels as a lazy :class:`~._source.PanelPlan` of ``(start, stop)``."""
        from ._source import PanelPlan

        return PanelPlan(self.tall_shape[0], self.panel_rows)

    def to_json(self):
        return {"kind": self.kind, "panel_shape": [self.panel_rows, self.tall_shape[1]],
                "panels": self.n_panels, "tall_chunks": list(self.tall_chunks),
                "unit_bytes": self.unit_bytes, "peak_bytes_per_worker": self.peak_bytes,
                "reason": self.reason}


def plan_layout(info, *, in_memory=False, pinned=True, panel_bytes=None):
    """Choose how to cut a matrix into panels, from its metadata alone.

    Parameters
    ----------
    info : SourceInfo
        Shape ``(m, n)``, chunk shape (the read chunks: inner chunks when
        sharded), dtype and whether the chunks are raw (``plain``).
    in_memory : bool, default=False
        A NumPy or dask input: any row band can be sliced.
    pinned : bool, default=True
        The source is read through a pin (byte-range reads and the scratch
        copy need one); an unpinned Zarr array keeps the ``"chunks"`` layout.
    panel_bytes : int, optional
        Panel budget as float64 (default :data:`~._source.DEFAULT_PANEL_BYTES`).

    Returns
    -------
    Layout
    """
    from ._source import DEFAULT_PANEL_BYTES, plan_panels

    budget = DEFAULT_PANEL_BYTES if panel_bytes is None else int(panel_bytes)
    m, n = info.shape
    wide = m < n
    m_t, n_t = (n, m) if wide else (m, n)
    cm, cn = info.chunks
    ch, cw = (min(cn, m_t), min(cm, n_t)) if wide else (min(cm, m_t), min(cn, n_t))
    row = n_t * 8
    itemsize = np.dtype(info.dtype).itemsize
    band = ch * row
    if in_memory or not pinned or band <= max(budget, MIN_BAND_BYTES):
        step = min(plan_panels(m_t, n_t, 1 if in_memory else ch, budget).step, m_t)
        kind = "memory" if in_memory else "chunks"
        unit = (_PANEL_COPIES * row if in_memory or info.plain
                else _CHUNK_COPIES * ch * cw * itemsize)
        reason = _direct_reason(kind, step, row, budget, ch, band)
    else:
        step = min(max(1, budget // row), m_t)
        if info.plain:
            kind, unit = "slices", _PANEL_COPIES * row
            reason = (f"one chunk band ({ch} rows of the tall view, {_mib(band)}) exceeds the "
                      f"{_mib(budget)} budget; the chunks are raw bytes, so panels of {step} "
                      "rows are read by byte range, cutting through chunks")
        else:
            kind, unit = "rechunk", _CHUNK_COPIES * ch * cw * itemsize
            reason = (f"one chunk band ({ch} rows of the tall view, {_mib(band)}) exceeds the "
                      f"{_mib(budget)} budget and the chunks are compressed (decodable only "
                      f"whole, {_mib(ch * cw * itemsize)} each): the matrix is copied once, one "
                      "chunk per task, to a raw scratch array in the tall orientation, then "
                      f"read in panels of {step} rows by byte range")
    n_panels = -(-m_t // step)
    peak = max(unit, _PANEL_COPIES * min(step, m_t) * row)
    return Layout(kind, (m_t, n_t), (ch, cw), int(step), int(n_panels), int(unit), int(peak),
                  reason)


def _direct_reason(kind, step, row, budget, ch, band):
    """Why panels are read straight from the chunks (or sliced from memory), in words."""
    if kind == "memory":
        return (f"panels of {step} rows ({_mib(step * row)} as float64) fit the "
                f"{_mib(budget)} budget")
    if band <= budget:
        return (f"panels of {step} rows ({-(-step // ch)} chunk band(s) of up to {ch} rows, "
                f"{_mib(step * row)} as float64) fit the {_mib(budget)} budget")
    if band <= MIN_BAND_BYTES:
        return (f"one chunk band ({ch} rows, {_mib(band)}) exceeds the {_mib(budget)} budget "
                f"but not {_mib(MIN_BAND_BYTES)}: panels are whole chunk bands")
    return (f"one chunk band ({ch} rows, {_mib(band)}) exceeds the {_mib(budget)} budget, but "
            "an unpinned Zarr array is read in whole chunk bands")


def check_layout(layout, worker_memory, fraction=DEFAULT_MEMORY_FRACTION, *, name="the source",
                 shape=None, chunks=None):
    """Refuse a layout whose unavoidable footprint does not fit the workers.

    Parameters
    ----------
    layout : Layout
    worker_memory : int or None
        The smallest worker's memory limit in bytes; None (unknown or
        unlimited) accepts every layout.
    fraction : float, default=0.5
        Share of ``worker_memory`` that ``layout.unit_bytes`` may take.

    Raises
    ------
    InvalidInputError
        ``field="source"``; the message gives the numbers and the remedies.
    """
    if not worker_memory or layout.unit_bytes <= fraction * worker_memory:
        return
    what = f"{name} (shape {list(shape)}, chunks {list(chunks)})" if shape else name
    raise InvalidInputError(
        f"{what} cannot be read in bounded memory on this cluster: its chunks are compressed, "
        f"so a task must decode a whole chunk, which takes about {_mib(layout.unit_bytes)} "
        f"with its copies, more than {fraction:g} of the smallest worker's memory limit "
        f"({_mib(worker_memory)}). Rewrite the array with smaller chunks, or uncompressed or "
        "sharded (then chunks are read in slices), or give the workers more memory.",
        field="source")


# --------------------------------------------------------------------------- the scratch copy


def _is_remote(url):
    return "://" in url and not url.startswith("file://")


def _scratch_url(scratch, token):
    url = f"{str(scratch).rstrip('/')}/svdserve-scratch-{token}.zarr"
    if not _is_remote(url):
        os.makedirs(os.path.dirname(url) or ".", exist_ok=True)
    return url


def remove_scratch(url, storage_options=None):
    """Delete a scratch copy (best effort: a run's result never depends on it)."""
    if url is None:
        return
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except Exception:  # noqa: BLE001 - cleanup must not mask the run's outcome
        pass


def copy_chunks(ref, expect, cells, chunks, wide, url, options_key, direct=False):
    """Rechunk task: decode stored chunks one at a time, write them raw, transposed if wide.

    Parameters
    ----------
    ref, expect : SourceRef, tuple
        The pinned source and the stamps of the keys covering ``cells``.
    cells : list of (int, int)
        Chunk indices (read chunks) of the stored matrix.
    chunks : (int, int)
        Read chunk shape ``(cm, cn)``.
    wide : bool
        Write chunk ``(i, j)`` transposed, at ``(j, i)`` of the tall view.
    url, options_key : str
        The scratch array and its fsspec options as JSON.
    direct : bool
        Decode each chunk directly (:func:`~._decode.read_box`) instead of through zarr.

    Returns
    -------
    int
        Elements copied.
    """
    import zarr

    from ._decode import read_box
    from ._pin import open_pinned, read_region

    opts = json.loads(options_key)
    kw = {"storage_options": opts} if opts and _is_remote(url) else {}
    dst = zarr.open_array(store=url, mode="r+", **kw)
    exp = dict(expect)
    node = None if direct else open_pinned(ref, exp)
    (m, n), (cm, cn) = ref.matrix_view.shape, chunks
    done = 0
    for i, j in cells:
        rows = slice(i * cm, min((i + 1) * cm, m))
        cols = slice(j * cn, min((j + 1) * cn, n))
        what = f"rows {rows.start}:{rows.stop}, columns {cols.start}:{cols.stop}"
        block = (read_box(ref, exp, rows, cols) if direct
                 else read_region(ref, exp, node, (rows, cols), what))
        if wide:
            dst[cols, rows] = block.T
        else:
            dst[rows, cols] = block
        del block
        done += (rows.stop - rows.start) * (cols.stop - cols.start)
    return done


def rechunk(engine, src, layout, scratch, storage_options, *, token, panel_bytes=None,
            progress=None, passes=1, direct=False):
    """Copy a pinned source into a raw scratch array in the tall orientation.

    One task per group of stored chunks (about the panel budget each, at
    least one chunk); each decodes one chunk at a time and writes it raw.
    The copy is then pinned like any source, so later passes read exactly
    what was written.

    Parameters
    ----------
    engine : LocalEngine or DaskEngine
    src : Source
        A pinned Zarr source.
    layout : Layout
        Of kind ``"rechunk"``.
    scratch : str
        Directory or URL the copy is made under (shared by every worker).
    storage_options : dict or None
        fsspec options for ``scratch``.
    token : str
        Names the copy (``svdserve-scratch-<token>.zarr``).
    direct : bool
        Decode the stored chunks directly (:mod:`._decode`).

    Returns
    -------
    (SourcePin, str)
        The pinned copy and its URL (for :func:`remove_scratch`).
    """
    import zarr

    from ._pin import pin_source
    from ._source import DEFAULT_PANEL_BYTES, _options_key

    url = _scratch_url(scratch, token)
    opts = storage_options if _is_remote(url) else None
    kw = {"storage_options": opts} if opts else {}
    dtype = np.dtype(src.info.dtype)
    zarr.create_array(store=url, shape=layout.tall_shape, chunks=layout.tall_chunks,
                      dtype=dtype, compressors=None, filters=None, fill_value=0,
                      zarr_format=3, overwrite=True, **kw)
    (m, n), (cm, cn) = src.shape, src.info.chunks
    cells = [(i, j) for i in range(-(-m // cm)) for j in range(-(-n // cn))]
    budget = DEFAULT_PANEL_BYTES if panel_bytes is None else int(panel_bytes)
    per_task = max(1, budget // (cm * cn * dtype.itemsize))
    pin, okey = src.pin, _options_key(opts)
    handles = []
    for k in range(0, len(cells), per_task):
        group = cells[k:k + per_task]
        expect = {}
        for i, j in group:
            expect.update(pin.box_expect((i * cm, min((i + 1) * cm, m)),
                                         (j * cn, min((j + 1) * cn, n))))
        handles.append(engine.submit(copy_chunks, pin.ref, tuple(expect.items()), group,
                                     (cm, cn), src.wide, url, okey, direct))
    phase = Phase("rechunk", 0, passes)
    engine.phase = phase
    t0 = time.perf_counter()
    try:
        for done, _ in enumerate(engine.completed(handles), start=1):
            if progress is not None:
                progress(done, len(handles), phase)
        copied = sum(engine.gather(handles))
    except BaseException:
        engine.abort(handles)
        raise
    assert copied == m * n, f"the rechunk copied {copied} of {m * n} entries"
    engine.rows_read += layout.tall_shape[0]
    engine.timings["rechunk"] = time.perf_counter() - t0
    name = f"the scratch copy of {src.pin.ref.name}"
    scratch_pin = pin_source(url, storage_options=opts, missing_chunks="fill")
    return scratch_pin.with_options(name=name), url
