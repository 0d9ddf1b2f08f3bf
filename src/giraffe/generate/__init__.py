"""Decoding: samplers (pure functions on logits), the prefill/decode loop, beam search, stops.

Sees a model only as "ids (+ cache) -> logits" and text only as strings.
"""

from giraffe.generate.engine import DecodeSession, GenerationError, TokenEvent
from giraffe.generate.params import DecodingConfig, DecodingError

__all__ = ["DecodeSession", "DecodingConfig", "DecodingError", "GenerationError", "TokenEvent"]
