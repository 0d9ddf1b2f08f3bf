"""The FastAPI application: wires the routes over a `Server` (state.py).

`create_app(Server(...))` installs the error handlers, the body limit, CORS and the API
key, and the routes: /v1/models, /v1/chat/completions and /v1/completions
(completions.py), /v1/embeddings, /tokenize, /detokenize, /tokenizer_info,
/inside/{view}, /health, the knowledge base at /documents (documents.py), the page
at /, and /openapi.json (openapi.py). Model work runs on the scheduler's thread (`scheduler.call` or jobs.py). It does
not know sampling, attention or how updates reach the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import Depends, FastAPI, Path, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from giraffe.config import InputError
from giraffe.serve import responses as R
from giraffe.serve.completions import completion_routes
from giraffe.serve.documents import document_routes
from giraffe.serve.errors import (
    APIError,
    BodyLimit,
    check_api_key,
    install_error_handlers,
    user_errors,
)
from giraffe.serve.openapi import install_document
from giraffe.serve.schema import DetokenizeRequest, EmbeddingRequest, InsideRequest, TokenizeRequest
from giraffe.serve.state import Server, model_card

STATIC = FilePath(__file__).parent / "static"
MAX_INSIDE_TOKENS = 400  # attention maps of every layer and head grow with the square


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
    install_document(app, server)
    return app


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
    async def inside(view: Annotated[str, Path(json_schema_extra={"x-view": True})],
                     body: InsideRequest) -> dict:  # fmt: skip
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
        except InputError as e:  # the text cannot be shown; any other error is a 500
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
        except InputError as e:  # too long, not strings; any other error is a 500
            raise APIError(400, str(e), "input") from e
        return R.embedding_list(server.embed_id, vectors, body.encoding_format, tokens)
