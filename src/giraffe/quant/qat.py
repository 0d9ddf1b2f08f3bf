"""Quantization-aware training: train through the rounding a block format will apply.

`fake_quantize(w, kind)` returns what `w` becomes after quantizing to a ggml block type
and back (Q8_0, Q4_0, Q4_1 - the same arithmetic as the `gguf` package's quantizers, bit
for bit, so a model trained this way and then written with `giraffe quantize` runs with
exactly the weights it was trained with). Its gradient is the straight-through estimator
(Bengio et al. 2013): rounding is treated as the identity on the way back.
`prepare_qat(model, kind)` replaces `nn.Linear` layers by `QATLinear` holding the same
Parameter objects (same state-dict keys, so checkpoints, savers and optimizers do not
notice); `strip_qat` puts plain `nn.Linear` layers back around them.
It knows nothing of training loops: an optimizer sees ordinary float parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QAT_KINDS = ("Q8_0", "Q4_0", "Q4_1")
BLOCK = 32


def fake_quantize(w: torch.Tensor, kind: str) -> torch.Tensor:
    """w (..., n) with n % 32 == 0 -> the dequantized blocks; gradient passes straight through."""
    kind = kind.upper()
    if kind not in QAT_KINDS:
        raise ValueError(f"fake quantization knows {', '.join(QAT_KINDS)}, not {kind}")
    if w.shape[-1] % BLOCK:
        raise ValueError(
            f"rows of {w.shape[-1]} weights do not split into blocks of {BLOCK}: "
            "leave this layer out of quantization-aware training"
        )
    return _StraightThrough.apply(w, kind)


class _StraightThrough(torch.autograd.Function):
    """Forward: the rounded weights, exactly (w + (r - w).detach() would be off by an ulp).
    Backward: the incoming gradient unchanged."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, kind: str) -> torch.Tensor:
        blocks = w.detach().float().reshape(-1, BLOCK)  # (N, 32)
        return _ROUNDERS[kind](blocks).reshape(w.shape).to(w.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1 / torch.where(d == 0, 1, d))


def _q8_0(blocks):
    d = blocks.abs().amax(dim=1, keepdim=True) / 127  # (N, 1)
    return _fp16(d) * torch.round(blocks * _inverse(d))  # round half to even, as numpy


def _q4_0(blocks):
    # The weight of largest magnitude maps to -8 exactly (ggml: d = max / -8).
    signed_max = blocks.gather(1, blocks.abs().argmax(dim=1, keepdim=True))  # (N, 1)
    d = signed_max / -8
    q = torch.trunc(blocks * _inverse(d) + 8.5).clamp(0, 15)
    return _fp16(d) * (q - 8)


def _q4_1(blocks):
    low, high = blocks.amin(dim=1, keepdim=True), blocks.amax(dim=1, keepdim=True)
    d = (high - low) / 15
    q = torch.trunc((blocks - low) * _inverse(d) + 0.5).clamp(0, 15)
    return _fp16(d) * q + _fp16(low)


_ROUNDERS = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1}


class QATLinear(nn.Linear):
    """nn.Linear whose forward uses the fake-quantized weight (parameters unchanged)."""

    def __init__(self, linear: nn.Linear, kind: str) -> None:
        """Take over `linear`'s own weight and bias (the same Parameter objects, so an
        optimizer or state dict holding them sees no change)."""
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, fake_quantize(self.weight, self.kind), self.bias)

    def plain(self) -> nn.Linear:
        """An nn.Linear holding the same weight and bias Parameters."""
        linear = nn.Linear(self.in_features, self.out_features, bias=False, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear


def prepare_qat(model: nn.Module, kind: str = "Q4_0", skip: tuple[str, ...] = ("head",)) -> int:
    """Make every nn.Linear (except names containing `skip` parts) quantization-aware.

    Returns how many layers were replaced. Layers whose rows do not split into blocks of 32
    stay as they are (as `giraffe quantize` keeps them float).
    """
    kind = kind.upper()
    if kind not in QAT_KINDS:
        raise ValueError(f"quantization-aware training knows {', '.join(QAT_KINDS)}, not {kind}")
    chosen = [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear
        and not any(s in name.split(".") for s in skip)
        and module.in_features % BLOCK == 0
    ]
    for name in chosen:
        _replace(model, name, lambda linear: QATLinear(linear, kind))
    # A packed runtime (giraffe.quant.runtime) needs no change: it runs only packed
    # layers, and the float nn.Linear layers replaced here always run as modules.
    return len(chosen)


def strip_qat(model: nn.Module) -> None:
    """Turn QATLinear layers back into nn.Linear (weights stay float; quantize them to deploy)."""
    chosen = [name for name, m in model.named_modules() if isinstance(m, QATLinear)]
    for name in chosen:
        _replace(model, name, QATLinear.plain)


def _replace(model: nn.Module, name: str, make) -> None:
    owner, _, attr = name.rpartition(".")
    parent = model.get_submodule(owner)
    old = getattr(parent, attr)
    setattr(parent, attr, make(old).train(old.training))
