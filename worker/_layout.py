"""How the matrix is cut for reading, whatever its chunk grid: the layout of a run.

A panel is a band of rows of the tall view (:mod:`._source`); the panels of a
layout are a lazy :class:`PanelPlan` (:func:`plan_panels`). Read through
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
    (:func:`~._read.read_slices`), cutting through chunks.
``"rechunk"``
    Compressed chunks whose band exceeds the budget: a compressed chunk can
    only be decoded whole. Once, before pass 1, :func:`~._rechunk.rechunk` copies
    the matrix chunk by chunk (a task holds one chunk) into a raw scratch Zarr
    array in the tall orientation, pins it, and the passes read it as
    ``"slices"``. The scratch is deleted when the run ends. Cost: one read
    and one write of A, counted in ``reads`` and shown as phase ``rechunk``.

What cannot be avoided is one decoded chunk per task. :func:`check_layout`
refuses, before any work starts, a layout whose unavoidable footprint exceeds
a fraction of the smallest worker's memory. docs/layouts.md gives the reasons
for this design.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._errors import InvalidInputError
from ._spec import DEFAULT_MEMORY_FRACTION, panel_budget

__all__ = ["Layout", "plan_layout", "check_layout", "PanelPlan", "plan_panels",
           "MIN_BAND_BYTES"]

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
        """The panels as a lazy :class:`PanelPlan` of ``(start, stop)``."""
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
        Panel budget as float64 (default :data:`~._spec.DEFAULT_PANEL_BYTES`).

    Returns
    -------
    Layout
    """
    budget = panel_budget(panel_bytes)
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


class PanelPlan(Sequence):
    """The panels of a plan as ``(start, stop)`` pairs, computed on demand.

    A sequence (``len``, indexing, iteration, ``==`` with a list of pairs)
    that holds three integers, whatever the number of panels.
    """

    __slots__ = ("n_rows", "step")

    def __init__(self, n_rows, step):
        self.n_rows, self.step = int(n_rows), int(step)

    def __len__(self):
        return -(-self.n_rows // self.step)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"panel {i} out of range (the plan has {n} panels)")
        s = i * self.step
        return (s, min(s + self.step, self.n_rows))

    def __eq__(self, other):
        if isinstance(other, PanelPlan):
            return (self.n_rows, self.step) == (other.n_rows, other.step)
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(
                tuple(a) == b for a, b in zip(other, self))
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        return f"PanelPlan({len(self)} panels of {self.step} rows over {self.n_rows} rows)"


def plan_panels(n_rows, n_cols, chunk, panel_bytes=None, itemsize=8):
    """Cut the tall view's rows into panels aligned with chunk boundaries.

    Parameters
    ----------
    n_rows, n_cols : int
        Shape of the tall view.
    chunk : int
        Chunk length along the rows (every boundary ``i*chunk`` is a chunk edge).
    panel_bytes : int, optional
        Budget for one panel held as float64; default 128 MiB. A panel is
        never smaller than one chunk (a partial chunk would be read twice).

    Returns
    -------
    PanelPlan
        A lazy sequence of ``(start, stop)``; ``list(plan)`` gives the pairs.
    """
    budget = panel_budget(panel_bytes)
    if budget <= 0:
        raise InvalidInputError(f"panel_bytes must be positive; got {panel_bytes!r}.",
                                field="panel_bytes")
    chunk = max(1, min(int(chunk), n_rows))
    chunks_per_panel = max(1, budget // max(1, chunk * n_cols * itemsize))
    return PanelPlan(n_rows, chunk * chunks_per_panel)
