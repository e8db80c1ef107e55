"""gatattn.inspect's public names, its one-way layering, and the old module paths that re-export it
(gatattn.analysis, gatattn.export, gatattn.plot)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gatattn as ga
import gatattn.inspect as gi

INSPECT = Path(gi.__file__).parent

# every public name each old module had before the inspect package existed
OLD_NAMES = {
    "analysis": [
        "HeadSpec",
        "LayerInput",
        "adjusted_matrices",
        "attention_entropy",
        "attention_flow",
        "attention_matrix",
        "attention_rollout",
        "check_weights_sum",
        "pagerank",
        "strength",
        "top_edges",
    ],
    "export": [
        "MAX_WRITE_EDGES",
        "WRITERS",
        "EdgeArrays",
        "HeadSpec",
        "adjusted_matrices",
        "from_networkx",
        "layered_graph",
        "read_graph",  # added with the lossless XML escape
        "to_networkx",
        "write_graph",
    ],
    "plot": ["attention_html", "graph", "heatmap"],  # attention_html: added with the HTML view
}


@pytest.mark.parametrize("module", sorted(OLD_NAMES))
def test_old_module_paths_re_export_the_same_objects(module: str) -> None:
    old = getattr(ga, module)  # ga.analysis, ga.export, ga.plot stay attributes of the package
    assert old.__name__ == f"gatattn.{module}"
    new = getattr(gi, module)
    for name in OLD_NAMES[module]:
        obj = getattr(old, name)
        assert obj is getattr(new, name, None) or obj is getattr(gi.matrices, name), name
    assert sorted(old.__all__) == sorted(OLD_NAMES[module])


def test_old_modules_define_nothing() -> None:
    for module in OLD_NAMES:
        tree = ast.parse(Path(getattr(ga, module).__file__).read_text())
        kinds = {type(node).__name__ for node in tree.body}
        assert kinds <= {"Expr", "ImportFrom", "Assign"}, (
            module,
            kinds,
        )  # docstring, imports, __all__
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                assert node.level == 1 and (node.module or "").startswith("inspect."), module
            if isinstance(node, ast.Assign):
                assert [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__all__"]


def test_documented_import_forms() -> None:
    from gatattn.analysis import attention_matrix, pagerank
    from gatattn.export import MAX_WRITE_EDGES, to_networkx
    from gatattn.plot import graph, heatmap

    assert attention_matrix is gi.attention_matrix and pagerank is gi.pagerank
    assert to_networkx is ga.to_networkx is gi.to_networkx and MAX_WRITE_EDGES == 100_000
    assert heatmap is gi.plot.heatmap and graph is gi.plot.graph
    for name in ("attention_flow", "attention_rollout", "layered_graph", "write_graph"):
        assert getattr(ga, name) is getattr(gi, name), name
    assert ga.from_networkx is gi.from_networkx


def test_inspect_all_is_complete_and_defined_inside() -> None:
    for name in gi.__all__:
        obj = getattr(gi, name)
        module = getattr(obj, "__module__", None)
        if isinstance(obj, type) or hasattr(obj, "__code__"):  # classes and functions
            assert module.startswith("gatattn.inspect."), (name, module)
    public = {n for n in vars(gi) if not n.startswith("_")} - {"annotations"}
    assert public == set(gi.__all__)
    # plot's names stay under gi.plot (``graph`` alone would say too little), as in ga.plot
    assert {"graph", "heatmap"}.isdisjoint(gi.__all__)
    for sub in (gi.matrices, gi.graphs, gi.export, gi.analysis):
        assert set(sub.__all__) <= set(gi.__all__) | {"WRITERS"}, sub.__name__
    assert set(gi.xmltext.__all__) <= set(gi.__all__)


def _inspect_imports(path: Path) -> set[str]:
    """The gatattn.inspect modules that one module imports (anywhere in it, relative imports)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_modules_import_one_way_and_no_private_names() -> None:
    want = {
        "matrices": set(),
        "xmltext": set(),
        "graphs": {"matrices"},
        "export": {"graphs", "xmltext"},
        "analysis": {"matrices", "graphs"},
        "plot": {"matrices", "html"},
        "html": {"matrices", "_html_template"},
        "sparse": set(),
        "extract": {"sparse"},
        "stream": {"sparse", "xmltext"},
    }
    for name, allowed in want.items():
        path = INSPECT / f"{name}.py"
        assert _inspect_imports(path) == allowed, name
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, (name, private)


def test_import_gatattn_stays_light() -> None:
    code = (
        "import sys, gatattn; gatattn.inspect.export; "
        "print(sorted(m for m in ('matplotlib', 'networkx', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
