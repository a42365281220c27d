"""Issue 26 through the client and the CLI against the real service: update a job with
the rows appended to its array, follow the lineage, read both versions."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from svdserve._cli import main

pytestmark = pytest.mark.timeout(300)


def test_client_and_cli_update_chain(service, client, data_dir, capsys):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((360, 16)) @ np.diag(0.7 ** np.arange(16))
    path = data_dir / "grow.zarr"
    z = zarr.create_array(str(path), shape=(200, 16), dtype="f8", chunks=(64, 16))
    z[...] = a[:200]
    parent = client.submit(str(path), 4, method="exact").wait(timeout=120)
    z.resize((300, 16))
    z[200:] = a[200:300]
    child = client.submit(str(path), update=parent).wait(timeout=120)
    assert child.state == "succeeded", child.data
    info = child.report()["update"]
    # U by one GEMM pass over every row: the new rows, then all 300
    assert info["rows_read"] == 100 + 300 and info["rows_total"] == 300
    res = child.result()
    U = np.asarray(res.U[...])
    # U = A V Σ⁻¹ re-orthonormalised: it reconstructs A's rank-4 part to the σ_5 tail
    s = np.linalg.svd(a[:300], compute_uv=False)
    resid = np.linalg.norm(a[:300] - U @ np.diag(res.S) @ np.asarray(res.Vt[...]), 2)
    assert resid == pytest.approx(s[4], rel=1e-8)  # Eckart–Young: ‖A − A_4‖₂ = σ_5
    # the CLI: svdserve submit SOURCE --update JOB --no-u --wait
    z.resize((360, 16))
    z[300:] = a[300:]
    code = main(["submit", str(path), "--update", child.id[:8], "--no-u", "--wait", "--json",
                 "--url", service.url, "--token", service.token])
    out, err = capsys.readouterr()
    assert code == 0, err
    chain = client.jobs(lineage=child)
    assert [j.id for j in chain][:2] == [parent.id, child.id] and len(chain) == 3
    code = main(["jobs", "--lineage", parent.id[:8], "--url", service.url, "--token",
                 service.token])
    out, err = capsys.readouterr()
    lines = out.splitlines()[1:]  # the header, then the chain, oldest first
    assert code == 0 and len(lines) == 3
    assert all(j.id.startswith(line.split()[0]) for j, line in zip(chain, lines))
    last = chain[-1]
    assert last.report()["update"]["rows_read"] == 60
    # 10·√n·ε·σ₁ absolute (two backward-stable TSQRs); relative: σ₁/σ₄ = 0.7⁻³ < 4
    np.testing.assert_allclose(last.report()["singular_values"][:4],
                               np.linalg.svd(a, compute_uv=False)[:4],
                               rtol=10 * np.sqrt(16) * np.finfo(float).eps * 4)
    # every version stays readable
    assert parent.result().S.shape == (4,)
