"""svdserve: distributed, out-of-core truncated SVD.

The distribution installs three parts under this namespace:

- :mod:`svdserve.worker` -- the numerical core (runs on any Dask cluster),
- :mod:`svdserve.service` -- the FastAPI job service,
- :mod:`svdserve.client` -- the Python client library and CLI.

the scikit-learn estimators :class:`svdserve.PCA` and
:class:`svdserve.TruncatedSVD` (:mod:`svdserve.estimators`) and the xeofs-style
:class:`svdserve.EOF`, each imported on first use: ``import svdserve`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["EOF", "PCA", "TruncatedSVD", "__version__"]

_ESTIMATORS = ("PCA", "TruncatedSVD")


def __getattr__(name):
    if name == "EOF":
        from ._eof import EOF

        return EOF
    if name in _ESTIMATORS:
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'svdserve' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_ESTIMATORS, "EOF"])
