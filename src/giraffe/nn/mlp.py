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
        self.activation = activation
        if self.gated:
            self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](x)

    def forward(self, x: torch.Tensor, fast=None) -> torch.Tensor:
        """fast: a layer's packed kernels (`.gate_up(x)` -> (gate, up) or None;
        giraffe.quant.runtime.LayerKernels); None = this module's own projections."""
        if not self.gated:
            return self.down_proj(self.act(self.up_proj(x)))
        if fast is not None and fast.gate_up is not None:
            gate, up = fast.gate_up(x)  # one packed product for both
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act(gate) * up)
