"""What the server serves and how: its settings, the model, the optional embedder and knowledge
base, and the scheduler that owns the model's thread.

`Server` receives ready model objects (it never loads files: the CLI does) and answers
the two questions every route asks first: is this the model you run, and which
`DecodingConfig` does this request mean (with the server's own token limit). It does not
know routes or HTTP streaming.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from giraffe.generate.params import DecodingConfig
from giraffe.lm import LanguageModel
from giraffe.serve import responses as R
from giraffe.serve.errors import APIError, user_errors
from giraffe.serve.jobs import Outbox
from giraffe.serve.scheduler import Scheduler


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
    prefix_cache_mb: int = 512  # keys/values of earlier prompts kept for reuse; 0: off


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
            lm, settings.max_batch, settings.max_queue, settings.max_context, scheduler_thread,
            prefix_cache_bytes=settings.prefix_cache_mb << 20,
        )  # fmt: skip

    def outbox(self, loop: asyncio.AbstractEventLoop) -> Outbox:
        if self._outbox is None or self._outbox.loop is not loop:
            self._outbox = Outbox(loop)
        return self._outbox

    def check_model(self, name: str, embedding: bool = False) -> None:
        if embedding:
            if self.embedder is None:
                raise APIError(  # 404: the resource (an embedding model) is not there
                    404,
                    "this server has no embedding model: start it with --embed-model minilm-l6",
                    "model",
                    "model_not_found",
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
        """The request's DecodingConfig; a user's mistake raises APIError(400) naming the field."""
        limit = self.settings.max_tokens_limit
        asked = kw.setdefault("max_new_tokens", limit)
        if asked > limit:
            raise APIError(
                400, f"max_tokens is {asked}; this server allows at most {limit}", "max_tokens"
            )
        with user_errors():
            return self.lm.decoding(**kw)


def model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "giraffe"}
