"""Sparse sources: AnnData's sparse encoding and Binsparse CSR/CSC in Zarr, pinned.

Two encodings of a compressed sparse matrix in a Zarr group are read:

AnnData (``anndata`` writes ``.X`` and layers so; its ``_io/specs/methods.py``)
    A group with attributes ``encoding-type`` = ``"csr_matrix"`` or
    ``"csc_matrix"``, ``encoding-version`` and ``shape`` = ``[m, n]``, holding
    the 1-D arrays ``indptr``, ``indices`` and ``data``. Inside an AnnData
    store, name it with ``array="X"`` or ``array="layers/counts"``.
Binsparse (the GraphBLAS Binary Sparse Format, version 0.1)
    A group whose ``binsparse`` attribute is the descriptor ``{"version",
    "format": "CSR" | "CSC" | "COO", "shape": [m, n], "number_of_stored_values",
    "data_types"}``, holding ``pointers_to_1``, ``indices_1`` and ``values``
    (COO: ``indices_0``, ``indices_1``, ``values``, sorted by row; its row
    pointer is counted from ``indices_0`` at pin, :func:`coo_indptr`, and each
    panel reads the entries of its rows).

A CSR group is read in row panels: panel i is rows ``s:e``, read as
``indptr[s:e+1]`` and the matching slices ``indices[p_s:p_e]``,
``data[p_s:p_e]`` of the 1-D arrays (two zarr slices), never the rest. A CSC
group is the CSR encoding of Aᵀ: it is read as the transpose, the tall view
being Aᵀ (the source is "wide" in :class:`~._source.Source`'s sense), so the
algorithms decompose Aᵀ = V S Uᵀ and the factors are swapped back, as for a
wide dense matrix. A cells × genes matrix stored CSC works either way.

Pinning (:func:`pin_sparse`) is that of a dense source applied to each of the
three arrays (:func:`~._pin.pin_component`: metadata digest and chunk stamps)
plus the digest of the group's attributes; :meth:`SparsePin.verify`
re-checks all of them. Checked at pin, from metadata: the encoding, the shape,
1-D arrays of integer indices wide enough for the shape, ``len(indptr)`` =
major + 1, ``len(indices) == len(data)``, the non-zero limit
(:attr:`~._meta.Limits.max_nnz`); then ``indptr`` itself (read once: O(major)
integers): starts at 0, non-decreasing, ends at most at ``len(data)``.
Checked per panel when it is read: indices in range, relative ``indptr``
monotone, values finite (pass 1): a bad panel fails the job with a typed
error naming its rows (:class:`~._errors.InvalidInputError`,
:class:`~._errors.NonFiniteError`).

Panels are sized by their non-zeros (:func:`sparse_bounds`): each holds at
most the panel budget of ``16·nnz + 8·rows`` bytes (float64 values and int64
indices as decoded), plus ``8·rows·n`` when the method densifies one panel
at a time (``exact``), or one block of ``q`` rows: panels are cut on a grid of
``q`` rows, the chunk height of the written left factor.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

import numpy as np

from . import _pin
from ._errors import InvalidInputError, SourceChangedError, SourceNotFoundError
from ._layout import Layout
from ._meta import Limits, SourceInfo, meta_of, open_node
from ._pin import SourcePin, pin_component
from ._read import open_pinned, read_region
from ._sparse_kernels import check_panel_arrays, csr_panel
from ._spec import EXACT_MAX_COLUMNS, panel_budget

__all__ = ["SparseFormat", "SparsePin", "SparsePanel", "SparseLayout", "sparse_format",
           "find_sparse", "pin_sparse", "pin_source", "load_pin", "sparse_bounds",
           "sparse_layout", "sparse_panels", "first_row", "read_part", "coo_indptr",
           "sparse_params", "MemorySparse", "memory_sparse"]

#: The arrays of each encoding, in the order (indptr, indices, data).
_ARRAYS = {"anndata": ("indptr", "indices", "data"),
           "binsparse": ("pointers_to_1", "indices_1", "values")}
_PARTS = ("indptr", "indices", "data")


@dataclass(frozen=True)
class SparseFormat:
    """What a sparse group's attributes say.

    Attributes
    ----------
    encoding : {"anndata", "binsparse"}
    orient : {"csr", "csc"}
    shape : (int, int)
        The stored matrix's (m, n).
    nnz : int or None
        Stored values the descriptor declares (Binsparse), else None.
    """

    encoding: str
    orient: str
    shape: tuple
    nnz: int | None = None

    @property
    def names(self):
        """Array names for ``(indptr, indices, data)`` (COO: ``(rows, columns, values)``)."""
        if self.orient == "coo":
            return ("indices_0", "indices_1", "values")
        return _ARRAYS[self.encoding]

    @property
    def parts(self):
        """Keys of :attr:`SparsePin.parts`, in the order of :attr:`names`."""
        return ("rows", "indices", "data") if self.orient == "coo" else _PARTS

    @property
    def major_shape(self):
        """(major, minor): the shape of the CSR matrix the group encodes (Aᵀ for CSC)."""
        m, n = self.shape
        return (n, m) if self.orient == "csc" else (m, n)


def _bad(name, what):
    return InvalidInputError(f"{name} is a sparse group but {what}", field="source")


def _shape_of(value, name):
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in value)):
        raise _bad(name, f"its shape attribute is {value!r}; expected [rows, columns], two "
                         "integers. Rewrite it with anndata or a Binsparse writer.")
    if min(value) < 1:
        raise InvalidInputError(f"{name} is empty (shape {list(value)}); it needs at least one "
                                "row and one column.", field="source")
    return (int(value[0]), int(value[1]))


def sparse_format(attrs, name="the group"):
    """The :class:`SparseFormat` of a group's attributes, None when it is not sparse.

    Raises
    ------
    InvalidInputError
        The attributes say sparse but are malformed (or a format not read).
    """
    enc = attrs.get("encoding-type")
    if enc in ("csr_matrix", "csc_matrix"):
        return SparseFormat("anndata", enc[:3], _shape_of(attrs.get("shape"), name))
    desc = attrs.get("binsparse")
    if desc is None:
        return None
    if not isinstance(desc, dict):
        raise _bad(name, f"its binsparse descriptor is {desc!r}, not an object.")
    fmt = str(desc.get("format", "")).upper()
    if fmt not in ("CSR", "CSC", "COO", "COOR"):
        raise _bad(name, f"its Binsparse format is {desc.get('format')!r}; svdserve reads "
                         "'CSR', 'CSC' and 'COO' (sorted by row). Convert it, e.g. "
                         "scipy.sparse's tocsr().")
    nnz = desc.get("number_of_stored_values")
    orient = "coo" if fmt.startswith("COO") else fmt.lower()
    return SparseFormat("binsparse", orient, _shape_of(desc.get("shape"), name),
                        None if nnz is None else int(nnz))


def find_sparse(url, array=None, storage_options=None):
    """The sparse group at ``url`` (/ ``array``): ``(SparseFormat, attrs)``, else None.

    None for a dense array (or a path that does not name a group).
    """
    import zarr

    node = open_node(url, storage_options)
    if not isinstance(node, zarr.Group):
        return None
    if array:
        try:
            node = node[array]
        except KeyError:
            return None
        if not isinstance(node, zarr.Group):
            return None
    attrs = dict(node.attrs)
    name = repr(str(url)) + (f" array {array!r}" if array else "")
    if attrs.get("encoding-type") == "anndata":
        layers = sorted(node["layers"].keys()) if "layers" in node else []
        raise InvalidInputError(
            f"{name} is an AnnData store, not a matrix; name the matrix with array='X' or a "
            f"layer, array='layers/<name>' (its layers: {layers}).", field="source.array")
    fmt = sparse_format(attrs, name)
    return None if fmt is None else (fmt, attrs)


def _attrs_digest(attrs):
    return hashlib.sha256(json.dumps(attrs, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class SparsePin:
    """A pinned sparse group: its format, the pins of its three arrays, the attrs digest.

    Attributes
    ----------
    fmt : SparseFormat
    parts : dict
        ``"indptr"``, ``"indices"``, ``"data"`` → :class:`~._pin.SourcePin`.
    info : SourceInfo
        The stored matrix: ``shape`` (m, n), the values' dtype; ``chunks`` is
        the shape (a sparse group has no 2-D chunk grid).
    url, array : str
        The group as given.
    attrs_digest : str
    nnz : int
        Stored values (``indptr[-1]``).
    """

    fmt: SparseFormat
    parts: dict
    info: SourceInfo
    url: str
    array: str | None
    attrs_digest: str
    nnz: int
    storage_options: dict | None = None
    indptr: np.ndarray | None = field(default=None, repr=False)  # read at pin, not stored

    @property
    def name(self):
        return repr(self.url) + (f" array {self.array!r}" if self.array else "")

    @property
    def ref(self):
        """A component's reference renamed as the group (for messages)."""
        return replace(self.parts["data"].ref, name=self.name)

    @property
    def wide(self):
        """The tall view is the stored matrix's transpose (a CSC group)."""
        return self.fmt.orient == "csc"

    def absent_chunks(self):
        """Counts like :meth:`~._pin.SourcePin.absent_chunks`: chunks of the three arrays
        the store lacks read as their fill value (zarr's rule)."""
        n = sum(int(p.missing_mask().size) for p in self.parts.values())
        absent = sum(int(p.missing_mask().sum()) for p in self.parts.values())
        return {"n_chunks": n, "absent_chunks": absent, "fill_value": 0.0,
                "missing_chunks": "fill", "note": None}

    def check_missing(self):
        return None

    def with_options(self, *, allow_missing=None, name=None, storage_options=None):
        parts = {k: p.with_options(storage_options=storage_options)
                 for k, p in self.parts.items()}
        return replace(self, parts=parts, storage_options=storage_options
                       if storage_options is not None else self.storage_options)

    def verify(self):
        """Re-check the attributes and every array against the pin.

        Raises
        ------
        SourceChangedError
        """
        found = find_sparse(self.url, self.array, self.storage_options)
        now = None if found is None else _attrs_digest(found[1])
        if now != self.attrs_digest:
            raise SourceChangedError(
                f"{self.name} changed since the job was submitted: the sparse group's "
                "attributes (encoding, shape) are different or gone. Resubmit once the input "
                "is final.")
        for p in self.parts.values():
            p.verify()

    def read_indptr(self):
        """The whole ``indptr`` (O(major) integers), read through the pin; of a COO
        group, counted from its row indices (read once, a chunk at a time)."""
        if self.indptr is not None:
            return self.indptr
        if self.fmt.orient == "coo":
            return coo_indptr(self.parts["rows"], self.fmt.shape[0], self.name)
        return read_part(self.parts["indptr"], 0, self.fmt.major_shape[0] + 1, "indptr")

    def layout(self, panel_bytes=None, *, densify=False):
        """The :class:`SparseLayout` of this source (reads ``indptr``)."""
        return sparse_layout(self, self.read_indptr(), panel_bytes, densify=densify)

    def to_json(self):
        return {"v": 1, "kind": "sparse", "encoding": self.fmt.encoding,
                "orient": self.fmt.orient, "shape": list(self.fmt.shape),
                "declared_nnz": self.fmt.nnz, "url": self.url, "array": self.array,
                "attrs_digest": self.attrs_digest, "nnz": self.nnz,
                "dtype": self.info.dtype,
                "parts": {k: p.to_json() for k, p in self.parts.items()}}

    @classmethod
    def from_json(cls, data):
        fmt = SparseFormat(data["encoding"], data["orient"], tuple(data["shape"]),
                           data["declared_nnz"])
        parts = {k: SourcePin.from_json(v) for k, v in data["parts"].items()}
        return cls(fmt, parts, _info(fmt, data["dtype"], data["url"], data["array"],
                                     data["nnz"]),
                   data["url"], data["array"], data["attrs_digest"], data["nnz"])


def _info(fmt, dtype, url, array, nnz):
    m, n = fmt.shape
    note = (f"sparse {fmt.orient.upper()} ({fmt.encoding} encoding), {nnz} stored values "
            f"({nnz / (m * n):.3g} of the entries)")
    return SourceInfo((m, n), dtype, (m, n), url, array, None, notes=(note,))


def load_pin(data):
    """A pin from its JSON (:meth:`SourcePin.to_json` or :meth:`SparsePin.to_json`)."""
    if data.get("kind") == "sparse":
        return SparsePin.from_json(data)
    return SourcePin.from_json(data)


def read_part(pin, start, stop, what):
    """``[start, stop)`` of a pinned 1-D component array, through the pin."""
    ref = pin.ref
    stop = min(stop, ref.shape[0])
    if stop <= start:
        return np.zeros(0, dtype=pin.info.dtype)
    meta = meta_of(ref)
    c = ref.key_chunks[0]
    expect = {}
    for i in range(start // c, -(-stop // c)):
        st = pin.stamps[i]
        expect[meta.encode_chunk_key((i,))] = (
            (i,), str(st) if ref.remote else tuple(int(x) for x in st))
    node = open_pinned(ref, expect)
    return np.asarray(read_region(ref, expect, node, (slice(start, stop),), what))


def _check_parts(fmt, parts, name, limits):
    """Metadata checks of the three arrays; returns the allocated number of values."""
    major, minor = fmt.major_shape
    for part in fmt.parts:
        info = parts[part].info
        if len(info.shape) != 1:
            raise _bad(name, f"its {part} array has shape {list(info.shape)}; it must be 1-D.")
        kind = np.dtype(info.dtype).kind
        if part != "data" and kind not in "iu":
            raise _bad(name, f"its {part} array has dtype {info.dtype!r}; it must hold "
                             "integers. Rewrite it with integer indices.")
        if part == "data" and kind not in "fiub":
            raise _bad(name, f"its values have dtype {info.dtype!r}; they must be real "
                             "numbers (float or integer).")
    if fmt.orient == "coo":
        if parts["rows"].info.shape[0] != parts["data"].info.shape[0]:
            raise _bad(name, f"its indices_0 ({parts['rows'].info.shape[0]}) and values "
                             f"({parts['data'].info.shape[0]}) arrays differ in length.")
        if np.iinfo(np.dtype(parts["rows"].info.dtype)).max < major - 1:
            raise _bad(name, f"its indices_0 have dtype {parts['rows'].info.dtype!r}, too "
                             f"narrow for {major} rows; rewrite them as int64.")
    elif parts["indptr"].info.shape[0] != major + 1:
        raise _bad(name, f"its indptr has {parts['indptr'].info.shape[0]} entries; a "
                         f"{fmt.orient.upper()} matrix of shape {list(fmt.shape)} needs "
                         f"{major + 1} (one per {'row' if fmt.orient == 'csr' else 'column'}, "
                         "plus one).")
    n_idx, n_val = parts["indices"].info.shape[0], parts["data"].info.shape[0]
    if n_idx != n_val:
        raise _bad(name, f"its indices ({n_idx}) and data ({n_val}) arrays differ in length; "
                         "they must hold one entry per stored value.")
    if fmt.nnz is not None and fmt.nnz != n_val:
        raise _bad(name, f"its descriptor declares number_of_stored_values={fmt.nnz} but "
                         f"the values array holds {n_val}.")
    if np.iinfo(np.dtype(parts["indices"].info.dtype)).max < minor - 1:
        raise _bad(name, f"its indices have dtype {parts['indices'].info.dtype!r}, too "
                         f"narrow for {minor} {'rows' if fmt.orient == 'csc' else 'columns'}; "
                         "rewrite them as int32 or int64.")
    if n_val > limits.max_nnz:
        raise InvalidInputError(
            f"{name} holds {n_val} stored values; at most {limits.max_nnz} are accepted "
            "(SVDSERVE_MAX_NNZ). Split the matrix or raise the limit.", field="source")
    return n_val


def _check_indptr(indptr, n_val, name):
    """``indptr`` starts at 0, never decreases, ends within the values; returns nnz."""
    if int(indptr[0]) != 0:
        raise _bad(name, f"its indptr starts at {int(indptr[0])}; it must start at 0.")
    steps = np.diff(indptr.astype(np.int64))
    if steps.size and steps.min() < 0:
        i = int(np.argmax(steps < 0))
        raise _bad(name, f"its indptr is not monotone: indptr[{i}] = {int(indptr[i])} > "
                         f"indptr[{i + 1}] = {int(indptr[i + 1])} (major index {i}). Rewrite "
                         "the matrix (scipy.sparse's sort_indices/tocsr).")
    nnz = int(indptr[-1])
    if nnz > n_val:
        raise _bad(name, f"its indptr ends at {nnz}, beyond the {n_val} stored values.")
    return nnz


def pin_sparse(url, array=None, *, fmt, attrs, storage_options=None, roots=(), forbidden=(),
               limits=None):
    """Pin a sparse group found by :func:`find_sparse`, with every check from metadata.

    Returns
    -------
    SparsePin

    Raises
    ------
    InvalidInputError, SourceNotFoundError, SourceAccessError, StorageError
    """
    name = repr(str(url)) + (f" array {array!r}" if array else "")
    parts = {}
    for part, arr in zip(fmt.parts, fmt.names):
        path = f"{array}/{arr}" if array else arr
        try:
            parts[part] = pin_component(url, path, storage_options=storage_options,
                                        roots=roots, forbidden=forbidden)
        except SourceNotFoundError as exc:
            raise SourceNotFoundError(
                f"{name} is a sparse {fmt.orient.upper()} group ({fmt.encoding} encoding) "
                f"but has no {arr!r} array; it needs {list(fmt.names)}.",
                field="source.array") from exc
    n_val = _check_parts(fmt, parts, name, limits or Limits())
    pin = SparsePin(fmt, parts, SourceInfo(fmt.shape, "float64", fmt.shape), str(url), array,
                    _attrs_digest(attrs), 0, storage_options)
    indptr = pin.read_indptr()
    nnz = n_val if fmt.orient == "coo" else _check_indptr(indptr, n_val, name)
    dtype = parts["data"].info.dtype
    return replace(pin, info=_info(fmt, dtype, str(url), array, nnz), nnz=nnz, indptr=indptr)


def coo_indptr(rows_pin, m, name, block=2**20):
    """The row pointer of a COO group from its row indices, read a block at a time.

    Raises
    ------
    InvalidInputError
        A row index outside ``[0, m)`` or entries not sorted by row (both named
        by entry range).
    """
    counts = np.zeros(m, dtype=np.int64)
    total, prev = rows_pin.ref.shape[0], 0
    for s in range(0, total, block):
        r = read_part(rows_pin, s, s + block, f"indices_0 {s}:{s + block}").astype(np.int64)
        if r.size and (r.min() < 0 or r.max() >= m):
            bad = int(r.min()) if r.min() < 0 else int(r.max())
            raise _bad(name, f"its indices_0 hold {bad} in entries {s}:{s + r.size}, outside "
                             f"[0, {m}).")
        seq = np.r_[prev, r]
        steps = np.diff(seq)
        if steps.size and steps.min() < 0:
            i = int(np.argmax(steps < 0))
            raise _bad(name, f"its COO entries are not sorted by row (entry {s + i} is in row "
                             f"{int(seq[i + 1])}, after row {int(seq[i])}); sort them "
                             "(scipy.sparse's tocsr().tocoo()).")
        prev = int(r[-1]) if r.size else prev
        counts += np.bincount(r, minlength=m)
    return np.r_[0, np.cumsum(counts)]


def pin_source(url, array=None, *, storage_options=None, roots=(), forbidden=(),
               missing_chunks="fill", allow_missing_chunks=None, panel_bytes=None,
               limits=None, sample_dims=None):
    """:func:`~._pin.pin_source` for any input: a sparse group gives a :class:`SparsePin`.

    Parameters and errors as :func:`~._pin.pin_source`; ``sample_dims`` must be None
    for a sparse group (it is a matrix already).
    """
    found = find_sparse(url, array, storage_options)
    if found is None:
        return _pin.pin_source(url, array, storage_options=storage_options, roots=roots,
                               forbidden=forbidden, missing_chunks=missing_chunks,
                               allow_missing_chunks=allow_missing_chunks,
                               panel_bytes=panel_bytes, limits=limits, sample_dims=sample_dims)
    if sample_dims is not None:
        raise InvalidInputError(
            f"sample_dims={list(sample_dims)!r} was given but {url!r} is a sparse matrix; "
            "leave sample_dims out.", field="source.sample_dims")
    return pin_sparse(url, array, fmt=found[0], attrs=found[1],
                      storage_options=storage_options, roots=roots, forbidden=forbidden,
                      limits=limits)


# --------------------------------------------------------------------------- panels


def sparse_bounds(indptr, n_minor, panel_bytes=None, *, densify=False):
    """Row panels of a CSR matrix sized by their non-zeros, on a grid of ``q`` rows.

    A panel costs ``16·nnz + 8·rows`` bytes (values as float64, indices as
    int64), plus ``8·rows·n_minor`` with ``densify``. Panels start and end on
    multiples of ``q`` rows (a power of two, about a quarter of the rows an
    average panel holds), so the left factor, written in chunks of ``q`` rows,
    has no chunk shared by two panels; each panel is the longest run of such
    row blocks within the budget (greedy), and holds at least one block.

    Returns
    -------
    bounds : list of (int, int)
    q : int
    """
    budget = panel_budget(panel_bytes)
    major = indptr.size - 1
    rows = np.arange(indptr.size, dtype=np.float64)
    cost = 16.0 * indptr.astype(np.float64) + rows * 8.0 * (1 + (n_minor if densify else 0))
    per_panel = budget / max(cost[-1] / max(major, 1), 1.0)
    q = 1 << max(0, int(np.floor(np.log2(max(per_panel / 4, 1.0)))))
    q = min(q, max(major, 1))
    edges = np.r_[np.arange(0, major, q), major]
    at = cost[edges]
    bounds, i, last = [], 0, edges.size - 1
    while i < last:  # greedy: the most row blocks within the budget, at least one
        j = int(np.searchsorted(at, at[i] + budget, side="right")) - 1
        j = min(max(j, i + 1), last)
        bounds.append((int(edges[i]), int(edges[j])))
        i = j
    return bounds, int(q)


@dataclass(frozen=True)
class SparseLayout(Layout):
    """A :class:`~._layout.Layout` of sparse row panels (``kind="sparse"``)."""

    panel_bounds: tuple = ()
    nnz: int = 0
    densify: bool = False

    def bounds(self):
        return list(self.panel_bounds)

    def to_json(self):
        out = super().to_json()
        out.update(nnz=self.nnz, densify=self.densify,
                   max_panel_rows=max(e - s for s, e in self.panel_bounds))
        return out


def sparse_layout(pin, indptr, panel_bytes=None, *, densify=False):
    """The :class:`SparseLayout` of a pinned sparse group."""
    major, minor = pin.fmt.major_shape
    bounds, q = sparse_bounds(indptr, minor, panel_bytes, densify=densify)
    per_row = np.diff(indptr.astype(np.int64))
    unit = int(16 * per_row.max() + 8 + (8 * minor if densify else 0)) if major else 0
    # tall_chunks: (q, minor), the row grid the panels (and U's chunks) are aligned to
    peak = max(int(16 * (indptr[e] - indptr[s]) + 8 * (e - s) * (1 + minor * densify))
               for s, e in bounds)
    how = (f"densified one panel at a time ({'exact' if densify else ''} method), the "
           "budget counting the dense bytes" if densify else "sparse products, never densified")
    reason = (f"{pin.fmt.orient.upper()} row panels of the {'transpose' if pin.wide else 'matrix'}"
              f" sized by their non-zeros ({pin.nnz} in all) within the "
              f"{panel_budget(panel_bytes) / 2**20:.4g} MiB budget; {how}")
    step = max(e - s for s, e in bounds)
    return SparseLayout("sparse", (major, minor), (q, minor), step, len(bounds), unit,
                        peak, reason, tuple(bounds), int(pin.nnz), bool(densify))


@dataclass(frozen=True)
class SparsePanel:
    """Rows ``start:stop`` of the CSR view of a pinned sparse group, read on a worker.

    ``densify``: the panel task densifies it after the cache (the exact method).
    """

    start: int
    stop: int
    pin: SparsePin
    densify: bool = False
    span: tuple = ()  # COO: the entries (p0, p1) of these rows
    block: object = None  # an in-memory matrix's rows (MemorySparse): no read

    def read(self):
        """The panel as a float64 ``csr_matrix`` of shape (rows, minor), checked.

        Raises
        ------
        InvalidInputError
            ``indptr`` decreasing or indices out of range in these rows.
        """
        if self.block is not None:
            return self.block
        pin, s, e = self.pin, self.start, self.stop
        what = f"{'columns' if pin.wide else 'rows'} {s}:{e}"
        ptr = (self._coo_ptr(what) if pin.fmt.orient == "coo" else
               read_part(pin.parts["indptr"], s, e + 1, f"indptr of {what}").astype(np.int64))
        p0, p1 = int(ptr[0]), int(ptr[-1])
        if p1 < p0 or p1 > pin.nnz:
            raise InvalidInputError(
                f"{pin.name}: indptr of {what} spans stored values {p0}:{p1}, not within "
                f"0:{pin.nnz}; the sparse matrix is corrupt. Rewrite it.", field="source")
        idx = read_part(pin.parts["indices"], p0, p1, f"indices of {what}")
        why = check_panel_arrays(ptr, idx, pin.fmt.major_shape[1], what)
        if why is not None:
            raise InvalidInputError(f"{pin.name} is not a valid sparse matrix: {why}. "
                                    "Rewrite it (scipy.sparse checks with check_format()).",
                                    field="source")
        data = read_part(pin.parts["data"], p0, p1, f"data of {what}")
        return csr_panel(ptr, idx, data, pin.fmt.major_shape[1])

    def _coo_ptr(self, what):
        """The row pointer of these rows of a COO group, from their row indices."""
        (p0, p1), s, e = self.span, self.start, self.stop
        rows = read_part(self.pin.parts["rows"], p0, p1, f"indices_0 of {what}").astype(np.int64)
        if rows.size and (rows.min() < s or rows.max() >= e or np.any(np.diff(rows) < 0)):
            raise InvalidInputError(
                f"{self.pin.name}: the COO entries {p0}:{p1} of {what} hold rows outside "
                "it or out of order; the group changed or is corrupt. Rewrite it.",
                field="source")
        return np.r_[0, np.cumsum(np.bincount(rows - s, minlength=e - s))] + p0


def sparse_panels(pin, bounds, densify=False):
    """The :class:`SparsePanel` of each ``(start, stop)`` (without the O(rows) ``indptr``
    the pin may hold: a panel reads its own slice)."""
    if isinstance(pin, MemorySparse):
        return [SparsePanel(s, e, None, densify, block=pin.csr[s:e]) for s, e in bounds]
    light = replace(pin, indptr=None)
    if pin.fmt.orient != "coo":
        return [SparsePanel(s, e, light, densify) for s, e in bounds]
    ptr = pin.read_indptr()
    return [SparsePanel(s, e, light, densify, (int(ptr[s]), int(ptr[e]))) for s, e in bounds]


def first_row(pin):
    """Row 0 of the CSR view, dense float64 (the pivot of a densified centred run)."""
    return sparse_panels(pin, [(0, 1)])[0].read().toarray()[0]


def sparse_params(pin, params, *, update=None):
    """The job spec (:class:`~._spec.SVDParams`) fitted to a sparse source's orientation.

    The tall view of a sparse group is fixed by its storage (CSR: A, CSC: Aᵀ), so
    its column count ``n_t`` may be the long side. ``exact`` factors an
    ``n_t``-column R: beyond :data:`~._spec.EXACT_MAX_COLUMNS` ``auto`` resolves to
    ``randomized`` (``randqb`` with an energy target) with a note, and an explicit
    ``exact`` is refused. A CSC group's tall factor is V, always formed.

    Raises
    ------
    InvalidInputError
        ``field="method"`` (exact on too many columns), ``"missing"``
        (``missing="mask"``: a sparse matrix's absent entries are zeros), or
        ``"weights"``, ``"standardize"``, ``"update"`` (dense sources only).
    """
    for given, field_name in ((params.weights is not None, "weights"),
                              (params.standardize, "standardize"), (update is not None, "update")):
        if given:
            raise InvalidInputError(
                f"{field_name} was given but {pin.name} is a sparse matrix; column weights, "
                "standardisation and updates apply to dense sources only. Leave "
                f"{field_name} out.", field=field_name)
    if params.missing == "mask":
        raise InvalidInputError(
            f"missing='mask' was given but {pin.name} is a sparse matrix, whose absent "
            "entries are zeros, not missing values; leave missing out (NaN values are "
            "errors).", field="missing")
    n_t = pin.fmt.major_shape[1]
    if pin.wide and not params.compute_u:
        params = replace(params, compute_u=True)
    if params.resolved != "exact" or n_t <= EXACT_MAX_COLUMNS:
        return params
    how = (f"{pin.fmt.orient.upper()} storage makes its panels rows of "
           f"{'Aᵀ' if pin.wide else 'A'}, with {n_t} columns")
    if params.method != "auto":
        raise InvalidInputError(
            f"method='exact' on {pin.name}: its {how}, and the exact method would factor a "
            f"{n_t} × {n_t} triangle (at most {EXACT_MAX_COLUMNS} columns). Use "
            f"method='randomized', or store the matrix {'CSR' if pin.wide else 'CSC'}.",
            field="method")
    resolved = "randqb" if params.energy is not None else "randomized"
    return replace(params, resolved=resolved, notes=(*params.notes, (
        f"method 'auto' resolved to {resolved!r}: {how} (exact takes at most "
        f"{EXACT_MAX_COLUMNS})")))


@dataclass(frozen=True, eq=False)
class MemorySparse:
    """An in-memory ``scipy.sparse`` matrix as a source: the same panels, no pin.

    ``csr`` is the CSR view (Aᵀ for a CSC matrix, read as the transpose like a
    CSC group), float64; ``in_memory``: the panels are scattered, not read.
    """

    csr: object
    fmt: SparseFormat
    info: SourceInfo
    nnz: int
    name: str = "the sparse matrix"
    in_memory: bool = True

    @property
    def wide(self):
        return self.fmt.orient == "csc"

    @property
    def ref(self):
        from types import SimpleNamespace

        return SimpleNamespace(name=self.name, view=None)

    def read_indptr(self):
        return self.csr.indptr

    def layout(self, panel_bytes=None, *, densify=False):
        return sparse_layout(self, self.csr.indptr, panel_bytes, densify=densify)

    def with_options(self, **_kw):
        return self

    def verify(self):
        return None

    def check_missing(self):
        return None

    def absent_chunks(self):
        return {"n_chunks": 0, "absent_chunks": 0, "fill_value": 0.0,
                "missing_chunks": "fill", "note": None}


def memory_sparse(a):
    """A :class:`MemorySparse` of a ``scipy.sparse`` matrix or array, checked.

    Raises
    ------
    InvalidInputError
        Not 2-D, not real, empty, or an invalid structure (``check_format``).
    """
    name = "the sparse matrix"
    if a.ndim != 2 or min(a.shape) < 1:
        raise InvalidInputError(f"{name} must be a non-empty 2-D matrix; got shape "
                                f"{tuple(a.shape)}.", field="source")
    if np.dtype(a.dtype).kind not in "fiub":
        raise InvalidInputError(f"{name} must hold real numbers; got dtype {str(a.dtype)!r}.",
                                field="source")
    orient = "csc" if a.format == "csc" else "csr"
    csr = a.T.tocsr() if orient == "csc" else a.tocsr()
    try:
        csr.check_format(full_check=True)
    except ValueError as exc:
        raise InvalidInputError(f"{name} is not a valid sparse matrix: {exc}. Rebuild it "
                                "with scipy.sparse.", field="source") from exc
    csr = csr.astype(np.float64, copy=csr.dtype != np.float64)
    fmt = SparseFormat("memory", orient, tuple(int(x) for x in a.shape))
    return MemorySparse(csr, fmt, _info(fmt, str(a.dtype), None, None, int(csr.nnz)),
                        int(csr.nnz))
