"""The shape of the code, held as tests: the import graph (tools/import_graph.py) has no cycles,
nothing imports the CLI, only the CLI reaches into analysis from outside it, and modules stay small."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
import_graph = importlib.util.module_from_spec(spec)
sys.modules["import_graph"] = import_graph
spec.loader.exec_module(import_graph)
MAX_LINES = 310  # "modules under ~300 lines"


def test_the_import_graph_has_no_cycles():
    assert import_graph.cycles(import_graph.graph()) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "p": {"p.x"}, "p.x": {"p"}}
    assert import_graph.cycles(g) == [["a", "b", "c"]]  # a package importing its child is no cycle


def test_nothing_imports_the_cli_and_only_the_cli_imports_analysis():
    g = import_graph.graph()
    assert [m for m, deps in g.items() if "lora_repro.cli" in deps] == []
    outside = {
        m: sorted(d for d in deps if d.startswith("lora_repro.analysis"))
        for m, deps in g.items()
        if not m.startswith("lora_repro.analysis") and m != "lora_repro.cli"
    }
    assert {m: d for m, d in outside.items() if d} == {}


def test_modules_stay_small():
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for pkg in import_graph.PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
    }
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}
