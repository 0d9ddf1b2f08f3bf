"""Imports point downward only (DESIGN.md): parse every module and check its giraffe imports."""

from __future__ import annotations

import ast
from pathlib import Path

import giraffe

SRC = Path(giraffe.__file__).parent

# Layer of each top-level part; a module may import only its own part or lower layers.
LAYERS = {
    "config": 0,
    "files": 0,
    "nn": 1,
    "models": 2,
    "tokenizer": 2,
    "formats": 3,
    "quant": 2,
    "generate": 3,
    "lm": 4,
    "embedder": 4,
    "train": 5,
    "rag": 5,
    "explain": 5,
    "eval": 5,
    "serve": 5,
    "chat_repl": 5,
    "commands": 6,
    "cli": 7,
}
# Pairs that must never meet even across layers (DESIGN.md).
FORBIDDEN = {("models", "tokenizer"), ("tokenizer", "models"), ("generate", "models")}


def part_of(module_path: Path) -> str:
    rel = module_path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def giraffe_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "giraffe" and len(parts) > 1 and parts[1] in LAYERS:
                found.add(parts[1])
    return found


def test_every_part_has_a_layer():
    parts = {part_of(p) for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC}
    assert parts <= set(LAYERS), f"add new packages to LAYERS: {parts - set(LAYERS)}"


def test_imports_point_downward():
    bad = []
    for path in SRC.rglob("*.py"):
        if path.parent == SRC and path.name == "__init__.py":
            continue  # the package facade re-exports lm lazily
        here = part_of(path)
        for target in giraffe_imports(path):
            if target == here:
                continue
            if LAYERS[target] >= LAYERS[here] or (here, target) in FORBIDDEN:
                bad.append(f"{path.relative_to(SRC)} imports giraffe.{target}")
    assert not bad, "imports must point downward:\n" + "\n".join(bad)


def test_nothing_imports_cli():
    users = [p for p in SRC.rglob("*.py") if p.name != "cli.py" and "cli" in giraffe_imports(p)]
    assert not users
