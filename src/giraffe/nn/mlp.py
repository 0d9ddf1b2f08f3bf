"""Position-wise feed-forward blocks: gated (SwiGLU, Shazeer 2020) and plain (GPT-2, T5).

Knows only widths and an activation name; nothing about checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    # GPT-2's "gelu_new" is the tanh approximation (Hendrycks & Gimpel 2016).
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,  # the original Transformer's and T5 v1.0's
}


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, kind: str, activation: str, bias: bool) -> None:
        super().__init__()
        self.gated = kind == "gated"
        self.act = ACTIVATIONS[activation]
        if self.gated:
            self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        # Optional single call computing (gate, up); set by loaders of packed weights.
        self.fused_gate_up = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = (
                self.fused_gate_up(x)
                if self.fused_gate_up
                else (self.gate_proj(x), self.up_proj(x))
            )
            return self.down_proj(self.act(gate) * up)
        return self.down_proj(self.act(self.up_proj(x)))
