"""The result manifest's format (``svdserve._manifest``), shared by worker, service and client."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from fsspec.implementations.local import LocalFileSystem

from svdserve import _manifest


def _group(path):
    grp = zarr.open_group(str(path), mode="w")
    grp.create_array("U", shape=(6, 2), dtype="f8")
    grp.create_array("S", shape=(2,), dtype="f8")
    grp.create_array("Vt", shape=(2, 4), dtype="f8")
    grp.create_array("mask", shape=(4,), dtype="bool")
    return grp


def test_the_documented_file(tmp_path):
    # docs/contracts.md section 2: the name, the format tag, the arrays with shapes.
    assert _manifest.NAME == "manifest.json"
    grp, fs, path = _group(tmp_path / "r.zarr"), LocalFileSystem(), str(tmp_path / "r.zarr")
    assert not _manifest.exists(fs, path)
    _manifest.write(fs, path, grp)
    on_disk = json.loads((tmp_path / "r.zarr" / "manifest.json").read_text())
    assert on_disk == {"format": "svdserve-result/1", "complete": True, "arrays": {
        "U": {"shape": [6, 2], "dtype": "float64"}, "S": {"shape": [2], "dtype": "float64"},
        "Vt": {"shape": [2, 4], "dtype": "float64"}, "mask": {"shape": [4], "dtype": "bool"}}}
    assert _manifest.exists(fs, path) and _manifest.read(fs, path) == on_disk
    _manifest.check(on_disk, grp, path)
    _manifest.remove(fs, path)
    _manifest.remove(fs, path)  # missing is fine
    assert not _manifest.exists(fs, path)


def test_read_refuses_missing_or_broken_manifests(tmp_path):
    fs, path = LocalFileSystem(), str(tmp_path / "r.zarr")
    grp = _group(path)
    with pytest.raises(_manifest.ManifestError, match="no manifest.json: it is not a finished"):
        _manifest.read(fs, path, "s3://b/r.zarr")
    (tmp_path / "r.zarr" / "manifest.json").write_text("{not json")
    with pytest.raises(_manifest.ManifestError, match="is not JSON"):
        _manifest.read(fs, path)
    wrong = {"arrays": {"U": {"shape": [7, 2]}}}
    with pytest.raises(_manifest.ManifestError, match="U has shape"):
        _manifest.check(wrong, grp, path)
    grp["U"][...] = np.ones((6, 2))  # data does not matter, shapes do
    _manifest.check({"arrays": {"U": {"shape": [6, 2]}}}, grp, path)
