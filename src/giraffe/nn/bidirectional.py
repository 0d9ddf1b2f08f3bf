"""The attention mask of an encoder: every token sees every real token, padding hides.

`giraffe.nn.attention.build_mask` is causal (a decoder's); BERT-style encoders attend in
both directions and only need padding hidden from the keys. This module knows nothing of
which model uses it.
"""

from __future__ import annotations

import torch


def padding_mask(key_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, S) bool, True = a real token -> (B, 1, 1, S) bool for `Attention`, or None.

    Only keys are masked, as in BERT (Devlin et al. 2019): a padding *query* still attends
    to the real tokens; its output is garbage that callers ignore (mean pooling masks it).
    A row without a single real token would make softmax over nothing (NaN), so it is
    refused here instead of poisoning the batch.
    """
    if key_mask is None:
        return None
    if key_mask.dtype != torch.bool:
        key_mask = key_mask != 0
    empty = (~key_mask.any(dim=-1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"key_mask rows {empty} have no real token; each row needs one")
    return key_mask[:, None, None, :]  # (B, 1, 1, S): broadcast over heads and queries
