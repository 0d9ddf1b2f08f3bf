"""Token embeddings up close: cosine similarities, nearest neighbours, a 2-D PCA map.

A word is looked up in the model's input embedding table. A word the tokenizer splits
into several tokens is represented by the mean of its tokens' rows (a crude but common
stand-in; the result says so). Byte-level BPE vocabularies store most words with their
leading space ("Ġgiraffe"), the form a word has mid-sentence, so by default a word is
also tried with a space in front, and that form wins unless it needs more tokens; the
chosen pieces are reported.

Works on float and packed (GGUF-quantized) embeddings alike: rows are read through the
embedding's forward, which dequantizes packed rows. Token embeddings say nothing about
contextual meaning: they are the static vectors a token starts from, before attention.
For whole sentences, `sentence_vectors` asks a sentence encoder (`SentenceEncoder.embed`,
mean pooling over the encoder's output) instead; a decoder has no such vector here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class WordVector:
    word: str  # as the user typed it
    ids: list[int]  # the tokens it became
    pieces: list[str]  # readable form of those tokens
    vector: torch.Tensor  # (C,) float32: the row, or the mean of the rows
    sentence: bool = False  # True: the encoder's pooled output, not input embeddings

    @property
    def note(self) -> str:
        if self.sentence:
            return f"sentence embedding: mean of the encoder's {len(self.ids)} output vectors"
        shown = " + ".join(repr(p) for p in self.pieces)
        if len(self.ids) == 1:
            return f"one token: {shown}"
        return f"mean of {len(self.ids)} token embeddings: {shown}"


@torch.inference_mode()
def embedding_rows(model, ids) -> torch.Tensor:
    """(N, C) float32 rows of the input embedding, dequantized if the table is packed."""
    return model.embed(torch.as_tensor(list(ids), dtype=torch.long)).float()


@torch.inference_mode()
def embedding_matrix(model, chunk: int = 8192) -> torch.Tensor:
    """(V, C) float32 table; packed tables are dequantized `chunk` rows at a time."""
    if isinstance(model.embed, nn.Embedding):
        return model.embed.weight.detach().float()
    V = model.config.vocab_size
    return torch.cat(
        [embedding_rows(model, range(s, min(s + chunk, V))) for s in range(0, V, chunk)]
    )


def word_vector(lm, word: str, try_space: bool = True) -> WordVector:
    if not word.strip():
        raise ValueError("an empty word has no embedding; give one or more words.")
    tok = lm.tokenizer
    ids = tok.encode(word)
    if try_space and not word.startswith(" "):
        spaced = tok.encode(" " + word)
        if 0 < len(spaced) <= len(ids):
            ids = spaced
    if not ids:
        raise ValueError(f"the tokenizer turns {word!r} into no tokens at all.")
    rows = embedding_rows(lm.model, ids)  # (n, C)
    return WordVector(word, ids, tok.token_strings(ids), rows.mean(0))


def word_vectors(lm, words, try_space: bool = True) -> list[WordVector]:
    if not words:
        raise ValueError("give at least one word.")
    return [word_vector(lm, w, try_space) for w in words]


def sentence_vectors(encoder, sentences) -> list[WordVector]:
    """Sentence embeddings from a sentence encoder (anything with `.embed(texts)`)."""
    if not hasattr(encoder, "embed") or not sentences:
        raise ValueError(
            "sentence embeddings need an encoder model such as minilm-l6 and at least one sentence."
        )
    vectors = torch.from_numpy(encoder.embed(list(sentences)))  # (n, C), unit length
    out = []
    for text, vector in zip(sentences, vectors, strict=True):
        ids = encoder.tokenizer.encode(text, add_special_tokens=True)
        out.append(WordVector(text, ids, encoder.tokenizer.token_strings(ids), vector, True))
    return out


def cosine_matrix(vectors: list[WordVector]) -> torch.Tensor:
    """(n, n) cosine similarity between every pair of words."""
    x = F.normalize(torch.stack([v.vector for v in vectors]), dim=-1)  # (n, C)
    return x @ x.T


def nearest_tokens(lm, vector: WordVector, n: int = 8, table: torch.Tensor | None = None):
    """The n vocabulary tokens closest in cosine to the word, its own tokens left out.

    Returns [(id, readable piece, cosine)], best first. Pass `table` (from
    `embedding_matrix`) to reuse one dequantized table for many words.
    """
    if n < 1:
        raise ValueError(f"the number of neighbours must be at least 1, got {n}.")
    table = embedding_matrix(lm.model) if table is None else table
    cos = F.normalize(table, dim=-1) @ F.normalize(vector.vector, dim=0)  # (V,)
    cos[vector.ids] = float("-inf")
    best = cos.topk(min(n, cos.numel() - len(set(vector.ids))))
    ids = best.indices.tolist()
    pieces = lm.tokenizer.token_strings(ids)
    return list(zip(ids, pieces, best.values.tolist(), strict=True))


def pca_2d(vectors: list[WordVector]) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 2) coordinates on the two main axes of the words' spread, and the share of
    variance each axis explains. Exact SVD: n words are few, so no randomised PCA needed."""
    if len(vectors) < 2:
        raise ValueError("a 2-D projection needs at least two words.")
    x = torch.stack([v.vector for v in vectors]).double()  # (n, C)
    x = x - x.mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    coords = x @ vh[:2].T  # (n, 2) (or (n, 1) for two words: pad below)
    if coords.shape[1] < 2:
        coords = F.pad(coords, (0, 2 - coords.shape[1]))
    var = s**2
    share = (var / var.sum().clamp_min(1e-30))[:2]
    return coords.float(), F.pad(share, (0, 2 - share.numel())).float()


def embeddings_report(
    lm, words, neighbours: int = 8, try_space: bool = True, sentences: bool = False
) -> dict:
    """Everything `giraffe explain embeddings` shows, as plain data (for JSON or a page).

    sentences=True: `words` are sentences, embedded whole by an encoder model; they get no
    vocabulary neighbours, since sentence vectors live in another space than tokens.
    """
    vectors = sentence_vectors(lm, words) if sentences else word_vectors(lm, words, try_space)
    report = {
        "words": [
            {"word": v.word, "ids": v.ids, "pieces": v.pieces, "note": v.note} for v in vectors
        ],
        "cosine": cosine_matrix(vectors).tolist(),
        "neighbours": None,
    }
    if not sentences:
        table = embedding_matrix(lm.model)  # dequantized once for every word's neighbours
        report["neighbours"] = [
            [
                {"id": i, "token": t, "cosine": c}
                for i, t, c in nearest_tokens(lm, v, neighbours, table)
            ]
            for v in vectors
        ]
    if len(vectors) >= 2:
        coords, share = pca_2d(vectors)
        report["pca"] = {"coords": coords.tolist(), "explained": share.tolist()}
    return report


def write_png(vectors: list[WordVector], path: str | Path, title: str = "embeddings") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coords, share = pca_2d(vectors)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(coords[:, 0], coords[:, 1], color="#3b6bb0")
    for v, (x, y) in zip(vectors, coords.tolist(), strict=True):
        label = v.word if len(v.word) <= 40 else v.word[:39] + "\u2026"
        label += "*" if len(v.ids) > 1 and not v.sentence else ""
        ax.annotate(label.replace("$", r"\$"), (x, y), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel(f"PC 1 ({share[0]:.0%} of the spread)")
    ax.set_ylabel(f"PC 2 ({share[1]:.0%} of the spread)")
    split = any(len(v.ids) > 1 and not v.sentence for v in vectors)
    ax.set_title(title + ("\n* = mean of several tokens" if split else ""))
    ax.margins(0.15)  # room for the labels at the edges
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
