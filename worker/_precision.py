"""Mixed precision for float32 input: power passes in float32, the rest in float64.

The power passes of the randomized method (:mod:`._rsvd`) only have to find a
subspace; the last pass (range, projection, Rayleigh–Ritz) and every number the
report states are computed in float64 from the float32 panels (exactly widened).
On float32 input, ``precision="auto"`` therefore runs the products
A_iᵀ(A_i G) of the power passes in float32 (:func:`power_leaf32`): half the
memory traffic of the float64 kernel, and the panel cache holds the panels as
stored (float32, half the footprint of float64).

What it costs in σ accuracy
---------------------------
A float32 power step returns Ẑ = AᵀAG + F with ‖F‖ ≲ c·u₃₂·σ₁‖A‖_F ≤ c·u₃₂‖A‖²_F
(u₃₂ = 2⁻²⁴ the unit roundoff, c a modest constant: rounding errors of a GEMM
with blocked sums). Relative to the signal σ_j² that the step carries along
the right singular vector v_j, the perturbation of the basis G in direction j
is η_j ≈ c·u₃₂/ρ_j with ρ_j = σ_j²/‖A‖²_F (the share of the energy in
component j). The last pass is exact (float64): Y = AG multiplies the error
components, which lie in directions i > l, by σ_i instead of σ_j, so the angle
between span(Y) and u_j is about η_j·σ_{l+1}/σ_j, and the Rayleigh–Ritz error
of σ_j is quadratic in that angle:

    |σ̂_j − σ_j| / σ_j  ≲  min(1, c·u₃₂/ρ_j)² · (σ_{l+1}/σ_j)²

on top of the float64 run's own (randomized) error. So:

- ρ_k ≫ u₃₂ (σ_k/‖A‖_F ≫ √u₃₂ ≈ 2.4e-4): the float32 passes lose nothing that
  shows; with ρ_k ≥ :data:`RHO_MIN` = 64·u₃₂ the added error is at most
  (1/64)²·(σ_{l+1}/σ_k)², and in practice about n times less (rounding errors
  spread over all n directions, of which direction j gets 1/n).
- ρ_k ≲ u₃₂ (σ_k/σ₁ below ~√u₃₂): direction k is below the float32 rounding
  floor of the power step; the power iterations no longer sharpen it and σ_k
  has only the accuracy of a run without power iterations, (σ_{l+1}/σ_k)².

When to fall back
-----------------
Pass 1 runs in float32 (its statistics in float64: ‖A‖²_F, the column means,
max|A|). Its product Z₁ = AᵀAG₀ and the start G₀ give, at no extra pass, the
Ritz values λ_j of AᵀA on span(Σ Vᵀ G₀) (the generalised eigenvalues of
Z₁ᵀZ₁ x = λ G₀ᵀZ₁ x). By Cauchy interlacing λ_k ≤ σ_k², so the statistic

    ρ̂_k = λ_k / ‖A‖²_F  ≤  ρ_k

never overstates how safe the spectrum is. The remaining power passes run in
float64 when ρ̂_k < :data:`RHO_MIN`, or when max|A| (pass 1) lies outside
[2⁻⁶⁰, 2⁶⁰], where a float32 product could overflow or lose digits to
subnormals. Pass 1 itself is only a start for the next step, which a float64
step corrects (as from any random start). ``report["precision"]`` says which
ran and why.

Centred runs (PCA) shift every panel by a float64 pivot row, so they, and
float64 input, always run in float64: their factors are bit-identical to
``precision="float64"``.
"""

from __future__ import annotations

import math

import numpy as np

from ._errors import InvalidInputError
from ._kernels import power_leaf, times_pow2
from ._sumsq import abs_max

__all__ = ["PRECISIONS", "check_precision", "power_leaf32", "U32", "RHO_MIN", "AMAX_RANGE",
           "MixedPrecision"]

#: Values of ``precision``.
PRECISIONS = ("auto", "float64")

#: Unit roundoff of float32, 2⁻²⁴.
U32 = 2.0**-24

#: Smallest pass-1 estimate of σ_k²/‖A‖²_F for float32 power passes (64·u₃₂ ≈ 3.8e-6).
RHO_MIN = 64 * U32

#: max|A| outside this range: float32 products may overflow or underflow.
AMAX_RANGE = (2.0**-60, 2.0**60)


def check_precision(value):
    """``value`` if it is one of :data:`PRECISIONS`, else :class:`InvalidInputError`."""
    if value not in PRECISIONS:
        raise InvalidInputError(
            f"precision must be one of {', '.join(map(repr, PRECISIONS))}; got {value!r}. "
            "'auto' runs the power passes of a randomized job on float32 input in float32 "
            "(float64 where the spectrum needs it); 'float64' runs everything in float64.",
            field="precision")
    return value


def power_leaf32(a, g, mu=None, mu_g=None):
    """:func:`~._kernels.power_leaf` in float32 on a float32 panel: A_iᵀ(A_i G), as z·2**e.

    Parameters
    ----------
    a : ndarray of shape (rows, n), float32 (anything else runs the float64 kernel)
    g : ndarray of shape (n, l)
    mu, mu_g : None
        Uncentred only (a centred run never uses this kernel).

    Returns
    -------
    dict with ``z`` (ndarray of shape (n, l), float32, summed over panels in float64
    by the caller) and ``e`` (int). A panel
    whose float32 product is not finite (entries near float32's range) is
    recomputed in float64, so the result depends only on the panel's values.
    """
    if a.dtype != np.float32 or mu is not None:
        return power_leaf(np.asarray(a, dtype=np.float64), g, mu, mu_g)
    y = a @ g.astype(np.float32)
    amax = abs_max(y)
    e = math.frexp(amax)[1] if amax > 0 and math.isfinite(amax) else 0
    y = times_pow2(y, -e, out=y)
    z = a.T @ y
    if not (math.isfinite(amax) and np.isfinite(z).all()):
        return power_leaf(np.asarray(a, dtype=np.float64), g, None)
    return {"z": z, "e": e}  # float32: half the bytes to move; summed in float64


power_leaf32.takes_float32 = True


def ritz_energy_share(z, g0, k, total):
    """ρ̂_k = λ_k/‖A‖²_F from pass 1 (see the module docstring); 0.0 when undefined.

    Parameters
    ----------
    z : ndarray of shape (n, l)
        The pass-1 product AᵀAG₀ (any power-of-two scale).
    g0 : ndarray of shape (n, l)
        The orthonormal start G₀.
    k : int
    total : float
        ‖A‖²_F on the same scale as ``z``.
    """
    if total <= 0 or not math.isfinite(total) or k > z.shape[1]:
        return 0.0
    # W = G₀ᵀZ₁ = YᵀY with Y = AG₀ (PSD). Restricted to the directions where W is
    # numerically positive (a matrix of rank < l leaves the rest 0 up to rounding), the
    # problem is an ordinary symmetric one: X = Q_r Λ_r^(-1/2), λ = eig(XᵀZ₁ᵀZ₁X). Ritz
    # values on a smaller subspace still interlace, so dropping directions keeps λ_k ≤ σ_k².
    w = g0.T @ z
    lam_w, q = np.linalg.eigh((w + w.T) / 2)
    if not np.all(np.isfinite(lam_w)) or lam_w[-1] <= 0:
        return 0.0
    keep = lam_w > 64 * U32 * lam_w[-1]
    if keep.sum() < k:
        return 0.0
    x = q[:, keep] / np.sqrt(lam_w[keep])
    zx = z @ x
    lam = np.sort(np.linalg.eigvalsh(zx.T @ zx))[::-1]
    return max(float(lam[k - 1]), 0.0) / total


class MixedPrecision:
    """Which kernel each power pass of one randomized run uses, and why.

    Parameters
    ----------
    precision : {"auto", "float64"}
    float32_input : bool
        The stored matrix is float32 (its panels reach the kernels as float32).
    center : bool
        A centred run (always float64, see the module docstring).
    k : int
    scaled : bool, default=False
        A weighted or standardised run (:mod:`._scaling`; always float64: its
        panels are scaled in float64 before the kernels see them).
    """

    def __init__(self, precision, float32_input, center, k, scaled=False):
        self.k = k
        self.requested = precision
        self.power = "float64"
        self.reason = None
        if precision == "float64":
            self.reason = "precision='float64' was requested"
        elif not float32_input:
            self.reason = "the input is not float32"
        elif center:
            self.reason = "a centred run shifts the panels in float64"
        elif scaled:
            self.reason = "a weighted or standardised run scales the panels in float64"
        else:
            self.power = "float32"
        self.passes32 = 0

    @property
    def leaf(self):
        """The kernel of the next power pass."""
        return power_leaf32 if self.power == "float32" else power_leaf

    def after_first(self, z, e_z, g0, stats):
        """Decide, from pass 1, whether the later power passes stay in float32.

        ``z·2**e_z`` is the pass-1 product AᵀAG₀, ``stats`` the merged pass-1
        statistics (``ss``: ‖A‖²_F as s·4**e, ``amax``).
        """
        if self.power != "float32":
            return
        self.passes32 += 1
        e, s = stats["ss"]
        amax = abs(float(stats["amax"]))
        lo, hi = AMAX_RANGE
        if not lo <= amax <= hi:
            self.power = "float64"
            self.reason = (f"max|A| = {amax:.3g} is outside [{lo:.3g}, {hi:.3g}], where "
                           "float32 products may overflow or underflow")
            return
        # ‖A‖²_F = s·4**e on z's scale (λ scales as z does): s·2**(2e − e_z).
        self.rho = ritz_energy_share(z, g0, self.k, math.ldexp(s, 2 * e - e_z) if s else 0.0)
        if self.rho < RHO_MIN:
            self.power = "float64"
            self.reason = (f"the pass-1 estimate of sigma_k^2/||A||_F^2 (a lower bound) is "
                           f"{self.rho:.3g} (k = {self.k}), below {RHO_MIN:.3g} = 64 u32: "
                           "the later power passes ran in float64, since float32 power "
                           "passes could lose component k (sigma_k/sigma_1 below about "
                           "sqrt(u32))")

    def after_last(self, sigma_k, total_ss):
        """Check, once the float64 Rayleigh–Ritz step is done, what pass 1 estimated.

        The float64 Ritz value σ̂_k ≤ σ_k gives ρ̂ = σ̂_k²/‖A‖²_F ≤ ρ_k (``rho_final``).
        When float32 passes ran and it is below :data:`RHO_MIN`, the reason says that
        σ_k may carry the float32 cost of the module docstring (rerun with float64).
        """
        e, s = total_ss
        if s <= 0:
            return
        self.rho_final = float(math.ldexp(float(sigma_k), -e) ** 2 / s)
        if self.passes32 > 1 and self.power == "float32" and self.rho_final < RHO_MIN:
            self.reason = (f"the float64 Ritz value gives sigma_k^2/||A||_F^2 = "
                           f"{self.rho_final:.3g}, below {RHO_MIN:.3g}: sigma_k may carry "
                           "the cost of the float32 power passes; precision='float64' "
                           "avoids it")

    def after_pass(self):
        if self.power == "float32":
            self.passes32 += 1

    def to_json(self, n_iter):
        """``report["precision"]``."""
        out = {"requested": self.requested,
               "power": "float32" if self.passes32 and self.power == "float32"
               else "float64" if not self.passes32 else "mixed",
               "float32_power_passes": self.passes32, "power_passes": n_iter,
               "range_and_projection": "float64", "reason": self.reason}
        if getattr(self, "rho", None) is not None:
            out["rho_estimate"] = self.rho
            out["rho_min"] = RHO_MIN
        if getattr(self, "rho_final", None) is not None:
            out["rho_final"] = self.rho_final
        return out
