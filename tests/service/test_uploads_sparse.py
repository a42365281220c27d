"""Sparse uploads over HTTP (``/v1/uploads`` with ``format="csr"``): CSR row blocks checked
as they arrive and committed as AnnData's CSR Zarr group, opened here by anndata itself.

In-process app (``service`` fixture); blocks are written by zarr into a real uploads root.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

from tests.service.test_uploads import create, put

anndata = pytest.importorskip("anndata")


def csr_block(x: sp.csr_matrix, start: int, stop: int, index_dtype: str = "int32") -> bytes:
    """The body of a CSR block: int64 indptr from 0, indices, values (little-endian)."""
    part = x[start:stop]
    return b"".join([part.indptr.astype("<i8").tobytes(),
                     part.indices.astype("<" + np.dtype(index_dtype).str[1:]).tobytes(),
                     part.data.astype("<f8").tobytes()])


def create_csr(c, x: sp.csr_matrix, name: str, block_rows: int, **kw):
    edges = list(range(0, x.shape[0], block_rows)) + [x.shape[0]]
    nnz = [int(x.indptr[b] - x.indptr[a]) for a, b in zip(edges, edges[1:])]
    fields = {"format": "csr", "block_rows": block_rows, "block_nnz": nnz,
              "index_dtype": "int32", **kw}
    return create(c, name, x.shape, **fields)


def test_csr_blocks_out_of_order_commit_as_anndata_csr(service, tmp_path):
    x = sp.random(57, 23, density=0.2, format="csr", random_state=3)
    x = sp.csr_matrix(sp.diags((np.arange(57) != 10).astype(float)) @ x)  # row 10 empty
    x.eliminate_zeros()
    assert x[10].nnz == 0
    with service(uploads_root=str(tmp_path / "up")) as c:
        r = create_csr(c, x, "S", block_rows=10)
        assert r.status_code == 201, r.text
        rec = r.json()
        assert rec["format"] == "csr" and rec["nnz"] == x.nnz and rec["n_blocks"] == 6
        assert rec["nbytes"] == 58 * 8 + x.nnz * 12  # indptr + int32 indices + float64 values
        for i in (5, 2, 0, 4, 1, 3):  # any order: each block's place is known at creation
            body = csr_block(x, 10 * i, min(57, 10 * i + 10))
            assert put(c, rec, i, body).status_code == 201
        r = c.post(f"/v1/uploads/{rec['id']}/commit")
        assert r.status_code == 200, r.text
        group = zarr.open_group(r.json()["source"], mode="r")
        assert group.attrs["encoding-type"] == "csr_matrix"
        back = anndata.io.read_elem(group)
        assert isinstance(back, sp.csr_matrix) and back.shape == x.shape
        np.testing.assert_array_equal(back.toarray(), x.toarray())  # bit for bit
        assert group["indices"].dtype == np.int32 and group["indptr"].dtype == np.int64


@pytest.mark.parametrize("bad, field, words", [
    # row 12 (in block 1, rows 10:20) ends before it starts: indptr decreases
    ("indptr", "body.indptr", "decreases at row 12"),
    # the first value of row 10 points at column 23 of 23 columns
    ("indices", "body.indices", "column index 23 of row 10 is out of range"),
    # a block's indptr not relative to its first row
    ("offset", "body.indptr", "must start at 0"),
])
def test_bad_csr_blocks_are_422_naming_the_field(service, tmp_path, bad, field, words):
    x = sp.random(30, 23, density=0.3, format="csr", random_state=4)
    with service(uploads_root=str(tmp_path / "up")) as c:
        rec = create_csr(c, x, "B", block_rows=10).json()
        part = x[10:20].copy()
        if bad == "indptr":
            part.indptr[3] = part.indptr[2] - 1  # local row 2 = row 12
        elif bad == "indices":
            part.indices[0] = 23
        indptr = part.indptr.astype("<i8") + (5 if bad == "offset" else 0)
        body = indptr.tobytes() + part.indices.astype("<i4").tobytes() + part.data.tobytes()
        r = put(c, rec, 1, body)
        assert r.status_code == 422, r.text
        problem = r.json()
        assert problem["errors"][0]["field"] == field and words in problem["detail"]
        assert problem["block"] == 1
        assert c.get(f"/v1/uploads/{rec['id']}").json()["received"] == []  # nothing kept


def test_bad_csr_declarations_are_422_naming_the_field(service, tmp_path):
    x = sp.random(30, 5, density=0.3, format="csr", random_state=5)
    with service(uploads_root=str(tmp_path / "up")) as c:
        cases = [  # (fields, the field named)
            ({"format": "csr", "block_rows": 10}, "body.block_nnz"),  # no block_nnz
            ({"format": "csr", "block_nnz": [5, 5, 5]}, "body.block_rows"),  # no block_rows
            ({"format": "csr", "block_rows": 10, "block_nnz": [5, 5]}, "body.block_nnz"),
            ({"format": "csr", "block_rows": 10, "block_nnz": [5, 51, 5]}, "body.block_nnz"),
            ({"block_nnz": [5, 5, 5], "block_rows": 10}, "body.block_nnz"),  # dense
            ({"format": "csr", "block_rows": 10, "block_nnz": [1, 1, 1],
              "index_dtype": "int16"}, "body.index_dtype"),
        ]
        for fields, named in cases:
            r = create(c, "D", x.shape, **fields)
            assert r.status_code == 422, (fields, r.text)
            assert named in [e["field"] for e in r.json()["errors"]], (fields, r.text)
        rec = create_csr(c, x, "W", block_rows=10).json()
        r = put(c, rec, 0, csr_block(x, 0, 10)[:-8])  # one value short
        assert r.status_code == 422 and "non-zeros" in r.json()["detail"], r.text
