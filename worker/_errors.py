"""Errors raised by the numerical core.

One hierarchy, rooted in :class:`SVDError`; each leaf also subclasses the
standard-library type a caller would naturally catch::

    SVDError                              .type
    ├── InvalidInputError (ValueError)    "invalid_input"      .field names the bad parameter
    │   ├── SourceNotFoundError (FileNotFoundError)
    │   └── SourceAccessError (PermissionError)   a path leads out of the allowed roots
    ├── NonFiniteError (ValueError)       "non_finite_values"  .rows = (start, stop) of the first bad panel
    ├── StorageError (OSError)            "storage_error"
    │   └── SourceChangedError                the pinned source changed, vanished or escaped
    └── WorkerLostError (RuntimeError)    "worker_lost"

``.type`` is the machine-readable code the job service stores with a failed
job; ``str(err)`` is a sentence a person can act on.
"""

from __future__ import annotations

__all__ = [
    "SVDError",
    "InvalidInputError",
    "SourceNotFoundError",
    "SourceAccessError",
    "NonFiniteError",
    "StorageError",
    "SourceChangedError",
    "WorkerLostError",
]


class SVDError(Exception):
    """Base of every error raised by :mod:`svdserve.worker`."""

    type = "internal"


class InvalidInputError(SVDError, ValueError):
    """The input matrix or a parameter is not usable.

    Parameters
    ----------
    message : str
        What was expected, what was received and how to fix it.
    field : str, default="source"
        The parameter at fault (``"source"``, ``"rank"``, ``"array"``, ...).
    """

    type = "invalid_input"

    def __init__(self, message: str, *, field: str = "source"):
        super().__init__(message)
        self.field = field


class SourceNotFoundError(InvalidInputError, FileNotFoundError):
    """The source path, URL or array inside a group does not exist."""

    def __init__(self, message: str, *, field: str = "source"):
        InvalidInputError.__init__(self, message, field=field)


class SourceAccessError(InvalidInputError, PermissionError):
    """A path of the source (or a symlink in it) resolves outside the allowed roots.

    Raised when a source is pinned (:func:`svdserve.worker.pin_source` with
    ``roots``); the same escape found while a job reads is a
    :class:`StorageError`, since the source changed after it was checked.
    """

    def __init__(self, message: str, *, field: str = "source"):
        InvalidInputError.__init__(self, message, field=field)


class NonFiniteError(SVDError, ValueError):
    """The matrix holds NaN or Inf; found during the first pass.

    Attributes
    ----------
    rows : tuple of int
        ``(start, stop)`` rows (of the input as stored) of the first panel
        holding a non-finite value.
    """

    type = "non_finite_values"

    def __init__(self, message: str, *, rows: tuple[int, int]):
        super().__init__(message)
        self.rows = rows


class StorageError(SVDError, OSError):
    """Reading the input or writing the result failed."""

    type = "storage_error"


class SourceChangedError(StorageError):
    """The source is no longer what was pinned: its metadata or a chunk changed,
    a chunk vanished or appeared, or a path now resolves outside the allowed roots.
    The message names what changed."""


class WorkerLostError(SVDError, RuntimeError):
    """Dask workers died (or the scheduler went away) beyond the retry budget."""

    type = "worker_lost"
