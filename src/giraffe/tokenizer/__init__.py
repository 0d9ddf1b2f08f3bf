"""Tokenization: text <-> ids for tokenizer.json, GGUF vocabularies and cl100k_base, plus chat.

Never imports models or file formats of weights; `giraffe.lm` pairs a tokenizer with a model.
"""

from giraffe.tokenizer.gguf_vocab import gguf_metadata, gguf_tokenizer_fields, tokenizer_from_gguf
from giraffe.tokenizer.stream import StreamDecoder
from giraffe.tokenizer.tokenizer import Tokenizer, TokenizerError, load_tokenizer_file

__all__ = [
    "StreamDecoder",
    "Tokenizer",
    "TokenizerError",
    "gguf_metadata",
    "gguf_tokenizer_fields",
    "load_tokenizer_file",
    "tokenizer_from_gguf",
]
