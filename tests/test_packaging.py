"""The distribution installs svdserve.{worker,service,client} and nothing generic at top level."""

import ast
import os
import subprocess
import sys
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["svdserve", "svdserve.worker", "svdserve.service", "svdserve.client"])
def test_subpackages_import_from_the_installed_package(name):
    mod = importlib.import_module(name)
    assert mod.__name__ == name
    if name != "svdserve":
        assert hasattr(mod, "__all__") and mod.__all__


def test_no_generic_top_level_module(tmp_path):
    # A fresh interpreter outside the repo sees only what was installed.
    code = ("import importlib.util as u, svdserve.worker;"
            "print([n for n in ('worker', 'service', 'client') if u.find_spec(n)])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True, env={"PATH": os.environ.get("PATH", "")})
    assert out.stdout.strip() == "[]"


def _imports(package_dir):
    names = set()
    for path in (ROOT / package_dir).rglob("*.py"):
        names |= _imports_of(path)
    return names


@pytest.mark.parametrize("part,forbidden", [
    ("worker", ("svdserve.service", "svdserve.client")),
    ("client", ("svdserve.service", "svdserve.worker")),
])
def test_dependencies_point_one_way(part, forbidden):
    bad = {n for n in _imports(part) if n.startswith(forbidden)}
    assert not bad, f"{part}/ imports {bad}"


def test_client_and_manifest_pull_no_worker():
    # The result manifest is shared through svdserve._manifest, not the worker
    # package, whose __init__ imports dask and distributed.
    assert _imports_of(ROOT / "svdserve_ns/_manifest.py") <= {"__future__", "json", "typing"}
    code = ("import sys, svdserve.client, svdserve._manifest;"
            "print([m for m in ('svdserve.worker', 'dask', 'distributed') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_kernels_import_only_numpy():
    kernel_imports = _imports_of(ROOT / "worker/_kernels.py")
    assert kernel_imports <= {"__future__", "math", "numpy", "scipy", "scipy.linalg"}  # math: stdlib


def test_kernel_building_blocks_import_only_numpy():
    """What the kernels take from their sibling modules (scaled sums of squares, QR, the
    sparse-panel kernels) is pure NumPy too: the whole kernel family imports nothing but
    NumPy, SciPy (scipy.sparse for sparse panels) and math."""
    siblings = [a.name for node in ast.walk(ast.parse((ROOT / "worker/_kernels.py").read_text()))
                if isinstance(node, ast.ImportFrom) and node.level and not node.module
                for a in node.names]
    assert sorted(siblings) == ["_qr", "_sparse_kernels", "_sumsq"]
    for name in siblings:
        assert _imports_of(ROOT / f"worker/{name}.py") <= {
            "__future__", "math", "numpy", "scipy", "scipy.linalg", "scipy.sparse",
            "_sumsq"}, name


def _imports_of(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_local_state_is_ignored_and_cleaned():
    """SQLite's side files are ignored; `make clean` removes the demo's data; `make demo`
    installs the dashboard extra (its embedded cluster then has a Dask dashboard)."""
    names = ["jobs.sqlite", "jobs.sqlite-wal", "jobs.sqlite-shm", ".demo/x.zarr"]
    out = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=ROOT,
                         capture_output=True, text=True)
    assert sorted(out.stdout.split()) == sorted(names)
    clean = subprocess.run(["make", "-n", "clean"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout
    assert ".demo" in clean.split()
    demo = subprocess.run(["make", "-n", "-B", "demo"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    assert ".[dev,xarray,dashboard]" in demo


def test_readme_quickstart_says_how_to_stop_the_service():
    readme = (ROOT / "README.md").read_text()
    quickstart = readme[:readme.index("<!-- toc -->")]
    started = quickstart.index("svdserve serve &")
    assert "kill %1" in quickstart[started:]
    assert "http://127.0.0.1:8000/" in quickstart  # the pages' address it prints
