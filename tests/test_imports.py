"""The import graph of datasel/ and scorers/ (read from the source with `ast`, imports inside
functions included): no circle, and no module imports one above it. Direction (DESIGN.md):
cli -> pipeline -> engine -> stages -> stage/io/ops/scorers."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("datasel", "scorers")
# higher imports lower, never the other way; modules not named here are held to no circle only
RANKS = {
    "datasel": 4,  # the package's public API imports everything below it
    "datasel.cli": 4,
    "datasel.pipeline": 3,
    "datasel.engine": 2,
    "datasel.stages": 1,
    **dict.fromkeys(
        [
            "datasel.stage",
            "datasel.step_folder",
            "datasel.io",
            "datasel.ops",
            "datasel.errors",
            "datasel.version",
            "datasel.bad_rows",
            "datasel.lock",
            "scorers",
        ],
        0,
    ),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in its code, except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip = {
        id(node)
        for guard in ast.walk(tree)
        if isinstance(guard, ast.If) and "TYPE_CHECKING" in ast.unparse(guard.test)
        for stmt in guard.body
        for node in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    found.add(sub)
                elif base in known:
                    found.add(base)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def rank(name: str) -> int | None:
    """The rank of a module, or of the package it is in ("datasel" itself only by its name)."""
    if name == "datasel":
        return RANKS[name]
    while name and name != "datasel":
        if name in RANKS:
            return RANKS[name]
        name = name.rpartition(".")[0]
    return None


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    bad = []
    for src, targets in edges.items():
        for dst in targets:
            r_src, r_dst = rank(src), rank(dst)
            if r_src is not None and r_dst is not None and r_dst > r_src:
                bad.append((src, dst))
    return sorted(bad)


def test_no_import_circle():
    edges = graph()
    cycle = find_cycle(edges)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_module_imports_one_above_it():
    edges = graph()
    assert edges["datasel.stages.dedup"] and edges["datasel.engine"]  # the graph was read
    assert upward(edges) == []


def test_the_checks_see_a_circle_and_an_upward_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert upward({"datasel.stages.x": {"datasel.engine.run"}}) == [
        ("datasel.stages.x", "datasel.engine.run")
    ]
    assert upward({"datasel.engine.run": {"datasel.stages.x"}}) == []


def private_imports(path: Path, package: str) -> list[str]:
    """`from <another project module> import _name` in `path` (dunder names are public)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and not node.level:
            base = node.module or ""
            if base.split(".")[0] in PACKAGES and base != package:
                found += [
                    f"{path.name}: {base}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    return found


def test_no_module_imports_another_modules_private_names(tmp_path):
    benchmarks = ((f"benchmarks.{p.stem}", p) for p in ROOT.glob("benchmarks/*.py"))
    files = [*modules().items(), *benchmarks]
    assert [hit for name, path in files for hit in private_imports(path, name)] == []
    probe = tmp_path / "probe.py"  # the check can fail
    probe.write_text("def f():\n    from datasel.io import _hidden, __version__\n")
    assert private_imports(probe, "datasel.stage") == ["probe.py: datasel.io._hidden"]
