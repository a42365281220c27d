"""PCA of scikit-learn's handwritten digits with the ``svdserve.PCA`` estimator.

The 1797 x 64 digits matrix is stored as Zarr in the service's data root and
``svdserve.PCA(n_components=k, client=Client(url))`` is fitted on its path:
the service reads it panel by panel and centres it implicitly (never
materialising X - mean), exactly as it would a matrix larger than memory.
The fitted estimator has scikit-learn's attributes; its explained variance
ratio and components are compared with ``sklearn.decomposition.PCA`` on the
same data, and a few digits are projected. Then the same estimator class,
in-process this time, goes into a scikit-learn ``Pipeline`` with a
classifier and is cross-validated (every fold clones it).

Run a service first (``svdserve serve`` with ``SVDSERVE_DATA_ROOTS`` including
``--data-dir``), then::

    python examples/pca_digits.py --components 10
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def store_zarr(X: np.ndarray, path: str) -> str:
    """Write X as a Zarr v3 array in row chunks of 256 (where the service reads)."""
    import zarr

    z = zarr.create_array(path, shape=X.shape, chunks=(256, X.shape[1]), dtype=X.dtype,
                          overwrite=True)
    z[:] = X
    return os.path.abspath(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="service URL (default: $SVDSERVE_URL)")
    parser.add_argument("--token", default=None, help="bearer token (default: $SVDSERVE_TOKEN)")
    parser.add_argument("--data-dir", default="data",
                        help="a directory inside the service's data root (default: ./data)")
    parser.add_argument("--components", type=int, default=10)
    args = parser.parse_args(argv)

    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA as SklearnPCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline

    from svdserve import PCA
    from svdserve.client import Client

    digits = load_digits()
    X, y = digits.data.astype(np.float64), digits.target
    k = args.components
    os.makedirs(args.data_dir, exist_ok=True)
    path = store_zarr(X, os.path.join(args.data_dir, "digits.zarr"))
    with Client(args.url, args.token) as client:
        pca = PCA(n_components=k, svd_solver="full", client=client).fit(path)
    ref = SklearnPCA(n_components=k, svd_solver="full").fit(X)

    print(f"digits {X.shape[0]}x{X.shape[1]}: {k} components explain "
          f"{100 * pca.explained_variance_ratio_.sum():.2f} % of the variance")
    print(f"{'component':>9} {'svdserve':>10} {'sklearn':>10}")
    for i, (a, b) in enumerate(zip(pca.explained_variance_ratio_, ref.explained_variance_ratio_)):
        print(f"{i + 1:>9d} {a:>10.6f} {b:>10.6f}")
    # Both are SVDs of the same centred matrix with the same sign rule; the ratios agree
    # to rounding (~1e-15 here), the components to ~1e-13.
    diff = float(np.max(np.abs(pca.explained_variance_ratio_ - ref.explained_variance_ratio_)))
    comp_diff = float(np.max(np.abs(pca.components_ - ref.components_)))
    print(f"max |ratio difference| = {diff:.2e}, max |component difference| = {comp_diff:.2e}")
    if diff > 1e-10 or comp_diff > 1e-8:
        print("svdserve and scikit-learn disagree", file=sys.stderr)
        return 1

    Z = pca.transform(X[:5])  # the fitted model projects in memory; no service needed
    for label, z in zip(y[:5], Z):
        print(f"digit {label}: PC1 {z[0]:+8.3f}  PC2 {z[1]:+8.3f}")

    pipe = make_pipeline(PCA(n_components=k), LogisticRegression(max_iter=2000))
    scores = cross_val_score(pipe, X, y, cv=3)
    print(f"pipeline PCA({k}) + LogisticRegression, 3-fold accuracy {scores.mean():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
