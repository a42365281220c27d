"""The ``svdserve`` command line end to end against the real service, with exit codes.

Most commands run in-process through ``svdserve._cli.main`` (fast); the
console script itself is run as a subprocess for the paths that matter
(dispatch of ``serve``, exit codes seen by a shell, one error line on stderr).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from svdserve._cli import main

pytestmark = pytest.mark.timeout(300)

SCRIPT = shutil.which("svdserve", path=os.path.dirname(sys.executable)) or "svdserve"


def run(service, capsys, *args, token=True):
    """Run ``svdserve ARGS`` in-process; return (exit code, stdout, stderr)."""
    conn = ["--url", service.url] + (["--token", service.token] if token else [])
    code = main([*args, *conn])
    out, err = capsys.readouterr()
    return code, out, err


def script(service, *args):
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True,
                          env=service.cli_env(), timeout=180)


@pytest.fixture
def npy(data_dir):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((120, 10)) @ np.diag(0.5 ** np.arange(10))
    path = data_dir / "A.npy"
    np.save(path, A)
    return A, path


def test_usage_errors_exit_2(service, capsys):
    code, out, err = run(service, capsys, "submit", "x.zarr")  # missing --rank
    assert code == 2 and "-k/--rank" in err and "--energy" in err and "required" in err
    assert err.count("\n") == 1 and err.startswith("svdserve submit: error:")  # one line
    code, _, err = run(service, capsys, "submit", "x.zarr", "--rank", "zero")
    assert code == 2 and "positive integer" in err
    code, _, err = run(service, capsys, "frobnicate")
    assert code == 2 and "invalid choice" in err
    code, out, _ = run(service, capsys, "--help")
    assert code == 0 and "submit" in out and "serve" in out and "exit codes" in out


def test_upload_submit_wait_status_report_jobs(service, capsys, npy, data_dir, tmp_path):
    A, path = npy
    dest = data_dir / "A.zarr"
    code, out, err = run(service, capsys, "upload", str(path), str(dest), "--chunks", "32")
    assert code == 0 and out.strip() == str(dest) and "120x10" in err
    import zarr

    z = zarr.open_array(str(dest), mode="r")
    assert z.chunks == (32, 10)
    np.testing.assert_array_equal(z[...], A)
    # upload from an existing Zarr, into a group
    code, out, _ = run(service, capsys, "upload", str(dest), str(data_dir / "G.zarr"),
                       "--dest-array", "M")
    assert code == 0 and zarr.open_group(str(data_dir / "G.zarr"), mode="r")["M"].shape == (120, 10)

    code, out, err = run(service, capsys, "submit", str(dest), "-k", "4", "--method", "exact")
    assert code == 0
    job_id = out.strip()
    assert len(job_id) >= 8 and "\n" not in job_id

    code, out, err = run(service, capsys, "wait", job_id, "--timeout", "120")
    assert code == 0 and f"{job_id} succeeded: 120x10 rank 4 (exact)" in out
    assert "panel" in err  # the progress bar went to stderr

    code, out, _ = run(service, capsys, "status", job_id)
    assert code == 0 and "state     succeeded" in out and "result.zarr" in out
    code, out, _ = run(service, capsys, "status", job_id, "--json")
    assert code == 0 and json.loads(out)["id"] == job_id

    png = tmp_path / "energy.png"
    code, out, err = run(service, capsys, "report", job_id, "--plot", str(png))
    assert code == 0 and "shape 120 x 10" in out and "storage ratio" in out
    assert "North's errors (N = 120): each eigenvalue ± 12.9 %" in out  # √(2/120)
    assert png.read_bytes()[:4] == b"\x89PNG" and "wrote" in err
    code, out, _ = run(service, capsys, "report", job_id, "--json")
    rep = json.loads(out)
    s = np.linalg.svd(A, compute_uv=False)
    np.testing.assert_allclose(rep["singular_values"], s[:4], rtol=1e-12)

    code, out, _ = run(service, capsys, "jobs", "--state", "succeeded")
    assert code == 0 and job_id in out
    code, out, _ = run(service, capsys, "jobs", "--limit", "1", "--json")
    assert code == 0 and len(json.loads(out)) == 1

    # cancelling a finished job: the service says 409, exit 1
    code, _, err = run(service, capsys, "cancel", job_id)
    assert code == 1 and "409" in err and len(err.strip().splitlines()) == 1

    code, out, _ = run(service, capsys, "delete", job_id)
    assert code == 0 and "deleted" in out
    code, _, err = run(service, capsys, "status", job_id)
    assert code == 2 and "404" in err  # unknown job: a usage error


def test_failed_job_exits_1_with_the_servers_message(service, capsys, data_dir):
    A = np.ones((50, 4))
    A[7, 1] = np.inf
    np.save(data_dir / "inf.npy", A)
    code, _, _ = run(service, capsys, "upload", str(data_dir / "inf.npy"), str(data_dir / "inf.zarr"))
    assert code == 0
    code, out, err = run(service, capsys, "submit", str(data_dir / "inf.zarr"), "-k", "2",
                         "--wait", "--no-progress")
    assert code == 1
    assert "non_finite_values" in err and err.count("\n") == 2  # "submitted ..." + one error line


def test_server_side_validation_is_a_usage_error(service, capsys, npy, data_dir):
    A, path = npy
    run(service, capsys, "upload", str(path), str(data_dir / "A.zarr"))
    code, _, err = run(service, capsys, "submit", str(data_dir / "A.zarr"), "-k", "11")
    assert code == 2 and "422" in err and "rank" in err
    code, _, err = run(service, capsys, "submit", str(data_dir / "missing.zarr"), "-k", "1")
    assert code == 2 and "404" in err
    code, _, err = run(service, capsys, "jobs", token=False)
    assert code == 2 and "401" in err


def test_upload_errors(service, capsys, data_dir):
    code, _, err = run(service, capsys, "upload", str(data_dir / "none.npy"), str(data_dir / "x.zarr"))
    assert code == 2 and "no such .npy file" in err
    np.save(data_dir / "v.npy", np.arange(5.0))
    code, _, err = run(service, capsys, "upload", str(data_dir / "v.npy"), str(data_dir / "v.zarr"))
    assert code == 2 and "2-D" in err
    np.save(data_dir / "ok.npy", np.ones((3, 3)))
    assert run(service, capsys, "upload", str(data_dir / "ok.npy"), str(data_dir / "ok.zarr"))[0] == 0
    code, _, err = run(service, capsys, "upload", str(data_dir / "ok.npy"), str(data_dir / "ok.zarr"))
    assert code == 1 and "--overwrite" in err
    assert run(service, capsys, "upload", str(data_dir / "ok.npy"), str(data_dir / "ok.zarr"),
               "--overwrite")[0] == 0


def test_console_script(service, data_dir):
    np.save(data_dir / "S.npy", np.random.default_rng(1).standard_normal((40, 6)))
    r = script(service, "upload", str(data_dir / "S.npy"), str(data_dir / "S.zarr"))
    assert r.returncode == 0, r.stderr
    r = script(service, "submit", str(data_dir / "S.zarr"), "--rank", "3", "--wait", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "succeeded"
    r = script(service, "wait", "f" * 32)
    assert r.returncode == 2 and r.stderr.startswith("svdserve: error: 404")
    assert len(r.stderr.strip().splitlines()) == 1
    r = script(service, "--url", "http://127.0.0.1:9", "--request-timeout", "2", "jobs")
    assert r.returncode == 1 and "could not reach" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # `serve` is dispatched to the service's CLI
    r = script(service, "serve", "--help")
    assert r.returncode == 0 and "svdserve serve" in r.stdout and "--port" in r.stdout
    r = script(service, "--url", service.url, "serve")
    assert r.returncode == 2 and "must be the first argument" in r.stderr


def test_submit_sample_dims_and_missing(service, capsys, data_dir):
    """``--sample-dims time --missing mask`` on a (time, lat, lon) field with land."""
    import xarray as xr

    from svdserve.client import StoredResult

    rng = np.random.default_rng(2)
    field = rng.standard_normal((20, 3, 4))
    field[:, 0, 0] = np.nan
    store = data_dir / "field.zarr"
    xr.Dataset({"sst": (("time", "lat", "lon"), field)}).to_zarr(str(store), zarr_format=2,
                                                                 consolidated=False)
    code, _, err = run(service, capsys, "submit", str(store), "--array", "sst", "-k", "2")
    assert code == 2 and "--sample-dims" in err and "['time', 'lat', 'lon']" in err
    code, out, err = run(service, capsys, "submit", str(store), "--array", "sst", "-k", "2",
                         "--sample-dims", "time", "--missing", "mask", "--wait", "--json",
                         "--no-progress")
    assert code == 0, err
    job = json.loads(out)
    assert job["request"]["source"]["sample_dims"] == ["time"]
    assert job["request"]["missing"] == "mask"
    res = StoredResult.open(job["result"]["url"])
    assert res.mask.sum() == 1 and res.to_xarray()["components"].dims == ("mode", "lat", "lon")


def test_submit_precision_flag_reaches_the_report(service, capsys, data_dir):
    """Issue 28: ``--precision float64`` on float32 input, against the default ``auto``."""
    import zarr

    from svdserve.client import StoredResult

    rng = np.random.default_rng(4)
    a = (rng.standard_normal((600, 8)) @ rng.standard_normal((8, 60))).astype(np.float32)
    store = data_dir / "f32.zarr"
    zarr.create_array(str(store), shape=a.shape, dtype="f4", chunks=(200, 60))[...] = a
    ran = {}
    for flags in ((), ("--precision", "float64")):
        code, out, err = run(service, capsys, "submit", str(store), "-k", "3", "--method",
                             "randomized", *flags, "--wait", "--json", "--no-progress")
        assert code == 0, err
        job = json.loads(out)
        ran[flags] = StoredResult.open(job["result"]["url"]).report["precision"]
    assert ran[()]["requested"] == "auto" and ran[()]["power"] == "float32"
    assert ran[("--precision", "float64")]["power"] == "float64"
    assert "precision='float64' was requested" in ran[("--precision", "float64")]["reason"]
