"""Regularised least squares for an ill-posed deblurring problem, from the service's SVD.

A is a discretised Gaussian smoothing kernel (a 1-D blur; its singular values
decay like exp(-c i²), so κ(A) is astronomically large), x is a smooth signal,
and b = A x + noise. Solving A x = b naively amplifies the noise by 1/σ_min
and the "solution" is garbage. With the SVD computed once by the service:

- TSVD keeps the r largest components (r chosen by generalized
  cross-validation over r);
- Tikhonov damps component i by φ_i = σ_i²/(σ_i² + α²), with α chosen by GCV
  (Golub, Heath & Wahba 1979);

and both recover x to a few percent. Relative errors are printed.

Run a service first (``svdserve serve`` with ``SVDSERVE_DATA_ROOTS`` including
``--data-dir``), then::

    python examples/least_squares.py --n 200 --noise 1e-3
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def blur_problem(n: int, width: float, noise: float, seed: int = 0):
    """Gaussian blur matrix A (n×n, on [0, 1]), smooth x_true, noisy b = A x + e."""
    t = (np.arange(n) + 0.5) / n
    A = np.exp(-((t[:, None] - t[None, :]) ** 2) / (2 * width**2)) / (n * width * np.sqrt(2 * np.pi))
    x_true = np.exp(-((t - 0.3) ** 2) / 0.01) + 0.6 * np.exp(-((t - 0.7) ** 2) / 0.003)
    rng = np.random.default_rng(seed)
    b_clean = A @ x_true
    e = noise * np.linalg.norm(b_clean) / np.sqrt(n) * rng.standard_normal(n)
    return A, x_true, b_clean + e


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="service URL (default: $SVDSERVE_URL)")
    parser.add_argument("--token", default=None, help="bearer token (default: $SVDSERVE_TOKEN)")
    parser.add_argument("--data-dir", default="data",
                        help="a directory inside the service's data root (default: ./data)")
    parser.add_argument("--n", type=int, default=200, help="grid points")
    parser.add_argument("--width", type=float, default=0.03, help="blur width")
    parser.add_argument("--noise", type=float, default=1e-3, help="relative noise level")
    args = parser.parse_args(argv)

    from svdserve.client import Client

    A, x_true, b = blur_problem(args.n, args.width, args.noise)
    os.makedirs(args.data_dir, exist_ok=True)
    with Client(args.url, args.token) as client:
        url = client.upload(A, os.path.join(args.data_dir, "blur.zarr"), chunks=64,
                            overwrite=True)
        res = client.submit(url, args.n, method="exact").result(progress=sys.stderr.isatty())
    s = res.S
    print(f"A: {args.n}x{args.n} Gaussian blur, σ_1 = {s[0]:.3g}, σ_n = {s[-1]:.3g}, "
          f"σ_1/σ_n = {s[0] / max(s[-1], np.finfo(float).tiny):.3g}")

    def rel(x):
        return float(np.linalg.norm(x - x_true) / np.linalg.norm(x_true))

    naive = res.lstsq(b, rcond=0.0)  # every component: 1/σ_i amplifies the noise
    # TSVD: the rank minimising the GCV function G(r) = ‖b − A x_r‖² / (n − r)²
    tsvd = res.lstsq(b, rank="gcv")
    tik = res.lstsq(b, alpha="gcv")

    print(f"{'method':<26} {'rel. error':>10} {'‖x‖':>10} {'‖Ax − b‖':>10} {'eff. rank':>9}")
    for name, out in [("naive (all components)", naive), (f"TSVD, GCV rank {tsvd.rank}", tsvd),
                      (f"Tikhonov, GCV α={tik.alpha:.2e}", tik)]:
        print(f"{name:<26} {rel(out.x):>10.3g} {out.solution_norm:>10.3g} "
              f"{out.residual_norm:>10.3g} {out.effective_rank:>9.1f}")
    ok = rel(naive.x) > 1.0 and rel(tsvd.x) < 0.2 and rel(tik.x) < 0.2
    if not ok:
        print("unexpected: regularisation did not beat the naive solution", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
