"""The layer rule: annotate/ (data layer and labeling app) never imports rlhf/, torch or transformers, so the
labeling server runs without the training stack. Models reach the app through callables the entry point wires in.
And no import cycles between the modules of annotate/ and rlhf/: every dependency runs one way."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("rlhf", "torch", "transformers", "trl", "peft", "accelerate")
PACKAGES = ("annotate", "rlhf")


def imported_modules(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def test_annotate_imports_nothing_from_the_training_stack():
    bad = [f"{p.name}: {m}" for p in sorted((ROOT / "annotate").glob("*.py")) for m in imported_modules(p)
           if m.split(".")[0] in FORBIDDEN]  # fmt: skip
    assert bad == []


def test_labeling_app_modules_load_without_the_training_stack():
    # A fresh interpreter: importing the app's modules must not pull torch or rlhf in indirectly either.
    code = (
        "import sys, annotate.ui, annotate.api, annotate.web, annotate.export, annotate.audit, annotate.active;"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def source_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of PACKAGES (a package is named by its __init__.py)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def internal_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that module `name` imports anywhere in its source: at the top, inside functions
    and under `if TYPE_CHECKING` (a dependency even when not run). `from pkg import x` counts as importing pkg.x
    when that is a module, else pkg; relative imports are resolved."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[: len(package) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import annotate.x.y` where only annotate.x is a module
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a closed path through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the number of modules (under 100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [cycle_path(graph, comp) for comp in components]


def cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle inside a strongly connected component, as a -> b -> ... -> a (shortest back to the start)."""
    start, members = component[0], set(component)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth first from start until an edge leads back to it
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start]  # graphs hold no self-imports
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return component


def test_import_graph_walker_sees_every_kind_of_import():
    # The walker itself: from-imports of modules, relative imports, imports inside functions and TYPE_CHECKING.
    mods = source_modules()
    assert "rlhf.distill_report" in internal_imports("rlhf.distill", mods["rlhf.distill"], mods)  # in a function
    assert "annotate.active" in internal_imports("annotate.sampler", mods["annotate.sampler"], mods)
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    mods = source_modules()
    graph = {name: internal_imports(name, path, mods) for name, path in mods.items()}
    cycles = import_cycles(graph)
    assert cycles == [], "import cycles (imports inside functions and under TYPE_CHECKING count): " + "; ".join(
        " -> ".join(c) for c in cycles
    )
