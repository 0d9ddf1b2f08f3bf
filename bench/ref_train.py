"""A minimal single-file GPT-2 training loop in the nanoGPT style: the reference that
`bench/train.py` holds giraffe's trainer against.

Same model shape (learned positions, pre-LayerNorm with biases, tanh GELU, tied
embeddings), same optimiser (AdamW, decay on matrices, betas 0.9/0.95), same clipping,
same batches (random rows of the prepared train.bin), no logging, no checkpoints, no
progress bar. Written here from the GPT-2 recipe, not copied.

    python bench/ref_train.py DATA_DIR --steps 20   # prints {"tokens_per_s": ...}
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.qkv, self.proj, self.heads = (
            nn.Linear(width, 3 * width),
            nn.Linear(width, width),
            heads,
        )

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int, heads: int, hidden: int, ctx: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(ctx, width)
        self.blocks = nn.ModuleList(Block(width, heads, hidden) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids, targets):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def train(
    data_dir: str, shape: dict, steps: int, batch: int, seq_len: int, lr: float = 1e-3
) -> float:
    """Train `steps` steps; tokens/s over all but the first two (warm-up) steps."""
    meta = json.load(open(f"{data_dir}/meta.json"))
    data = np.memmap(f"{data_dir}/train.bin", dtype=meta["dtype"], mode="r")
    torch.manual_seed(0)
    model = GPT(**shape)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    g = torch.Generator().manual_seed(0)
    warm, started = 2, None
    for step in range(steps):
        if step == warm:
            started = time.perf_counter()
        starts = torch.randint(len(data) - seq_len - 1, (batch,), generator=g).tolist()
        rows = torch.from_numpy(
            np.stack([data[s : s + seq_len + 1].astype(np.int64) for s in starts])
        )
        loss = model(rows[:, :-1], rows[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        lr_now = lr * min(1.0, (step + 1) / 10) * (0.55 + 0.45 * math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr_now
        opt.step()
        opt.zero_grad(set_to_none=True)
    return batch * seq_len * (steps - warm) / (time.perf_counter() - started)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("data")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    a = p.parse_args()
    meta = json.load(open(f"{a.data}/meta.json"))
    shape = dict(vocab=meta["vocab_size"], width=256, layers=6, heads=8, hidden=1024, ctx=512)
    print(json.dumps({"tokens_per_s": train(a.data, shape, a.steps, a.batch, a.seq_len)}))
