"""Accuracy of centring (PCA) against the column offset: svdserve exact against scikit-learn.

X = offset + N(0,1)·logspace(−3, 0, 40), 3000×40, 12 panels. The reference is
LAPACK on X centred in exact arithmetic (``tests/_check.centered_exactly``),
since a float64 or even np.longdouble ``X − X.mean(0)`` is itself off by
about ε·offset. Prints max_i |σ_i − σ_i,ref| / σ_1 over all 40 σ.

    .venv/bin/python bench/centering.py
"""

import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sklearn.decomposition import PCA  # noqa: E402

from svdserve.worker import svd  # noqa: E402
from tests._check import centered_exactly  # noqa: E402


def main():
    rng = np.random.default_rng(0)
    print("offset   svdserve exact   sklearn PCA(svd_solver='full')   (max |Δσ| / σ₁, all 40 σ)")
    for offset in (1e2, 1e4, 1e8, 1e10):
        X = offset + rng.standard_normal((3000, 40)) * np.logspace(-3, 0, 40)
        ref = np.linalg.svd(centered_exactly(X), compute_uv=False)
        ours = svd(X, 40, method="exact", center=True, panel_bytes=80000).S
        theirs = PCA(40, svd_solver="full").fit(X).singular_values_
        print(f"{offset:6.0e}   {np.abs(ours - ref).max() / ref[0]:14.2e}   "
              f"{np.abs(theirs - ref).max() / ref[0]:14.2e}")


if __name__ == "__main__":
    main()
