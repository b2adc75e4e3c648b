"""The package's import graph: no module imports one that imports it back (issue 19: one clean story)."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "deepfake_explain"


def imports_of(path: Path) -> set[str]:
    "The package modules `path` imports anywhere in it (top level or inside functions)."
    mods = set()
    for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module: mods.add(n.module.split(".")[0])
        elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("deepfake_explain."): mods.add(n.module.split(".")[1])
    return mods


def test_no_import_cycles():
    mods = {p.stem: p for p in PKG.glob("*.py") if not p.stem.startswith("_")}
    graph = {m: (imports_of(p) & set(mods)) - {m} for m, p in mods.items()}
    assert graph["core"] == set() and graph["metrics"] == set(), graph  # the shared helpers import nothing of the package
    cycles = set()
    def walk(start, node, path):
        for nxt in graph[node]:
            if nxt == start: cycles.add(tuple(sorted(path)))
            elif nxt not in path: walk(start, nxt, path + [nxt])
    for m in graph: walk(m, m, [m])
    assert not cycles, f"import cycles: {sorted(cycles)}"
