"""The room import graph of a small made-up package: lazy, relative and type-only imports,
rooms and the module imports that tie rooms into a cycle."""

from __future__ import annotations

from pathlib import Path

from room_graph import cycles, import_graph, room_cycle_edges, room_graph, room_of

FILES = {
    "__init__.py": "",
    "config.py": "from typing import TYPE_CHECKING\n"
                 "if TYPE_CHECKING:\n    from pkg.scoring.metrics import dice\n",
    "pipeline.py": "import pkg.config\nfrom pkg.phantom import case\n",
    "scoring/__init__.py": "",
    "scoring/metrics.py": "def dice():\n    from pkg.pipeline import run\n",
    "scoring/tables.py": "",
    "scoring/names.py": "from .metrics import dice\nfrom . import metrics, tables\n",
    "phantom/__init__.py": "from .case import draw\n",
    "phantom/case.py": "from pkg.scoring import tables\n",
}


def _package(root: Path) -> Path:
    for name, text in FILES.items():
        (root / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "pkg" / name).write_text(text)
    return root / "pkg"


def test_rooms_and_the_imports_that_tie_them_in_a_circle(tmp_path: Path) -> None:
    package = _package(tmp_path)
    graph = import_graph(package)
    assert graph == {
        "pkg": set(), "pkg.config": set(), "pkg.pipeline": {"pkg.config", "pkg.phantom.case"},
        "pkg.scoring": set(), "pkg.scoring.metrics": {"pkg.pipeline"},
        "pkg.scoring.tables": set(), "pkg.scoring.names": {"pkg.scoring.metrics",
                                                           "pkg.scoring.tables"},
        "pkg.phantom": {"pkg.phantom.case"},
        "pkg.phantom.case": {"pkg.scoring.tables"}}
    assert import_graph(package, typing=True)["pkg.config"] == {"pkg.scoring.metrics"}
    assert [room_of(m) for m in ("pkg", "pkg.config", "pkg.phantom.case")] == [
        "pkg", "config", "phantom"]
    assert room_graph(graph) == {"pkg": set(), "config": set(), "scoring": {"pipeline"},
                                 "pipeline": {"config", "phantom"}, "phantom": {"scoring"}}
    assert cycles(graph) == [] and cycles(room_graph(graph)) == [
        {"phantom", "pipeline", "scoring"}]
    assert room_cycle_edges(graph) == ["pkg.phantom.case -> pkg.scoring.tables",
                                       "pkg.pipeline -> pkg.phantom.case",
                                       "pkg.scoring.metrics -> pkg.pipeline"]
    (package / "scoring" / "metrics.py").write_text("def dice():\n    return 1\n")
    assert room_cycle_edges(import_graph(package)) == []
