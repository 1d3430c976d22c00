"""The package's import graph follows its layers (README "Architecture"): parsed with ``ast``, every
import a module makes (at import time or inside a function; not those under ``TYPE_CHECKING``, which only
annotate) goes to its own layer or a lower one, and the modules that matter form no cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Installed names -> folders (pyproject maps edgereason.convert onto the top-level convert/).
PACKAGES = {
    "edgereason": ROOT / "edgereason",
    "edgereason.convert": ROOT / "convert",
}  # app/ is edgereason/app

# Lowest first. A module may import its own layer and the ones below, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "errors", "result", "chat", "answers", "signals", "structured", "gguf_meta", "sandbox",
            "evaldata", "data_ood", "model_resolve", "peer",
        ),
    ),
    ("request", ("job", "tools", "options", "adapters", "models")),
    ("backends", ("backends",)),
    ("scheduling", ("scheduler", "prefix_cache")),
    ("strategies", ("strategies",)),
    ("engines", ("surface", "engine", "remote")),
    ("api", ("", "loading")),  # "": the package itself (load, the public names)
    ("surfaces", ("server", "cli", "eval", "bench", "app", "convert", "__main__")),
]  # fmt: skip
# The one upward edge, and why: a PEFT adapter folder handed to the runtime is converted on load when the
# convert extra is installed (adapters.adapter_gguf imports it lazily; without it, one clear error).
ALLOWED_UPWARD = {("edgereason.adapters", "edgereason.convert.lora_export")}
# Pairs that must never import each other both ways (at any depth of their modules).
NO_CYCLES = [
    ("edgereason.strategies", "edgereason.backends"),
    ("edgereason.strategies.budget", "edgereason.strategies.generate"),
    ("edgereason.engine", "edgereason.strategies"),
    ("edgereason.remote", "edgereason.engine"),
]


def _modules() -> dict[str, tuple[Path, bool]]:
    mods: dict[str, tuple[Path, bool]] = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            parts = [p for p in f.relative_to(folder).with_suffix("").parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if name.startswith("edgereason.data."):
                continue
            mods[name] = (f, f.name == "__init__.py")
    return mods


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, is_pkg: bool) -> list[tuple[str, int]]:
    """(imported edgereason module, line) for every import outside TYPE_CHECKING blocks."""
    out: list[tuple[str, int]] = []

    def resolve(target: str) -> str | None:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for c in child.orelse:
                    visit(c)
                continue
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    mod = child.module or ""
                for a in child.names:  # `from . import x` imports the submodule x
                    sub = f"{mod}.{a.name}"
                    out.append((sub if sub in MODULES else mod, child.lineno))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return [(m, line) for m, line in ((resolve(t), ln) for t, ln in out if t.startswith("edgereason")) if m]


GRAPH = {name: _imports(name, path, is_pkg) for name, (path, is_pkg) in MODULES.items()}


def layer_of(module: str) -> int:
    rel = module.removeprefix("edgereason").removeprefix(".")
    head = rel.split(".")[0]
    for i, (_, heads) in enumerate(LAYERS):
        if head in heads:
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and README's Architecture)")


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        layer_of(name)


def test_no_upward_imports() -> None:
    upward = [
        f"{src}:{line} ({LAYERS[layer_of(src)][0]}) imports {dst} ({LAYERS[layer_of(dst)][0]})"
        for src, edges in GRAPH.items()
        for dst, line in edges
        if layer_of(dst) > layer_of(src) and (src, dst) not in ALLOWED_UPWARD
    ]
    assert upward == []


def _reaches(src_prefix: str, dst_prefix: str) -> list[str] | None:
    """A path of imports from a module under ``src_prefix`` to one under ``dst_prefix``, if any."""

    def under(m: str, prefix: str) -> bool:
        return m == prefix or m.startswith(prefix + ".")

    starts = [m for m in GRAPH if under(m, src_prefix)]
    seen: dict[str, list[str]] = {m: [m] for m in starts}
    todo = list(starts)
    while todo:
        m = todo.pop()
        for dst, _ in GRAPH[m]:
            if under(dst, dst_prefix) and not under(dst, src_prefix):
                return [*seen[m], dst]
            if dst not in seen and not under(dst, dst_prefix):
                seen[dst] = [*seen[m], dst]
                todo.append(dst)
    return None


@pytest.mark.parametrize(("a", "b"), NO_CYCLES)
def test_no_cycle_between(a: str, b: str) -> None:
    forward, back = _reaches(a, b), _reaches(b, a)
    assert forward is None or back is None, f"{' -> '.join(forward or [])} and {' -> '.join(back or [])}"


def test_no_import_cycles_between_runtime_modules() -> None:
    """Import-time edges only (a lazy import inside a function cannot deadlock a module's import)."""
    eager = {name: {dst for dst, _ in _eager(name)} - {name} for name in GRAPH}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def dfs(m: str, path: list[str]) -> bool:
        state[m] = 1
        for d in sorted(eager.get(m, ())):
            if d.startswith(m + ".") or m.startswith(d + "."):  # a package and its own submodules
                continue
            if state.get(d) == 1:
                cycle.extend([*path[path.index(d) :], d] if d in path else [m, d])
                return True
            if state.get(d) is None and dfs(d, [*path, d]):
                return True
        state[m] = 2
        return False

    for m in sorted(eager):
        if state.get(m) is None and dfs(m, [m]):
            break
    assert cycle == [], " -> ".join(cycle)


def _eager(name: str) -> list[tuple[str, int]]:
    """Imports at module level (not inside a function or a TYPE_CHECKING block)."""
    path, is_pkg = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    body: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.If) and _is_type_checking(node):
            body.extend(node.orelse)
        elif isinstance(node, ast.Try):
            body.extend([*node.body, *(s for h in node.handlers for s in h.body)])
        else:
            body.append(node)
    lines = {n.lineno for n in body if isinstance(n, (ast.Import, ast.ImportFrom))}
    return [(dst, line) for dst, line in GRAPH[name] if line in lines]


def test_import_edgereason_stays_light() -> None:
    """The runtime's import brings no training stack, no web framework and no UI."""
    heavy = ("torch", "transformers", "peft", "fastapi", "gradio", "httpx")
    code = f"import edgereason, sys; print(sorted(set({heavy!r}) & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
