"""Householder QR of one block, as the TSQR kernels need it: pure NumPy and LAPACK.

R factors with a non-negative diagonal (so a factorization does not depend
on the LAPACK build), blocked compact-WY (``geqrt``) applications of Q, and
the thin Q of a small block. Re-exported by :mod:`._kernels`.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

from ._sumsq import BLOCK_ROWS

__all__ = ["qr_r", "qr_apply", "qr_full", "with_ones", "thin_qr"]


def _positive_diag(q, r):
    """Flip signs so that ``diag(r) >= 0``; makes QR unique for full-rank input."""
    d = np.sign(np.diagonal(r)).copy()
    d[d == 0] = 1.0
    r = r * d[:, None]
    if q is not None:
        q = q * d[None, :]
    return q, r


def _fortran(a, ones=False):
    """A new Fortran-ordered float64 copy of ``a`` (behind a column of ones if ``ones``).

    Copied ``BLOCK_ROWS`` rows at a time: the transposing copy of a C-ordered
    panel then stays in cache, at about 0.6× the time of ``np.asfortranarray``.
    """
    lead = int(ones)
    out = np.empty((a.shape[0], a.shape[1] + lead), order="F")
    if ones:
        out[:, 0] = 1.0
    for s in range(0, a.shape[0], BLOCK_ROWS):
        out[s:s + BLOCK_ROWS, lead:] = a[s:s + BLOCK_ROWS]
    return out


def with_ones(a):
    """``[1, a]``: the panel behind a column of ones, in one new Fortran-ordered buffer."""
    return _fortran(a, ones=True)


#: Block size of the compact-WY Householder QR (LAPACK ``dgeqrt``).
_QR_BLOCK = 64


def _geqrt(a):
    """Householder QR in compact WY form (``dgeqrt``, block 64) of a Fortran-ordered copy.

    ``dgeqrt`` on a column-major buffer runs at about 1.5× the speed of
    ``geqrf`` behind ``scipy.linalg.qr_multiply`` on a 32768×500 panel. A
    buffer that is already Fortran-ordered and writable (from
    :func:`with_ones`) is factored in place.
    """
    f = a if a.flags.f_contiguous and a.flags.writeable and a.dtype == np.float64 \
        else _fortran(a)
    nb = max(1, min(_QR_BLOCK, *f.shape))
    v, t, info = lapack.dgeqrt(nb, f, overwrite_a=True)
    if info != 0:  # pragma: no cover - only for invalid arguments
        raise ValueError(f"dgeqrt failed with info={info}")
    return v, t


def qr_r(a):
    """R factor of a panel's Householder QR (LAPACK ``dgeqrt``).

    Every per-panel QR in this package goes through :func:`_geqrt`, so a
    panel's factorisation is bit-for-bit the same in every pass that
    rebuilds it: a later pass re-derives Q_i (applied to a small block,
    never formed) instead of storing it.

    Parameters
    ----------
    a : ndarray of shape (rows, n)

    Returns
    -------
    r : ndarray of shape (min(rows, n), n)
    """
    v, _ = _geqrt(a)
    return np.triu(v[: min(a.shape)])


def qr_apply(a, w):
    """Q_a w for the Q factor of :func:`qr_r`, without forming Q (``dgeqrt`` + ``dgemqrt``).

    Parameters
    ----------
    a : ndarray of shape (rows, n)
    w : ndarray of shape (min(rows, n), k)

    Returns
    -------
    ndarray of shape (rows, k)
    """
    return _q_times(*_geqrt(a), w)


def _q_times(v, t, w):
    """Q w for the Q factor of a :func:`_geqrt` result ``(v, t)`` (``dgemqrt``).

    Parameters
    ----------
    v : ndarray of shape (rows, n)
    t : ndarray of shape (nb, min(rows, n))
    w : ndarray of shape (min(rows, n), k)

    Returns
    -------
    ndarray of shape (rows, k), Fortran-ordered
    """
    kk = min(v.shape)  # reflectors (v has n columns when rows < n)
    c = np.zeros((v.shape[0], w.shape[1]), order="F")
    c[: w.shape[0]] = w
    c, info = lapack.dgemqrt(v[:, :kk], t[:, :kk], c, side="L", trans="N", overwrite_c=True)
    if info != 0:  # pragma: no cover - only for invalid arguments
        raise ValueError(f"dgemqrt failed with info={info}")
    return c


def thin_qr(y):
    """Thin Householder QR of a tall-skinny block with Q formed (``dgeqrt`` + ``dgemqrt``).

    Level-3 throughout (the recursive QR of Elmroth & Gustavson 2000 in
    ``dgeqrt3``, then ``dlarfb`` on ``[I; 0]``):
    on 32768×30 it takes about half the time of ``np.linalg.qr``, whose
    ``geqrf``/``orgqr`` fall back to one ``gemv`` + ``ger`` per column when the
    block is narrower than LAPACK's block size, and it calls no ``gemv``,
    whose summation order may depend on memory alignment.

    Parameters
    ----------
    y : ndarray of shape (rows, l)
        Overwritten if it is already a writable Fortran-ordered float64 buffer.

    Returns
    -------
    q : ndarray of shape (rows, min(rows, l)), Fortran-ordered
    r : ndarray of shape (min(rows, l), l)
    """
    v, t = _geqrt(y)
    kk = min(v.shape)
    return _q_times(v, t, np.eye(kk)), np.triu(v[:kk])


def qr_full(a):
    """Thin Householder QR with non-negative diagonal (small dense blocks).

    Returns
    -------
    q : ndarray of shape (rows, min(rows, n))
    r : ndarray of shape (min(rows, n), n)
    """
    q, r = np.linalg.qr(a, mode="reduced")
    return _positive_diag(q, r)
