"""OpenAI response and stream-chunk shapes, built from giraffe's generated tokens.

Plain dictionaries in exactly the layout OpenAI documents (chat.completion,
chat.completion.chunk, text_completion, embedding lists, error objects), so the
official clients parse them. Log-probabilities come in the two shapes OpenAI uses:
chat's `{"content": [{token, logprob, bytes, top_logprobs}]}` and the legacy
completions' parallel lists. It does not know how tokens were generated.
"""

from __future__ import annotations

import base64
import time
import uuid

import numpy as np

from giraffe.generate.sequence import TokenEvent
from giraffe.tokenizer import Tokenizer


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def token_text(tok: Tokenizer, token_id: int) -> tuple[str, list[int]]:
    """A token's text and raw bytes (a byte-level piece may be half a character)."""
    raw = tok.token_bytes(token_id)
    return raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprob_entry(tok: Tokenizer, event: TokenEvent) -> dict:
    text, raw = token_text(tok, event.token_id)
    top = []
    for token_id, lp in event.top or []:
        t, b = token_text(tok, token_id)
        top.append({"token": t, "logprob": lp, "bytes": b})
    return {"token": text, "logprob": event.logprob, "bytes": raw, "top_logprobs": top}


def completion_logprobs(tok: Tokenizer, events: list[TokenEvent], start_offset: int = 0) -> dict:
    tokens, offsets, top = [], [], []
    offset = start_offset
    for ev in events:
        text, _ = token_text(tok, ev.token_id)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        top.append({token_text(tok, t)[0]: lp for t, lp in ev.top or []})
    return {
        "tokens": tokens,
        "token_logprobs": [ev.logprob for ev in events],
        "top_logprobs": top,
        "text_offset": offsets,
    }


def prompt_logprobs(tok: Tokenizer, ids: list[int], scored: list[tuple]) -> dict:
    """The prompt's own tokens in the legacy completions shape (`echo` with `logprobs`):
    the first token has no logprob (nothing comes before it), so null, as OpenAI's."""
    tokens, offsets, offset = [], [], 0
    for token_id in ids:
        text, _ = token_text(tok, token_id)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
    top = [
        None if alts is None else {token_text(tok, t)[0]: v for t, v in alts} for _, alts in scored
    ]
    return {
        "tokens": tokens,
        "token_logprobs": [lp for lp, _ in scored],
        "top_logprobs": top,
        "text_offset": offsets,
    }


def join_logprobs(prompt: dict, generated: dict | None, prompt_chars: int) -> dict:
    """Echoed prompt logprobs followed by the generated tokens' (offsets after the prompt)."""
    if generated is None:
        return prompt
    return {
        "tokens": prompt["tokens"] + generated["tokens"],
        "token_logprobs": prompt["token_logprobs"] + generated["token_logprobs"],
        "top_logprobs": prompt["top_logprobs"] + generated["top_logprobs"],
        "text_offset": prompt["text_offset"] + [o + prompt_chars for o in generated["text_offset"]],
    }


def chat_response(rid: str, model: str, choices: list[dict], use: dict) -> dict:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": choices,
        "usage": use,
        "system_fingerprint": None,
    }


def chat_choice(index: int, message: dict, finish_reason: str, logprobs: dict | None) -> dict:
    """message: {"role": "assistant", "content": ..., "tool_calls": [...] when it called tools}."""
    return {
        "index": index,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }


def chat_chunk(
    rid: str, model: str, index: int, delta: dict, finish_reason=None, logprobs=None
) -> dict:
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": now(),
        "model": model,
        "choices": [choice],
    }


def usage_chunk(rid: str, model: str, obj: str, use: dict) -> dict:
    """The last chunk when stream_options.include_usage is set: no choices, only usage."""
    return {"id": rid, "object": obj, "created": now(), "model": model, "choices": [], "usage": use}


def completion_choice(index: int, text: str, finish_reason, logprobs: dict | None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_response(rid: str, model: str, choices: list[dict], use: dict | None) -> dict:
    out = {
        "id": rid,
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": choices,
    }
    if use is not None:
        out["usage"] = use
    return out


def embedding_list(model: str, vectors: np.ndarray, encoding: str, tokens: int) -> dict:
    data = []
    for i, v in enumerate(vectors):
        v = np.ascontiguousarray(v, dtype="<f4")
        value = base64.b64encode(v.tobytes()).decode() if encoding == "base64" else v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
