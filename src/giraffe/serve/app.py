"""The FastAPI application: OpenAI-compatible endpoints and the web page, over the scheduler.

`create_app(Server(...))` receives ready model objects (it never loads files itself:
the CLI does) and wires the routes: /v1/models, /v1/chat/completions,
/v1/completions, /v1/embeddings, /tokenize, /detokenize, /inside/{view}, /health, the
knowledge base at /documents (documents.py), and the page at /.
Generation requests become scheduler jobs; their tokens come back on the event loop
as `Update`s and leave either as one JSON response or as server-sent events. A client
that disconnects cancels its jobs at once. It does not know sampling or attention.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from giraffe.generate.engine import GenerationError
from giraffe.generate.params import DecodingConfig
from giraffe.lm import LanguageModel
from giraffe.serve import responses as R
from giraffe.serve.errors import APIError, BodyLimit, check_api_key, install_error_handlers
from giraffe.serve.scheduler import Job, JobTimeout, QueueFull, Scheduler, Update
from giraffe.serve.schema import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    InsideRequest,
    TokenizeRequest,
    UnsupportedField,
)

STATIC = Path(__file__).parent / "static"
POLL_DISCONNECT_S = 0.5  # how often a non-streaming request checks that its client is there
MAX_INSIDE_TOKENS = 400  # attention maps of every layer and head grow with the square


@dataclass(frozen=True)
class ServeSettings:
    api_key: str | None = None
    max_body_bytes: int = 1 << 20  # 1 MiB of JSON is ~250k tokens of prompt: plenty
    max_tokens_limit: int = 4096  # the most tokens one request may ask for
    request_timeout_s: float = 600.0
    cors_origins: tuple[str, ...] = ()  # off unless listed
    max_batch: int = 16
    max_queue: int = 64
    max_context: int | None = 4096  # KV cache length per slot (memory: see `giraffe info`)


class Server:
    """What the app serves: the chat model, an optional embedding model, and the scheduler."""

    def __init__(
        self,
        lm: LanguageModel,
        model_id: str,
        embedder=None,
        embed_id: str | None = None,
        settings: ServeSettings = ServeSettings(),
        scheduler_thread: bool = True,
        views: dict[str, Callable[[str], dict]] | None = None,
        knowledge=None,
    ) -> None:
        """scheduler_thread=False: the caller runs `server.scheduler.run()` on its own thread.

        views: the Inside tab's explainers by name ("attention", "next", "lens"), each
        text -> JSON-ready dict; given by the caller (giraffe.explain sits beside serve).
        knowledge: a `giraffe.rag.knowledge.KnowledgeBase` for /documents, or None; used
        only on the model's thread (documents.py).
        """
        self.lm, self.model_id = lm, model_id
        self.views = views or {}
        self.knowledge = knowledge
        self.embedder, self.embed_id = embedder, embed_id
        self.settings = settings
        self.started = R.now()
        self._outbox: Outbox | None = None
        self.scheduler = Scheduler(
            lm, settings.max_batch, settings.max_queue, settings.max_context, scheduler_thread
        )

    def outbox(self, loop: asyncio.AbstractEventLoop) -> Outbox:
        if self._outbox is None or self._outbox.loop is not loop:
            self._outbox = Outbox(loop)
        return self._outbox

    def check_model(self, name: str, embedding: bool = False) -> None:
        if embedding:
            if self.embedder is None:
                raise APIError(
                    400,
                    "this server has no embedding model: start it with --embed-model minilm-l6",
                    "model",
                )
            if name != self.embed_id:
                raise APIError(
                    404, f"model {name!r} not found; embeddings come from {self.embed_id!r}",
                    "model", "model_not_found",
                )  # fmt: skip
        elif name != self.model_id:
            raise APIError(
                404, f"model {name!r} not found; this server runs {self.model_id!r}",
                "model", "model_not_found",
            )  # fmt: skip

    def decoding(self, kw: dict) -> DecodingConfig:
        limit = self.settings.max_tokens_limit
        asked = kw.setdefault("max_new_tokens", limit)
        if asked > limit:
            raise APIError(
                400, f"max_tokens is {asked}; this server allows at most {limit}", "max_tokens"
            )
        return self.lm.decoding(**kw)


@dataclass
class ChoiceResult:
    text: str = ""
    events: list = field(default_factory=list)  # TokenEvents that are part of the output
    generated: int = 0
    finish_reason: str = "length"

    def add(self, update: Update) -> None:
        self.text += update.text
        if update.event is not None:
            self.generated += 1
            if update.in_output:
                self.events.append(update.event)
            if update.event.finish_reason:
                self.finish_reason = update.event.finish_reason


class Outbox:
    """Hands updates from the model thread to the event loop, one wake-up per burst.

    A decode step of 16 sequences makes 16 updates at once; waking the event loop for
    each would take the CPU from the model's OpenMP threads 16 times per step.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.items: list[tuple[asyncio.Queue, object]] = []

    def put(self, queue: asyncio.Queue, item) -> None:
        with self.lock:
            self.items.append((queue, item))
            first = len(self.items) == 1
        if first:
            self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        for queue, item in items:
            queue.put_nowait(item)


class JobGroup:
    """The jobs of one request (n choices x prompts), their updates merged on the event loop."""

    def __init__(self, server: Server, prompts: list[list[int]], cfg: DecodingConfig, n: int):
        self.outbox = server.outbox(asyncio.get_running_loop())
        self.queue: asyncio.Queue[tuple[int, Update]] = asyncio.Queue()
        self.scheduler = server.scheduler
        deadline = time.monotonic() + server.settings.request_timeout_s
        self.jobs = []
        for p in prompts:
            for j in range(n):
                seed = None if cfg.seed is None else cfg.seed + j
                index = len(self.jobs)
                deliver = self._deliverer(index)
                self.jobs.append(Job(p, cfg, deliver, seed=seed, deadline=deadline))
        self.prompt_tokens = sum(len(p) for p in prompts)

    def _deliverer(self, index: int):
        return lambda update: self.outbox.put(self.queue, (index, update))

    def submit(self) -> None:
        try:
            for job in self.jobs:
                self.scheduler.submit(job)
        except GenerationError as e:
            self.cancel()
            raise APIError(400, str(e), "messages", "context_length_exceeded") from e
        except QueueFull as e:
            self.cancel()
            raise APIError(503, f"the server is busy: {e}") from e

    def cancel(self) -> None:
        for job in self.jobs:
            self.scheduler.cancel(job)

    async def updates(self, request: Request | None = None) -> AsyncIterator[list]:
        """Lists of (index, update) as they come, until all jobs are done; a list holds
        everything that arrived meanwhile (one write to the client, not one per token).
        Stops early if the client went away."""
        remaining = len(self.jobs)
        while remaining:
            try:
                batch = [await asyncio.wait_for(self.queue.get(), POLL_DISCONNECT_S)]
            except TimeoutError:
                if request is not None and await request.is_disconnected():
                    self.cancel()
                    return
                continue
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            remaining -= sum(update.done for _, update in batch)
            yield batch

    async def collect(self, request: Request) -> list[ChoiceResult]:
        results = [ChoiceResult() for _ in self.jobs]
        try:
            async for batch in self.updates(request):
                for index, update in batch:
                    if update.error is not None:
                        raise api_error(update.error)
                    results[index].add(update)
        finally:
            self.cancel()
        return results


def api_error(error: BaseException) -> APIError:
    if isinstance(error, JobTimeout):
        return APIError(504, str(error))
    if isinstance(error, ValueError):
        return APIError(400, str(error))
    return APIError(500, f"generation failed: {type(error).__name__}: {error}")


def sse(data: dict | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


def decoding_for(server: Server, body) -> DecodingConfig:
    try:
        return server.decoding(body.decoding_kwargs())
    except UnsupportedField as e:
        raise APIError(400, str(e), e.param) from e
    except ValueError as e:  # DecodingError names the option and its valid range
        raise APIError(400, str(e)) from e


def create_app(server: Server) -> FastAPI:
    settings = server.settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        server.scheduler.close()

    app = FastAPI(title="giraffe", version="0.1.0", redoc_url=None, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )

    def authorized(request: Request) -> None:
        check_api_key(request, settings.api_key)

    guarded = [Depends(authorized)]
    lm, tok = server.lm, server.lm.tokenizer

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": server.model_id, "embedding_model": server.embed_id,
                **server.scheduler.stats()}  # fmt: skip

    @app.get("/v1/models", dependencies=guarded)
    def models() -> dict:
        ids = [server.model_id] + ([server.embed_id] if server.embedder is not None else [])
        data = [model_card(i, server.started) for i in ids]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id}", dependencies=guarded)
    def model(model_id: str) -> dict:
        if model_id not in (server.model_id, server.embed_id):
            raise APIError(404, f"model {model_id!r} not found", "model", "model_not_found")
        return model_card(model_id, server.started)

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat(body: ChatRequest, request: Request):
        server.check_model(body.model)
        cfg = decoding_for(server, body)
        try:
            prompt = lm.chat_ids([m.as_dict() for m in body.messages])
        except ValueError as e:
            raise APIError(400, f"cannot render these messages: {e}", "messages") from e
        group = JobGroup(server, [prompt], cfg, body.n)
        group.submit()
        rid = R.new_id("chatcmpl")
        if body.stream:
            events = chat_events(group, rid, server.model_id, body.include_usage(), cfg, tok)
            return StreamingResponse(events, media_type="text/event-stream")
        results = await group.collect(request)
        choices = [
            R.chat_choice(i, r.text, r.finish_reason, chat_logprobs(tok, r, cfg))
            for i, r in enumerate(results)
        ]
        use = R.usage(group.prompt_tokens, sum(r.generated for r in results))
        return R.chat_response(rid, server.model_id, choices, use)

    @app.post("/v1/completions", dependencies=guarded)
    async def completions(body: CompletionRequest, request: Request):
        server.check_model(body.model)
        cfg = decoding_for(server, body)
        try:
            prompts = [lm.encode_prompt(p) for p in body.prompts()]
        except UnsupportedField as e:
            raise APIError(400, str(e), e.param) from e
        except ValueError as e:
            raise APIError(400, str(e), "prompt") from e
        group = JobGroup(server, prompts, cfg, body.n)
        group.submit()
        rid = R.new_id("cmpl")
        if body.stream:
            events = completion_events(group, rid, server.model_id, body.include_usage(), cfg, tok)
            return StreamingResponse(events, media_type="text/event-stream")
        results = await group.collect(request)
        choices = [
            R.completion_choice(
                i,
                r.text,
                r.finish_reason,
                R.completion_logprobs(tok, r.events) if cfg.logprobs else None,
            )  # fmt: skip
            for i, r in enumerate(results)
        ]
        use = R.usage(group.prompt_tokens, sum(r.generated for r in results))
        return R.completion_response(rid, server.model_id, choices, use)

    @app.post("/v1/embeddings", dependencies=guarded)
    async def embeddings(body: EmbeddingRequest):
        server.check_model(body.model, embedding=True)
        try:
            texts = body.texts()
        except UnsupportedField as e:
            raise APIError(400, str(e), e.param) from e
        if body.dimensions is not None and body.dimensions != server.embedder.dim:
            raise APIError(
                400, f"dimensions must be {server.embedder.dim} for this model", "dimensions"
            )
        try:
            # on the model thread: a second computing thread would slow both (scheduler.py)
            embed = functools.partial(server.embedder.embed, texts, truncate=False)
            vectors = await asyncio.wrap_future(server.scheduler.call(embed))
            tokens = sum(server.embedder.count_tokens(t) for t in texts)
        except ValueError as e:
            raise APIError(400, str(e), "input") from e
        return R.embedding_list(server.embed_id, vectors, body.encoding_format, tokens)

    @app.post("/tokenize", dependencies=guarded)
    def tokenize(body: TokenizeRequest) -> dict:
        if (body.text is None) == (body.messages is None):
            raise APIError(400, "give exactly one of 'text' or 'messages'", "text")
        if body.messages is not None:
            ids = lm.chat_ids([m.as_dict() for m in body.messages])
        else:
            ids = tok.encode(body.text, add_special_tokens=body.add_special_tokens)
        return {"tokens": ids, "pieces": tok.token_strings(ids), "count": len(ids)}

    @app.post("/detokenize", dependencies=guarded)
    def detokenize(body: DetokenizeRequest) -> dict:
        try:
            return {"text": tok.decode(body.tokens)}
        except ValueError as e:
            raise APIError(400, str(e), "tokens") from e

    @app.post("/inside/{view}", dependencies=guarded)
    async def inside(view: str, body: InsideRequest) -> dict:
        explain = server.views.get(view)
        if explain is None:
            known = ", ".join(sorted(server.views)) or "none (started without explainers)"
            raise APIError(404, f"no view {view!r}; this server has: {known}", "view")
        count = len(tok.encode(body.text))
        if not 0 < count <= MAX_INSIDE_TOKENS:
            raise APIError(
                400, f"the text has {count} tokens; give 1 to {MAX_INSIDE_TOKENS}", "text"
            )
        try:  # on the model thread, between decode steps
            return await asyncio.wrap_future(server.scheduler.call(lambda: explain(body.text)))
        except ValueError as e:
            raise APIError(400, str(e), "text") from e

    from giraffe.serve.documents import document_routes  # it builds on this module's parts

    app.include_router(document_routes(server, guarded))

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "giraffe"}


def chat_logprobs(tok, result: ChoiceResult, cfg: DecodingConfig) -> dict | None:
    if not cfg.logprobs:
        return None
    return {"content": [R.chat_logprob_entry(tok, ev) for ev in result.events]}


async def chat_events(group: JobGroup, rid, model, include_usage, cfg, tok):
    """Chat chunks: a role delta per choice, content deltas, a finish chunk, [DONE]."""
    generated = 0
    try:
        yield "".join(
            sse(R.chat_chunk(rid, model, i, {"role": "assistant", "content": ""}))
            for i in range(len(group.jobs))
        )
        async for batch in group.updates():
            out, failed = [], False
            for i, update in batch:
                if update.error is not None:
                    out.append(sse(api_error(update.error).body()))
                    failed = True
                    break
                generated += update.event is not None
                lp = None
                if cfg.logprobs and update.event is not None and update.in_output:
                    lp = {"content": [R.chat_logprob_entry(tok, update.event)]}
                if update.text or lp:
                    out.append(sse(R.chat_chunk(rid, model, i, {"content": update.text}, None, lp)))
                if update.done:
                    reason = update.event.finish_reason if update.event else "stop"
                    out.append(sse(R.chat_chunk(rid, model, i, {}, reason or "stop")))
            yield "".join(out)
            if failed:
                break
        else:
            if include_usage:
                use = R.usage(group.prompt_tokens, generated)
                yield sse(R.usage_chunk(rid, model, "chat.completion.chunk", use))
        yield sse("[DONE]")
    finally:
        group.cancel()  # the client went away, or we are done: free the rows now


async def completion_events(group: JobGroup, rid, model, include_usage, cfg, tok):
    generated = 0
    try:
        async for batch in group.updates():
            out, failed = [], False
            for i, update in batch:
                if update.error is not None:
                    out.append(sse(api_error(update.error).body()))
                    failed = True
                    break
                generated += update.event is not None
                lp = None
                if cfg.logprobs and update.event is not None and update.in_output:
                    lp = R.completion_logprobs(tok, [update.event])
                reason = None
                if update.done:
                    reason = (update.event.finish_reason if update.event else None) or "stop"
                if update.text or lp or reason:
                    choice = R.completion_choice(i, update.text, reason, lp)
                    out.append(sse(R.completion_response(rid, model, [choice], None)))
            yield "".join(out)
            if failed:
                break
        else:
            if include_usage:
                use = R.usage(group.prompt_tokens, generated)
                yield sse(R.usage_chunk(rid, model, "text_completion", use))
        yield sse("[DONE]")
    finally:
        group.cancel()
