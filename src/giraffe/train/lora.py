"""LoRA: train a low-rank update beside frozen linear layers (Hu et al. 2021).

A wrapped layer computes y = base(x) + (alpha / r) * B(A(dropout(x))) with A (r, in)
initialised as `nn.Linear` is (Kaiming-uniform, a = sqrt(5), as the LoRA paper's code and
PEFT do) and B (out, r) zero, so a fresh adapter changes nothing. The base may be an
`nn.Linear` or a packed `giraffe.quant.linear.QuantLinear` (QLoRA, Dettmers et al. 2023):
its blocks stay packed, its forward keeps the fast kernel, and gradients reach earlier
adapters through every packed layer (`QuantLinear` carries the gradient to its input,
dequantizing the weight in the backward pass instead of keeping a float copy).

`apply_lora` wraps layers by module-name suffix ("q_proj", "v_proj", ... or
"all-linear": every projection inside the blocks, never the output head or a packed
embedding), `merge_lora` / `unmerge_lora` fold the update into float weights and back,
`disable_adapters` runs the base alone (DPO's reference model without a second copy),
`strip_lora` returns plain layers. It knows nothing of files (`giraffe.train.adapter`
reads and writes the PEFT layout) nor of training loops: an optimizer sees ordinary
float parameters from `lora_parameters`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from giraffe.models import Decoder
from giraffe.quant.linear import QuantLinear
from giraffe.quant.runtime import PackedRuntime

ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class LoraConfig:
    r: int = 8  # rank of the update B @ A
    alpha: float = 16.0  # the update is scaled by alpha / r (so changing r keeps its size)
    dropout: float = 0.0  # dropout on the LoRA branch's input while training (base untouched)
    # module-name suffixes to wrap ("q_proj" matches layers.3.attn.q_proj), or ("all-linear",)
    targets: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        object.__setattr__(self, "targets", targets)  # frozen: normalise lists and strings once
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not math.isfinite(self.alpha) or self.alpha == 0:
            raise ValueError(f"LoRA alpha must be a finite nonzero number, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"LoRA targets must be non-empty module names, got {self.targets!r}")
        if ALL_LINEAR in targets and len(targets) > 1:
            raise ValueError(f'"{ALL_LINEAR}" already means every projection; list it alone')

    @property
    def scale(self) -> float:
        return self.alpha / self.r


class LoraLinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update (see the module docstring)."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, (nn.Linear, QuantLinear)):
            raise TypeError(f"LoRA wraps nn.Linear or QuantLinear, not {type(base).__name__}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.scale = r, float(alpha), alpha / r
        float_base = isinstance(base, nn.Linear)
        like = dict(
            dtype=base.weight.dtype if float_base else torch.float32,
            device=base.weight.device if float_base else base.device,
        )
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **like)  # weight (r, in)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **like)  # weight (out, r)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False  # True while B @ A is folded into base.weight
        self.disabled = False  # True: forward is the base alone
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged and self.disabled:
            raise RuntimeError("this LoRA layer is merged: unmerge it before disabling it")
        y = self.base(x)
        if self.merged or self.disabled:
            return y
        h = self.dropout(x.to(self.lora_A.weight.dtype))
        return y + (self.lora_B(self.lora_A(h)) * self.scale).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) * B @ A: (out, in), what merging adds to the base weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scale

    def merge(self) -> None:
        """Fold the update into the float weight (one matmul at inference; no adapter
        gradients while merged, since the base weight is frozen)."""
        if self.merged:
            return
        self._require_float_base("merge")
        with torch.no_grad():
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    def unmerge(self) -> None:
        """Subtract the update again: W returns to its value up to float rounding."""
        if not self.merged:
            return
        with torch.no_grad():
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def _require_float_base(self, what: str) -> None:
        if isinstance(self.base, QuantLinear):
            raise ValueError(
                f"cannot {what} LoRA into a {self.base.kind}-packed layer: re-quantizing would "
                "change the base weights. Keep the adapter separate, or load the model with "
                "packed=False (float weights) and merge there"
            )

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, merged={self.merged}, disabled={self.disabled}"


# ---- whole models ---------------------------------------------------------------------


def _linear_like(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, QuantLinear)) and not isinstance(module, LoraLinear)


def _in_blocks(name: str) -> bool:
    # "all-linear" = the transformer blocks' projections: not lm_head, MLM heads or the
    # QuantLinear table inside a packed embedding, whose update would change the vocabulary.
    return "layers" in name.split(".")


def find_targets(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Names of the linear layers the targets select; errors name what exists instead."""
    linears = {
        n: m
        for n, m in model.named_modules()
        if _linear_like(m) and ".lora_" not in n and not n.startswith("lora_")
    }
    if targets == (ALL_LINEAR,):
        found = [n for n in linears if _in_blocks(n)]
        if not found:
            raise ValueError("all-linear found no linear layers inside transformer blocks")
        return found
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in linears):
            raise ValueError(_unknown_target(model, t, linears))
    return [n for n in linears if any(n == t or n.endswith("." + t) for t in targets)]


def _unknown_target(model: nn.Module, target: str, linears: dict) -> str:
    other = [n for n, _ in model.named_modules() if n == target or n.endswith("." + target)]
    if other:
        kind = type(model.get_submodule(other[0])).__name__
        return f"LoRA target {target!r} is a module of type {kind}, not a linear layer"
    known = sorted({n.rsplit(".", 1)[-1] for n in linears})
    return (
        f"LoRA target {target!r} matches no linear layer in this model; it has "
        f"{', '.join(known)} (or use {ALL_LINEAR!r})"
    )


def apply_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Wrap the target layers in LoraLinear and freeze everything else; returns their names."""
    if any(isinstance(m, LoraLinear) for m in model.modules()):
        raise ValueError("this model already has LoRA layers: strip_lora(model) before adding more")
    names = find_targets(model, cfg.targets)
    for p in model.parameters():
        p.requires_grad_(False)
    # a packed runtime's fused products would bypass the wrappers: off while they go in
    runtime = _detach_runtime(model)
    for name in names:
        owner, _, attr = name.rpartition(".")
        parent = model.get_submodule(owner)
        base = getattr(parent, attr)
        wrapper = LoraLinear(base, cfg.r, cfg.alpha, cfg.dropout)
        setattr(parent, attr, wrapper.train(base.training))  # an eval model stays in eval
    # built anew around the wrappers: the compiled step adds each adapter beside its product
    _rebuild_runtime(model, runtime)
    return names


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            yield name, module


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' A and B matrices: what an optimizer should train."""
    return [p for _, m in lora_layers(model) for p in (m.lora_A.weight, m.lora_B.weight)]


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its float base weight (fast inference; refuse packed bases)."""
    layers = [m for _, m in lora_layers(model)]
    for m in layers:  # check all first: a half-merged model would be worse than none
        m._require_float_base("merge")
    for m in layers:
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for _, m in lora_layers(model):
        m.unmerge()


@contextmanager
def disable_adapters(model: nn.Module):
    """Within the block the model is its base alone; afterwards adapters are as before."""
    layers = [m for _, m in lora_layers(model)]
    merged = [m for m in layers if m.merged]
    was = [m.disabled for m in layers]
    for m in merged:
        m.unmerge()
    for m in layers:
        m.disabled = True
    try:
        yield model
    finally:
        for m, d in zip(layers, was, strict=True):
            m.disabled = d
        for m in merged:
            m.merge()


def strip_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replace every LoraLinear by its base layer, with the update merged in or dropped."""
    layers = list(lora_layers(model))
    if merge:
        merge_lora(model)
    else:
        unmerge_lora(model)
    runtime = _detach_runtime(model)  # it holds the wrappers: built anew around the bases
    for name, m in layers:
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, m.base)
    _rebuild_runtime(model, runtime)
    return model


def _detach_runtime(model: nn.Module):
    """The model's packed runtime, taken off (None: it has none; only a Decoder holds one)."""
    return model.detach_runtime() if isinstance(model, Decoder) else None


def _rebuild_runtime(model: nn.Module, runtime) -> None:
    # A model that ran a packed runtime gets one built for its layers as they are now.
    if runtime is not None:
        model.attach_runtime(PackedRuntime.build(model))
