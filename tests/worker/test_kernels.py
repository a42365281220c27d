"""Pure NumPy kernels, tested without a cluster."""

import numpy as np
import pytest

from svdserve.worker import _kernels as K
from svdserve.worker._tsqr import centre_correction

from ._check import EPS

rng = np.random.default_rng(42)


def test_merge_stats_equals_whole_matrix():
    A = rng.standard_normal((101, 7)) + 1e6  # large mean: the naive Σa² − mμ² would lose ~12 digits
    parts = [A[:13], A[13:60], A[60:]]
    merged = K.panel_stats(parts[0])
    for p in parts[1:]:
        merged = K.merge_stats(merged, K.panel_stats(p))
    C = A - A.mean(axis=0)
    np.testing.assert_allclose(merged["mean"], A.mean(axis=0), rtol=10 * EPS)
    # Chan et al.'s update keeps the centred sum of squares to ~ε relative to itself.
    np.testing.assert_allclose(merged["m2"], (C**2).sum(axis=0), rtol=1e-9)
    assert merged["count"] == 101 and merged["finite"]


def test_panel_stats_flags_non_finite():
    A = np.ones((4, 3))
    A[2, 1] = np.inf
    assert not K.panel_stats(A)["finite"]


@pytest.mark.parametrize("shape", [(50, 8), (3, 8), (8, 8), (1, 1)])
def test_panel_qr_is_reproducible_and_consistent(shape):
    A = rng.standard_normal(shape)
    r = K.qr_r(A)
    # Bit-for-bit the same factorisation on every call: the second TSQR pass relies on it.
    assert np.array_equal(r, K.qr_r(A.copy()))
    assert np.array_equal(r, K.tsqr_leaf(A, True)["r"])
    q = K.qr_apply(A, np.eye(min(shape)))
    np.testing.assert_allclose(q @ r, A, atol=50 * max(shape) * EPS * np.abs(A).max())
    np.testing.assert_allclose(q.T @ q, np.eye(min(shape)), atol=50 * max(shape) * EPS)


def test_tsqr_tree_gives_r_of_stacked_matrix():
    A = rng.standard_normal((90, 6))
    leaves = [K.tsqr_leaf(A[i:i + 30], True) for i in range(0, 90, 30)]
    node = K.tsqr_merge(K.tsqr_merge(leaves[0], leaves[1]), leaves[2])
    # RᵀR = AᵀA and s = Qᵀ1 whatever the tree: check through the Gram matrix.
    np.testing.assert_allclose(node["r"].T @ node["r"], A.T @ A, atol=1e3 * EPS * np.abs(A.T @ A).max())
    # s is Qᵀ1 for the tree's implicit Q: ‖s‖² = ‖proj of 1 on range(A)‖², basis-free.
    q, _ = np.linalg.qr(A)
    assert np.linalg.norm(node["s"]) == pytest.approx(np.linalg.norm(q.T @ np.ones(90)), rel=1e-12)


def test_tsqr_leaf_short_panel():
    A = rng.standard_normal((3, 8))  # fewer rows than columns: R is 3×8
    leaf = K.tsqr_leaf(A, False)
    assert leaf["r"].shape == (3, 8)


def test_power_leaf_centres_implicitly():
    A = rng.standard_normal((40, 9)) + 3.0
    G = rng.standard_normal((9, 4))
    mu = rng.standard_normal(9)
    C = A - mu
    np.testing.assert_allclose(K.power_leaf(A, G, mu), C.T @ (C @ G), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(K.power_leaf(A, G, None), A.T @ (A @ G), rtol=1e-12)


def test_centre_correction_factors_the_centred_matrix():
    A = rng.standard_normal((60, 5)) + 10.0
    r = K.qr_r(A)
    q = K.qr_apply(A, np.eye(5))
    mu = A.mean(axis=0)
    rc, to_basis = centre_correction(r, q.sum(axis=0), mu, 60)
    C = A - mu
    np.testing.assert_allclose(rc.T @ rc, C.T @ C, atol=1e3 * EPS * np.abs(A.T @ A).max())
    W, c = to_basis(np.eye(rc.shape[0]))
    Qc = q @ W + c
    # [Q, r̂] Q_M is orthonormal and reproduces C with R_c.
    np.testing.assert_allclose(Qc.T @ Qc, np.eye(5), atol=1e-12)
    np.testing.assert_allclose(Qc @ rc, C, atol=1e-10)


def test_svd_flip_rows_makes_largest_entry_positive():
    vt = np.array([[0.1, -0.9, 0.2], [0.5, 0.5, -0.5]])
    u = np.ones((2, 2))
    u2, vt2 = K.svd_flip_rows(u, vt)
    assert vt2[0, 1] > 0 and vt2[1, 0] > 0  # tie in row 2: lowest column wins
    assert np.allclose(u2[:, 0], -1) and np.allclose(u2[:, 1], 1)


def test_block_argmax_global_index():
    t = np.array([[1.0, -5.0], [-3.0, 2.0]])
    absval, val, idx = K.block_argmax(t, 10)
    np.testing.assert_array_equal(absval, [3.0, 5.0])
    np.testing.assert_array_equal(val, [-3.0, -5.0])
    np.testing.assert_array_equal(idx, [11, 10])


@pytest.mark.parametrize("rows", [1, 5, 30])
def test_tall_block_reproduces_q(rows):
    A = rng.standard_normal((rows, 5))
    w = rng.standard_normal((min(rows, 5), 2))
    np.testing.assert_array_equal(K.tall_block(A, w, None), K.qr_apply(A, w))
