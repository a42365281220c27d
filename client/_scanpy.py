"""A centred svdserve result as scanpy's ``sc.pp.pca`` stores it in an AnnData object.

``sc.pp.pca(adata)`` on a sparse ``.X`` (scikit-learn's ``PCA`` with
ARPACK and implicit centring) writes::

    adata.obsm["X_pca"]                   (n_obs, k)   scores U·S (float32 by default)
    adata.varm["PCs"]                     (n_vars, k)  the components, Vᵀ
    adata.uns["pca"]["variance"]          (k,)         σ²/(n_obs − 1)
    adata.uns["pca"]["variance_ratio"]    (k,)         σ² / ‖X − 1μᵀ‖²_F
    adata.uns["pca"]["params"]            {"zero_center": True, ...}

:func:`to_scanpy` writes the same from a job run with ``center=True`` on
that ``.X`` (or layer), so scanpy's neighbours, UMAP and clustering take
it from there. The signs agree with scanpy's: scikit-learn ≥ 1.5 makes the
largest-magnitude entry of each component positive, as svdserve does.
No import of anndata or scanpy here: ``adata`` is used by its attributes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_scanpy"]


def to_scanpy(result: Any, adata: Any, *, n_comps: int | None = None,
              key_added: str | None = None, layer: str | None = None,
              dtype: Any = "float32") -> None:
    """Store a centred result in ``adata`` as ``sc.pp.pca`` would.

    Parameters
    ----------
    result : StoredResult
        Of a job run with ``center=True`` on ``adata.X`` (or ``layer``), with U
        (``compute_u=True``, the default).
    adata : anndata.AnnData of shape (n_obs, n_vars)
        Written in place: ``obsm``, ``varm`` and ``uns``.
    n_comps : int or None, default=None
        The first ``n_comps`` components (default: all of the result's).
    key_added : str or None, default=None
        As scanpy's: store under this key in ``obsm``, ``varm`` and ``uns``
        instead of ``"X_pca"``, ``"PCs"`` and ``"pca"``.
    layer : str or None, default=None
        Recorded in ``uns[...]["params"]`` as scanpy does when the layer was decomposed.
    dtype : dtype, default="float32"
        Of ``obsm["X_pca"]`` (scanpy's default).

    Raises
    ------
    ValueError
        The job ran with ``center=False`` or ``compute_u=False``, or its shape is not
        ``adata``'s, or ``n_comps`` exceeds its rank.
    """
    m, n = (int(v) for v in result.shape)
    if result.mean is None:
        raise ValueError("sc.pp.pca centres the data (zero_center=True), but this job ran "
                         "with center=False; submit it again with center=True")
    if result.U is None:
        raise ValueError("X_pca needs U, but this job ran with compute_u=False; submit it "
                         "again without compute_u=False")
    if (adata.n_obs, adata.n_vars) != (m, n):
        raise ValueError(f"the result is of a {m} x {n} matrix but adata has {adata.n_obs} "
                         f"obs x {adata.n_vars} vars; pass the AnnData whose .X (or layer) "
                         "the job decomposed")
    k = int(result.rank if n_comps is None else n_comps)
    if not 1 <= k <= result.rank:
        raise ValueError(f"n_comps must be 1 to {result.rank} (the result's rank), got "
                         f"{n_comps!r}")
    S = np.asarray(result.S, dtype=np.float64)[:k]
    obsm, varm, uns = ("X_pca", "PCs", "pca") if key_added is None else (key_added,) * 3
    adata.obsm[obsm] = (np.asarray(result.U[:, :k], dtype=np.float64) * S).astype(dtype)
    adata.varm[varm] = np.asarray(result.Vt[:k], dtype=np.float64).T
    params = {"zero_center": True, "use_highly_variable": False, "mask_var": None}
    if layer is not None:
        params["layer"] = layer
    adata.uns[uns] = {"params": params, "variance": S**2 / (m - 1),
                      "variance_ratio": S**2 / float(result.report.total_energy)}
