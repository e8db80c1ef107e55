"""The modules of the gatattn package import each other without cycles.

The test reads the source with ``ast`` and runs nothing, so an import that only happens on one
code path counts as well.

Nodes: every module of the package. A package is its ``__init__``, named by the package
(``gatattn/nn/__init__.py`` is ``gatattn.nn``).

Edges: all imports inside the package, wherever they stand: at the top level, inside functions
and methods, under ``if TYPE_CHECKING:`` and in ``try``/``except``. An import inside a function
still runs when the function runs, and a TYPE_CHECKING import is still a dependency that mypy
and readers follow. Both the relative forms (``from .x import y``, ``from . import x``,
``from ..x import y``) and the absolute ones (``import gatattn.x``, ``from gatattn.x import y``)
count. Imports from outside the package are ignored.

Each import becomes an edge to the module that defines what it imports:

1. ``from P import name``, where ``P.name`` is a module: the edge goes to ``P.name``. This
   covers ``from . import x`` too.
2. ``from P import name``, where P only re-exports ``name`` (P's top level binds it with an
   import, and P neither defines nor assigns it): the edge follows the re-export, link by link,
   to the module that defines ``name``. A package ``__init__`` that re-exports its submodules'
   names is therefore transparent: ``from ..nn import GraphAttention`` depends on
   ``gatattn.nn.attention``, not on everything that ``gatattn/nn/__init__.py`` imports. The
   same rule applies to re-export modules such as ``gatattn/plot.py``.
3. Any other ``from P import name`` (the name is defined in P, P uses ``import *``, or the
   name cannot be found): the edge goes to P itself.
4. ``import P`` or ``import P.Q``: the edge goes to that module.

Not counted: the implicit import of parent packages. Importing ``gatattn.nn.attention`` runs
``gatattn/__init__.py`` and ``gatattn/nn/__init__.py`` first, and the root ``__init__``
imports nearly everything, so counting those edges would put every module on a cycle through
``gatattn``. Python handles that pattern, since the package is already in ``sys.modules`` while
its ``__init__`` runs. A real cycle through an ``__init__`` still shows up: a module that imports
a name *defined* in a package ``__init__`` (rule 3) gets an edge to that ``__init__``. A package
``__init__`` that imports its own submodules is an ordinary edge, and it closes a cycle only if
one of those submodules really depends on the ``__init__``. Self-edges (a package ``__init__``
that imports a name it defines itself) are dropped.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

import gatattn

ROOT = Path(gatattn.__file__).resolve().parent  # the gatattn package folder
PACKAGE = "gatattn"


@dataclass(frozen=True)
class Module:
    name: str  # dotted name, e.g. "gatattn.inspect.export"
    is_package: bool  # an __init__.py
    tree: ast.Module


def _modules(root: Path) -> dict[str, Module]:
    found: dict[str, Module] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = Module(".".join(parts), is_package, ast.parse(path.read_text()))
    return found


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements that bind module-level names: the body, and inside if/try blocks (not
    inside defs or classes)."""
    out: list[ast.stmt] = []
    for stmt in body:
        out.append(stmt)
        if isinstance(stmt, ast.If):
            out += _top_level([*stmt.body, *stmt.orelse])
        elif isinstance(stmt, ast.Try):
            handlers = [s for h in stmt.handlers for s in h.body]
            out += _top_level([*stmt.body, *handlers, *stmt.orelse, *stmt.finalbody])
    return out


def _absolute(module: Module, level: int, target: str | None) -> str:
    """The dotted name that ``from <'.' * level><target> import ...`` refers to in ``module``."""
    if level == 0:
        return target or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]  # a plain module's "." is its package
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _defining_module(modules: dict[str, Module], package: str, name: str, seen: set) -> str:
    """Where ``from package import name`` leads, by rules 1-3 of the module docstring."""
    if f"{package}.{name}" in modules:  # rule 1: a submodule
        return f"{package}.{name}"
    module = modules.get(package)
    if module is None or (package, name) in seen:
        return package
    seen.add((package, name))
    source: tuple[str, str] | None = None
    for stmt in _top_level(module.tree.body):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if stmt.name == name:
                return package  # rule 3: defined here
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return package  # rule 3: assigned here
        elif isinstance(stmt, ast.ImportFrom):
            origin = _absolute(module, stmt.level, stmt.module)
            for alias in stmt.names:
                if alias.name == "*" and origin.startswith(PACKAGE):
                    return package  # rule 3: names from * are not resolved
                if (alias.asname or alias.name) == name and origin.split(".")[0] == PACKAGE:
                    source = (origin, alias.name)
    if source is None:
        return package  # rule 3
    return _defining_module(modules, *source, seen)  # rule 2: follow the re-export


def import_graph(root: Path = ROOT) -> nx.DiGraph:
    """Module -> module edges of the package in ``root``, each with the ``lines`` of its imports."""
    modules = _modules(root)
    G = nx.DiGraph()
    G.add_nodes_from(modules)
    for module in modules.values():
        for node in ast.walk(module.tree):  # every import, in functions and TYPE_CHECKING too
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
            elif isinstance(node, ast.ImportFrom):
                origin = _absolute(module, node.level, node.module)
                if origin.split(".")[0] != PACKAGE:
                    continue
                targets = [
                    origin if a.name == "*" else _defining_module(modules, origin, a.name, set())
                    for a in node.names
                ]
            for target in targets:
                if target != module.name and target in modules:
                    lines = G.get_edge_data(module.name, target, {}).get("lines", [])
                    G.add_edge(module.name, target, lines=[*lines, node.lineno])
    return G


def _describe(G: nx.DiGraph, cycle: list[tuple[str, str]]) -> str:
    return "\n".join(f"  {u} (line {G[u][v]['lines'][0]}) -> {v}" for u, v in cycle)


def test_package_has_no_import_cycles() -> None:
    G = import_graph()
    problems = []
    for component in nx.strongly_connected_components(G):
        if len(component) > 1:
            cycle = nx.find_cycle(G.subgraph(component))
            problems.append(f"{sorted(component)}; one cycle:\n{_describe(G, cycle)}")
    assert not problems, "import cycles in gatattn:\n" + "\n".join(problems)


# ------------------------------------------------------------------ the rules, on known modules
def test_rules_on_known_modules() -> None:
    G = import_graph()
    # rule 2: the re-export in gatattn/nn/__init__.py is followed to the defining module
    # (GraphAttention is defined in gatattn/nn/attention.py, Attention in gatattn/result.py)
    assert G.has_edge("gatattn.pyg", "gatattn.nn.attention")
    assert not G.has_edge("gatattn.pyg", "gatattn.nn")
    assert G.has_edge("gatattn.pretrained", "gatattn.result")
    # rule 1: a package __init__ importing its submodules is an edge to each of them
    assert G.has_edge("gatattn.inspect", "gatattn.inspect.plot")
    # the inspect layers import one way: matrices <- graphs <- export, analysis; plot reads matrices
    assert set(G.successors("gatattn.inspect.matrices")) == {"gatattn.result"}
    assert G.has_edge("gatattn.inspect.analysis", "gatattn.inspect.graphs")
    assert G.has_edge("gatattn.inspect.export", "gatattn.inspect.graphs")
    assert not G.has_edge("gatattn.inspect.graphs", "gatattn.inspect.export")
    assert not any(u.startswith("gatattn.inspect.") for u in G.predecessors("gatattn.inspect.plot"))
    # the re-export modules lead to the inspect package
    assert G.has_edge("gatattn.plot", "gatattn.inspect.plot")
    assert G.has_edge("gatattn.analysis", "gatattn.inspect.matrices")


def test_graph_finds_a_planted_cycle(tmp_path: Path) -> None:
    """The same walker on a tiny fake package: a cycle hidden in a function and TYPE_CHECKING."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\nfrom . import sub\n")
    (pkg / "a.py").write_text("def f():\n    from .sub.b import g\n    return g\n")
    (pkg / "sub" / "__init__.py").write_text("from .b import g\n__all__ = ['g']\n")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gatattn import f\ndef g(): ...\n"
    )
    G = import_graph(pkg)
    assert G.has_edge("gatattn.a", "gatattn.sub.b")  # inside a function
    assert G.has_edge("gatattn.sub.b", "gatattn.a")  # TYPE_CHECKING; `f` resolved through __init__
    assert G.has_edge("gatattn", "gatattn.sub")  # from . import sub
    assert not G.has_edge("gatattn.sub.b", "gatattn")  # re-export followed, not the __init__
    cycles = [c for c in nx.strongly_connected_components(G) if len(c) > 1]
    assert cycles == [{"gatattn.a", "gatattn.sub.b"}]


# ------------------------------------------------------------------ the layer order of the docs
ARCHITECTURE = ROOT.parent / "docs" / "architecture.md"
ROW = re.compile(r"^\|\s*(`[^|]*`)[^|]*\|\s*([^|]*?)\s*\|\s*$")
EVERYTHING = "any part except"


def part(module: str) -> str:
    """The part of the layer table a module belongs to: ``__init__.py`` (the root), ``graph.py``
    (a top-level module) or ``nn/`` (anything in a subpackage)."""
    names = module.split(".")[1:]
    if not names:
        return "__init__.py"
    if len(names) > 1 or (ROOT / names[0]).is_dir():
        return f"{names[0]}/"
    return f"{names[0]}.py"


def layer_table(path: Path = ARCHITECTURE) -> dict[str, set[str] | None]:
    """The table "Who may import whom" of docs/architecture.md: part -> the parts it may import
    (None: any part but those named after "any part except")."""
    text = path.read_text(encoding="utf-8")
    section = text.split("## Who may import whom", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str] | None] = {}
    for line in section.splitlines():
        m = ROW.match(line)
        if m is None:
            continue
        parts = re.findall(r"`([^`]+)`", m.group(1))
        cell = m.group(2)
        allowed = set(re.findall(r"`([^`]+)`", cell))
        for p in parts:
            assert p not in table, f"{p} is listed twice in the layer table"
            table[p] = None if cell.startswith(EVERYTHING) else allowed
    return table


def part_graph() -> nx.DiGraph:
    """The import graph between parts (imports inside a part are left out)."""
    G, P = import_graph(), nx.DiGraph()
    P.add_nodes_from(part(m) for m in G)
    for u, v, data in G.edges(data=True):
        if part(u) != part(v):
            P.add_edge(part(u), part(v), example=f"{u} (line {data['lines'][0]}) -> {v}")
    return P


def test_imports_follow_the_layer_table_of_the_docs() -> None:
    """Every import between parts is one that docs/architecture.md allows, every allowed one is
    used (the table stays exact), and every part of the package is in the table."""
    table, P = layer_table(), part_graph()
    assert set(P) == set(table), (
        f"parts missing from the table: {sorted(set(P) - set(table))}; "
        f"in the table but not in the package: {sorted(set(table) - set(P))}"
    )
    forbidden, unused = [], []
    for u in P:
        allowed = table[u]
        if allowed is None:  # the root: anything but the parts named after "any part except"
            continue
        forbidden += [P[u][v]["example"] for v in P.successors(u) if v not in allowed]
        unused += [f"{u} -> {v}" for v in sorted(allowed) if not P.has_edge(u, v)]
    assert not forbidden, "imports the layer table forbids:\n" + "\n".join(forbidden)
    assert not unused, "the layer table allows imports no module makes:\n" + "\n".join(unused)


def test_the_layer_table_is_an_order() -> None:
    """The table is acyclic, and its rules the issue names hold: nothing below nn/ imports nn/,
    kernels/ imports nothing of gatattn, and graph.py only what lies under it."""
    table = layer_table()
    T = nx.DiGraph()
    for u, allowed in table.items():
        T.add_node(u)
        T.add_edges_from((u, v) for v in allowed or ())
    assert nx.is_directed_acyclic_graph(T)
    assert table["kernels/"] == set()
    assert table["graph.py"] == {"graph_state.py", "validation.py"}
    below_nn = {"backends/", "scores/", "kernels/", "patterns/", "inspect/", "hf/", "result.py"}
    below_nn |= {"graph.py", "graph_state.py", "validation.py"}
    assert below_nn.isdisjoint(nx.ancestors(T, "nn/"))  # not even through another part
    root = {p for p, allowed in table.items() if allowed is None}
    assert root == {"__init__.py"}
    P = part_graph()
    barred = re.findall(r"`([^`]+)`", _root_cell())
    assert barred and not any(P.has_edge("__init__.py", p) for p in barred)


def _root_cell() -> str:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    return next(line for line in text.splitlines() if EVERYTHING in line and "__init__" in line)


def test_layer_table_parser_reads_a_planted_table(tmp_path: Path) -> None:
    """The parser on a small table: several parts in one row, an empty cell, the root row."""
    doc = tmp_path / "architecture.md"
    doc.write_text(
        "# A\n\n## Who may import whom\n\n| part | may import |\n|---|---|\n"
        "| `kernels/`, `validation.py` | nothing of gatattn |\n"
        "| `graph.py` (TokenGraph) | `validation.py` |\n"
        "| `__init__.py` | any part except `cli/` |\n\n## Next\n\n| `x.py` | `y.py` |\n"
    )
    assert layer_table(doc) == {
        "kernels/": set(),
        "validation.py": set(),
        "graph.py": {"validation.py"},
        "__init__.py": None,
    }
    assert (part("gatattn"), part("gatattn.graph"), part("gatattn.nn.attention")) == (
        "__init__.py",
        "graph.py",
        "nn/",
    )
