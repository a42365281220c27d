"""PCA of scikit-learn's handwritten digits through the svdserve service.

The 1797 x 64 digits matrix is uploaded as Zarr and decomposed with
``center=True`` (the service centres implicitly, never materialising
X - mean). ``StoredResult.pca()`` returns an object with scikit-learn's names;
its explained variance ratio is compared with
``sklearn.decomposition.PCA(svd_solver="full")`` on the same data, and the
first two components are used to project a few digits.

Run a service first (``svdserve serve`` with ``SVDSERVE_DATA_ROOTS`` including
``--data-dir``), then::

    python examples/pca_digits.py --components 10
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="service URL (default: $SVDSERVE_URL)")
    parser.add_argument("--token", default=None, help="bearer token (default: $SVDSERVE_TOKEN)")
    parser.add_argument("--data-dir", default="data",
                        help="a directory inside the service's data root (default: ./data)")
    parser.add_argument("--components", type=int, default=10)
    args = parser.parse_args(argv)

    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    from svdserve.client import Client

    digits = load_digits()
    X = digits.data.astype(np.float64)
    k = args.components
    os.makedirs(args.data_dir, exist_ok=True)
    with Client(args.url, args.token) as client:
        url = client.upload(X, os.path.join(args.data_dir, "digits.zarr"), chunks=256,
                            overwrite=True)
        res = client.submit(url, k, method="exact", center=True).result(
            progress=sys.stderr.isatty())
    pca = res.pca()
    ref = PCA(n_components=k, svd_solver="full").fit(X)

    print(f"digits {X.shape[0]}x{X.shape[1]}: {k} components explain "
          f"{100 * pca.explained_variance_ratio_.sum():.2f} % of the variance")
    print(f"{'component':>9} {'svdserve':>10} {'sklearn':>10}")
    for i, (a, b) in enumerate(zip(pca.explained_variance_ratio_, ref.explained_variance_ratio_)):
        print(f"{i + 1:>9d} {a:>10.6f} {b:>10.6f}")
    # Both are SVDs of the same centred matrix; the ratios agree to rounding (~1e-13 here).
    diff = float(np.max(np.abs(pca.explained_variance_ratio_ - ref.explained_variance_ratio_)))
    comp_diff = float(np.max(np.abs(pca.components_ - ref.components_)))
    print(f"max |ratio difference| = {diff:.2e}, max |component difference| = {comp_diff:.2e}")
    if diff > 1e-10 or comp_diff > 1e-8:
        print("svdserve and scikit-learn disagree", file=sys.stderr)
        return 1

    Z = pca.transform(X[:5])
    for label, z in zip(digits.target[:5], Z):
        print(f"digit {label}: PC1 {z[0]:+8.3f}  PC2 {z[1]:+8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
