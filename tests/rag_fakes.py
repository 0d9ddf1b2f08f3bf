"""A fake sentence encoder for rag tests: hashed bag of words, unit length, instant."""

from __future__ import annotations

import hashlib
import re

import numpy as np

WORD = re.compile(r"\w+|[^\w\s]")


class HashEmbedder:
    """Texts sharing words get similar vectors; one 'token' per word or punctuation mark."""

    source, dim, max_tokens = "hash-64", 64, 130

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(WORD.findall(t)) for t in texts]

    def embed(self, texts) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int(hashlib.md5(word.encode()).hexdigest(), 16)
                out[row, h % self.dim] += 1.0 if (h >> 8) % 2 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-9)
