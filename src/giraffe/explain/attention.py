"""Attention maps: every layer's and head's weights for a text, as data, HTML and PNG.

The weights come from the model's explicit reference path (`Decoder.hidden(...,
attention_weights=[])`, i.e. `giraffe.nn.attention.attend_reference`); the fast fused
path is untouched and stays fast. The HTML page is one standalone file that works
offline: inline CSS and JavaScript, weights stored compactly (one byte per weight, only
the lower triangle for causal models, base64 per layer, decoded only when shown) and
drawn on canvases, so 30 layers x 9 heads x 300 tokens stay responsive.

Decoders (causal) and encoders (bidirectional, e.g. MiniLM) alike: anything with a
`.model` whose `hidden(ids, attention_weights=[])` keeps weights and a `.tokenizer`
(`LanguageModel`, `SentenceEncoder`). It does not know how the model was loaded.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from giraffe.explain.inputs import ExplainInputError, encode_text
from giraffe.explain.template import ATTENTION_PAGE


@dataclass
class AttentionMaps:
    tokens: list[str]  # one readable piece per position
    ids: list[int]  # the token ids
    weights: torch.Tensor  # (L, H, T, T) float32: weights[l, h, query, key]
    causal: bool  # True when every query only sees keys at or before it

    @property
    def n_layers(self) -> int:
        return self.weights.shape[0]

    @property
    def n_heads(self) -> int:
        return self.weights.shape[1]

    def head(self, layer: int, head: int) -> torch.Tensor:
        """(T, T) weights of one head; layer and head count from 0."""
        _check_index("layer", layer, self.n_layers)
        _check_index("head", head, self.n_heads)
        return self.weights[layer, head]


def _check_index(name: str, value: int, count: int) -> None:
    if not 0 <= value < count:
        raise ExplainInputError(
            f"{name} {value} does not exist: this model has {count} {name}s, numbered 0..{count - 1}."
        )


@torch.inference_mode()
def attention_weights(model, ids: list[int]) -> torch.Tensor:
    """(L, H, T, T) float32 weights of one sequence through the reference attention path."""
    kept: list[torch.Tensor] = []
    model.hidden(torch.tensor([ids]), attention_weights=kept)  # each (1, H, T, T)
    return torch.stack([w[0] for w in kept]).float()  # (L, H, T, T)


# Limits that keep a view usable: weights held in memory, and the HTML page's size.
MAX_WEIGHT_BYTES = 2 * 1024**3
MAX_PAGE_BYTES = 200 * 1024**2


def attention_maps(lm, text: str) -> AttentionMaps:
    ids = encode_text(lm, text)
    cfg = lm.model.config
    need = cfg.n_layers * cfg.n_heads * len(ids) ** 2 * 4  # (L, H, T, T) float32
    if need > MAX_WEIGHT_BYTES:
        raise ExplainInputError(
            f"the attention weights of {len(ids)} tokens would take {need / 1024**3:.1f} GiB "
            f"({cfg.n_layers} layers x {cfg.n_heads} heads x {len(ids)}^2); use a shorter text."
        )
    weights = attention_weights(lm.model, ids)
    upper = torch.triu(torch.ones(len(ids), len(ids), dtype=torch.bool), diagonal=1)
    causal = bool((weights[..., upper] == 0).all())
    return AttentionMaps(lm.tokenizer.token_strings(ids), ids, weights, causal)


# ---- the HTML page ----------------------------------------------------------------------


def pack_layer(weights: torch.Tensor, causal: bool) -> str:
    """(H, T, T) weights -> base64 of uint8 (weight x 255, rounded), lower triangle if causal.

    One byte per weight is 1/255 resolution: plenty for the eye, and a 300-token prompt on
    a 30 x 9-head model is ~12 MB of bytes instead of ~100 MB of JSON numbers.
    """
    q = (weights.clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # (H, T, T)
    if causal:
        rows, cols = np.tril_indices(q.shape[-1])
        q = q[:, rows, cols]  # (H, T(T+1)/2), row by row
    return base64.b64encode(np.ascontiguousarray(q).tobytes()).decode("ascii")


def page_data(maps: AttentionMaps, title: str) -> dict:
    return {
        "title": title,
        "tokens": maps.tokens,
        "layers": maps.n_layers,
        "heads": maps.n_heads,
        "causal": maps.causal,
        "weights": [pack_layer(maps.weights[i], maps.causal) for i in range(maps.n_layers)],
    }


def render_html(maps: AttentionMaps, title: str = "attention") -> str:
    """The standalone offline page as a string (a server can send it as it is)."""
    T = len(maps.ids)
    per_head = T * (T + 1) // 2 if maps.causal else T * T
    size = maps.n_layers * maps.n_heads * per_head * 4 // 3  # bytes as base64
    if size > MAX_PAGE_BYTES:
        raise ExplainInputError(
            f"an attention page for {T} tokens would be about {size / 1024**2:.0f} MiB, too big "
            "for a browser to stay responsive; use a shorter text (a few hundred tokens)."
        )
    data = json.dumps(page_data(maps, title), ensure_ascii=True, separators=(",", ":"))
    # "\/" is "/" in JSON and JavaScript alike: no "</script>" can end the script early, and
    # no URL typed into the text (or "//" in base64) reads as a link in the file.
    data = data.replace("/", "\\/")
    page = ATTENTION_PAGE.replace("__TITLE__", html.escape(title).replace("/", "&#47;")).replace(
        "__DATA__", data
    )
    return page


def write_html(maps: AttentionMaps, path: str | Path, title: str = "attention") -> Path:
    """A standalone offline page: head view and model view of every layer and head."""
    page = render_html(maps, title)
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


# ---- the PNG heatmap --------------------------------------------------------------------


def write_png(maps: AttentionMaps, layer: int, head: int, path: str | Path) -> Path:
    """One head's (query x key) heatmap; token labels when there are few enough to read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = maps.head(layer, head).numpy()
    T = w.shape[0]
    size = min(4 + T * 0.18, 16)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(w, cmap="viridis", vmin=0, vmax=max(float(w.max()), 1e-6))
    if T <= 60:
        labels = [_label(t) for t in maps.tokens]
        ax.set_xticks(range(T), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(T), labels, fontsize=7)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(f"layer {layer}, head {head}")
    fig.colorbar(image, ax=ax, fraction=0.046, label="attention weight")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _label(token: str) -> str:
    # Make whitespace visible and keep matplotlib from reading "$" as math.
    return token.replace("\n", "\\n").replace(" ", "\u2423").replace("$", r"\$") or "\u2205"
