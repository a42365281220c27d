"""Code health: no function longer than 60 lines of code, the literals named once,
imports that point one way.

Lines of code: lines of the function (nested functions included) that are
neither blank, nor comments, nor its docstring, nor argparse declarations
(``add_argument``/``add_parser`` calls, which are long by nature).

Imports: within each part (``worker/``, ``service/``, ``client/``) the modules
import each other without a cycle, and no module imports a private name
(``_x``) of another; a part imports another part only through its ``__all__``.
Every import statement counts: relative or absolute, at module level, inside a
function or under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
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


# --- imports: no cycle inside a part, no private name across modules -------------------

PARTS = ("worker", "service", "client")
#: Which other parts each part may import (``service → worker``; the client talks HTTP).
MAY_IMPORT = {"worker": set(), "service": {"worker"}, "client": set()}
#: Modules of the top package ``svdserve`` that every part may import (README: "Layout
#: and development": the one module all three share).
SHARED = {"svdserve._manifest"}


def _modules(part: str) -> dict[str, Path]:
    """The modules of a part by name (``__init__`` is the package's own namespace)."""
    return {path.stem: path for path in sorted((REPO / part).glob("*.py"))}


def _absolute(part: str, node: ast.ImportFrom) -> str:
    """The dotted module an ``import from`` names, relative levels resolved in the part."""
    if not node.level:
        return node.module or ""
    base = ["svdserve", part][: max(0, 3 - node.level)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(part: str) -> Iterator[tuple[str, int, str, tuple[str, ...]]]:
    """Every import of the part's modules as ``(module, line, target, names)``.

    ``target`` is the absolute dotted module; ``names`` what is taken from it
    (empty for a plain ``import``).
    """
    for name, path in _modules(part).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield name, node.lineno, alias.name, ()
            elif isinstance(node, ast.ImportFrom):
                names = tuple(alias.name for alias in node.names)
                yield name, node.lineno, _absolute(part, node), names


def import_graph(part: str) -> dict[str, set[str]]:
    """Module → the modules of the same part it imports (``x`` in ``svdserve.<part>.x``).

    Taking a name from the package itself (``from . import name`` when ``name``
    is not a module) is an edge to ``__init__``.
    """
    modules = _modules(part)
    package = f"svdserve.{part}"
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, _line, target, names in _imports(part):
        if target == package:
            graph[name] |= {n if n in modules else "__init__" for n in names or ("__init__",)}
        elif target.startswith(package + "."):
            graph[name].add(target[len(package) + 1:].split(".")[0])
    return graph


def import_cycles(part: str) -> list[tuple[list[str], list[str]]]:
    """Per group of modules that import each other (a strongly connected component):
    one cycle in it, as a module chain back to its first module, and all its modules."""
    graph = import_graph(part)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = {stack.pop()}
            while node not in group:
                group.add(stack.pop())
            if len(group) > 1 or node in graph[node]:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [(_cycle_in(graph, group), sorted(group)) for group in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest chain ``[a, b, ..., a]`` inside one strongly connected group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no cycle through {start!r} in {sorted(group)}")  # pragma: no cover


def _public_names(part: str) -> set[str]:
    """The names ``svdserve.<part>.__all__`` lists."""
    return set(importlib.import_module(f"svdserve.{part}").__all__)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _owner(target: str) -> str:
    """Whose module an import names: a part, ``"svdserve"`` (the top package) or ``""``."""
    parts = target.split(".")
    if parts[0] != "svdserve":
        return ""
    return parts[1] if len(parts) > 1 and parts[1] in PARTS else "svdserve"


def _inside_violation(part: str, target: str, names: tuple[str, ...]) -> str:
    """Why an import of the part's own modules (or of the top package) breaks the rules."""
    if target in (f"svdserve.{part}", "svdserve"):  # from . import x: modules may be private
        home = set(_modules(part)) if target != "svdserve" else set()
        taken = [n for n in names if _private(n) and n not in home
                 and f"{target}.{n}" not in SHARED]
    else:
        taken = [n for n in names if _private(n)]
        if _owner(target) == "svdserve" and target not in SHARED and any(
                _private(p) for p in target.split(".")):
            return f"imports the private module {target} (share it in SHARED, or make it public)"
    return f"imports the private name(s) {taken} from {target}" if taken else ""


def _across_violation(part: str, target: str, names: tuple[str, ...]) -> str:
    """Why an import of another part breaks the rules: only names in its ``__all__``."""
    other = _owner(target)
    if other not in MAY_IMPORT[part]:
        allowed = sorted(MAY_IMPORT[part]) or "no other part"
        return f"imports {target}, but {part}/ may import {allowed}"
    if target != f"svdserve.{other}":
        return (f"imports {list(names) or target} from {target}, a module inside another part: "
                f"take public names from svdserve.{other} (its __all__)")
    outside = sorted(set(names) - _public_names(other))
    return f"imports {outside} from svdserve.{other}, not in its __all__" if outside else ""


def private_imports(part: str, *, across: bool) -> list[str]:
    """Imports that break the import rules, as ``part/file.py:line: why``.

    ``across=False``: imports of the part's own modules and of the top package,
    which take no private name (``_x``) from another module; ``across=True``:
    imports of another part, which name only that part's ``__all__``.
    """
    out = []
    for name, line, target, names in _imports(part):
        owner = _owner(target)
        if across and owner in PARTS and owner != part:
            why = _across_violation(part, target, names)
        elif not across and owner in (part, "svdserve"):
            why = _inside_violation(part, target, names)
        else:
            continue
        if why:
            out.append(f"{part}/{name}.py:{line}: {why}")
    return out


@pytest.mark.parametrize("part", ["worker", "service", "client"])
def test_no_import_cycle_inside_a_part(part):
    cycles = [" -> ".join(chain) + (f" (the cycles join all of {members})"
                                    if len(members) > len(chain) - 1 else "")
              for chain, members in import_cycles(part)]
    assert not cycles, (f"import cycles among the modules of {part}/ (imports inside functions "
                        "and under TYPE_CHECKING count): " + "; ".join(cycles)
                        + ". Move what both sides need into a lower module.")


@pytest.mark.parametrize("part", ["worker", "service", "client"])
def test_no_private_name_imported_from_another_module(part):
    bad = private_imports(part, across=False)
    assert not bad, ("private names imported from another module (make them public in their "
                     "home module):\n" + "\n".join(bad))


@pytest.mark.parametrize("part", ["worker", "service", "client"])
def test_other_parts_imported_only_through_their_all(part):
    bad = private_imports(part, across=True)
    assert not bad, ("imports of another part outside its __all__ (add the name to that part's "
                     "__all__, or do not import the part):\n" + "\n".join(bad))
