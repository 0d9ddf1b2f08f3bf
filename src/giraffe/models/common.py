"""Helpers every model family shares: building an embedding, and the initial weights.

Knows nothing of any one architecture's wiring.
"""

from __future__ import annotations

import torch
from torch import nn


def embedding(rows: int, dim: int) -> nn.Embedding:
    """An nn.Embedding whose weights `init_weights` (or a loader) fills in."""
    # Given storage, nn.Embedding skips its own random init (init_weights does it), which
    # on the meta device would import torch._dynamo: over a second per model load.
    return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))


def init_weights(module: nn.Module) -> None:
    """GPT-2 / BERT / Llama initialisation: N(0, 0.02) weights, zero biases (use with .apply)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
