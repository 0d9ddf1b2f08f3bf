"""Decoding: samplers (pure functions on logits), the prefill/decode loop, beam search, stops.

Sees a model only as "ids (+ cache) -> logits" and text only as strings.
"""

from __future__ import annotations

import importlib

# Loaded on first use, so that `giraffe.generate.params` (the command line's flags) does
# not pull in torch through this package.
_HOMES = {
    "DecodeSession": "engine",
    "GenerationError": "engine",
    "TokenEvent": "engine",
    "DecodingConfig": "params",
    "DecodingError": "params",
}

__all__ = ["DecodeSession", "DecodingConfig", "DecodingError", "GenerationError", "TokenEvent"]


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"giraffe.generate.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'giraffe.generate' has no attribute {name!r}")
