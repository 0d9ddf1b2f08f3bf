"""Okapi BM25 keyword scores (Robertson & Zaragoza 2009) over a list of texts.

    index = BM25(texts); index.scores("audit date") -> (len(texts),) float64

Words are lower-cased runs of letters and digits. It complements embeddings where the
exact word matters (names, codes, numbers). It knows nothing of the store.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class BM25:
    def __init__(self, texts: list[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.docs = [Counter(words(t)) for t in texts]
        self.lengths = np.array([sum(d.values()) for d in self.docs], dtype=np.float64)
        self.avg = float(self.lengths.mean()) if len(self.docs) else 0.0
        df = Counter(w for d in self.docs for w in d)
        n = len(self.docs)
        # The "+1" form keeps idf positive for words in more than half the texts.
        self.idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}

    def scores(self, query: str) -> np.ndarray:
        out = np.zeros(len(self.docs), dtype=np.float64)
        norm = self.k1 * (1 - self.b + self.b * self.lengths / max(self.avg, 1e-9))  # (n,)
        for w in set(words(query)):
            idf = self.idf.get(w)
            if idf is None:
                continue
            tf = np.array([d.get(w, 0) for d in self.docs], dtype=np.float64)
            out += idf * tf * (self.k1 + 1) / (tf + norm)
        return out
