"""The input matrix: opened and validated once (:func:`open_source`), then cut into panels.

A *source* is a Zarr array (format 2 or 3, local or any fsspec URL such as
``s3://``), a NumPy array or a dask array. :func:`open_source` validates it
once and returns a :class:`Source`, which knows how each of its kinds is read:
:meth:`Source.panels` gives the panel arguments of a layout (a lazy
:class:`PanelRefs` for a pinned Zarr array: no per-panel object however many
panels there are) and :meth:`Source.first_row` the pivot row of a centred run.

A Zarr source given by path or URL (or a ``zarr.Array`` on local disk) is
*pinned* (:mod:`._pin`): workers read exactly the metadata and chunks that
were validated, and a change, a vanished or an appeared chunk fails the run
with a typed error. A chunk absent at rest (in the pinned listing) reads as
the fill value, as Zarr says, unless ``missing_chunks="error"``.

A wide matrix (m < n) is decomposed through its transpose: the *tall view*
has ``m_t = max(m, n)`` rows, and a panel of it is a band of columns of the
stored array. Panels are read on the workers by :func:`read_panel`
(:mod:`._read` holds every way to read a box), which counts nothing itself:
every task reports the rows it read, and the driver adds them up into the
pass count.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._errors import InvalidInputError
from ._layout import Layout, plan_layout
from ._meta import SourceInfo, check_limits, check_matrix
from ._missing import missing_chunks_mode
from ._pin import SourcePin, SourceRef, inspect_pinnable
from ._read import decodes_directly, read_array, read_pinned
from ._sparse_source import (SparsePanel, SparsePin, find_sparse, first_row, pin_source,
                             sparse_panels)
from ._view import MatrixView, make_view

__all__ = ["Source", "PanelRef", "PanelRefs", "open_source", "inspect_source", "read_panel"]


@dataclass
class Source:
    """A validated input. ``kind`` is ``"zarr"``, ``"sparse"``, ``"numpy"`` or ``"dask"``.

    ``pin`` (a :class:`~._pin.SourcePin`) is set for Zarr arrays read from a
    path or URL: panels are then read through it on the workers; for a sparse
    group (:mod:`._sparse_source`) it is a :class:`~._sparse_source.SparsePin`
    and the panels are CSR row blocks of its CSR view.
    """

    info: SourceInfo
    kind: str
    obj: object  # zarr.Array (unpinned only), ndarray or dask array: one per kind
    pin: SourcePin | None = None
    view: MatrixView | None = None  # of an unpinned N-D zarr.Array

    @property
    def matrix_view(self):
        """The :class:`~._view.MatrixView` of an N-D variable, None for a matrix."""
        return self.pin.ref.view if self.pin is not None else self.view

    def verify(self):
        """Re-list a pinned source; raise :class:`SourceChangedError` if it changed."""
        if self.pin is not None:
            self.pin.verify()

    @property
    def shape(self):
        return self.info.shape

    @property
    def wide(self):
        """True when the matrix is decomposed through its transpose (a CSC group always)."""
        if self.kind == "sparse":
            return self.pin.wide
        m, n = self.info.shape
        return m < n

    @property
    def tall_shape(self):
        m, n = self.info.shape
        return (n, m) if self.wide else (m, n)

    @property
    def tall_chunk(self):
        """Chunk length along the tall view's rows."""
        cm, cn = self.info.chunks
        return cn if self.wide else cm

    @property
    def name(self):
        """How messages name the source."""
        return self.pin.ref.name if self.pin is not None else "the source"

    def decodes_directly(self, reader):
        """Whether panels of this source are decoded by :func:`~._read.read_box` under
        ``reader`` (a pinned source whose chunks allow it)."""
        return self.kind == "zarr" and self.pin is not None and decodes_directly(
            self.pin.ref, reader)

    def bounded(self, panel_bytes):
        """An unpinned Zarr array whose chunk band exceeds the budget, as a dask array
        (dask then rechunks it to panels in bounded memory); other sources unchanged."""
        if self.kind != "zarr" or self.pin is not None or self.view is not None:
            return self
        if plan_layout(self.info, panel_bytes=panel_bytes).kind == "chunks":  # the band fits
            return self
        import dask.array as da

        return Source(self.info, "dask", da.from_array(self.obj, chunks=self.obj.chunks))

    def layout(self, panel_bytes, *, densify=False):
        """How this source is cut into panels (:func:`~._layout.plan_layout`; sparse:
        :meth:`~._sparse_source.SparsePin.layout`, ``densify`` for the exact method)."""
        if self.kind == "sparse":
            return self.pin.layout(panel_bytes, densify=densify)
        return plan_layout(self.info, in_memory=self.kind != "zarr", pinned=self.pin is not None,
                           panel_bytes=panel_bytes)

    def panels(self, bounds, engine, *, scratch=None, sliced=False, direct=False,
               densify=False):
        """Panel arguments for each (start, stop) of the tall view.

        Parameters
        ----------
        bounds : sequence of (int, int)
        engine : LocalEngine or DaskEngine
            Holds in-memory panels (:meth:`put`).
        scratch : SourcePin, optional
            The pinned scratch copy of a rechunked source (:mod:`._rechunk`),
            stored in the tall orientation: read instead of the source.
        sliced : bool
            Read by byte range (:func:`~._read.read_slices`).
        direct : bool
            Decode the source's chunks straight into the panels (:func:`~._read.read_box`).
        densify : bool
            Sparse: the panel task densifies each panel (the exact method).
        """
        wide = self.wide
        if self.kind == "sparse":
            return sparse_panels(self.pin, bounds, densify)
        if self.kind == "zarr":
            if scratch is not None:  # already in the tall orientation
                return PanelRefs(scratch, bounds, False, sliced)
            if self.pin is not None:  # read through the pin, made lazily per panel
                return PanelRefs(self.pin, bounds, wide, sliced, direct and not sliced)
            return [PanelRef(s, e, wide, array=self.obj, view=self.view) for s, e in bounds]
        if self.kind == "numpy":
            a = self.obj
            return [engine.put(np.ascontiguousarray(a[:, s:e].T if wide else a[s:e]))
                    for s, e in bounds]
        x = self.obj.T if wide else self.obj
        x = x.rechunk((tuple(e - s for s, e in bounds), (x.shape[1],)))
        return list(x.to_delayed().ravel())

    def first_row(self, panels, markers=None):
        """The tall view's first row in float64: the common shift of a centred run.

        Read like ``panels`` (:meth:`panels`: through the pin, by byte range when
        they are). Non-finite entries (and missing-value ``markers``) become 0,
        so a NaN in row 0 is reported for the first panel only, not spread to
        every panel by the shift, and a masked feature stays exactly zero.

        Returns
        -------
        ndarray of shape (n_t,)
        """
        if self.kind == "dask":
            row = self.obj[0].compute()
        elif self.kind == "sparse":
            row = first_row(self.pin)
        elif isinstance(panels, PanelRefs):
            row = read_panel(PanelRefs(panels.pin, [(0, 1)], panels.wide, panels.sliced,
                                       panels.direct)[0])[0]
        elif self.view is not None:
            row = read_panel(PanelRef(0, 1, False, array=self.obj, view=self.view))[0]
        else:
            row = self.obj[0]
        row = np.asarray(row, dtype=np.float64).copy()
        row[~np.isfinite(row)] = 0.0
        for value in markers or ():
            row[row == value] = 0.0
        return row

    def reader_used(self, layout: Layout, direct):
        """What decodes the stored chunks, for ``report["plan"]["reader"]``."""
        if self.kind == "sparse":
            return "sparse (zarr slices of indptr, indices and data)"
        if self.kind != "zarr":
            return "memory" if self.kind == "numpy" else "dask"
        decode = "direct" if direct else "zarr"
        if layout.kind == "rechunk":
            return f"{decode} (the one-time copy), then byte ranges"
        return "byte ranges" if layout.sliced else decode


def _local_path_of(node):
    """The directory of a ``zarr.Array`` on a local store, else None."""
    from zarr.storage import LocalStore

    store = getattr(node, "store", None)
    if isinstance(store, LocalStore):
        return os.path.join(str(store.root), node.path) if node.path else str(store.root)
    return None


def _view_of_array(source, sample_dims):
    """A :class:`~._view.MatrixView` of an in-memory or unpinned N-D array."""
    dims = getattr(getattr(source, "metadata", None), "dimension_names", None) or \
        (dict(source.attrs).get("_ARRAY_DIMENSIONS") if hasattr(source, "attrs") else None)
    chunks = getattr(source, "chunks", source.shape)
    if chunks and isinstance(chunks[0], tuple):  # dask
        chunks = tuple(max(c) if c else 1 for c in chunks)
    if dims is None or len(dims) != len(source.shape):
        dims = None
    return make_view(source.shape, chunks or source.shape, dims, sample_dims)


def _as_matrix(source, sample_dims):
    """An in-memory or dask N-D array as its samples × features matrix (lazy for dask)."""
    if sample_dims is None:
        return source
    view = _view_of_array(source, sample_dims)
    return source.transpose(view.sample_axes + view.feature_axes).reshape(view.shape)


def open_source(source, *, array=None, storage_options=None, missing_chunks="fill",
                allow_missing_chunks=None, panel_bytes=None, limits=None, sample_dims=None):
    """Validate an input and describe it; pin Zarr sources read from storage.

    Parameters
    ----------
    source : SourcePin, SparsePin, zarr.Array, str, os.PathLike, ndarray or dask array
        The matrix, a path/URL of a Zarr array or group (a sparse AnnData or
        Binsparse group too, :mod:`._sparse_source`), or a source pinned
        earlier with :func:`pin_source` (then re-checked against storage).
    array : str, optional
        Path of the array inside a group.
    storage_options : dict, optional
        fsspec options (credentials, ``endpoint_url``) for remote URLs.
    missing_chunks : {"fill", "error"}, default="fill"
        A chunk absent from the store reads as the fill value (Zarr's rule),
        or fails (``"error"``). A source pinned with ``"error"`` stays strict.
    allow_missing_chunks : bool, optional
        Deprecated: True is ``missing_chunks="fill"``, False ``"error"``.
    panel_bytes : int, optional
        Panel budget (for the panel-count limit).
    limits : Limits, optional
        Sanity limits (default :class:`~._meta.Limits`).
    sample_dims : sequence of str, optional
        Read an N-D variable as the matrix samples × features (:mod:`._view`).

    Returns
    -------
    Source

    Raises
    ------
    SourceNotFoundError, SourceAccessError, InvalidInputError, StorageError
        ``InvalidInputError`` also when a chunk is absent at rest with
        ``missing_chunks="error"``; ``SourceChangedError`` when a pinned source changed.
    """
    import zarr

    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is a dependency
        da = None

    mode = missing_chunks_mode(missing_chunks, allow_missing_chunks)
    if sample_dims is not None:
        sample_dims = (sample_dims,) if isinstance(sample_dims, str) else tuple(sample_dims)
    if isinstance(source, SourcePin):
        pinned = source.info.sample_dims
        if sample_dims is not None and tuple(sample_dims) != pinned:
            raise InvalidInputError(
                f"the source was pinned with sample_dims={list(pinned or ())}; got "
                f"sample_dims={list(sample_dims)}. Pin it with the sample_dims to use.",
                field="source.sample_dims")
        pin = source.with_options(allow_missing=mode == "fill" and source.ref.allow_missing)
        pin.verify()
        pin.check_missing()
        return Source(pin.info, "zarr", None, pin=pin)
    if isinstance(source, SparsePin):
        return _open_sparse(source, storage_options)
    if isinstance(source, zarr.Array):
        path = _local_path_of(source)
        if path is not None:
            return open_source(pin_source(path, missing_chunks=mode,
                                          panel_bytes=panel_bytes, limits=limits,
                                          sample_dims=sample_dims),
                               storage_options=storage_options)
        view = None if sample_dims is None else _view_of_array(source, sample_dims)
        shape, chunks = (view.shape, view.chunks) if view else (source.shape, source.chunks)
        dt = check_matrix(shape, source.dtype, "the Zarr array")
        if len(shape) == 2:
            check_limits(shape, chunks, panel_bytes, limits, what="the Zarr array")
        info = SourceInfo(tuple(shape), dt, tuple(chunks), None, None,
                          source.metadata.zarr_format,
                          dims=view.dims if view else None,
                          nd_shape=view.nd_shape if view else None,
                          sample_dims=view.sample_dims if view else None)
        return Source(info, "zarr", source, view=view)
    if da is not None and isinstance(source, da.Array):
        source = _as_matrix(source, sample_dims)
        dt = check_matrix(source.shape, source.dtype, "the dask array")
        chunks = tuple(max(c) if c else 0 for c in source.chunks)
        return Source(SourceInfo(tuple(source.shape), dt, chunks), "dask", source)
    if isinstance(source, np.ndarray):
        source = _as_matrix(source, sample_dims)
        dt = check_matrix(source.shape, source.dtype, "the NumPy array")
        return Source(SourceInfo(tuple(source.shape), dt, tuple(source.shape)), "numpy", source)
    if hasattr(source, "__fspath__") or isinstance(source, str):
        url = str(source.__fspath__() if hasattr(source, "__fspath__") else source)
        pin = pin_source(url, array, storage_options=storage_options,
                         missing_chunks=mode, panel_bytes=panel_bytes,
                         limits=limits, sample_dims=sample_dims)
        return open_source(pin, storage_options=storage_options)
    raise InvalidInputError(
        f"source must be a Zarr array, a path or URL of one, or a NumPy/dask array; "
        f"got {type(source).__name__}.", field="source")


def _open_sparse(pin, storage_options):
    """A :class:`Source` of a pinned sparse group, re-checked against storage."""
    pin = pin.with_options(storage_options=storage_options)
    pin.verify()
    return Source(pin.info, "sparse", None, pin=pin)


def inspect_source(source, *, array=None, storage_options=None, sample_dims=None):
    """Open only the metadata of ``source`` and validate it.

    A Zarr path or URL is checked as :func:`open_source` checks it (2-D,
    real dtype, chunk sizes and the sanity limits) without looking at any
    chunk.

    Returns
    -------
    SourceInfo

    Raises
    ------
    SourceNotFoundError, InvalidInputError, StorageError
    """
    if (hasattr(source, "__fspath__") or isinstance(source, str)) and find_sparse(
            str(os.fspath(source)), array, storage_options) is not None:
        return pin_source(str(os.fspath(source)), array, storage_options=storage_options).info
    if hasattr(source, "__fspath__") or isinstance(source, str):
        return inspect_pinnable(source, array, storage_options=storage_options,
                                sample_dims=sample_dims)
    return open_source(source, array=array, storage_options=storage_options,
                       sample_dims=sample_dims).info


# --------------------------------------------------------------------------- panels


class PanelRefs(Sequence):
    """The :class:`PanelRef` of each panel of a pinned source, made on demand.

    ``sliced``: read by byte ranges (:func:`~._read.read_slices`; raw chunks only).
    ``direct``: chunks decoded straight into the panel (:mod:`._decode`).
    """

    def __init__(self, pin, bounds, wide, sliced=False, direct=False):
        self.pin, self.bounds, self.wide, self.sliced = pin, bounds, wide, sliced
        self.direct = direct

    def __len__(self):
        return len(self.bounds)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        s, e = self.bounds[i]
        return PanelRef(s, e, self.wide, ref=self.pin.ref,
                        expect=self.pin.panel_expect(s, e, self.wide), sliced=self.sliced,
                        direct=self.direct)


@dataclass(frozen=True)
class PanelRef:
    """A panel to be read on a worker: rows ``start:stop`` of the tall view.

    ``ref`` and ``expect`` (a pinned source and the stamps of this panel's
    chunk keys) are set for pinned sources; ``array`` (a ``zarr.Array``)
    otherwise. ``sliced`` panels are read by byte ranges, so a panel may
    cut through chunks (raw chunks only, :func:`~._read.read_slices`);
    ``direct`` panels of a pinned source decode each chunk straight into the
    panel buffer (:func:`~._read.read_box`), others go through zarr.
    """

    start: int
    stop: int
    wide: bool
    ref: SourceRef | None = None
    expect: tuple = ()  # ((key, ((i, j), stamp)), ...)
    array: object = None  # a zarr.Array when the source is not pinned
    view: MatrixView | None = None  # its view, for an N-D variable
    sliced: bool = False
    direct: bool = False

    @property
    def route(self):
        """How :func:`~._read.read_pinned` reads it: ``"slices"``, ``"direct"`` or ``"zarr"``."""
        return "slices" if self.sliced else "direct" if self.direct else "zarr"

    def read(self):
        full = None if self.ref is None else self.ref.matrix_view.shape[0 if self.wide else 1]
        span, every = slice(self.start, self.stop), slice(0, full)
        sel = (every, span) if self.wide else (span, every)
        what = f"{'columns' if self.wide else 'rows'} {self.start}:{self.stop}"
        if self.ref is None:
            block = read_array(self.array, self.view, sel, what)
        else:
            block = read_pinned(self.ref, dict(self.expect), *sel, route=self.route, what=what)
        return block.T if self.wide else block


def read_panel(panel):
    """Materialise a panel as float64.

    Parameters
    ----------
    panel : PanelRef or ndarray of shape (rows, n)

    Returns
    -------
    ndarray of shape (rows, n), float64 (the input itself when it already is)
    """
    block = panel.read() if isinstance(panel, (PanelRef, SparsePanel)) else panel
    if isinstance(panel, SparsePanel):
        return block  # a float64 csr_matrix
    return np.asarray(block, dtype=np.float64)
