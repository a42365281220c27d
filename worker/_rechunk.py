"""The one-time raw copy of a source whose compressed chunks span more than a panel.

A layout of kind ``"rechunk"`` (:func:`~._layout.plan_layout`): once, before
pass 1, :func:`rechunk` copies the matrix chunk by chunk (a task,
:func:`copy_chunks`, holds one chunk) into a raw scratch Zarr array in the
tall orientation and pins it (:func:`~._pin.pin_source`); the passes then
read it by byte range. :func:`remove_scratch` deletes it when the run ends.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np

from ._engine import Phase
from ._meta import options_key
from ._pin import pin_source
from ._read import open_pinned, read_pinned
from ._spec import panel_budget

__all__ = ["rechunk", "copy_chunks", "remove_scratch", "scratch_dir"]


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


def copy_chunks(ref, expect, cells, chunks, wide, url, storage_key, direct=False):
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
    url, storage_key : str
        The scratch array and its fsspec options as JSON.
    direct : bool
        Decode each chunk directly (:func:`~._read.read_box`) instead of through zarr.

    Returns
    -------
    int
        Elements copied.
    """
    import zarr

    opts = json.loads(storage_key)
    kw = {"storage_options": opts} if opts and _is_remote(url) else {}
    dst = zarr.open_array(store=url, mode="r+", **kw)
    exp = dict(expect)
    route = "direct" if direct else "zarr"
    node = None if direct else open_pinned(ref, exp)  # opened once for every cell
    (m, n), (cm, cn) = ref.matrix_view.shape, chunks
    done = 0
    for i, j in cells:
        rows = slice(i * cm, min((i + 1) * cm, m))
        cols = slice(j * cn, min((j + 1) * cn, n))
        what = f"rows {rows.start}:{rows.stop}, columns {cols.start}:{cols.stop}"
        block = read_pinned(ref, exp, rows, cols, route=route, what=what, node=node)
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

    url = _scratch_url(scratch, token)
    opts = storage_options if _is_remote(url) else None
    kw = {"storage_options": opts} if opts else {}
    dtype = np.dtype(src.info.dtype)
    zarr.create_array(store=url, shape=layout.tall_shape, chunks=layout.tall_chunks,
                      dtype=dtype, compressors=None, filters=None, fill_value=0,
                      zarr_format=3, overwrite=True, **kw)
    (m, n), (cm, cn) = src.shape, src.info.chunks
    cells = [(i, j) for i in range(-(-m // cm)) for j in range(-(-n // cn))]
    budget = panel_budget(panel_bytes)
    per_task = max(1, budget // (cm * cn * dtype.itemsize))
    pin, okey = src.pin, options_key(opts)
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


def scratch_dir(scratch, out):
    """Where a rechunked copy goes: ``scratch``, else next to ``out``, else the temp dir."""
    if scratch is not None:
        return str(scratch)
    if out is not None:
        parent = str(out).rstrip("/").rsplit("/", 1)
        return parent[0] if len(parent) == 2 and parent[0] else "."
    return tempfile.gettempdir()
