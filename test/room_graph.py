"""The package's import graph, by module and by room, and the cycles in it.

A room is a subpackage or a top-level module of `petseg/` (`petseg.evaluation.scoring` lies
in room `evaluation`, `petseg.config` in room `config`, the package's own `__init__` in room
`petseg`). Imports are read from the source with `ast`, at module level and inside
functions alike, so a lazy import counts as much as one at the top.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Set
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "petseg"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """Dotted name of the module at `path` (a package's `__init__.py` names the package)."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks (never run)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return inside


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The module a `from ... import` names, relative ones resolved against `importer`."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def import_graph(package: Path = PACKAGE, typing: bool = False) -> dict[str, set[str]]:
    """Module of `package` -> the modules of `package` it imports anywhere (module level or
    inside functions); imports under `if TYPE_CHECKING:` only when `typing`."""
    paths = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text())
        skip = set() if typing else _type_checking_nodes(tree)
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(node, name, path.name == "__init__.py")
                targets.update(f"{source}.{a.name}" if f"{source}.{a.name}" in paths
                               else source for a in node.names)
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def room_of(module: str) -> str:
    """The room of a dotted module name: `petseg.io.dicom` -> `io`, `petseg.config` ->
    `config`, `petseg` -> `petseg`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def room_graph(graph: Mapping[str, Set[str]]) -> dict[str, set[str]]:
    """Room -> the other rooms its modules import, from a module graph (`import_graph`)."""
    rooms: dict[str, set[str]] = {room_of(m): set() for m in graph}
    for module, targets in graph.items():
        rooms[room_of(module)].update(room_of(t) for t in targets)
    for room, targets in rooms.items():
        targets.discard(room)
    return rooms


def cycles(graph: Mapping[str, Set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one node (Tarjan), in the order found
    when the nodes are visited sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def room_cycle_edges(graph: Mapping[str, Set[str]]) -> list[str]:
    """'importer -> imported' for each module import that links two rooms of one room cycle
    (the imports to remove to break them), sorted; [] when the rooms import in no circle."""
    tangled = {room: component for component in cycles(room_graph(graph)) for room in component}
    return sorted(f"{module} -> {target}" for module, targets in graph.items()
                  for target in targets
                  if room_of(module) != room_of(target)
                  and tangled.get(room_of(module)) is tangled.get(room_of(target)) is not None)
