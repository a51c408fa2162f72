"""The layer rule: annotate/ (data layer and labeling app) never imports rlhf/, torch or transformers, so the
labeling server runs without the training stack. Models reach the app through callables the entry point wires in."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("rlhf", "torch", "transformers", "trl", "peft", "accelerate")


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
