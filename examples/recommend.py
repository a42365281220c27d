"""Top-10 recommendations from a truncated SVD of a sparse users x items ratings matrix.

A ratings matrix is generated with a known low-rank taste structure: user
and item taste vectors of dimension 8 plus an item popularity; each user
rates 1 % of the items, drawn with a preference for the items they like
(Gumbel top-k on taste/temperature), with a 1-5 rating from the same score.
One rating per user is held out. The observed ratings are stored sparse,
as AnnData's CSR encoding in Zarr (``Client.upload`` of a ``scipy.sparse``
matrix: never densified), and the service computes their truncated SVD
(``method="randomized"``, uncentred: missing ratings are zeros). Each user's
unrated items are scored by their row of U_k S_k V_kᵀ (PureSVD, Cremonesi,
Koren & Turrin 2010) and the 10 best recommended; the hit rate at 10 is how
often the held-out item is among them, against recommending the 10 most
rated items (the popularity baseline).

Run a service first (``svdserve serve`` with ``SVDSERVE_DATA_ROOTS`` including
``--data-dir``), then::

    python examples/recommend.py                   # 3,000 users x 1,000 items
    python examples/recommend.py --users 200000    # larger
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

TASTE_RANK = 8  # dimension of the generated taste vectors
TEMPERATURE = 0.5  # how strongly users pick the items they like


def ratings(users: int, items: int, *, seed: int, block: int = 4096):
    """The generated ratings as COO triplets, users generated ``block`` at a time.

    Returns
    -------
    rows, cols : ndarray of shape (users * per_user,)
        User and item of each rating; user ``u``'s ratings are
        ``[u * per_user, (u + 1) * per_user)``.
    values : ndarray of shape (users * per_user,)
        Ratings 1 to 5.
    """
    rng = np.random.default_rng(seed)
    items_taste = rng.standard_normal((items, TASTE_RANK))
    popularity = rng.standard_normal(items)
    per_user = max(2, items // 100)  # 1 % of the items
    rows, cols, values = [], [], []
    for start in range(0, users, block):
        stop = min(users, start + block)
        taste = rng.standard_normal((stop - start, TASTE_RANK))
        score = taste @ items_taste.T / np.sqrt(TASTE_RANK) + popularity
        pick = score / TEMPERATURE + rng.gumbel(size=score.shape)  # Gumbel top-k sampling
        top = np.argpartition(-pick, per_user, axis=1)[:, :per_user]
        users_here = np.repeat(np.arange(start, stop), per_user)
        rows.append(users_here)
        cols.append(top.ravel())
        values.append(np.clip(np.rint(3 + score[users_here - start, top.ravel()]), 1, 5))
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(values), per_user


def split(users: int, items: int, seed: int):
    """``(train CSR matrix, held-out item of each user)``: one rating per user held out."""
    import scipy.sparse as sp

    rows, cols, values, per_user = ratings(users, items, seed=seed)
    held = np.arange(users) * per_user + np.random.default_rng(seed + 1).integers(
        0, per_user, users)
    keep = np.ones(rows.size, dtype=bool)
    keep[held] = False
    train = sp.csr_matrix((values[keep], (rows[keep], cols[keep])), shape=(users, items))
    return train, cols[held]


def hits_at_10(score_rows, train, held: np.ndarray, block: int = 4096) -> float:
    """Fraction of users whose held-out item is among their 10 best unrated items.

    ``score_rows(start, stop)`` gives the scores of users ``start:stop`` (dense,
    one block of users at a time).
    """
    hits = 0
    for start in range(0, train.shape[0], block):
        stop = min(train.shape[0], start + block)
        scores = np.array(score_rows(start, stop), dtype=np.float64)
        rated = train[start:stop].nonzero()
        scores[rated] = -np.inf  # recommend only what the user has not rated
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        hits += int((top == held[start:stop, None]).any(axis=1).sum())
    return hits / train.shape[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="service URL (default: $SVDSERVE_URL)")
    parser.add_argument("--token", default=None, help="bearer token (default: $SVDSERVE_TOKEN)")
    parser.add_argument("--data-dir", default="data",
                        help="a directory inside the service's data root (default: ./data)")
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--rank", type=int, default=TASTE_RANK, help="SVD rank k")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from svdserve.client import Client

    train, held = split(args.users, args.items, args.seed)
    print(f"ratings {args.users}x{args.items}: {train.nnz} observed "
          f"({train.nnz / (args.users * args.items):.2%}), one per user held out")
    os.makedirs(args.data_dir, exist_ok=True)
    with Client(args.url, args.token) as client:
        path = client.upload(train, os.path.abspath(os.path.join(args.data_dir,
                                                                 "ratings.zarr")),
                             overwrite=True)  # AnnData CSR group: data, indices, indptr
        job = client.submit(path, rank=args.rank, method="randomized", n_iter=4)
        result = job.result(timeout=600)
        U, S, Vt = np.asarray(result.U), np.asarray(result.S), np.asarray(result.Vt)
    print(f"truncated SVD, rank {args.rank}: sigma_1..k = "
          + " ".join(f"{s:.1f}" for s in S) + f" ({job['state']}, job {job.id[:8]})")
    popularity = np.asarray((train != 0).sum(axis=0), dtype=np.float64).ravel()
    svd_hit = hits_at_10(lambda a, b: (U[a:b] * S) @ Vt, train, held)
    pop_hit = hits_at_10(lambda a, b: np.broadcast_to(popularity, (b - a, popularity.size)),
                         train, held)
    print(f"{'recommender':<22}{'hit rate @10':>14}")
    print(f"{'truncated SVD (k=' + str(args.rank) + ')':<22}{svd_hit:>14.3f}")
    print(f"{'popularity':<22}{pop_hit:>14.3f}")
    print(f"chance: {10 / args.items:.3f}; the SVD finds {svd_hit / max(pop_hit, 1e-12):.2f}x "
          "the popularity baseline's hits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
