"""svdserve.client: submit truncated-SVD jobs to an svdserve service and use the factors.

>>> from svdserve.client import Client                          # doctest: +SKIP
>>> c = Client("http://localhost:8000")                         # doctest: +SKIP
>>> job = c.submit("data/A.zarr", rank=20)                      # doctest: +SKIP
>>> res = job.result(progress=True)                             # doctest: +SKIP
>>> res.reconstruct(10), res.error(10), res.storage_ratio(10)   # doctest: +SKIP
>>> res.lstsq(b, alpha="gcv").x                                 # doctest: +SKIP

The client speaks HTTP to the service and reads result stores with Zarr; it
never imports :mod:`svdserve.service` nor :mod:`svdserve.worker` (the result
manifest's format is :mod:`svdserve._manifest`, shared with both).
"""

from ._client import Client
from ._eof import (
    NorthErrors,
    Rotation,
    eofs,
    eofs_as_correlation,
    eofs_as_correlation_truncated,
    eofs_as_covariance,
    north_errors,
    pcs,
    project_field,
    reconstruct_field,
    rotate,
)
from ._errors import (
    APIError,
    Conflict,
    Forbidden,
    InvalidRequest,
    JobCancelled,
    JobError,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    InputFileError,
    MissingValuesError,
    ServiceUnavailable,
    StorageAccessError,
    SVDServeError,
    Timeout,
    TransportError,
    Unauthorized,
)
from ._formats import read_matrix
from ._scanpy import to_scanpy
from ._sparse import write_sparse
from ._job import Job, Progress
from ._lstsq import LstsqResult
from ._pca import PCA
from ._report import EnergyReport
from ._result import StoredResult

__all__ = [
    "Client",
    "Job",
    "Progress",
    "StoredResult",
    "EnergyReport",
    "PCA",
    "LstsqResult",
    "read_matrix",
    "write_sparse",
    "to_scanpy",
    "rotate",
    "Rotation",
    "north_errors",
    "NorthErrors",
    "pcs",
    "eofs",
    "eofs_as_covariance",
    "eofs_as_correlation",
    "eofs_as_correlation_truncated",
    "project_field",
    "reconstruct_field",
    "MissingValuesError",
    "InputFileError",
    "SVDServeError",
    "TransportError",
    "StorageAccessError",
    "APIError",
    "InvalidRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "RateLimited",
    "ServiceUnavailable",
    "ServerError",
    "JobError",
    "JobFailed",
    "JobCancelled",
    "Timeout",
]
