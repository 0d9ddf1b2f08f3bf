"""The bridge between the event loop and the model's thread: a request's jobs and their updates.

A request becomes a `JobGroup` (n choices x prompts) of scheduler jobs; the scheduler's
thread delivers each token as an `Update` through the `Outbox`, which wakes the event
loop once per burst; the group merges the updates and hands them to the route, which
sends them as one JSON response or as server-sent events. A client that disconnects
cancels its jobs at once. It does not know routes, sampling or attention.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from giraffe.generate.params import DecodingConfig, GenerationError
from giraffe.serve.errors import APIError, as_api_error, user_errors
from giraffe.serve.scheduler import Job, JobTimeout, QueueFull, Update

if TYPE_CHECKING:  # state.py imports this module for the Outbox
    from giraffe.serve.state import Server

log = logging.getLogger("giraffe.serve")

# stream=true answers with server-sent events: the document says so beside the JSON body
# (OpenAPI 3.1: the schema describes one event; its data is a JSON chunk, or [DONE] last)
EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string", "description": "a JSON chunk, or [DONE]"}},
}
STREAMED = {200: {"description": "the answer: JSON, or server-sent events with stream=true",
                  "content": {"text/event-stream": {"schema": EVENT}}}}  # fmt: skip
POLL_DISCONNECT_S = 0.5  # how often a non-streaming request checks that its client is there


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

    def __init__(
        self,
        server: Server,
        prompts: list[list[int]],
        cfg: DecodingConfig,
        n: int,
        param: str = "messages",
    ):
        """param: the request field the prompts came from, named when one is refused."""
        self.param = param
        check_size(server, len(prompts), n, param)
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
            raise as_api_error(e, self.param) from e
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


def check_size(server: Server, prompts: int, n: int, param: str) -> None:
    """prompts x n within --max-queue: a larger request could never be queued whole, so it is
    the client's 400, not a busy server's 503 (its document says so: openapi.py)."""
    limit = server.settings.max_queue
    if prompts * n > limit:
        raise APIError(
            400,
            f"this request asks for {prompts * n} completions ({prompts} prompts x n={n}); "
            f"this server takes at most {limit} at once (--max-queue)",
            "n" if n > 1 else param,
        )


def api_error(error: BaseException) -> APIError:
    """A job's failure: the client's mistake a 400, its deadline a 504, anything else a 500."""
    if isinstance(error, JobTimeout):
        return APIError(504, str(error))
    known = as_api_error(error)
    if known is not None:
        return known
    log.error("generation failed", exc_info=error)
    return APIError(500, f"generation failed: {type(error).__name__}: {error}")


def sse(data: dict | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


def decoding_for(server: Server, body) -> DecodingConfig:
    with user_errors():
        kw = body.decoding_kwargs()
    return server.decoding(kw)
