"""Pure NumPy kernels, tested without a cluster."""

import math
import pickle

import numpy as np
import pytest

from svdserve.worker import _kernels as K
from svdserve.worker._engine import LocalEngine
from svdserve.worker._tsqr import tsqr_down, tsqr_up

from tests._check import EPS, centered_exactly

rng = np.random.default_rng(42)


def _tree(leaves):
    """Reduce leaves like a run does, in this process (LocalEngine): (root, nodes)."""
    return tsqr_up(LocalEngine(), leaves)


def _down(nodes, n_leaves, w, c):
    eng = LocalEngine()
    return eng.gather(tsqr_down(eng, nodes, n_leaves, w, c))


def test_merge_stats_equals_whole_matrix():
    A = rng.standard_normal((101, 7)) + 1e6  # large mean: the naive Σa² − mμ² would lose ~12 digits
    parts = [A[:13], A[13:60], A[60:]]
    merged = K.panel_stats(parts[0], True)
    for p in parts[1:]:
        merged = K.merge_stats(merged, K.panel_stats(p, True))
    C = A - A.mean(axis=0)
    np.testing.assert_allclose(merged["mean"], A.mean(axis=0), rtol=10 * EPS)
    # Chan et al.'s update keeps the centred sum of squares to ~ε·(offset/spread)
    # relative to itself without a pivot shift: 1e6·ε ≈ 2e-10, so 1e-9.
    assert K.sumsq_norm(merged["ss"]) ** 2 == pytest.approx((C**2).sum(), rel=1e-9)
    assert merged["count"] == 101 and merged["finite"]


def test_panel_stats_flags_non_finite():
    for bad in (np.inf, -np.inf, np.nan):
        A = np.ones((4, 3))
        A[2, 1] = bad
        assert not K.panel_stats(A)["finite"]


@pytest.mark.parametrize("scale", [1e-300, 1e-170, 1.0, 1e170, 1e300])
def test_sumsq_never_over_or_underflows(scale):
    x = rng.standard_normal((300, 7))
    ref = np.linalg.norm(x)  # of the unscaled matrix: finite and exact to ~ε
    pair = K.sumsq(x * scale)
    # Scaling by powers of two is exact, so only the sum's own rounding
    # (~√N·ε relative, N = 2100) remains; 1e-13 is ample.
    assert K.sumsq_norm(pair) == pytest.approx(ref * scale, rel=1e-13)
    halves = K.add_sumsq(K.sumsq(x[:100] * scale), K.sumsq(x[100:] * scale))
    assert K.sumsq_norm(halves) == pytest.approx(ref * scale, rel=1e-13)


def test_tail_norms_accurate_for_tiny_tails():
    s = np.array([1.0] * 10 + [1e-9] * 50 + [1e-200] * 3)
    t = K.tail_norms(s)
    assert t[0] == pytest.approx(math.sqrt(10 + 50e-18), rel=1e-15)
    # A tail of 50 values 1e-9 next to 1.0s: exact to rounding, not √ε·‖s‖ ≈ 1e-8.
    assert t[10] == pytest.approx(math.sqrt(50) * 1e-9, rel=1e-14)
    assert t[60] == pytest.approx(math.sqrt(3) * 1e-200, rel=1e-14)
    assert t[-1] == 0.0


def test_prepare_panel_shift_and_row_centering():
    A = 1e8 + rng.standard_normal((6, 5))
    p = A[0].copy()
    out, means = K.prepare_panel(A, shift=p)
    assert means is None and out is not A  # not owned: the input is left alone
    np.testing.assert_array_equal(out, A - p)
    B = A.copy()
    out, means = K.prepare_panel(B, center_rows=True, owned=True)
    assert out is B  # owned: centred in place
    # Each row is shifted by its first entry (exact by Sterbenz), so the means
    # are those of numbers of spread 1: rows centred to ~ε, not to ε·1e8.
    np.testing.assert_allclose(out, centered_exactly(A.T).T, rtol=0, atol=10 * EPS)
    np.testing.assert_allclose(means, A.mean(axis=1), rtol=10 * EPS)


@pytest.mark.parametrize("shape", [(50, 8), (3, 8), (8, 8), (1, 1)])
def test_panel_qr_is_reproducible_and_consistent(shape):
    A = rng.standard_normal(shape)
    r = K.qr_r(A)
    # Bit-for-bit the same factorisation on every call: the second TSQR pass relies on it.
    assert np.array_equal(r, K.qr_r(A.copy()))
    assert np.array_equal(r, K.tsqr_leaf(A, False)["r"])
    q = K.qr_apply(A, np.eye(min(shape)))
    np.testing.assert_allclose(q @ r, A, atol=50 * max(shape) * EPS * np.abs(A).max())
    np.testing.assert_allclose(q.T @ q, np.eye(min(shape)), atol=50 * max(shape) * EPS)


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("cuts", [(30, 60), (1, 2, 50, 89), (45,)], ids=["even", "ragged", "two"])
def test_tsqr_tree_factors_the_stacked_matrix(center, cuts):
    A = rng.standard_normal((90, 6)) * 3 + 5.0
    edges = [0, *cuts, 90]
    panels = [A[a:b] for a, b in zip(edges, edges[1:])]
    root, nodes = _tree([K.tsqr_leaf(p, center) for p in panels])
    C = A - A.mean(axis=0) if center else A
    tol = 1e3 * EPS * np.abs(A.T @ A).max()
    # RᵀR = CᵀC whatever the tree.
    np.testing.assert_allclose(root["r"].T @ root["r"], C.T @ C, atol=tol)
    if center:
        np.testing.assert_allclose(root["mean"], A.mean(axis=0), rtol=1e-14)
    # The downward sweep builds an orthonormal Q with Q R = C, Q ⊥ 1 when centred.
    width = root["r"].shape[0]
    wcs = _down(nodes, len(panels), np.eye(width), np.zeros(width) if center else None)
    Q = np.vstack([K.tall_block(p, wc, center) for p, wc in zip(panels, wcs)])
    np.testing.assert_allclose(Q.T @ Q, np.eye(width), atol=100 * EPS)
    np.testing.assert_allclose(Q @ root["r"], C, atol=100 * EPS * np.abs(A).max())
    if center:
        assert np.abs(Q.sum(axis=0)).max() <= 100 * EPS * math.sqrt(90)


def test_centered_tree_with_huge_offset_is_exact_to_the_spread():
    # Offset 1e10, spread 1e-3..1: the shift by a pivot row plus the centred
    # tree give R of the centred matrix to ε relative to the *spread*.
    X = 1e10 + rng.standard_normal((400, 5)) * np.logspace(-3, 0, 5)
    C = centered_exactly(X)
    shifted = X - X[0]
    root, _ = _tree([K.tsqr_leaf(shifted[i:i + 50], True) for i in range(0, 400, 50)])
    s = np.linalg.svd(root["r"], compute_uv=False)
    ref = np.linalg.svd(C, compute_uv=False)
    # Weyl: |δσ| ≤ ‖E‖₂ with E the backward error of Householder QR on the
    # shifted data, c·√n·ε·σ₁; 10·√n·ε·σ₁ as in the bar.
    np.testing.assert_array_less(np.abs(s - ref), 10 * math.sqrt(5) * EPS * ref[0])


def test_tsqr_leaf_short_panel():
    A = rng.standard_normal((3, 8))  # fewer rows than columns: R is 3×8
    assert K.tsqr_leaf(A, False)["r"].shape == (3, 8)
    assert K.tsqr_leaf(A, True)["r"].shape == (2, 8)  # one row went to the mean


def test_power_leaf_centers_implicitly_and_scales():
    A = rng.standard_normal((40, 9)) + 3.0
    G = rng.standard_normal((9, 4))
    mu = rng.standard_normal(9)
    C = A - mu

    def value(out):
        return np.ldexp(out["z"], out["e"])

    np.testing.assert_allclose(value(K.power_leaf(A, G, mu, mu @ G)), C.T @ (C @ G),
                               rtol=1e-12, atol=1e-10)
    # Without μᵀG the panel's own mean is meant: the rows of AG are centred.
    D = A - A.mean(axis=0)
    np.testing.assert_allclose(value(K.power_leaf(A, G, A.mean(axis=0))), D.T @ (D @ G),
                               rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(value(K.power_leaf(A, G, None)), A.T @ (A @ G), rtol=1e-12)
    # At 1e±200 the product AᵀAG is out of range, but z·2^e carries it.
    for scale in (1e-200, 1e200):
        out = K.power_leaf(A * scale, G, None)
        assert np.all(np.isfinite(out["z"])) and np.abs(out["z"]).max() > 0
        ref = A.T @ (A @ G)
        got = out["z"] / np.abs(out["z"]).max()
        np.testing.assert_allclose(got, ref / np.abs(ref).max(), rtol=1e-12, atol=1e-14)


def test_power_leaf_blocks_of_very_different_scales():
    """The blocked power step (512-row blocks, each scaled by its own power of two) on
    a panel whose blocks range from 1e-150 to 1e150: every block's share survives the
    rescaling in the exact amount, and the mean-shifted variant matches too."""
    blocks = [rng.standard_normal((512, 7)) * s for s in (1e-150, 1.0, 1e150, 3.0)]
    A = np.vstack(blocks + [rng.standard_normal((100, 7))])  # a short last block
    G = rng.standard_normal((7, 3))
    mu = rng.standard_normal(7)
    out = K.power_leaf(A, G, None)
    # The exact sum, in scaled form: the 1e150 block dominates; the others are
    # below its rounding (1e150² · ε ≫ 1) and must neither overflow nor be NaN.
    big = blocks[2] / 1e150
    want = big.T @ (big @ G)  # × 1e300
    got = np.ldexp(out["z"], out["e"]) / 1e300
    # Each entry is a sum of 512 products: 512·ε·max relative to the largest entry.
    np.testing.assert_allclose(got, want, rtol=0, atol=512 * 2.3e-16 * np.abs(want).max())
    # Moderate scales: all blocks count, with the centring term.
    A2 = np.vstack([rng.standard_normal((512, 7)) * s for s in (1e-3, 1.0, 1e3)])
    C = A2 - mu
    z = K.power_leaf(A2, G, mu, mu @ G)
    # 1536 rows of terms up to 1e6·|G|: 1536·ε relative to the largest entry.
    ref = C.T @ (C @ G)
    np.testing.assert_allclose(np.ldexp(z["z"], z["e"]), ref, rtol=0,
                               atol=1536 * 2.3e-16 * np.abs(ref).max())


@pytest.mark.parametrize("center", [False, True])
def test_sketch_kernels_give_b_and_the_exact_residual(center):
    A = rng.standard_normal((120, 10)) + (7.0 if center else 0.0)
    G = np.linalg.qr(rng.standard_normal((10, 4)))[0]
    panels = [A[:50], A[50:90], A[90:]]
    mu = A.mean(axis=0) if center else None
    leaves = [K.range_leaf(p, G, center) for p in panels]
    root, nodes = _tree([leaf["tree"] for leaf in leaves])
    width = root["r"].shape[0]
    wcs = _down(nodes, 3, np.eye(width), np.zeros(width) if center else None)
    shares = [K.range_project(leaf, wc) for leaf, wc in zip(leaves, wcs)]
    B = sum(s[0] for s in shares)
    if center:
        B = B - np.outer(sum(s[1] for s in shares), mu)
    P = A - mu if center else A
    Q = np.vstack([K.range_tall(leaf, wc, np.eye(width)) for leaf, wc in zip(leaves, wcs)])
    np.testing.assert_allclose(Q.T @ Q, np.eye(width), atol=100 * EPS)
    np.testing.assert_allclose(B, Q.T @ P, atol=1e3 * EPS * np.abs(A).max())
    resid = K.add_sumsq(K.add_sumsq(*[K.range_residual(leaf, wc, B, mu)
                                      for leaf, wc in zip(leaves[:2], wcs[:2])]),
                        K.range_residual(leaves[2], wcs[2], B, mu))
    # ‖P − QB‖_F formed directly, no cancellation: agreement to ~ε·‖P‖.
    assert K.sumsq_norm(resid) == pytest.approx(np.linalg.norm(P - Q @ B), abs=1e3 * EPS * np.linalg.norm(P))


@pytest.mark.parametrize("center", [False, True])
def test_range_leaf_local_qr_at_kappa_1e15(center):
    # Y = AG = U diag(1 … 1e-15) W: κ(Y) ≈ 1e15, so YᵀY is singular in float64
    # (a Gram/Cholesky QR breaks down) while Householder QR keeps Q orthonormal
    # to O(l·ε) whatever κ (Higham, Thm 19.4; observed ≤ 9ε here).
    gen = np.random.default_rng(15)  # own stream: the module's rng draws stay as they were
    m, n, l = 3000, 40, 12
    U = np.linalg.qr(gen.standard_normal((m, n)))[0]
    V = np.linalg.qr(gen.standard_normal((n, n)))[0]
    A = (U * np.logspace(0, -15, n)) @ V.T
    G = V[:, np.linspace(0, n - 1, l).astype(int)] @ np.linalg.qr(gen.standard_normal((l, l)))[0]
    leaf = K.range_leaf(A, G, center)
    q = leaf["q"]
    Y = np.hstack([np.ones((m, 1)), A @ G]) if center else A @ G
    assert q.shape == (m, l + center)
    np.testing.assert_allclose(q.T @ q, np.eye(l + center), atol=10 * (l + 1) * EPS)
    # Backward stable: Q spans Y to ε·‖Y‖ (the same bar as the other sketch tests).
    np.testing.assert_allclose(q @ (q.T @ Y), Y, atol=1e3 * EPS * np.abs(Y).max())
    np.testing.assert_array_equal(leaf["c"], q.T @ A)
    # The residual formed as a difference agrees with numpy's to ε·‖A‖.
    resid = np.linalg.norm(A - q @ (q.T @ A))
    assert K.sumsq_norm(leaf["local"]) == pytest.approx(resid, abs=1e3 * EPS * np.linalg.norm(A))


def _at_offset(x, offset):
    """A C-ordered copy of ``x`` whose data start ``offset`` bytes past a 64-byte boundary."""
    buf = np.empty(x.nbytes + 64 + offset, dtype=np.uint8)
    start = -buf.ctypes.data % 64 + offset
    out = buf[start:start + x.nbytes].view(np.float64).reshape(x.shape)
    out[...] = x
    return out


@pytest.mark.parametrize("offset", [0, 8, 16, 24, 32, 40, 48, 56])
def test_panel_kernels_do_not_depend_on_alignment(offset):
    # Same panel values at another address: the same bits out (pickled, so
    # every array, pair and float of the results is compared). 600 rows span
    # several _BLOCK-row blocks of the blocked loops.
    gen = np.random.default_rng(16)
    A = gen.standard_normal((600, 37)) + 2.0
    G, P = gen.standard_normal((37, 6)), gen.standard_normal((37, 3))

    def outputs(a):
        return pickle.dumps([
            K.panel_stats(a), K.panel_stats(a, True), K.power_leaf(a, G, None),
            K.power_leaf(a, G, a.mean(axis=0)), K.range_leaf(a, G, False, P),
            K.range_leaf(a, G, True, P), K.tsqr_leaf(a, False), K.tsqr_leaf(a, True),
            K.qr_apply(a, np.eye(37, 2)),
        ])

    assert outputs(_at_offset(A, offset)) == outputs(A)


def test_svd_flip_rows_makes_largest_entry_positive():
    vt = np.array([[0.1, -0.9, 0.2], [0.5, 0.5, -0.5]])
    u = np.ones((2, 2))
    u2, vt2 = K.svd_flip_rows(u, vt)
    assert vt2[0, 1] > 0 and vt2[1, 0] > 0  # tie in row 2: lowest column wins
    assert np.allclose(u2[:, 0], -1) and np.allclose(u2[:, 1], 1)


def test_block_argmax_per_column():
    t = np.array([[1.0, -5.0], [-3.0, 2.0]])
    absval, val = K.block_argmax(t)
    np.testing.assert_array_equal(absval, [3.0, 5.0])
    np.testing.assert_array_equal(val, [-3.0, -5.0])
    absval, val = K.block_argmax(np.zeros((0, 2)))  # an empty block never wins
    np.testing.assert_array_equal(absval, [-1.0, -1.0])


@pytest.mark.parametrize("rows", [1, 5, 30])
def test_tall_block_reproduces_q(rows):
    A = rng.standard_normal((rows, 5))
    w = rng.standard_normal((min(rows, 5), 2))
    np.testing.assert_array_equal(K.tall_block(A, (w, None), False), K.qr_apply(A, w))


def test_column_sumsq_cannot_overflow():
    """Per-column Σ(a − μ)² of entries near 1e300 (whose squares overflow) merged over
    panels, and the standard deviations from it: relative 1e-14 (a few ε per operation)."""
    from svdserve.worker._scaling import column_sumsq, merge_column_sumsq, std_scale
    from svdserve.worker._sumsq import panel_stats

    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 3)) * np.array([1e300, 1.0, 1e-300]) + np.array([0, 5, 0])
    parts, stats = [], []
    for block in (a[:20], a[20:]):
        st = panel_stats(block, center=True)
        stats.append(st)
        parts.append(column_sumsq(block, st["mean"]))
    e, ss = merge_column_sumsq(stats, parts)
    std = np.ldexp(np.sqrt(ss / 50), e)
    ref = np.array([np.std(a[:, 0] / 1e300) * 1e300, np.std(a[:, 1]),
                    np.std(a[:, 2] * 1e300) / 1e300])
    np.testing.assert_allclose(std, ref, rtol=1e-14)
    # below float32's ε a standard deviation is floored there, as xeofs does
    floor = np.finfo(np.float32).eps
    np.testing.assert_allclose(std_scale((e, ss), 50), 1 / np.maximum(ref, floor), rtol=1e-14)
