"""Imports point one way: the module graph of fbnet_zoo/, search/ and detection/ (installed as
fbnet_zoo.search / fbnet_zoo.detection) has no cycle. Function-level imports count (an import
moved into a function to dodge a cycle is still a cycle); ``if TYPE_CHECKING:`` imports do not."""

import ast
import os
from typing import Dict, List, Optional, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"fbnet_zoo": "fbnet_zoo", "search": "fbnet_zoo.search", "detection": "fbnet_zoo.detection"}


def _modules() -> Dict[str, str]:
    """module name -> file path, for every .py file of the three packages."""
    out = {}
    for folder, dotted in PACKAGES.items():
        base = os.path.join(ROOT, folder)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
            rel = os.path.relpath(dirpath, base)
            pkg = dotted if rel == "." else dotted + "." + rel.replace(os.sep, ".")
            for name in filenames:
                if name.endswith(".py"):
                    out[pkg if name == "__init__.py" else f"{pkg}.{name[:-3]}"] = os.path.join(dirpath, name)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth, outside ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _canonical(name: str) -> str:
    """``search.x`` / ``detection.x`` written absolutely are the installed fbnet_zoo.* modules."""
    head = name.split(".")[0]
    if head in ("search", "detection"):
        return "fbnet_zoo." + name
    return name


def import_graph() -> Dict[str, Set[str]]:
    modules = _modules()
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_pkg = path.endswith("__init__.py")
        package = module if is_pkg else module.rpartition(".")[0]
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in _imports(tree):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [_canonical(a.name) for a in node.names]
            else:
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1])
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = _canonical(node.module or "")
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in modules else source)
            for target in targets:
                # "import a.b.c" needs the longest known prefix
                while target and target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                if target in modules and target != module:
                    graph[module].add(target)
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle as a path [a, b, ..., a], or None."""
    state: Dict[str, int] = {}
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_checker_finds_a_cycle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    tree = ast.parse("import os\ndef f():\n    from .x import y\nif TYPE_CHECKING:\n    import z\n")
    found = [n.module if isinstance(n, ast.ImportFrom) else n.names[0].name for n in _imports(tree)]
    assert sorted(found) == ["os", "x"]


def test_the_core_map_points_down():
    graph = import_graph()
    assert "fbnet_zoo.registry" not in graph["fbnet_zoo.spec"] and "fbnet_zoo.model" not in graph["fbnet_zoo.spec"]
    assert graph["fbnet_zoo.errors"] == set()
    assert "fbnet_zoo.factory" in graph["fbnet_zoo"]


def test_the_package_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
