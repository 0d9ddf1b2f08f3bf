"""Pure torch building blocks of a transformer: norms, positions, attention, MLPs, KV cache.

Nothing here knows about files, tokenizers or model families; `giraffe.models` wires
these blocks together from a `ModelConfig`.
"""

from giraffe.nn.attention import Attention, attend, attend_reference, build_mask
from giraffe.nn.kv_cache import KVCache
from giraffe.nn.mlp import MLP
from giraffe.nn.norms import make_norm
from giraffe.nn.positions import Rotary, apply_rotary

__all__ = [
    "MLP",
    "Attention",
    "KVCache",
    "Rotary",
    "apply_rotary",
    "attend",
    "attend_reference",
    "build_mask",
    "make_norm",
]
