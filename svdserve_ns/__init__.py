"""svdserve: distributed, out-of-core truncated SVD.

The distribution installs three parts under this namespace:

- :mod:`svdserve.worker` -- the numerical core (runs on any Dask cluster),
- :mod:`svdserve.service` -- the FastAPI job service,
- :mod:`svdserve.client` -- the Python client library and CLI.
"""

__version__ = "0.1.0"
