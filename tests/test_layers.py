"""The package's import graph: no cycles, no module importing a layer above its own, and library code
never importing the applications (``cli``, ``jobs``, ``demo``). Module- and function-level imports count."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "python" / "imutune"

#: layer of each top-level part of the package, lowest first (a module may import its own layer and below)
LAYERS = {
    "_io": 0, "_validation": 0, "_host": 0, "metrics": 0, "plots": 0,
    "data": 1, "signal": 2, "models": 3, "train": 4, "personalize": 5, "deploy": 6, "runtime": 7,
    "codec": 8, "ondevice": 8, "fleet": 8,
    "bench": 9, "jobs": 10, "demo": 10, "rehearse": 10, "cli": 11,
}
APPLICATIONS = {"cli", "jobs", "demo", "rehearse"}


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imports(mod: str, path: Path, mods: dict[str, Path]) -> set[str]:
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                p = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(p + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n in mods and n != mod}
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, f, mods) for m, f in mods.items()}


def _part(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_part_has_a_layer():
    unknown = sorted({p for m in _graph() if (p := _part(m)) and p not in LAYERS})
    assert unknown == [], f"add these to LAYERS: {unknown}"


def test_no_import_cycles():
    graph = _graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_module_imports_a_layer_above_its_own():
    bad = []
    for mod, deps in _graph().items():
        p = _part(mod)
        if p is None:                      # imutune/__init__: the lazy public API, imports nothing eagerly
            continue
        for d in deps:
            q = _part(d)
            if q is not None and LAYERS[q] > LAYERS[p]:
                bad.append(f"{mod} -> {d}")
    assert bad == []


@pytest.mark.parametrize("app", sorted(APPLICATIONS))
def test_library_code_never_imports_the_applications(app):
    offenders = [m for m, deps in _graph().items()
                 if _part(m) not in APPLICATIONS and any(_part(d) == app for d in deps)]
    assert offenders == []
