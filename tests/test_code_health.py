"""Code health: no function longer than 60 lines of code, the literals named once.

Lines of code: lines of the function (nested functions included) that are
neither blank, nor comments, nor its docstring, nor argparse declarations
(``add_argument``/``add_parser`` calls, which are long by nature).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 60
_ARGPARSE = {"add_argument", "add_parser", "add_argument_group",
             "add_mutually_exclusive_group"}

#: Functions exempt from the limit ("path:name"); none is.
ALLOWED: set[str] = set()


def code_lines(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    skip: set[int] = set()
    first = node.body[0]
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        skip |= set(range(first.lineno, first.end_lineno + 1))
    for sub in ast.walk(node):
        if (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute)
                and sub.func.attr in _ARGPARSE):
            skip |= set(range(sub.lineno, sub.end_lineno + 1))
    return sum(1 for i in range(node.lineno, node.end_lineno + 1)
               if i not in skip and lines[i - 1].strip()
               and not lines[i - 1].strip().startswith("#"))


def long_functions(part: str) -> dict[str, int]:
    out = {}
    for path in sorted((REPO / part).glob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = code_lines(lines, node)
                if n > MAX_LINES:
                    out[f"{part}/{path.name}:{node.name}"] = n
    return out


@pytest.mark.parametrize("part", ["worker", "service", "client"])
def test_no_function_longer_than_60_lines(part):
    too_long = {name: n for name, n in long_functions(part).items() if name not in ALLOWED}
    assert not too_long, f"functions over {MAX_LINES} lines of code (split them): {too_long}"


def test_allowlist_is_not_stale():
    found = {name for part in ("worker", "service", "client") for name in long_functions(part)}
    assert ALLOWED <= found, f"no longer too long, drop from ALLOWED: {ALLOWED - found}"


def test_method_and_state_literals_agree():
    """One list per package (the client imports neither worker nor service): the same."""
    from svdserve.client import _literals
    from svdserve.service import _schemas, _states
    from svdserve.worker import _methods

    assert _literals.METHODS == _methods.METHODS == get_args(_methods.Method)
    assert _literals.STATES == _states.STATES == get_args(_schemas.JobState)
    assert _literals.TERMINAL_STATES == set(_states.TERMINAL)
    assert set(_methods.METHODS) == set(get_args(_schemas.JobCreate.model_fields["method"]
                                                 .annotation))
