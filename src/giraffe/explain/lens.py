"""Logit lens (nostalgebraist 2020): what each layer would predict if it were the last.

The residual stream after the embeddings and after every block goes through the model's
own final norm and output head; the top token per layer and position shows a prediction
forming. The residual streams are caught with forward hooks on `model.layers[i]` (and the
embedding), so the decoder needs no extra output for this. Only the last layer's lens is
the model's real prediction; earlier ones are a view, not what the model computes (a
"tuned lens" would train a translator per layer; this one does not).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from giraffe.explain.inputs import encode_text, require_decoder


@torch.inference_mode()
def residual_streams(model, ids: list[int]) -> list[torch.Tensor]:
    """[(T, C)] x (n_layers + 1): the stream after the embeddings, then after each block."""
    streams: list[torch.Tensor] = []
    hooks = [model.layers[0].register_forward_pre_hook(lambda m, a: streams.append(a[0][0]))]
    hooks += [
        layer.register_forward_hook(lambda m, a, o: streams.append(o[0])) for layer in model.layers
    ]
    try:
        model.hidden(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return streams


@torch.inference_mode()
def lens_logits(model, stream: torch.Tensor) -> torch.Tensor:
    """(T, C) residual stream -> (T, V) scores through the final norm and the output head."""
    return model.head(model.norm(stream)).float()


@dataclass
class Lens:
    tokens: list[str]  # the input tokens, one per position
    layer_names: list[str]  # "embeddings", "layer 0", ..., one per row
    top_ids: torch.Tensor  # (L+1, T) each layer's most likely next token
    top_probs: torch.Tensor  # (L+1, T) its probability
    next_probs: torch.Tensor  # (L+1, T-1) probability each layer gives the actual next token
    top_tokens: list[list[str]]  # (L+1) x T readable pieces of top_ids

    def to_dict(self) -> dict:
        """Plain data for JSON (CLI --json, a web page)."""
        return {
            "tokens": self.tokens,
            "layers": self.layer_names,
            "top_tokens": self.top_tokens,
            "top_ids": self.top_ids.tolist(),
            "top_probs": self.top_probs.tolist(),
            "next_token_probs": self.next_probs.tolist(),
        }


def logit_lens(lm, text: str) -> Lens:
    require_decoder(lm, "the logit lens")
    ids = encode_text(lm, text)
    streams = residual_streams(lm.model, ids)
    targets = torch.tensor(ids[1:])
    top_ids, top_probs, next_probs = [], [], []
    for stream in streams:  # one layer at a time: (T, V) per layer, never (L, T, V)
        probs = lens_logits(lm.model, stream).softmax(-1)  # (T, V)
        best = probs.max(-1)
        top_ids.append(best.indices)
        top_probs.append(best.values)
        next_probs.append(probs[:-1].gather(1, targets[:, None])[:, 0])
    top_ids = torch.stack(top_ids)  # (L+1, T)
    names = ["embeddings"] + [f"layer {i}" for i in range(len(streams) - 1)]
    strings = lm.tokenizer.token_strings
    return Lens(
        strings(ids),
        names,
        top_ids,
        torch.stack(top_probs),
        torch.stack(next_probs),
        [strings(row.tolist()) for row in top_ids],
    )


def write_png(lens: Lens, path: str | Path, title: str = "logit lens") -> Path:
    """Layers x positions, coloured by the top token's probability, labelled when legible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, T = lens.top_probs.shape
    fig, ax = plt.subplots(figsize=(min(3 + 0.9 * T, 40), min(2 + 0.35 * rows, 30)))
    image = ax.imshow(lens.top_probs.numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    if T <= 40:  # beyond that the labels overlap; the colours still tell the story
        for r in range(rows):
            for t in range(T):
                colour = "white" if lens.top_probs[r, t] > 0.6 else "black"
                ax.text(
                    t,
                    r,
                    _label(lens.top_tokens[r][t]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color=colour,
                )
        ax.set_xticks(range(T), [_label(s) for s in lens.tokens], rotation=90, fontsize=7)
    ax.set_yticks(range(rows), lens.layer_names, fontsize=7)
    ax.set_xlabel("input token (each column predicts the token after it)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="probability of the top token")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _label(token: str) -> str:
    return token.replace("\n", "\\n").replace("$", r"\$")[:10] or "\u2205"
