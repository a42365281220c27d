"""Errors raised by the numerical core.

One hierarchy, rooted in :class:`SVDError`; each leaf also subclasses the
standard-library type a caller would naturally catch::

    SVDError                              .type
    ├── InvalidInputError (ValueError)    "invalid_input"      .field names the bad parameter
    │   ├── SourceNotFoundError (FileNotFoundError)
    │   ├── SourceAccessError (PermissionError)   a path leads out of the allowed roots
    │   └── UpdateError                   an update's source is not the parent's grown by rows:
    │                                     .changed names what ("rows", "shape", "columns", ...)
    ├── NonFiniteError (ValueError)       "non_finite_values"  .rows = (start, stop) of the first bad panel
    │                                                          (of the input as stored: columns of a wide one)
    ├── StorageError (OSError)            "storage_error"
    │   └── SourceChangedError                the pinned source changed, vanished or escaped
    └── WorkerLostError (RuntimeError)    "worker_lost"

``.type`` is the machine-readable code the job service stores with a failed
job; ``str(err)`` is a sentence a person can act on.

Failures from outside the core (``distributed``, ``tornado``, the OS) are
translated in one place, :data:`EXC_MAP` (cf. httpx's ``HTTPCORE_EXC_MAP``),
by :func:`map_exception`: the engine applies it to what its futures raise,
the job service to whatever reaches it, so both give the same ``.type``.
"""

from __future__ import annotations

__all__ = [
    "SVDError",
    "InvalidInputError",
    "SourceNotFoundError",
    "SourceAccessError",
    "UpdateError",
    "NonFiniteError",
    "StorageError",
    "SourceChangedError",
    "WorkerLostError",
    "EXC_MAP",
    "map_exception",
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


class UpdateError(InvalidInputError):
    """An update (``svd(..., update=previous)``) cannot merge into its parent result.

    The source is not the parent's input grown by appended rows (old rows
    changed, the array shrank, its column count, dtype or chunk grid
    changed), or the parent's method keeps no mergeable state.

    Attributes
    ----------
    changed : str
        What differs: ``"rows"``, ``"shape"``, ``"columns"``, ``"dtype"``,
        ``"chunks"``, ``"source"`` or ``"method"``.
    """

    def __init__(self, message: str, *, changed: str, field: str = "update"):
        InvalidInputError.__init__(self, message, field=field)
        self.changed = changed


class NonFiniteError(SVDError, ValueError):
    """The matrix holds NaN or Inf; found during the first pass.

    Attributes
    ----------
    rows : tuple of int
        ``(start, stop)`` of the first panel holding a non-finite value,
        counted along the panel axis of the input as stored: rows of a tall
        input, columns of a wide one (which the core reads as its transpose).
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


def _named(*names):
    """Match an exception whose class, or a base of it, has one of ``names``
    (so that neither ``distributed`` nor ``tornado`` is imported here)."""
    return lambda exc: any(cls.__name__ in names for cls in type(exc).__mro__)


def _scheduler_io(exc):
    return isinstance(exc, (OSError, TimeoutError)) and "scheduler" in str(exc).lower()


def _os_error(exc):
    return isinstance(exc, OSError)


_LOST_CONTACT = ("lost contact with the Dask scheduler or workers ({name}: {exc}); "
                 "check that the cluster is up, then resubmit.")

#: Foreign exceptions and the typed error each becomes, first match wins:
#: ``(matches(exc), error class, message template)``; the template may use
#: ``{exc}`` and ``{name}`` (the foreign class's name). An :class:`SVDError`
#: is never translated.
EXC_MAP = (
    (_named("KilledWorker"), WorkerLostError,
     "Dask workers died while running this job ({exc}); the task was retried and its "
     "workers kept dying. Check worker memory limits and logs, then resubmit."),
    (_named("CommClosedError", "StreamClosedError", "FutureCancelledError"), WorkerLostError,
     _LOST_CONTACT),
    (_scheduler_io, WorkerLostError, _LOST_CONTACT),
    (_os_error, StorageError, "reading or writing storage failed: {exc}"),
)


def map_exception(exc: BaseException) -> BaseException:
    """The :class:`SVDError` that :data:`EXC_MAP` makes of ``exc``, or ``exc`` itself.

    ``exc`` is returned unchanged when it is an :class:`SVDError` already or
    when no entry matches (an unexpected error, a bug: the caller decides).
    The translation is not raised; raise it ``from exc``.
    """
    if isinstance(exc, SVDError):
        return exc
    for matches, error, template in EXC_MAP:
        if matches(exc):
            return error(template.format(exc=exc, name=type(exc).__name__))
    return exc
