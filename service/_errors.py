"""The job service's own exceptions: one base, :class:`ServiceError`.

::

    ServiceError
    ├── ProblemError       (._problems)  answered as RFC 9457 problem details
    ├── SandboxError       (._sandbox)   a source refused: .status 403/404/422, .field
    ├── QueueFull          (._store)     ``max_queued_jobs`` jobs (or the tenant's
    │                                    ``max_queued_jobs_per_tenant``) are queued already
    ├── WrongState         (._store)     the job's state does not allow the operation (409)
    ├── UploadError        (._upload_store)  an upload request refused: .status, .field, .extra
    ├── CancelRequested    (._runner)    raised from the progress callback (or while the
    │                                    core waits) on cancel
    └── ServiceStopping    (._runner)    the same, on shutdown

Errors of the numerical core are :class:`svdserve.worker.SVDError`; a failed
job stores their ``.type`` (:func:`svdserve.worker._errors.map_exception`
translates foreign ones first).
"""

from __future__ import annotations

__all__ = ["ServiceError"]


class ServiceError(Exception):
    """Base of every exception defined by :mod:`svdserve.service`."""
