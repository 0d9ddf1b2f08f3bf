"""Prefix caching: a request that starts like an earlier one reuses its keys and values.

The bookkeeping (chains, least-recently-used eviction, the memory bound) is checked on
plain tensors; the server's scheduler is checked end to end: conversations of several
turns, one at a time and batched, give the same tokens with the cache as without, while
most of each later prompt comes from the cache.
"""

from __future__ import annotations

import pytest
import torch
from test_scheduler import Collector

from giraffe.generate.prefix_cache import PrefixCache, copy_into
from giraffe.lm import load
from giraffe.serve.scheduler import Job, Scheduler

L, H, D = 2, 3, 4  # layers, kv heads, head size of the plain-tensor tests


def kv_for(tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys/values (L, H, S, D) that depend on each slot's token, so a wrong copy shows."""
    t = torch.tensor(tokens, dtype=torch.float32)[None, None, :, None]  # (1, 1, S, 1)
    k = t.expand(L, H, len(tokens), D) + torch.arange(D)
    return k.contiguous(), (-k).contiguous()


def block_bytes(size: int) -> int:
    return 2 * L * H * size * D * 4


def test_a_prefix_is_found_block_by_block_and_copied_back():
    cache = PrefixCache(max_bytes=1 << 20, block_size=4)
    first = list(range(10, 21))  # 11 tokens: two full blocks
    cache.store(first, *kv_for(first))
    assert len(cache.blocks) == 2 and cache.nbytes == 2 * block_bytes(4)
    follow_up = first[:8] + [99, 98, 97]  # shares both blocks, then differs
    chain = cache.match(follow_up)
    assert len(chain) == 2
    k, v = torch.zeros(L, H, 11, D), torch.zeros(L, H, 11, D)
    assert copy_into(chain, k, v) == 8
    want_k, want_v = kv_for(first)
    assert torch.equal(k[:, :, :8], want_k[:, :, :8]) and torch.equal(v[:, :, :8], want_v[:, :, :8])
    assert cache.match([10, 11, 12, 0, 14, 15, 16, 17, 1]) == []  # first block differs
    # a block matches only after the same blocks: [14..17] alone is not a prefix
    assert cache.match([14, 15, 16, 17, 1]) == []


def test_at_least_one_token_is_left_to_compute():
    cache = PrefixCache(max_bytes=1 << 20, block_size=4)
    tokens = list(range(8))
    cache.store(tokens, *kv_for(tokens))
    assert len(cache.match(tokens)) == 1  # 8 cached tokens, but the last must be computed
    assert len(cache.match(tokens + [8])) == 2


def test_memory_bound_evicts_leaves_before_the_blocks_that_lead_to_them():
    cache = PrefixCache(max_bytes=3 * block_bytes(2), block_size=2)
    system = [1, 2, 3, 4]  # two blocks every conversation shares
    a, b = system + [5, 6], system + [7, 8]
    cache.store(a, *kv_for(a))
    cache.store(b, *kv_for(b))  # a 4th block: one must go, and it is a's leaf
    assert cache.nbytes <= cache.max_bytes and len(cache.blocks) == 3
    assert len(cache.match(b + [0])) == 3
    assert len(cache.match(a + [0])) == 2  # the shared system prompt survived
    assert cache.stats.evicted_blocks == 1
    for n in range(20):  # many conversations: the bound holds throughout
        seq = system + [100 + n, 200 + n, 300 + n, 400 + n]
        cache.store(seq, *kv_for(seq))
        assert cache.nbytes <= cache.max_bytes
        # every kept block is reachable: its parent is kept too
        ids = {blk.id for blk in cache.blocks.values()}
        assert all(key[0] == -1 or key[0] in ids for key in cache.blocks)


def test_a_cache_too_small_for_one_block_keeps_nothing():
    cache = PrefixCache(max_bytes=block_bytes(4) - 1, block_size=4)
    tokens = list(range(9))
    cache.store(tokens, *kv_for(tokens))
    assert len(cache.blocks) == 0 and cache.nbytes == 0


# ---- the scheduler: several turns, alone and batched, with and without the cache -------


@pytest.fixture(scope="module")
def lm(tiny_folder):
    return load(tiny_folder)


def run_turns(scheduler, lm, conversations: list[list[str]], new_tokens: int = 10):
    """Each conversation's turns in order (all conversations at once); tokens per turn.

    A turn's prompt is the conversation so far: earlier prompts, answers, the new text.
    """
    history = [[] for _ in conversations]
    answers = [[] for _ in conversations]
    for turn in range(len(conversations[0])):
        running = []
        for c, conversation in enumerate(conversations):
            history[c] += lm.tokenizer.encode(conversation[turn])
            cfg = lm.decoding(temperature=0, max_new_tokens=new_tokens, ignore_eos=True)
            collector = Collector()
            scheduler.submit(Job(list(history[c]), cfg, collector))
            running.append(collector)
        for c, collector in enumerate(running):
            tokens = collector.wait().tokens
            answers[c].append(tokens)
            history[c] += tokens
    return answers


SYSTEM = "You are a careful assistant who answers about giraffes and their long necks. "
TURNS = [
    [SYSTEM + "Where do giraffes live?", " And what do they eat?", " How tall?", " Thanks."],
    [SYSTEM + "How long do they sleep?", " Why so little?", " Do they lie down?", " Ok."],
    [SYSTEM + "0123 4567", " 89", " 1011 1213 1415", " 16"],
]


def with_and_without(lm, conversations, max_batch, new_tokens=10):
    results = {}
    for megabytes in (0, 64):
        scheduler = Scheduler(lm, max_batch=max_batch, prefix_cache_bytes=megabytes << 20)
        try:
            results[megabytes] = run_turns(scheduler, lm, conversations, new_tokens)
            stats = scheduler.stats()["prefix_cache"]
        finally:
            scheduler.close()
    return results[0], results[64], stats


def test_turns_of_one_conversation_equal_with_and_without_the_cache(lm):
    plain, cached, stats = with_and_without(lm, TURNS[:1], max_batch=1)
    assert cached == plain
    # turns 2-4 start with everything before: most of their prompts were reused
    assert stats["hit_tokens"] > 0.5 * (stats["prompt_tokens"] - len(lm.tokenizer.encode(SYSTEM)))


def test_batched_conversations_sharing_a_system_prompt_equal_without_the_cache(lm):
    plain, cached, stats = with_and_without(lm, TURNS, max_batch=3)
    assert cached == plain
    assert stats["hit_tokens"] > 0 and stats["lookups"] == 12


def test_the_server_reports_the_cache_and_zero_turns_it_off(lm):
    scheduler = Scheduler(lm, max_batch=2, prefix_cache_bytes=0)
    try:
        assert scheduler.stats()["prefix_cache"] is None
    finally:
        scheduler.close()


@pytest.mark.slow
def test_real_chat_turns_equal_with_and_without_the_cache(smollm2_gguf):
    """SmolLM2's packed GGUF: int8 activations, the compiled one-token step, chat turns."""
    real = load(smollm2_gguf)
    later = "<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"  # ChatML
    conversations = [
        [real.render_chat([{"role": "user", "content": first}])]
        + [later.format(q) for q in rest]
        for first, *rest in (["Name a fruit.", "Another?", "And a third?"],
                             ["What is 2 + 2?", "And 3 + 3?", "And 4 + 4?"])
    ]  # fmt: skip
    plain, cached, stats = with_and_without(real, conversations, max_batch=2)
    assert cached == plain
    assert stats["hit_tokens"] > 0


def test_the_real_server_reuses_a_conversation_and_answers_as_without(tiny_folder):
    """The `openai` client against two `giraffe serve` processes: one caching, one not."""
    import httpx
    import openai
    from serve_process import running_server

    def chat(url: str) -> list[str]:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        messages, answers = [], []
        for question in ("The giraffe", " eats leaves from", " tall trees and"):
            messages.append({"role": "user", "content": question})
            r = client.chat.completions.create(
                model=tiny_folder.name, messages=messages, max_tokens=8, temperature=0
            )
            answers.append(r.choices[0].message.content)
            messages.append({"role": "assistant", "content": answers[-1]})
        return answers

    with running_server(str(tiny_folder), "--prefix-cache-mb", "0") as url:
        plain = chat(url)
        assert httpx.get(url + "/health").json()["prefix_cache"] is None
    with running_server(str(tiny_folder), "--prefix-cache-mb", "1") as url:
        assert chat(url) == plain
        stats = httpx.get(url + "/health").json()["prefix_cache"]
    assert stats["hit_tokens"] > 0 and stats["bytes"] <= stats["max_bytes"] == 1 << 20


def test_a_negative_prefix_cache_size_is_refused_on_the_command_line(capsys):
    from giraffe.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "tiny", "--prefix-cache-mb", "-1"])
    assert "-1 is negative" in capsys.readouterr().err
