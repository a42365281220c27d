"""The storage sandbox on its own: every refusal happens before anything is opened."""

from __future__ import annotations

import os

import pytest

from svdserve.service._sandbox import Sandbox, SandboxError
from svdserve.service._settings import Settings


@pytest.fixture
def roots(tmp_path):
    data = tmp_path / "data"
    other = tmp_path / "other"
    (data / "m.zarr").mkdir(parents=True)
    (data / "m.zarr" / "zarr.json").write_text("{}")
    other.mkdir()
    (other / "x.zarr").mkdir()
    return data, other


def sandbox(data, **kw):
    kw.setdefault("forbidden", [])
    return Sandbox([os.path.realpath(data), "s3://lab/matrices"], **kw)


def refused(sb, url, array=None):
    with pytest.raises(SandboxError) as info:
        sb.resolve(url, array)
    return info.value


def test_inside_paths_resolve(roots):
    data, _ = roots
    sb = sandbox(data)
    real = os.path.realpath(data / "m.zarr")
    assert sb.resolve("m.zarr").url == real
    assert sb.resolve(str(data / "m.zarr")).url == real
    assert sb.resolve(f"file://{data}/m.zarr").url == real
    assert sb.resolve(f"file://localhost{data}/m.zarr").url == real
    assert sb.resolve("./m.zarr").url == real
    s3 = sb.resolve("s3://lab/matrices/A.zarr", "arr")
    assert (s3.url, s3.array) == ("s3://lab/matrices/A.zarr", "arr")


@pytest.mark.parametrize("url,status", [
    ("../other/x.zarr", 403),                       # relative traversal
    ("m.zarr/../../other/x.zarr", 403),             # traversal after a real dir
    ("m.zarr/..", 403),                             # even when it stays inside
    ("/etc/passwd", 403),                           # absolute path elsewhere
    ("file:///etc/passwd", 403),                    # file:// elsewhere
    ("file:///%2e%2e/etc", 403),                    # encoded traversal in a URL
    ("file://host/etc/passwd", 422),                # remote file URL
    ("file:///etc/../etc/passwd", 403),             # traversal in a file URL
    ("s3://lab/other/A.zarr", 403),                 # listed bucket, unlisted prefix
    ("s3://lab/matricesX/A.zarr", 403),             # prefix must end at a segment
    ("s3://other/matrices/A.zarr", 403),            # unlisted bucket
    ("s3://lab/matrices/../secrets", 403),          # key traversal
    ("s3://lab/matrices//A.zarr", 403),             # empty key segment
    ("s3:///matrices", 422),                        # no bucket
    ("gs://lab/matrices/A.zarr", 422),              # unsupported scheme
    ("http://example.com/A.zarr", 422),
    ("", 422),
    ("a\nb", 422),
])
def test_refused(roots, url, status):
    data, _ = roots
    err = refused(sandbox(data), url)
    assert err.status == status, (url, err)
    assert err.field == "body.source.url"


def test_missing_inside_is_404_outside_is_403(roots):
    data, _ = roots
    sb = sandbox(data)
    assert refused(sb, "nope.zarr").status == 404
    assert refused(sb, "/nonexistent/nope.zarr").status == 403  # existence is not leaked


def test_symlinks(roots):
    data, other = roots
    os.symlink(other / "x.zarr", data / "out.zarr")
    os.symlink(data / "m.zarr", data / "in.zarr")
    sb = sandbox(data)
    assert refused(sb, "out.zarr").status == 403
    assert sb.resolve("in.zarr").url == os.path.realpath(data / "m.zarr")
    # a symlink deep inside a source directory is not walked for here (issue 9:
    # the sandbox resolves the name once); pin_source checks what will be read
    (data / "deep.zarr" / "c" / "0").mkdir(parents=True)
    os.symlink(other / "x.zarr", data / "deep.zarr" / "c" / "0" / "0")
    assert sb.resolve("deep.zarr").url == os.path.realpath(data / "deep.zarr")
    # the array path is checked after resolving too
    os.symlink(other, data / "m.zarr" / "leak")
    err = refused(sb, "m.zarr", "leak")
    assert (err.status, err.field) == (403, "body.source.array")


@pytest.mark.parametrize("array,status", [("../m.zarr", 403), ("/abs", 422), ("a//b", 422),
                                          ("a/./b", 422), ("", 422)])
def test_array_paths(roots, array, status):
    data, _ = roots
    err = refused(sandbox(data), "m.zarr", array)
    assert (err.status, err.field) == (status, "body.source.array")


def test_database_and_results_are_never_sources(roots):
    data, _ = roots
    (data / "results" / "t" / "j").mkdir(parents=True)
    (data / "jobs.sqlite").write_text("")
    sb = sandbox(data, forbidden=[str(data / "results"), str(data / "jobs.sqlite")])
    assert refused(sb, "results/t/j").status == 403
    assert refused(sb, "jobs.sqlite").status == 403
    assert refused(sb, str(data)).status == 403  # the root contains them
    assert sb.resolve("m.zarr").url  # the rest is fine


def test_first_root_for_relative_paths_can_be_s3():
    sb = Sandbox(["s3://lab/matrices"])
    assert sb.resolve("A.zarr").url == "s3://lab/matrices/A.zarr"
    assert refused(sb, "/abs/path").status == 403  # no local root at all


def test_settings_parse_roots_and_tokens(tmp_path, monkeypatch):
    monkeypatch.setenv("SVDSERVE_DATA_ROOTS", f"{tmp_path}/a, s3://lab/m/ ,file://{tmp_path}/b")
    monkeypatch.setenv("SVDSERVE_TOKENS", "alice:t1,bob:t:2")
    monkeypatch.setenv("SVDSERVE_MAX_CONCURRENT_JOBS", "3")
    monkeypatch.setenv("SVDSERVE_STORAGE_OPTIONS", '{"anon": false}')
    monkeypatch.setenv("SVDSERVE_S3_ENDPOINT", "http://127.0.0.1:5000")
    s = Settings()
    assert s.data_roots == [os.path.realpath(tmp_path / "a"), "s3://lab/m",
                            os.path.realpath(tmp_path / "b")]
    assert s.tenant_tokens() == [("alice", "t1"), ("bob", "t:2")]
    assert "t1" not in repr(s)  # tokens are secrets
    assert s.max_concurrent_jobs == 3 and s.scheduler is None
    assert s.fs_options() == {"anon": False, "endpoint_url": "http://127.0.0.1:5000"}
    monkeypatch.setenv("SVDSERVE_TOKENS", "no-colon")
    with pytest.raises(ValueError):
        Settings()
    monkeypatch.setenv("SVDSERVE_TOKENS", "../evil:tok")
    with pytest.raises(ValueError):
        Settings()
