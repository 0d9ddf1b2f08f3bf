"""Models: token ids -> logits (or hidden states), built from a `ModelConfig`.

Knows nothing of files, tokenizers or decoding; `giraffe.formats` fills the weights and
`giraffe.generate` drives the forward passes. `Decoder` predicts the next token;
`Encoder` (BERT) reads the whole input at once; `Seq2Seq` (T5) encodes an input and
decodes an output that reads it.
"""

from giraffe.models.decoder import Decoder
from giraffe.models.encoder import Encoder
from giraffe.models.seq2seq import Seq2Seq

__all__ = ["Decoder", "Encoder", "Seq2Seq", "build_model"]

MODEL_CLASSES = {"decoder": Decoder, "encoder": Encoder, "encoder-decoder": Seq2Seq}


def build_model(cfg, **kw) -> Decoder | Encoder | Seq2Seq:
    """The model class the config's kind calls for (random weights, or meta storage)."""
    return MODEL_CLASSES[cfg.kind](cfg, **kw)
