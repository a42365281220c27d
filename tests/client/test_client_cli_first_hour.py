"""The command line's rough edges a new user hits first (issue 20, items 5, 6, 8-12).

Against the real service of ``conftest.py``: most commands through
``svdserve._cli.main`` in-process, the closed pipe through a real subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr

from svdserve._cli import main
from svdserve.client import Progress
from svdserve.client._cli import build_parser

pytestmark = pytest.mark.timeout(300)

SCRIPT = shutil.which("svdserve", path=os.path.dirname(sys.executable)) or "svdserve"


def run(service, capsys, *args, token=None):
    """Run ``svdserve ARGS`` in-process; return (exit code, stdout, stderr)."""
    code = main([*args, "--url", service.url, "--token", token or service.token])
    out, err = capsys.readouterr()
    return code, out, err


def matrix(data_dir, name, a, chunks=None):
    """``a`` written as Zarr v3 in the data root; returns its path as a string."""
    path = data_dir / name
    z = zarr.create_array(str(path), shape=a.shape, dtype=a.dtype, chunks=chunks or a.shape)
    z[...] = a
    return str(path)


# -- 5: one rule for relative paths; messages say what was sent and where it was looked for


def test_relative_source_is_taken_from_the_current_directory(service, capsys, monkeypatch):
    monkeypatch.chdir(service.data_root.parent)  # ./data is the service's data root
    code, _, err = run(service, capsys, "submit", "data/nope.zarr", "-k", "1")
    assert code == 2 and err.count("\n") == 1
    assert "data/data" not in err  # once joined to the data root ./data, now never
    assert "'data/nope.zarr'" in err and repr(str(service.data_root / "nope.zarr")) in err
    assert "current directory" in err
    code, _, err = run(service, capsys, "submit", "/etc", "-k", "1")
    assert code == 2 and "403" in err and "SVDSERVE_DATA_ROOTS" in err


# -- 6: a .npy or CSV where a Zarr is expected; upload reads the common formats


def test_submit_of_a_numpy_file_says_what_to_run(service, capsys, data_dir):
    np.save(data_dir / "m.npy", np.ones((5, 3)))
    code, _, err = run(service, capsys, "submit", str(data_dir / "m.npy"), "-k", "1")
    assert code == 2 and "NumPy .npy file" in err
    assert f"svdserve upload {data_dir / 'm.npy'} {data_dir / 'm.zarr'}" in err


def test_upload_reads_npz_csv_txt_and_netcdf_and_lists_formats_when_it_refuses(
        service, capsys, data_dir):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((30, 4)), rng.standard_normal((25, 3))

    def upload(src, name, *extra):
        code, out, err = run(service, capsys, "upload", str(data_dir / src),
                             str(data_dir / name), *extra)
        return code, err, (zarr.open_array(out.strip(), mode="r")[...] if code == 0 else None)

    np.savez(data_dir / "one.npz", a=a)
    np.savez(data_dir / "two.npz", a=a, b=b)
    code, _, got = upload("one.npz", "one.zarr")
    np.testing.assert_array_equal(got, a)
    code, err, _ = upload("two.npz", "two.zarr")
    assert code == 2 and "['a', 'b']" in err and "--array NAME" in err
    code, _, got = upload("two.npz", "two.zarr", "--array", "b")
    np.testing.assert_array_equal(got, b)
    # text: a header line, comments; values written with repr precision read back exactly
    np.savetxt(data_dir / "a.csv", a, delimiter=",", header="w,x,y,z", comments="",
               fmt="%.17g")
    np.savetxt(data_dir / "a.txt", a, fmt="%.17g", header="whitespace separated")
    for src in ("a.csv", "a.txt"):
        code, err, got = upload(src, src + ".zarr", "--chunks", "7")
        assert code == 0, err
        np.testing.assert_array_equal(got, a)
    xr = pytest.importorskip("xarray")
    xr.Dataset({"v": (("t", "x"), b), "w": (("t",), b[:, 0])}).to_netcdf(
        data_dir / "f.nc", engine="scipy")  # NetCDF-3: no HDF5 library needed
    code, err, _ = upload("f.nc", "f.zarr")
    assert code == 2 and "['v', 'w']" in err
    code, err, got = upload("f.nc", "f.zarr", "--variable", "v")
    assert code == 0, err
    np.testing.assert_array_equal(got, b)
    (data_dir / "m.xlsx").write_bytes(b"PK")
    code, err, _ = upload("m.xlsx", "m.zarr")
    assert code == 2 and "'.xlsx'" in err
    assert all(s in err for s in (".npy", ".npz", ".csv", ".txt", ".h5", ".nc", "Zarr"))


def test_read_matrix_reads_text_in_row_chunks(tmp_path):
    from svdserve.client import read_matrix

    a = np.arange(60.0).reshape(20, 3)
    np.savetxt(tmp_path / "a.csv", a, delimiter=",", fmt="%.17g")
    x = read_matrix(tmp_path / "a.csv", chunks=6)
    assert x.chunks == ((6, 6, 6, 2), (3,))  # each chunk reads its rows from its offset
    np.testing.assert_array_equal(x.blocks[3].compute(), a[18:])
    np.save(tmp_path / "a.npy", a)
    x = read_matrix(tmp_path / "a.npy", chunks=8)
    assert x.chunks == ((8, 8, 4), (3,))
    np.testing.assert_array_equal(x.compute(), a)


# -- 8: short ids


def test_short_ids_are_accepted_and_stay_within_the_tenant(service, capsys, data_dir):
    src = matrix(data_dir, "S.zarr", np.random.default_rng(4).standard_normal((40, 5)))
    code, out, _ = run(service, capsys, "submit", src, "-k", "2")
    job_id = out.strip()
    short = job_id[:8]  # as printed: "job 18ff257d"
    code, out, err = run(service, capsys, "wait", short, "--no-progress")
    assert code == 0 and f"{job_id} succeeded" in out, err
    code, out, _ = run(service, capsys, "status", job_id[:6])
    assert code == 0 and f"id        {job_id}" in out
    code, out, _ = run(service, capsys, "report", short)
    assert code == 0 and "shape 40 x 5" in out
    code, _, err = run(service, capsys, "cancel", short)
    assert code == 1 and "409" in err  # found, and already finished
    # another tenant: not found, and the id is not revealed
    code, _, err = run(service, capsys, "status", short, token=service.other_token)
    assert code == 2 and "404" in err and job_id not in err
    code, _, err = run(service, capsys, "status", job_id[:5])
    assert code == 2 and "at least 6" in err
    code, out, _ = run(service, capsys, "delete", short)
    assert code == 0 and "deleted" in out
    code, _, err = run(service, capsys, "status", job_id)
    assert code == 2 and "404" in err


# -- 9: a closed pipe


def test_a_closed_pipe_ends_quietly(service, data_dir):
    with service.client() as c:  # at least one job to list
        c.submit(matrix(data_dir, "J.zarr", np.ones((6, 2))), 1)
    # the reader is gone before anything is written: every write meets EPIPE
    proc = subprocess.Popen([SCRIPT, "jobs", "--limit", "5"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=service.cli_env())
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 0 and err == b""


# -- 10: each error once, in the command line's words


def test_service_errors_are_printed_once_with_flag_names(service, capsys, data_dir):
    src = matrix(data_dir, "R.zarr", np.ones((12, 4)))
    code, _, err = run(service, capsys, "submit", src, "-k", "5")
    assert code == 2 and "422" in err
    message = re.search(r"rank must be[^;.(]*", err).group(0)
    assert err.count(message) == 1 and "--rank" in err and "body.rank" not in err
    from svdserve.client._cli import flag_text

    assert flag_text("use missing='mask' or `array`, sample_dims=['time'], body.source.url"
                     ) == "use --missing mask or --array, --sample-dims time, SOURCE"


# -- 11: the jobs table; help on every flag


def test_jobs_has_a_header_and_shows_what_runs(service, capsys, data_dir):
    bad = np.ones((50, 4))
    bad[7, 1] = np.inf
    src = matrix(data_dir, "inf.zarr", bad)
    code, out, err = run(service, capsys, "submit", src, "-k", "2", "--json")
    job = json.loads(out)
    assert job["shape"] == [50, 4]  # known from submit, before the job runs
    run(service, capsys, "wait", job["id"], "--no-progress")
    code, out, _ = run(service, capsys, "jobs", "--state", "failed")
    header, *lines = out.splitlines()
    assert header.split()[:6] == ["ID", "STATE", "K", "METHOD", "SHAPE", "CREATED"]
    (line,) = [ln for ln in lines if ln.startswith(job["id"])]
    fields = line.split()
    assert fields[1] == "failed" and fields[3] == job["method"] != "auto"
    assert fields[4] == "50x4"  # the plan's shape, though the job has no result


def test_every_flag_has_help():
    missing = []

    def walk(parser, where):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{where} {name}")
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{where}: {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "svdserve")
    assert not missing, missing


# -- 12: one progress bar for the whole job


def test_progress_counts_every_pass_of_the_job():
    plan = {"panels": 10, "kind": "chunks"}
    assert Progress("stats+qr", 1, 2, 3, 10, plan).overall() == (3, 20)
    assert Progress("factor", 1, 2, 1, 1, plan).overall() == (10, 20)  # reads no panel
    assert Progress("tall", 2, 2, 4, 10, plan).overall() == (14, 20)
    assert Progress("write", 2, 2, 1, 3, plan).overall() == (20, 20)
    copy = {"panels": 10, "kind": "rechunk"}
    assert Progress("rechunk", 0, 2, 5, 10, copy).overall() == (5, 30)
    assert Progress("power", 1, 2, 5, 10, copy).overall() == (15, 30)
    assert Progress("power", 3, 2, 0, 10, plan).overall() == (20, 30)  # beyond the plan


def test_wait_shows_one_bar_for_the_whole_job(service, capsys, data_dir):
    a = np.random.default_rng(5).standard_normal((2000, 40))
    src = matrix(data_dir, "P.zarr", a, chunks=(200, 40))  # 10 panels of 64 KiB
    code, out, _ = run(service, capsys, "submit", src, "-k", "3", "--method", "exact",
                       "--json")
    job = json.loads(out)
    panels, passes = job["plan"]["panels"], 2  # exact with U: stats+qr, then tall
    code, out, err = run(service, capsys, "wait", job["id"])
    assert code == 0, err
    counts = [(int(d), int(t)) for d, t in re.findall(r"(\d+)/(\d+) panels", err)]
    assert counts and {t for _, t in counts} == {passes * panels}  # one bar, one total
    assert counts[-1][0] == passes * panels
    assert "/s" not in err and "panel/s" not in err  # no rates
    for label, done in re.findall(r"\(pass (\d) of \d\):\s+\d+%\|[^|]*\| (\d+)/", err):
        # the label belongs to the count shown with it: never an old phase at 0 %
        assert (int(label) - 1) * panels <= int(done) <= int(label) * panels
