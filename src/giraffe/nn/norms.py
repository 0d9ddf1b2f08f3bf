"""Normalisation layers: RMSNorm (Zhang & Sennrich 2019, used by Llama) and LayerNorm.

Does not know which model uses which: `make_norm` takes the choice from the config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """weight * x / sqrt(mean(x^2) + eps) (float32 math, as Llama does; torch's fused kernel).

    offset: Gemma's variant multiplies by (offset + weight) with offset 1, the weight
    stored around zero, and does the whole product in float32 before casting back.
    """

    def __init__(self, dim: int, eps: float, offset: float = 0.0) -> None:
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.ones(dim) if offset == 0 else torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.offset:
            normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
            return (normed * (self.offset + self.weight.float())).to(x.dtype)
        if x.dtype == torch.float32:  # one fused op: the decode loop pays this 61 times a token
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return self.weight * normed


def make_norm(kind: str, dim: int, eps: float, bias: bool, offset: float = 0.0) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(dim, eps, offset)
    return nn.LayerNorm(dim, eps=eps, bias=bias)
