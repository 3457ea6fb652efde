"""The project modules a stage's code is made of: its import closure within `workflow_scripts`.

The rules list these files as inputs, so that editing any module a stage imports (a loss, the
tokenisation, a judge) reruns exactly the stages that run it, and what depends on them. Imports
inside functions count too (the stages import heavy modules lazily). Kept free of torch.
"""
from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


@cache
def _direct(module: str) -> frozenset[str]:
    """Project modules that `module` imports anywhere in its body."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(), filename=f"{module}.py")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.level == 0 and node.module and node.module.split(".")[0] == PACKAGE.name):
                base = (node.module or "").removeprefix(PACKAGE.name).strip(".")
                names = [base] if base else [a.name for a in node.names]
                found.update(n.split(".")[0] for n in names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith(PACKAGE.name + "."))
    return frozenset(m for m in found if (PACKAGE / f"{m}.py").is_file())


def import_closure(module: str) -> list[Path]:
    """`module`'s file and every project module it imports, directly or not, sorted."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(_direct(m))
    return sorted(PACKAGE / f"{m}.py" for m in seen)
