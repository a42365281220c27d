"""Missing values (``missing="mask"``): features missing in every sample are masked.

EOF analysis of a field with land in it: a grid point that is NaN (or the CF
``_FillValue``) in every sample is not a feature at all. Each panel read
replaces missing entries by 0 and counts them (:func:`~._kernels.mask_missing`);
after pass 1 :func:`decide_mask` adds the counts up per feature:

- missing in every sample: masked. Its column of the matrix is then exactly
  zero, which changes no singular value and no other singular vector; its
  entries of ``Vt`` are reported as NaN by ``SVDResult.to_xarray()``;
- missing in some samples only: the job fails (:class:`NonFiniteError`),
  naming how many such features there are and the first few. Nothing is
  imputed.

Inf is never missing: it fails as in ``missing="error"``.

Absent *chunks* are another thing (``missing_chunks``): Zarr does not store a
chunk whose values all equal the fill value, so a chunk absent from the store
*is* the fill value. :func:`missing_chunks_mode` validates the mode (and maps
the deprecated ``allow_missing_chunks``); :func:`absent_chunks_note` is the
sentence that says how many were read so.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ._errors import InvalidInputError, NonFiniteError

__all__ = ["feature_counts", "decide_mask", "check_none_missing", "describe_feature",
           "CHUNK_MODES", "missing_chunks_mode", "absent_chunks_note", "json_fill"]

MODES = ("error", "mask")

#: ``missing_chunks``: ``"fill"`` (Zarr's rule: an absent chunk is the fill value)
#: or ``"error"`` (strict: an absent chunk fails, to catch half-finished uploads).
CHUNK_MODES = ("fill", "error")


def missing_chunks_mode(missing_chunks="fill", allow_missing_chunks=None, *, stacklevel=3):
    """The ``missing_chunks`` mode, validated; the deprecated ``allow_missing_chunks`` mapped.

    Parameters
    ----------
    missing_chunks : {"fill", "error"}, default="fill"
    allow_missing_chunks : bool or None, default=None
        Deprecated: True is ``"fill"``, False is ``"error"`` (a DeprecationWarning).
    stacklevel : int, default=3
        Of the warning (3: the caller of the function calling this one).

    Returns
    -------
    str

    Raises
    ------
    InvalidInputError
        An unknown mode (``field="missing_chunks"``), or
        ``allow_missing_chunks=True`` with ``missing_chunks="error"``.
    """
    if missing_chunks not in CHUNK_MODES:
        raise InvalidInputError(f"missing_chunks must be 'fill' or 'error'; got "
                                f"{missing_chunks!r}.", field="missing_chunks")
    if allow_missing_chunks is None:
        return missing_chunks
    warnings.warn("allow_missing_chunks is deprecated: absent chunks read as the fill value "
                  "by default; use missing_chunks='error' to refuse them "
                  "(allow_missing_chunks=True is missing_chunks='fill').",
                  DeprecationWarning, stacklevel=stacklevel)
    if allow_missing_chunks and missing_chunks == "error":
        raise InvalidInputError("allow_missing_chunks=True contradicts missing_chunks='error'; "
                                "give missing_chunks alone.", field="allow_missing_chunks")
    return "fill" if allow_missing_chunks else "error"


def json_fill(value):
    """A fill value as JSON can hold it: a float, or ``"NaN"``/``"Infinity"``/``"-Infinity"``."""
    value = float(value)
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def absent_chunks_note(absent, total, fill):
    """``"12 of 400 chunks absent, read as fill value 0.0 (…)"``; None when none is absent."""
    if not absent:
        return None
    shown = fill if isinstance(fill, str) else repr(float(fill))
    return (f"{absent} of {total} chunks absent, read as fill value {shown} (Zarr does not "
            "store chunks equal to the fill value)")


def check_mode(missing):
    if missing not in MODES:
        raise InvalidInputError(f"missing must be 'error' or 'mask'; got {missing!r}.",
                                field="missing")
    return missing


def feature_counts(panel_counts, bounds, wide, n_features):
    """Missing entries per feature, from the counts of each panel.

    Parameters
    ----------
    panel_counts : list of (ndarray (n_t,), ndarray (rows,)) or None
        Per panel: missing entries per tall-view column and per tall-view row.
    bounds : sequence of (start, stop)
    wide : bool
        Features are the tall view's rows (wide input), else its columns.
    n_features : int

    Returns
    -------
    ndarray of shape (n_features,), int64
    """
    out = np.zeros(n_features, dtype=np.int64)
    for (start, stop), counts in zip(bounds, panel_counts):
        if counts is None:
            continue
        by_col, by_row = counts
        if wide:
            out[start:stop] += by_row
        else:
            out += by_col
    return out


def describe_feature(j, view=None, coords=None):
    """``"lat=12.5, lon=200.0"`` (coordinates), ``"lat[2], lon[3]"`` (indices) or ``"column 7"``."""
    if view is None:
        return f"column {int(j)}"
    parts = []
    for dim, i in view.feature_index(int(j)).items():
        values = (coords or {}).get(dim)
        parts.append(f"{dim}={np.asarray(values[0])[int(i)].item()!r}" if values is not None
                     else f"{dim}[{int(i)}]")
    return ", ".join(parts)


def decide_mask(counts, n_samples, *, rank, describe=describe_feature, shown=5):
    """The mask of features missing in every sample; fail on partly missing ones.

    Parameters
    ----------
    counts : ndarray of shape (n_features,)
        Missing entries per feature (:func:`feature_counts`).
    n_samples : int
    rank : int
        Components asked for: must not exceed the features kept.
    describe : callable
        ``describe(j)`` names feature ``j`` in messages.

    Returns
    -------
    ndarray of shape (n_features,), bool: True where masked.

    Raises
    ------
    NonFiniteError
        Some feature is missing in some samples but not all.
    InvalidInputError
        ``field="rank"``: fewer features are kept than ``rank``.
    """
    full = counts == n_samples
    partial = np.flatnonzero((counts > 0) & ~full)
    if partial.size:
        first = "; ".join(f"{describe(j)} ({int(counts[j])} of {n_samples} samples)"
                          for j in partial[:shown])
        more = f", and {partial.size - shown} more" if partial.size > shown else ""
        raise NonFiniteError(
            f"{partial.size} feature{'s are' if partial.size > 1 else ' is'} missing (NaN or "
            "the fill value) in some samples but "
            f"not in all: {first}{more}. missing='mask' drops only features missing in every "
            "sample; fill or drop the others (e.g. with xarray's fillna or dropna), then "
            "resubmit.", rows=(0, n_samples))
    kept = int(full.size - full.sum())
    if rank > kept:
        raise InvalidInputError(
            f"rank {rank} exceeds the {kept} features left after masking {int(full.sum())} "
            f"of {full.size} features missing in every sample; ask for at most "
            f"{max(kept, 1)} components.", field="rank")
    return full


def check_none_missing(counts, markers, *, describe=describe_feature, shown=5):
    """``missing="error"`` on a store with a CF fill value: any missing entry fails.

    NaN fails in pass 1 already; this catches the entries equal to the
    ``_FillValue``/``missing_value`` markers, which xarray would decode as NaN.

    Raises
    ------
    NonFiniteError
    """
    bad = np.flatnonzero(counts)
    if bad.size:
        first = "; ".join(f"{describe(j)} ({int(counts[j])} samples)" for j in bad[:shown])
        more = f", and {bad.size - shown} more" if bad.size > shown else ""
        raise NonFiniteError(
            f"{bad.size} feature{'s hold' if bad.size > 1 else ' holds'} missing values (NaN "
            f"or the fill value {', '.join(map(repr, markers or ()))}): {first}{more}. Submit "
            "with missing='mask' to drop the features missing in every sample.",
            rows=(0, int(counts.size)))
