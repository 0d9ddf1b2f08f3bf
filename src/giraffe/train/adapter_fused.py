"""LoRA on one fused Hugging Face module <-> LoRA on giraffe's separate projections, exactly.

Phi-3 keeps q, k and v in one `qkv_proj` and gate and up in one `gate_up_proj`, GPT-NeoX
in `query_key_value` (rows interleaved per head), GPT-2 in `c_attn`; giraffe holds each
projection as its own layer. A LoRA update is B @ A with B (out, r), A (r, in), and a
fused module's output rows are its parts' rows, so:

- **fused -> parts** (loading a PEFT adapter): each part takes the fused A and its own
  rows of B. Its rank is the fused rank, so the update is the same, part by part.
- **parts -> fused** (saving giraffe's adapter): when every part is adapted with the same
  A (an adapter that came from a fused module), A stays and the Bs stack: rank r. When
  only some parts are adapted, or with different As, the As stack (rank k*r for k parts)
  and B is block-diagonal (part j's B in its rows and the j-th block of r columns, zeros
  elsewhere); PEFT is told the module's rank and alpha (`rank_pattern`/`alpha_pattern`,
  alpha scaled by k so alpha/rank stays giraffe's alpha/r).
- Reading such a block-diagonal adapter back, each part keeps only the columns of B that
  are not zero in its rows (padded with zeros to r): exactly its own block.

Rows are placed with `giraffe.formats.names` (the one name table: part order, row counts,
GPT-NeoX's per-head interleave). It does not know files, PEFT's config or training.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from giraffe.formats import names


def row_rule(rule: names.Rule) -> names.Rule:
    """The rule for LoRA's B: rows as the weight's rows; Conv1D transposes the weight only."""
    return replace(rule, layout="same") if rule.layout == "conv1d" else rule


def split(rule: names.Rule, a: torch.Tensor, b: torch.Tensor, r: int, cfg) -> dict:
    """giraffe layer -> (A (r, in), B (out_part, r)) for the parts this fused update touches.

    a: (R, in), b: (out, R). With R == r every part shares A; otherwise each part keeps
    the columns of B that are non-zero in its rows, padded to r (an error when more).
    """
    rows = names.to_giraffe(row_rule(rule), b, cfg)  # "....q_proj.weight" -> (out_p, R)
    parts = {}
    for weight_name, b_part in rows.items():
        layer = weight_name.removesuffix(".weight")
        if a.shape[0] == r:
            parts[layer] = (a.clone(), b_part.clone())
            continue
        cols = b_part.abs().sum(dim=0).nonzero().flatten()
        if len(cols) == 0:
            continue  # this part is not adapted
        if len(cols) > r:
            raise ValueError(
                f"{layer}: its rows of the fused update use {len(cols)} of the rank, more "
                f"than the adapter's r={r}"
            )
        a_part, b_out = a.new_zeros(r, a.shape[1]), b_part.new_zeros(b_part.shape[0], r)
        a_part[: len(cols)], b_out[:, : len(cols)] = a[cols], b_part[:, cols]
        parts[layer] = (a_part, b_out)
    return parts


def join(rule: names.Rule, parts: dict, cfg) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(A, B, k) of the fused module from its adapted parts {layer: (A (r, in), B (out_p, r))}.

    k = 1 when every part is adapted with one shared A (B stacks); otherwise k is the
    number of adapted parts, A stacks and B is block-diagonal (rank k*r).
    """
    layers = [n.removesuffix(".weight") for n in rule.ours]
    first_a = next(iter(parts.values()))[0]
    shared = len(parts) == len(layers) and all(torch.equal(a, first_a) for a, _ in parts.values())
    if shared:
        b_rows = {f"{n}.weight": parts[n][1] for n in layers}
        return first_a, names.from_giraffe(row_rule(rule), b_rows, cfg), 1
    adapted = [n for n in layers if n in parts]
    r = first_a.shape[0]
    a = torch.cat([parts[n][0] for n in adapted])  # (k r, in)
    blocks = {}
    for n in layers:
        out = names.part_rows(f"{n}.weight", cfg)
        block = first_a.new_zeros(out, len(adapted) * r)  # (out_p, k r)
        if n in parts:
            j = adapted.index(n)
            block[:, j * r : (j + 1) * r] = parts[n][1]
        blocks[f"{n}.weight"] = block
    return a, names.from_giraffe(row_rule(rule), blocks, cfg), len(adapted)
