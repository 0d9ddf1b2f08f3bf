"""Models: token ids -> logits (or hidden states), built from a `ModelConfig`.

Knows nothing of files, tokenizers or decoding; `giraffe.formats` fills the weights and
`giraffe.generate` drives the forward passes.
"""

from giraffe.models.decoder import Decoder

__all__ = ["Decoder"]
