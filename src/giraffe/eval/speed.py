"""How fast a model runs here: load time, prefill and decode tokens/s, time to first token, RSS.

`measure_speed` loads the model, warms up, then takes the median of `repeats` runs of
(a) a `prefill_tokens` prompt generating one token (prefill speed and time to first
token) and (b) a short prompt generating `decode_tokens` tokens greedily with
end-of-sequence ignored (decode speed, timed from the first token to the last). The
prompt is a fixed English text, so runs compare. Peak RSS is this process's. It knows
nothing of peers: `bench/decode.py` runs llama.cpp and `transformers` beside it.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TEXT = (
    "The giraffe is a large African hoofed mammal belonging to the genus Giraffa. It is the "
    "tallest living terrestrial animal and the largest ruminant on Earth. Its chief "
    "distinguishing characteristics are its extremely long neck and legs, horn-like ossicones, "
    "and spotted coat patterns. "
)


@dataclass
class SpeedResult:
    load_s: float
    prefill_tok_s: float  # median over runs
    decode_tok_s: float
    ttft_s: float  # time to first token after a `prefill_tokens` prompt
    peak_rss_mib: float
    prefill_runs: list[float] = field(default_factory=list)
    decode_runs: list[float] = field(default_factory=list)


def prompt_ids(encode, n: int) -> list[int]:
    """The first n tokens of the fixed text (repeated as needed)."""
    ids = encode(TEXT * (1 + n // 40))
    if len(ids) < n:
        raise ValueError(f"the benchmark text gave {len(ids)} tokens, fewer than {n}")
    return ids[:n]


def peak_rss_mib() -> float:
    """This process's peak resident memory.

    Linux: VmHWM of /proc/self/status, because getrusage's ru_maxrss survives execve - a
    benchmark started from a big parent would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    per_mib = 2**20 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mib


def measure_speed(
    model: str,
    prefill_tokens: int = 512,
    decode_tokens: int = 128,
    repeats: int = 3,
    packed: bool | None = None,
) -> SpeedResult:
    if prefill_tokens < 1 or decode_tokens < 2 or repeats < 1:
        raise ValueError("need prefill_tokens >= 1, decode_tokens >= 2 and repeats >= 1")
    start = time.perf_counter()
    from giraffe import load

    lm = load(model, packed=packed)
    load_s = time.perf_counter() - start
    long_ids = prompt_ids(lm.tokenizer.encode, prefill_tokens)
    run = _runner(lm)
    run(long_ids[:8], 4)  # warm-up: kernels built, buffers allocated
    prefill, ttft, decode = [], [], []
    for _ in range(repeats):
        stamps = run(long_ids, 1)
        ttft.append(stamps[1] - stamps[0])
        prefill.append(prefill_tokens / ttft[-1])
        stamps = run(long_ids[:8], decode_tokens)
        decode.append((decode_tokens - 1) / (stamps[-1] - stamps[1]))
    return SpeedResult(
        load_s=round(load_s, 3),
        prefill_tok_s=round(statistics.median(prefill), 1),
        decode_tok_s=round(statistics.median(decode), 1),
        ttft_s=round(statistics.median(ttft), 4),
        peak_rss_mib=round(peak_rss_mib(), 1),
        prefill_runs=[round(x, 1) for x in prefill],
        decode_runs=[round(x, 1) for x in decode],
    )


def _runner(lm):
    from giraffe.generate.engine import DecodeSession
    from giraffe.generate.params import DecodingConfig

    def run(ids: list[int], n: int) -> list[float]:
        """The start time, then one timestamp per generated token."""
        cfg = DecodingConfig(max_new_tokens=n, temperature=0.0, ignore_eos=True)
        stamps = [time.perf_counter()]
        for _ in DecodeSession(lm.decoder_for(1), [ids], cfg):
            stamps.append(time.perf_counter())
        return stamps

    return run
