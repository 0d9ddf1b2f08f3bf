"""/v1/chat/completions and /v1/completions: requests to scheduler jobs, updates to OpenAI's shapes.

A chat request is rendered by the model's own template (with its `tools`, tools.py),
a completion request's prompts are text, token ids, or a fill-in-the-middle pair
(`suffix`). Both become a `JobGroup`; the answer leaves as one JSON response or as
server-sent events. `echo` with `logprobs` scores the prompt itself on the model's
thread (what evaluation harnesses ask for), and `max_tokens: 0` generates nothing. It
does not know sampling, grammars or how updates cross threads.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from giraffe.generate.params import DecodingConfig
from giraffe.serve import responses as R
from giraffe.serve import tools as T
from giraffe.serve.errors import APIError, user_errors
from giraffe.serve.jobs import (
    STREAMED,
    ChoiceResult,
    JobGroup,
    api_error,
    check_size,
    decoding_for,
    sse,
)
from giraffe.serve.schema import ChatRequest, CompletionRequest
from giraffe.serve.state import Server


def completion_routes(server: Server, guarded) -> APIRouter:
    router = APIRouter()
    lm, tok = server.lm, server.lm.tokenizer

    @router.post("/v1/chat/completions", dependencies=guarded, responses=STREAMED)
    async def chat(body: ChatRequest, request: Request):
        server.check_model(body.model)
        _within_limit(server, body, "max_tokens", "max_completion_tokens")
        with user_errors():
            plan = T.plan(body, lm)
            kw = plan.decoding(body.decoding_kwargs())
        cfg = _decoding(server, kw, plan)
        with user_errors("messages"):
            messages = plan.messages([m.as_dict() for m in body.messages])
            prompt = lm.chat_ids(messages, plan.template_tools)
        group = JobGroup(server, [prompt], cfg, body.n)
        group.submit()
        rid = R.new_id("chatcmpl")
        if body.stream:
            events = chat_events(group, rid, server.model_id, body.include_usage(), cfg, tok, plan)
            return StreamingResponse(events, media_type="text/event-stream")
        results = await group.collect(request)
        choices = []
        for i, r in enumerate(results):
            message, reason = plan.message(r.text, r.finish_reason)
            choices.append(R.chat_choice(i, message, reason, chat_logprobs(tok, r, cfg)))
        use = R.usage(group.prompt_tokens, sum(r.generated for r in results))
        return R.chat_response(rid, server.model_id, choices, use)

    @router.post("/v1/completions", dependencies=guarded, responses=STREAMED)
    async def completions(body: CompletionRequest, request: Request):
        server.check_model(body.model)
        if "max_tokens" not in body.model_fields_set:  # OpenAI's 16, within the server's limit
            body.max_tokens = min(body.max_tokens, server.settings.max_tokens_limit)
        cfg = decoding_for(server, body)
        with user_errors("prompt"):
            prompts = _prompt_ids(lm, body)
        check_size(server, len(prompts), body.n, "prompt")  # scored only (max_tokens 0) too
        scored = None
        if body.echo and body.logprobs is not None:
            k = body.logprobs
            score = lambda: [lm.prompt_logprobs(p, k) for p in prompts]  # noqa: E731
            with user_errors("prompt"):  # on the model thread, between decode steps
                scored = await asyncio.wrap_future(server.scheduler.call(score))
        scored = scored or [None] * len(prompts)
        echo = [_echo(tok, body, p, s) for p, s in zip(prompts, scored, strict=True)]
        echo = [e for e in echo for _ in range(body.n)] if body.echo else None
        rid = R.new_id("cmpl")
        if body.max_tokens == 0:  # score or echo the prompt only
            results = [ChoiceResult() for _ in prompts for _ in range(body.n)]
            response = _completion_response(rid, server, results, cfg, tok, echo, prompts)
            if body.stream:  # the same choices as one chunk each, then [DONE]
                return StreamingResponse(_replay(response), media_type="text/event-stream")
            return response
        group = JobGroup(server, prompts, cfg, body.n, "prompt")
        group.submit()
        if body.stream:
            events = completion_events(
                group, rid, server.model_id, body.include_usage(), cfg, tok, echo
            )
            return StreamingResponse(events, media_type="text/event-stream")
        results = await group.collect(request)
        return _completion_response(rid, server, results, cfg, tok, echo, prompts)

    return router


def _within_limit(server: Server, body, *fields: str) -> None:
    """Each token budget the client set is within --max-tokens-limit (the one not used too)."""
    limit = server.settings.max_tokens_limit
    for name in fields:
        asked = getattr(body, name)
        if asked is not None and asked > limit:
            raise APIError(400, f"{name} is {asked}; this server allows at most {limit}", name)


def _decoding(server: Server, kw: dict, plan) -> DecodingConfig:
    try:
        return server.decoding(kw)
    except APIError as e:  # a tool's parameters schema is the tools' fault, not response_format's
        if plan.constrains and e.code == "invalid_schema":
            e.param = "tools"
        raise


def _prompt_ids(lm, body: CompletionRequest) -> list[list[int]]:
    prompts = body.prompts()
    if body.suffix is None:
        return [lm.encode_prompt(p) for p in prompts]
    if not all(isinstance(p, str) for p in prompts):
        raise APIError(400, "suffix (fill-in-the-middle) needs text prompts", "suffix")
    with user_errors("suffix"):  # a model without FIM tokens (its document says suffix: null)
        return [lm.fill_in_middle_ids(p, body.suffix) for p in prompts]


def _echo(tok, body: CompletionRequest, ids: list[int], scored) -> tuple[str, dict | None]:
    """The prompt as echoed text, and its logprobs in the legacy shape when scored."""
    text = body.prompt if isinstance(body.prompt, str) else tok.decode(ids)
    if isinstance(body.prompt, list) and body.prompt and isinstance(body.prompt[0], str):
        text = tok.decode(ids, skip_special_tokens=True)
    if scored is None:
        return text, None
    return text, R.prompt_logprobs(tok, ids, scored)


def _completion_response(rid, server, results, cfg, tok, echo, prompts) -> dict:
    choices = []
    for i, r in enumerate(results):
        text, lp = r.text, None
        if cfg.logprobs:
            lp = R.completion_logprobs(tok, r.events)
        if echo is not None:
            prefix, prompt_lp = echo[i]
            text = prefix + text
            if prompt_lp is not None:
                lp = R.join_logprobs(prompt_lp, lp, len(prefix))
        choices.append(R.completion_choice(i, text, r.finish_reason, lp))
    n_prompt = sum(len(p) for p in prompts)
    use = R.usage(n_prompt, sum(r.generated for r in results))
    return R.completion_response(rid, server.model_id, choices, use)


async def _replay(response: dict):
    for choice in response["choices"]:
        yield sse({**response, "choices": [choice]} | {"usage": None})
    yield sse("[DONE]")


def chat_logprobs(tok, result: ChoiceResult, cfg: DecodingConfig) -> dict | None:
    if not cfg.logprobs:
        return None
    return {"content": [R.chat_logprob_entry(tok, ev) for ev in result.events]}


async def _stream(group: JobGroup, rid, model, include_usage, object_name, opening, render):
    """What both streams share: the opening chunks, each update rendered by `render(i, update)`
    (a list of SSE strings), an error ending the stream, the usage chunk, [DONE]."""
    generated = 0
    try:
        if opening:
            yield opening
        async for batch in group.updates():
            out, failed = [], False
            for i, update in batch:
                if update.error is not None:
                    out.append(sse(api_error(update.error).body()))
                    failed = True
                    break
                generated += update.event is not None
                out += render(i, update)
            yield "".join(out)
            if failed:
                break
        else:
            if include_usage:
                use = R.usage(group.prompt_tokens, generated)
                yield sse(R.usage_chunk(rid, model, object_name, use))
        yield sse("[DONE]")
    finally:
        group.cancel()  # the client went away, or we are done: free the rows now


def chat_events(group: JobGroup, rid, model, include_usage, cfg, tok, plan):
    """Chat chunks: a role delta per choice, content (or tool-call) deltas, a finish chunk, [DONE]."""
    streams = [plan.stream() for _ in group.jobs]
    opening = "".join(
        sse(R.chat_chunk(rid, model, i, {"role": "assistant", "content": ""}))
        for i in range(len(group.jobs))
    )

    def render(i, update) -> list[str]:
        out, lp = [], None
        if cfg.logprobs and update.event is not None and update.in_output:
            lp = {"content": [R.chat_logprob_entry(tok, update.event)]}
        deltas = streams[i].push(update.text) if update.text else []
        if update.done:
            deltas += streams[i].finish()
        for n, delta in enumerate(deltas):
            out.append(sse(R.chat_chunk(rid, model, i, delta, None, lp if n == 0 else None)))
        if lp and not deltas:
            out.append(sse(R.chat_chunk(rid, model, i, {"content": ""}, None, lp)))
        if update.done:
            reason = update.event.finish_reason if update.event else "stop"
            reason = streams[i].finish_reason(reason or "stop")
            out.append(sse(R.chat_chunk(rid, model, i, {}, reason)))
        return out

    return _stream(group, rid, model, include_usage, "chat.completion.chunk", opening, render)


def completion_events(group: JobGroup, rid, model, include_usage, cfg, tok, echo):
    """Completion chunks: the echoed prompts first, then text (and logprobs) per update, [DONE]."""
    opening = ""
    if echo is not None:
        opening = "".join(
            sse(R.completion_response(rid, model, [R.completion_choice(i, prefix, None, lp)], None))
            for i, (prefix, lp) in enumerate(echo)
        )

    def render(i, update) -> list[str]:
        lp = None
        if cfg.logprobs and update.event is not None and update.in_output:
            lp = R.completion_logprobs(tok, [update.event])
        reason = None
        if update.done:
            reason = (update.event.finish_reason if update.event else None) or "stop"
        if not (update.text or lp or reason):
            return []
        choice = R.completion_choice(i, update.text, reason, lp)
        return [sse(R.completion_response(rid, model, [choice], None))]

    return _stream(group, rid, model, include_usage, "text_completion", opening, render)
