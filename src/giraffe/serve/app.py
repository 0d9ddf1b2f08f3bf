"""The FastAPI application: wires the routes over a `Server` (state.py).

`create_app(Server(...))` installs the error handlers, the body limit, CORS and the API
key, and the routes: /v1/models, /v1/chat/completions and /v1/completions
(completions.py), /v1/embeddings, /tokenize, /detokenize, /tokenizer_info,
/inside/{view}, /health, the knowledge base at /documents (documents.py), and the page
at /. Model work runs on the scheduler's thread (`scheduler.call` or jobs.py). It does
not know sampling, attention or how updates reach the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from giraffe.serve import responses as R
from giraffe.serve.completions import completion_routes
from giraffe.serve.documents import document_routes
from giraffe.serve.errors import (
    ERROR_SCHEMA,
    APIError,
    BodyLimit,
    check_api_key,
    error_responses,
    install_error_handlers,
    user_errors,
)
from giraffe.serve.schema import DetokenizeRequest, EmbeddingRequest, InsideRequest, TokenizeRequest
from giraffe.serve.state import Server, model_card

STATIC = Path(__file__).parent / "static"
MAX_INSIDE_TOKENS = 400  # attention maps of every layer and head grow with the square
# Status codes beyond 400/413/500 (any route) and 401 (any guarded route, with --api-key)
NOT_FOUND = ("/v1/models/{model_id}", "/v1/chat/completions", "/v1/completions",
             "/v1/embeddings", "/inside/{view}", "/documents")  # fmt: skip
QUEUED = ("/v1/chat/completions", "/v1/completions", "/documents/ask")  # 503 and 504


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
    _model_routes(app, server, guarded)
    _token_routes(app, server, guarded)
    _embedding_routes(app, server, guarded)
    app.include_router(completion_routes(server, guarded))
    app.include_router(document_routes(server, guarded))

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _document_errors(app, settings.api_key is not None, _server_facts(server))
    return app


def _document_errors(app: FastAPI, keyed: bool, facts: dict) -> None:
    """/openapi.json lists the status codes each route really answers, not FastAPI's 422,
    and this server's facts (`_server_facts`)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        components["Error"] = ERROR_SCHEMA
        for path, operations in schema["paths"].items():
            codes = {400, 413, 500}
            codes |= {401} if keyed and path != "/health" else set()
            codes |= {404} if path.startswith(NOT_FOUND) else set()
            codes |= {503, 504} if path in QUEUED else set()
            for op in operations.values():
                op["responses"].pop("422", None)
                op["responses"].update(error_responses(codes))
        _fill_facts(components, facts)
        return schema

    app.openapi = openapi


def _server_facts(server: Server) -> dict:
    """What this server's document states that a static schema cannot: see schema.py."""
    vocab = min(server.lm.tokenizer.vocab_size, server.lm.config.vocab_size)
    return {
        "x-token-id": {"maximum": vocab - 1},  # the server refuses larger ids
        "x-token-key": {"pattern": decimal_range(vocab - 1)},  # the same ids as JSON keys
        "x-max-tokens": {"maximum": server.settings.max_tokens_limit},
        "x-model": {"chat": [server.model_id], "embedding": [server.embed_id]},
        "x-fim": server.lm.fim_style is not None,
        "x-queue": server.settings.max_queue,  # prompts x n of one request, at most
    }


def _fill_facts(node, facts: dict) -> None:
    """Fill in the server's facts where schema.py marked them (x-... keys, removed)."""
    if isinstance(node, list):
        for value in node:
            _fill_facts(value, facts)
        return
    if not isinstance(node, dict):
        return
    if node.pop("x-token-id", False):
        node.update(facts["x-token-id"])
    if node.pop("x-token-key", False):
        node.update(facts["x-token-key"])
    if node.pop("x-max-tokens", False):
        node.update(facts["x-max-tokens"])
    kind = node.pop("x-model", None)
    if kind is not None and None not in facts["x-model"][kind]:
        node["enum"] = facts["x-model"][kind]  # another name is a 404 model_not_found
    if node.pop("x-queue", False):
        node["maximum"] = min(int(node["maximum"]), facts["x-queue"])
    if node.pop("x-prompts", False):
        node["allOf"] = node.get("allOf", []) + prompts_per_n(facts["x-queue"], node)
    if node.pop("x-fim", False) and not facts["x-fim"]:
        node.clear()  # this model has no FIM tokens: suffix may only be null
        node.update(type="null", description="this model has no fill-in-the-middle tokens")
    for value in node.values():
        _fill_facts(value, facts)
    _cap_default(node, facts["x-max-tokens"]["maximum"])


def prompts_per_n(queue: int, request: dict) -> list[dict]:
    """if/then rules: with n >= k, a list of prompts holds at most queue // k of them (a list
    of token ids is one prompt)."""
    top = min(int(request["properties"]["n"]["maximum"]), queue)
    rules, last = [], None
    for k in range(1, top + 1):
        most = queue // k
        if most == last:
            continue
        last = most
        prompts = {"anyOf": [
            {"type": "string"}, {"type": "array", "items": {"type": "integer"}},
            {"type": "array", "maxItems": most},
        ]}  # fmt: skip
        rule = {"properties": {"prompt": prompts}}  # n = 1 (the default) needs no if
        if k > 1:
            rule = {"if": {"required": ["n"], "properties": {"n": {"minimum": k}}}, "then": rule}
        rules.append(rule)
    return rules


def decimal_range(top: int) -> str:
    """A regular expression for the decimal numbers 0..top, no leading zeros."""
    digits = str(top)
    alternatives = ["0"] + [f"[1-9][0-9]{{{n}}}" for n in range(len(digits) - 1)]
    for i, d in enumerate(digits):  # same prefix as top, a smaller digit here, any digits after
        low, high, rest = (1 if i == 0 else 0), int(d) - 1, len(digits) - i - 1
        if high >= low:
            alternatives.append(
                f"{digits[:i]}[{low}-{high}]" + (f"[0-9]{{{rest}}}" if rest else "")
            )
    alternatives.append(digits)
    return "^(" + "|".join(dict.fromkeys(alternatives)) + ")$"


def _cap_default(node: dict, limit: int) -> None:
    """A max_tokens default (16 on /v1/completions) above --max-tokens-limit becomes the limit,
    as the route does."""
    branches = node.get("anyOf", ())
    bounded = any(b.get("maximum") == limit for b in branches if isinstance(b, dict))
    if bounded and isinstance(node.get("default"), int) and node["default"] > limit:
        node["default"] = limit


def _model_routes(app: FastAPI, server: Server, guarded) -> None:
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


def _token_routes(app: FastAPI, server: Server, guarded) -> None:
    lm, tok = server.lm, server.lm.tokenizer

    @app.post("/tokenize", dependencies=guarded)
    def tokenize(body: TokenizeRequest) -> dict:
        given = [body.text, body.prompt, body.messages]
        if sum(x is not None for x in given) != 1:
            raise APIError(400, "give exactly one of 'text' (or 'prompt') or 'messages'", "text")
        if body.messages is not None:
            with user_errors("messages"):
                ids = lm.chat_ids([m.as_dict() for m in body.messages])
        else:
            text = body.text if body.text is not None else body.prompt
            ids = tok.encode(text, add_special_tokens=body.add_special_tokens)
        return {"tokens": ids, "pieces": tok.token_strings(ids), "count": len(ids)}

    @app.post("/detokenize", dependencies=guarded)
    def detokenize(body: DetokenizeRequest) -> dict:
        with user_errors("tokens"):
            text = tok.decode(body.tokens)
        return {"text": text, "prompt": text}  # "prompt": vLLM's name (lm-eval reads it)

    @app.get("/tokenizer_info", dependencies=guarded)
    def tokenizer_info() -> dict:
        return lm.tokenizer_info() | {"max_context": server.scheduler.context}

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
        except ValueError as e:  # giraffe.explain's class for bad input (its docstring)
            raise APIError(400, str(e), "text") from e


def _embedding_routes(app: FastAPI, server: Server, guarded) -> None:
    @app.post("/v1/embeddings", dependencies=guarded)
    async def embeddings(body: EmbeddingRequest):
        server.check_model(body.model, embedding=True)
        with user_errors("input"):
            texts = body.texts()
        if body.dimensions is not None and body.dimensions != server.embedder.dim:
            raise APIError(
                400, f"dimensions must be {server.embedder.dim} for this model", "dimensions"
            )
        try:
            # on the model thread: a second computing thread would slow both (scheduler.py)
            embed = functools.partial(server.embedder.embed, texts, truncate=False)
            vectors = await asyncio.wrap_future(server.scheduler.call(embed))
            tokens = sum(server.embedder.count_tokens(t) for t in texts)
        except ValueError as e:  # the embedder's class for bad input (too long, empty)
            raise APIError(400, str(e), "input") from e
        return R.embedding_list(server.embed_id, vectors, body.encoding_format, tokens)
