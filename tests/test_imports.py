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
    "collector": 0,
    "forks": 0,
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


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses_across_parts(source: str, here: str) -> list[str]:
    """Private names a module of part `here` takes from another giraffe part: `from
    giraffe.x import _y`, `import giraffe.x._y`, or `_y` read off a module imported from
    another part."""
    tree, found = ast.parse(source), []
    modules = {}  # local name -> the giraffe part of the module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "giraffe" or len(parts) < 2 or parts[1] == here:
                continue
            if any(_private(p) for p in parts):
                found.append(f"from {node.module} import ...")
            for a in node.names:
                if _private(a.name):
                    found.append(f"from {node.module} import {a.name}")
                modules[a.asname or a.name] = parts[1]
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "giraffe" and len(parts) > 1 and parts[1] != here:
                    if any(_private(p) for p in parts):
                        found.append(f"import {a.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and _private(node.attr)
        ):
            found.append(f"{node.value.id}.{node.attr} (giraffe.{modules[node.value.id]})")
    return found


def test_no_private_name_is_imported_across_parts():
    bad = [
        f"{path.relative_to(SRC)}: {use}"
        for path in SRC.rglob("*.py")
        for use in private_uses_across_parts(path.read_text(encoding="utf-8"), part_of(path))
    ]
    assert not bad, "private names stay inside their package:\n" + "\n".join(bad)


def test_the_private_import_check_finds_one():
    source = (
        "from giraffe.quant.qat import _drop_fusions\n"
        "from giraffe.quant import kernels\n"
        "kernels._function('x')\n"
        "from giraffe.train.lora import _adapter\n"  # its own part: allowed
        "import giraffe.nn._hidden\n"
    )
    assert private_uses_across_parts(source, "train") == [
        "from giraffe.quant.qat import _drop_fusions",
        "import giraffe.nn._hidden",
        "kernels._function (giraffe.quant)",
    ]
