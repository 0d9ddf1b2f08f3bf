"""The next token: what the model expected at every position, and how sampling reshapes it.

`next_token_table` reads the model's own distribution (softmax of the raw logits) after
each prefix of a text: its top-k tokens, and the rank, probability and surprisal (bits)
of the token that actually came next. `reshape` shows one step's distribution after
temperature, top-k and top-p, computed by the very samplers generation uses
(`giraffe.generate.samplers`, on a numpy view of the logits), drawn side by side by
`write_reshape_png`.

It does not generate text, and it ignores penalties (repetition, presence, ...), which
depend on a generation's history rather than on one distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from giraffe.explain.inputs import ExplainInputError, encode_text, require_decoder
from giraffe.generate.samplers import apply_temperature, top_k_filter, top_p_filter


@dataclass
class Candidate:
    id: int
    token: str
    prob: float


@dataclass
class Position:
    index: int  # position in the text, from 0
    token: str  # the token at this position
    top: list[Candidate]  # most likely next tokens, best first
    next_id: int | None = None  # the token that actually follows (None at the end)
    next_token: str | None = None
    rank: int | None = None  # 1 = the model's first choice
    prob: float | None = None  # the model's probability for the actual next token
    surprisal_bits: float | None = None  # -log2(prob)


@dataclass
class NextTokenTable:
    ids: list[int]
    positions: list[Position]
    logits: torch.Tensor = field(repr=False)  # (T, V) float32, raw scores after each prefix

    @property
    def mean_surprisal_bits(self) -> float:
        """Average bits per predicted token; 2**this is the text's perplexity."""
        bits = [p.surprisal_bits for p in self.positions if p.surprisal_bits is not None]
        return sum(bits) / len(bits) if bits else float("nan")

    def to_dict(self) -> dict:
        """Plain data for JSON (CLI --json, a web page)."""
        positions = [
            {
                "index": p.index,
                "token": p.token,
                "top": [{"id": c.id, "token": c.token, "prob": c.prob} for c in p.top],
                "next_id": p.next_id,
                "next_token": p.next_token,
                "rank": p.rank,
                "prob": p.prob,
                "surprisal_bits": p.surprisal_bits,
            }
            for p in self.positions
        ]
        bits = self.mean_surprisal_bits
        return {
            "ids": self.ids,
            "positions": positions,
            "mean_surprisal_bits": None if math.isnan(bits) else bits,
        }


def next_token_table(lm, text: str, k: int = 5) -> NextTokenTable:
    if k < 1:
        raise ExplainInputError(f"top-k must be at least 1, got {k}.")
    require_decoder(lm, "the next-token view")
    ids = encode_text(lm, text)
    logits = lm.logits(ids)  # (T, V)
    logp = logits.double().log_softmax(-1)  # (T, V); float64 so tiny probabilities keep digits
    top = logp.topk(min(k, logp.shape[-1]), dim=-1)
    pieces = lm.tokenizer.token_strings(ids)
    positions = []
    for t in range(len(ids)):
        cands = [
            Candidate(int(i), lm.tokenizer.token_strings([int(i)])[0], math.exp(float(lp)))
            for i, lp in zip(top.indices[t], top.values[t], strict=True)
        ]
        pos = Position(t, pieces[t], cands)
        if t + 1 < len(ids):
            nxt = ids[t + 1]
            lp = float(logp[t, nxt])
            pos.next_id, pos.next_token = nxt, pieces[t + 1]
            pos.rank = 1 + int((logp[t] > lp).sum())  # ties share the better rank
            pos.prob, pos.surprisal_bits = math.exp(lp), -lp / math.log(2)
        positions.append(pos)
    return NextTokenTable(ids, positions, logits)


# ---- how sampling settings reshape one step --------------------------------------------

DEFAULT_SETTINGS = (
    {"temperature": 1.0},
    {"temperature": 0.5},
    {"temperature": 1.5},
    {"top_k": 5},
    {"top_p": 0.9},
)


@dataclass
class Reshaped:
    label: str  # e.g. "temperature=0.5, top_p=0.9"
    probs: torch.Tensor  # (V,) float32 distribution a sampler would draw from
    kept: int  # tokens with probability > 0
    entropy_bits: float


def reshaped_dict(shaped: Reshaped, token_strings, k: int = 10) -> dict:
    """Plain data for one reshaping: its label, size, entropy and top-k tokens."""
    top = shaped.probs.topk(min(k, shaped.probs.numel()))
    pieces = token_strings(top.indices.tolist())
    return {
        "settings": shaped.label,
        "kept": shaped.kept,
        "entropy_bits": shaped.entropy_bits,
        "top": [
            {"id": int(i), "token": t, "prob": float(p)}
            for i, t, p in zip(top.indices, pieces, top.values, strict=True)
            if p > 0
        ],
    }


def label_of(settings: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in settings.items()) or "unchanged"


def reshape(logits: torch.Tensor, settings: dict) -> Reshaped:
    """The distribution after temperature -> top-k -> top-p (generation's order).

    logits: (V,) raw scores of one step. temperature=0 is greedy: all mass on the argmax.
    """
    unknown = set(settings) - {"temperature", "top_k", "top_p"}
    if unknown:
        raise ExplainInputError(
            f"unknown setting {sorted(unknown)[0]!r}; use temperature, top_k or top_p."
        )
    t = float(settings.get("temperature", 1.0))
    k, p = int(settings.get("top_k", 0)), float(settings.get("top_p", 1.0))
    if t < 0 or k < 0 or not 0 < p <= 1:
        raise ExplainInputError(
            f"bad setting {label_of(settings)}: temperature must be >= 0, top_k >= 0 "
            "and top_p in (0, 1]."
        )
    raw = logits.detach().float()  # (V,)
    if t == 0:
        probs = torch.zeros_like(raw)
        probs[raw.argmax()] = 1.0
    else:
        row = raw[None].numpy()  # (1, V): the samplers work on numpy batches
        row = top_p_filter(top_k_filter(apply_temperature(row, t), k), p)
        probs = torch.from_numpy(row[0]).softmax(-1)
    nz = probs[probs > 0]
    entropy = float(-(nz * nz.log2()).sum())
    return Reshaped(label_of(settings), probs, int((probs > 0).sum()), entropy)


def reshape_all(logits: torch.Tensor, settings=DEFAULT_SETTINGS) -> list[Reshaped]:
    return [reshape(logits, s) for s in settings]


def parse_setting(text: str) -> dict:
    """'temperature=0.7,top_p=0.9' -> {"temperature": 0.7, "top_p": 0.9} (for the CLI)."""
    out = {}
    for part in filter(None, (s.strip() for s in text.split(","))):
        name, eq, value = part.partition("=")
        name = name.strip().replace("-", "_")
        try:
            out[name] = int(value) if name == "top_k" else float(value)
        except ValueError:
            eq = ""
        if not eq:
            raise ExplainInputError(
                f"cannot read the setting {part!r}; write it like temperature=0.7,top_p=0.9."
            )
    reshape(torch.zeros(2), out)  # validates names and ranges
    return out


def write_reshape_png(
    shaped: list[Reshaped], token_strings, path: str | Path, n: int = 12, title: str = ""
) -> Path:
    """One bar chart per setting, same tokens (the unchanged top-n) on every chart.

    token_strings: callable ids -> list of readable pieces (the tokenizer's token_strings).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = shaped[0].probs.topk(min(n, shaped[0].probs.numel())).indices.tolist()
    labels = [repr(s)[1:-1].replace("$", r"\$") for s in token_strings(order)]
    # One shared scale (so panels compare), fitted to the largest bar (so small ones show).
    top = max(float(s.probs[order].max()) for s in shaped)
    fig, axes = plt.subplots(
        1, len(shaped), figsize=(3.2 * len(shaped), 4), sharey=True, squeeze=False
    )
    for ax, s in zip(axes[0], shaped, strict=True):
        values = s.probs[order].numpy()
        ax.barh(range(len(order)), values, color="#3b6bb0")
        ax.set_yticks(range(len(order)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, min(1.0, top * 1.25))
        for y, v in enumerate(values):
            if v > 0:
                ax.text(v, y, f" {v:.2f}", va="center", fontsize=7)
        ax.set_title(f"{s.label}\n{s.kept} tokens kept, H={s.entropy_bits:.2f} bits", fontsize=9)
        ax.set_xlabel("probability")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
