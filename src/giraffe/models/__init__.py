"""Models: token ids -> logits (or hidden states), built from a `ModelConfig`.

Knows nothing of files, tokenizers or decoding; `giraffe.formats` fills the weights and
`giraffe.generate` drives the forward passes. `Decoder` predicts the next token;
`Encoder` (BERT) reads the whole input at once.
"""

from giraffe.models.decoder import Decoder
from giraffe.models.encoder import Encoder

__all__ = ["Decoder", "Encoder", "build_model"]


def build_model(cfg, **kw) -> Decoder | Encoder:
    """The model class the config's kind calls for (random weights, or meta storage)."""
    return Encoder(cfg, **kw) if cfg.kind == "encoder" else Decoder(cfg, **kw)
