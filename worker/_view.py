"""The matrix view of an N-D variable: samples along the rows, features along the columns.

An xarray-written variable of dimensions such as ``(time, lat, lon)`` is
decomposed as the matrix whose rows are the samples (``sample_dims``, here
``time``) and whose columns are the remaining dimensions flattened in C
order (``lat × lon``): EOF analysis. :class:`MatrixView` maps that matrix
back to the stored array:

- the stored axes are reordered to ``(sample axes…, feature axes…)`` (the
  sample axes in the order given, the feature axes in their stored order)
  and each group is flattened in C order;
- the *effective chunk grid* of the matrix has ``R = chunk(s₀) · Π extent(sᵢ>₀)``
  rows and ``C = chunk(f₀) · Π extent(fⱼ>₀)`` columns per chunk (``s₀``, ``f₀``
  the first sample and feature axes), so every 2-D box aligned to it is one
  rectangular selection of the stored array (:meth:`MatrixView.nd_selection`).

A 2-D array without ``sample_dims`` has the identity view (rows are rows),
so the rest of the core (panel plan, pin, algorithms, cache) only ever sees
a 2-D matrix of shape ``(m, n)`` with chunks ``(R, C)``.

Pure Python/NumPy: nothing here opens storage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._errors import InvalidInputError

__all__ = ["MatrixView", "make_view", "identity_view"]


@dataclass(frozen=True)
class MatrixView:
    """How a stored N-D array is read as a 2-D matrix.

    Attributes
    ----------
    nd_shape, nd_chunks : tuple of int
        Stored shape and (read) chunk shape.
    sample_axes, feature_axes : tuple of int
        Stored axes flattened into rows and into columns (together a
        permutation of ``range(ndim)``).
    dims : tuple of str
        Names of the stored dimensions.
    """

    nd_shape: tuple
    nd_chunks: tuple
    sample_axes: tuple
    feature_axes: tuple
    dims: tuple

    # ------------------------------------------------------------ shape
    @property
    def row_stride(self):
        """P: rows per index of the first sample axis."""
        return math.prod(self.nd_shape[a] for a in self.sample_axes[1:])

    @property
    def col_stride(self):
        """Q: columns per index of the first feature axis."""
        return math.prod(self.nd_shape[a] for a in self.feature_axes[1:])

    @property
    def shape(self):
        """``(m, n)``: samples × features."""
        return (math.prod(self.nd_shape[a] for a in self.sample_axes),
                math.prod(self.nd_shape[a] for a in self.feature_axes))

    @property
    def chunks(self):
        """``(R, C)``: the effective 2-D chunk grid."""
        s0, f0 = self.sample_axes[0], self.feature_axes[0]
        return (min(self.nd_chunks[s0], self.nd_shape[s0]) * self.row_stride,
                min(self.nd_chunks[f0], self.nd_shape[f0]) * self.col_stride)

    @property
    def is_identity(self):
        return len(self.nd_shape) == 2 and self.sample_axes == (0,)

    @property
    def sample_dims(self):
        return tuple(self.dims[a] for a in self.sample_axes)

    @property
    def feature_dims(self):
        return tuple(self.dims[a] for a in self.feature_axes)

    # ------------------------------------------------------------ boxes
    def _expand(self, lo, hi, stride, total):
        return lo // stride * stride, min(-(-hi // stride) * stride, total)

    def nd_selection(self, rows, cols):
        """The stored selection of the 2-D box ``rows × cols``.

        Parameters
        ----------
        rows, cols : (int, int)
            Half-open ranges of the matrix; ``rows`` must start and stop at
            multiples of :attr:`row_stride` (or at m), ``cols`` likewise.

        Returns
        -------
        tuple of slice, one per stored axis
        """
        (r0, r1), (c0, c1) = rows, cols
        (m, n), p, q = self.shape, self.row_stride, self.col_stride
        if r0 % p or (r1 % p and r1 != m) or c0 % q or (c1 % q and c1 != n):
            raise ValueError(f"box rows {r0}:{r1}, columns {c0}:{c1} is not aligned to "
                             f"strides ({p}, {q})")
        sel = [slice(None)] * len(self.nd_shape)
        sel[self.sample_axes[0]] = slice(r0 // p, -(-r1 // p))
        sel[self.feature_axes[0]] = slice(c0 // q, -(-c1 // q))
        return tuple(sel)

    def read(self, getitem, rows, cols):
        """The 2-D box ``rows × cols`` of the matrix, read with one stored selection.

        Parameters
        ----------
        getitem : callable
            ``getitem(selection)`` returns the stored N-D block (e.g. a
            ``zarr.Array.__getitem__``).
        rows, cols : (int, int)
            Any half-open ranges; the smallest enclosing aligned box is read.

        Returns
        -------
        ndarray of shape (rows[1] - rows[0], cols[1] - cols[0])
        """
        (m, n) = self.shape
        r0, r1 = self._expand(*rows, self.row_stride, m)
        c0, c1 = self._expand(*cols, self.col_stride, n)
        block = np.asarray(getitem(self.nd_selection((r0, r1), (c0, c1))))
        if not self.is_identity:
            block = block.transpose(self.sample_axes + self.feature_axes).reshape(
                r1 - r0, c1 - c0)
        if (r0, r1, c0, c1) != (rows[0], rows[1], cols[0], cols[1]):
            block = block[rows[0] - r0:rows[1] - r0, cols[0] - c0:cols[1] - c0]
        return block

    def key_ranges(self, rows, cols, key_chunks):
        """Per stored axis, the range of chunk-key indices the box ``rows × cols`` touches."""
        (m, n) = self.shape
        r0, r1 = self._expand(*rows, self.row_stride, m)
        c0, c1 = self._expand(*cols, self.col_stride, n)
        out = [range(-(-s // c)) for s, c in zip(self.nd_shape, key_chunks)]
        for axis, lo, hi in ((self.sample_axes[0], r0 // self.row_stride,
                              -(-r1 // self.row_stride)),
                             (self.feature_axes[0], c0 // self.col_stride,
                              -(-c1 // self.col_stride))):
            kc = key_chunks[axis]
            out[axis] = range(lo // kc, -(-hi // kc))
        return out

    def feature_index(self, j):
        """Stored indices ``{dim: i}`` of feature column(s) ``j`` (C order)."""
        idx = np.unravel_index(j, [self.nd_shape[a] for a in self.feature_axes])
        return {self.dims[a]: i for a, i in zip(self.feature_axes, idx)}

    def to_json(self):
        return {"nd_shape": list(self.nd_shape), "nd_chunks": list(self.nd_chunks),
                "sample_axes": list(self.sample_axes),
                "feature_axes": list(self.feature_axes), "dims": list(self.dims)}

    @classmethod
    def from_json(cls, data):
        return cls(tuple(data["nd_shape"]), tuple(data["nd_chunks"]),
                   tuple(data["sample_axes"]), tuple(data["feature_axes"]),
                   tuple(data["dims"]))


def identity_view(shape, chunks):
    """The view of a 2-D array as itself."""
    return MatrixView(tuple(shape), tuple(chunks), (0,), (1,), ("dim_0", "dim_1"))


def make_view(shape, chunks, dims, sample_dims, *, what="the array"):
    """Validate ``sample_dims`` against the stored dimensions and build the view.

    Parameters
    ----------
    shape, chunks : tuple of int
        Stored shape and read chunk shape (N-D, N ≥ 2).
    dims : sequence of str or None
        Stored dimension names (``_ARRAY_DIMENSIONS`` / ``dimension_names``);
        None gives ``dim_0, dim_1, …`` as xarray does.
    sample_dims : sequence of str
        Dimensions flattened into the rows, in this order.

    Returns
    -------
    MatrixView

    Raises
    ------
    InvalidInputError
        ``field="source.sample_dims"``: an unknown or repeated name, none,
        or every dimension (then there are no features).
    """
    dims = tuple(dims) if dims else tuple(f"dim_{i}" for i in range(len(shape)))
    field = "source.sample_dims"
    if isinstance(sample_dims, str):
        sample_dims = (sample_dims,)
    sample_dims = tuple(sample_dims)
    unknown = [d for d in sample_dims if d not in dims]
    if unknown:
        raise InvalidInputError(
            f"sample_dims {list(sample_dims)} names {unknown}, not dimensions of {what}; its "
            f"dimensions are {list(dims)} (shape {list(shape)}).", field=field)
    if not sample_dims or len(set(sample_dims)) != len(sample_dims):
        raise InvalidInputError(
            f"sample_dims must name one or more distinct dimensions of {what} "
            f"{list(dims)}; got {list(sample_dims)}.", field=field)
    if len(sample_dims) == len(dims):
        raise InvalidInputError(
            f"sample_dims {list(sample_dims)} names every dimension of {what}; leave at least "
            "one for the features (the EOF maps).", field=field)
    s_axes = tuple(dims.index(d) for d in sample_dims)
    f_axes = tuple(a for a in range(len(dims)) if a not in s_axes)
    return MatrixView(tuple(int(s) for s in shape), tuple(int(c) for c in chunks),
                      s_axes, f_axes, dims)
