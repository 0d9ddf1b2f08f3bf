"""Reuse the keys and values of prompt prefixes seen before (automatic prefix caching).

A chat's next turn repeats the whole conversation so far, and many requests share one
system prompt; without this the server recomputes all of it on every request. Here a
token sequence is cut into blocks of `block_size` tokens and each full block's keys and
values are kept under a key made of its parent block and its own tokens, so a block is
found only when everything before it matches too (the scheme of vLLM's automatic prefix
caching; a radix tree, as SGLang's, finds the same prefixes at token rather than block
granularity). A new request looks up its longest chain of cached blocks, copies their
keys/values into its own cache row and computes only the rest.

Memory is bounded: blocks beyond `max_bytes` are dropped least recently used first.
Every lookup and store touches a chain from its last block back to its first, so a
block is always more recent than its descendants and eviction takes leaves before the
blocks that lead to them (no unreachable block is ever kept).

Exactness: a block's keys and values depend only on the tokens up to its end (causal
attention, positions from 0), so reusing them gives the state a full prefill would have,
up to float rounding from computing the prompt in a different split; every layer keeps
every slot (sliding windows are masks over a full cache, `giraffe.nn.slot_cache`), so
windowed layers reuse blocks like the others.

It does not know requests, rows or models: callers hand it token ids and (L, H, S, D)
key/value tensors of one sequence, and get blocks back to copy.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# tokens per block: small enough to reuse most of a prefix, big enough for little bookkeeping
BLOCK_SIZE = 16


@dataclass(eq=False)
class Block:
    key: tuple[int, tuple[int, ...]]  # (parent block's id or -1, this block's tokens)
    id: int
    k: torch.Tensor  # (L, H, block_size, D)
    v: torch.Tensor

    @property
    def nbytes(self) -> int:
        return (self.k.numel() + self.v.numel()) * self.k.element_size()


@dataclass
class PrefixStats:
    lookups: int = 0
    hit_tokens: int = 0  # prompt tokens whose keys/values came from the cache
    prompt_tokens: int = 0  # all prompt tokens looked up
    evicted_blocks: int = 0


class PrefixCache:
    def __init__(self, max_bytes: int, block_size: int = BLOCK_SIZE) -> None:
        if max_bytes < 0 or block_size < 1:
            raise ValueError("the prefix cache needs max_bytes >= 0 and block_size >= 1")
        self.max_bytes, self.block_size = max_bytes, block_size
        self.blocks: OrderedDict[tuple, Block] = OrderedDict()  # least recently used first
        self.nbytes = 0
        self.next_id = 0
        self.stats = PrefixStats()

    def match(self, tokens: Sequence[int]) -> list[Block]:
        """The longest chain of cached blocks that starts `tokens`, leaving at least one token.

        At least one token stays to be computed: its logits are the request's first
        prediction, and cached blocks hold keys/values, not logits.
        """
        self.stats.lookups += 1
        self.stats.prompt_tokens += len(tokens)
        chain = self._walk(tokens, (len(tokens) - 1) // self.block_size)
        self._touch(chain)
        self.stats.hit_tokens += len(chain) * self.block_size
        return chain

    def store(self, tokens: Sequence[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep every full block of `tokens` whose keys/values (L, H, S >= len, D) are given."""
        n_blocks = min(len(tokens), k.shape[2]) // self.block_size
        chain = self._walk(tokens, n_blocks)
        parent = chain[-1].id if chain else -1
        for b in range(len(chain), n_blocks):
            start, end = b * self.block_size, (b + 1) * self.block_size
            block = Block(
                (parent, tuple(tokens[start:end])),
                self.next_id,
                k[:, :, start:end].clone(),  # (L, H, block_size, D), owned by the cache
                v[:, :, start:end].clone(),
            )
            if block.nbytes > self.max_bytes:
                break  # not even one block fits: the cache is off in effect
            self.next_id += 1
            self.blocks[block.key] = block
            self.nbytes += block.nbytes
            chain.append(block)
            parent = block.id
        self._touch(chain)
        self._evict()

    def _walk(self, tokens: Sequence[int], n_blocks: int) -> list[Block]:
        chain, parent = [], -1
        for b in range(n_blocks):
            span = tokens[b * self.block_size : (b + 1) * self.block_size]
            block = self.blocks.get((parent, tuple(span)))
            if block is None:
                break
            chain.append(block)
            parent = block.id
        return chain

    def _touch(self, chain: list[Block]) -> None:
        for block in reversed(chain):  # leaves first: the first block ends most recent
            self.blocks.move_to_end(block.key)

    def _evict(self) -> None:
        while self.nbytes > self.max_bytes and self.blocks:
            _, block = self.blocks.popitem(last=False)
            self.nbytes -= block.nbytes
            self.stats.evicted_blocks += 1

    def summary(self) -> dict:
        s = self.stats
        return {
            "blocks": len(self.blocks),
            "block_size": self.block_size,
            "bytes": self.nbytes,
            "max_bytes": self.max_bytes,
            "lookups": s.lookups,
            "hit_tokens": s.hit_tokens,
            "prompt_tokens": s.prompt_tokens,
            "evicted_blocks": s.evicted_blocks,
        }


def copy_into(chain: list[Block], k: torch.Tensor, v: torch.Tensor) -> int:
    """Write a chain's keys/values into a sequence's (L, H, S, D) cache from slot 0; return tokens."""
    start = 0
    for block in chain:
        end = start + block.k.shape[2]
        k[:, :, start:end] = block.k
        v[:, :, start:end] = block.v
        start = end
    return start
