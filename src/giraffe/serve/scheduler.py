"""Continuous batching: requests join the running batch between decode steps and leave when done.

One thread owns the model and a `SlotCache`. Each turn of its loop it (0) runs queued
calls (embeddings: they share the CPU and the thread), (1) drops
cancelled and expired jobs, freeing their rows at once, (2) admits waiting jobs into free
rows: a prefill of that prompt alone, whose logits give the job its first token, then
(3) runs one decode step for every running job together - one token each, every row at
its own length. A job with one row left decodes through the compiled one-token step.
Results go back through each job's `deliver` callback, called on that thread; the web
layer turns them into server-sent events.

Which thread: all model work must stay on one thread. OpenMP (torch's and giraffe's
kernels) keeps a thread team per calling thread; a second thread that computes too
brings a second team onto the same cores, and both run 2-3x slower (measured here). So
`giraffe serve` loads the model and runs `run()` on the main thread and puts the web
server in another; `start_thread=True` (tests, notebooks) runs the loop in a thread of
its own, which is fast as long as no other thread computes.

Failures stay local: an exception while sampling or detokenizing one job fails that job
only; an exception in the shared forward pass fails the jobs of that step (their cache
rows are then unknown) and the loop goes on. It does not know HTTP, JSON or chat
templates: a job is token ids plus a `DecodingConfig`. Sampling, stop tokens, prompt
checks, grammar constraints and text streaming are `giraffe.generate`'s, the same code
`LanguageModel` runs: this module only decides who is in the batch.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from giraffe.generate.params import DecodingConfig
from giraffe.generate.prefix_cache import PrefixCache, copy_into
from giraffe.generate.sequence import SequenceState, TokenEvent, check_prompts, step_many
from giraffe.generate.stops import TextStream
from giraffe.lm import LanguageModel
from giraffe.nn.slot_cache import BatchView, RowView, SlotCache


class QueueFull(RuntimeError):
    """Too many requests are waiting; the client should retry later."""


class JobTimeout(TimeoutError):
    """The request ran past its deadline."""


@dataclass
class Update:
    """One step of one job, as delivered to whoever submitted it."""

    text: str = ""  # text this token made safe to show (may be "")
    event: TokenEvent | None = None  # the token; None for a final error-only update
    in_output: bool = True  # False for a stop token: it ends the text, is not part of it
    done: bool = False
    error: BaseException | None = None


@dataclass(eq=False)
class Job:
    prompt: list[int]
    cfg: DecodingConfig
    deliver: Callable[[Update], None]
    seed: int | None = None
    deadline: float | None = None  # time.monotonic() after which the job fails
    cancelled: bool = False
    generated: int = 0
    submitted: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class Running:
    job: Job
    state: SequenceState
    text: TextStream
    next_token: int = -1


class Scheduler:
    def __init__(
        self,
        lm: LanguageModel,
        max_batch: int = 16,
        max_queue: int = 64,
        max_context: int | None = None,
        start_thread: bool = True,
        prefix_cache_bytes: int = 0,
    ) -> None:
        """prefix_cache_bytes: memory for keys/values of earlier prompts (0: no reuse)."""
        cfg = lm.config
        self.lm, self.model = lm, lm.model
        self.context = min(cfg.max_position_embeddings, max_context or cfg.max_position_embeddings)
        dtype = self.model.norm.weight.dtype
        self.cache = SlotCache(
            cfg.n_layers, max_batch, cfg.kv_heads, self.context, cfg.dim_per_head, dtype
        )
        self.max_batch, self.max_queue = max_batch, max_queue
        self.prefix = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self.waiting: deque[Job] = deque()
        self.calls: deque[tuple[Callable, Future]] = deque()
        self.running: list[Running] = []  # index == cache row
        self.wake = threading.Condition()
        self.stopping = False
        self.steps = 0
        self.batch_sizes: dict[int, int] = {}  # rows per decode step -> how many steps
        self.thread = None
        if start_thread:
            self.thread = threading.Thread(target=self.run, name="giraffe-scheduler", daemon=True)
            self.thread.start()

    # ---- called from other threads ----------------------------------------------------
    def submit(self, job: Job) -> None:
        check_prompts([job.prompt], self.context)  # GenerationError: the client's to fix
        with self.wake:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(
                    f"{len(self.waiting)} requests are already waiting (the limit): retry later"
                )
            self.waiting.append(job)
            self.wake.notify()

    def call(self, fn: Callable[[], object]) -> Future:
        """Run fn on the model's thread between decode steps (e.g. an embedding batch)."""
        future: Future = Future()
        with self.wake:
            self.calls.append((fn, future))
            self.wake.notify()
        return future

    def cancel(self, job: Job) -> None:
        """Stop a job (client gone): its row is freed before the next step."""
        with self.wake:
            job.cancelled = True
            self.wake.notify()

    def stats(self) -> dict:
        with self.wake:
            return {
                "running": len(self.running),
                "waiting": len(self.waiting),
                "max_batch": self.max_batch,
                "max_queue": self.max_queue,
                "context": self.context,
                "decode_steps": self.steps,
                "batch_sizes": dict(self.batch_sizes),
                "prefix_cache": self.prefix.summary() if self.prefix else None,
            }

    def close(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=10)

    # ---- the worker thread ------------------------------------------------------------
    def run(self) -> None:
        """The loop; returns after close()."""
        torch.set_grad_enabled(False)
        while True:
            with self.wake:
                while not (self.stopping or self.waiting or self.running or self.calls):
                    self.wake.wait()
                if self.stopping:
                    break
                arrivals = self._take_arrivals()
                calls, self.calls = list(self.calls), deque()
            for fn, future in calls:
                _run_call(fn, future)
            self._drop_finished(self._expired_or_cancelled())
            with torch.inference_mode():
                for job in arrivals:
                    self._admit(job)
                if self.running:
                    self._step()
        for r in self.running:
            self._fail(r.job, RuntimeError("the server is shutting down"))

    def _take_arrivals(self) -> list[Job]:
        free = self.max_batch - len(self.running)
        arrivals = []
        while self.waiting and len(arrivals) < free:
            job = self.waiting.popleft()
            if not job.cancelled:
                arrivals.append(job)
        return arrivals

    def _expired_or_cancelled(self) -> set[int]:
        now, gone = time.monotonic(), set()
        for row, r in enumerate(self.running):
            if r.job.cancelled:
                gone.add(row)
            elif r.job.deadline is not None and now > r.job.deadline:
                self._fail(r.job, JobTimeout("the request ran past its time limit"))
                gone.add(row)
        return gone

    def _admit(self, job: Job) -> None:
        row = len(self.running)
        self.cache.clear(row)
        try:
            if job.cfg.num_beams > 1:
                return self._beam(job)
            budget = min(job.cfg.max_new_tokens, self.context - len(job.prompt))
            state = SequenceState(
                job.prompt, job.cfg, self.model.config.vocab_size, budget,
                self.lm.tokenizer.stop_ids, job.seed, table=self.lm.table_for(job.cfg),
            )  # fmt: skip
            running = Running(job, state, self.lm.text_stream(job.cfg))
            logits, argmax = self._prefill(row, job.prompt)
        except Exception as e:  # noqa: BLE001 - the job fails, the server goes on
            self.cache.clear(row)
            return self._fail(job, e)
        self.running.append(running)
        if self._emit(running, step_many([state], logits, isolate=True, argmax=argmax)[0]):
            self._drop_finished({row})

    def _prefill(self, row: int, prompt: list[int]) -> tuple:
        """Fill a row's cache with the prompt; (1, V) logits of its last token (and their
        argmax where the model found it, see `Decoder.next_token_logits`).

        The longest cached prefix is copied in and only the rest is computed.
        """
        view = RowView(self.cache, row, len(prompt))
        reused = 0
        if self.prefix is not None:
            reused = copy_into(self.prefix.match(prompt), view.k[:, 0], view.v[:, 0])
            self.cache.lengths[row] = reused
        step = self.model.next_token_logits(torch.tensor([prompt[reused:]]), cache=view)
        if self.prefix is not None:
            self.prefix.store(prompt, view.k[:, 0], view.v[:, 0])
        return step

    def _remember(self, rows: set[int]) -> None:
        """Keep finished rows' prompt + answer for the next turn of their conversation."""
        if self.prefix is None:
            return
        for row in rows:
            filled = int(self.cache.lengths[row])  # the last sampled token was never fed
            k, v = self.cache.k[:, row], self.cache.v[:, row]  # (L, H, S, D)
            self.prefix.store(self.running[row].state.tokens[:filled], k, v)

    def _beam(self, job: Job) -> None:
        """Beam search keeps its own beams and cache: it runs alone, between steps."""
        result = self.lm.complete(job.prompt, **_as_kwargs(job.cfg))
        for i, token in enumerate(result.token_ids):
            last = i == len(result.token_ids) - 1
            event = TokenEvent(0, token, None, None, result.finish_reason if last else None)
            _deliver(job, Update(result.text if last else "", event, done=last))
        if not result.token_ids:
            _deliver(job, Update(result.text, None, done=True))

    def _step(self) -> None:
        n = len(self.running)
        self.steps += 1
        self.batch_sizes[n] = self.batch_sizes.get(n, 0) + 1
        tokens = torch.tensor([[r.next_token] for r in self.running])  # (n, 1)
        positions = self.cache.lengths[:n, None].clone()  # rows start at slot 0
        try:
            if n == 1:  # a batch of one: the compiled one-token step can take it
                view, mask = RowView(self.cache, 0, 1), None
            else:
                mask = self.cache.slot_mask(n)  # the model narrows it for its sliding layers
                view = BatchView(self.cache, n)
            logits, argmax = self.model.next_token_logits(
                tokens, cache=view, positions=positions, attn_mask=mask
            )  # (n, V)
        except Exception as e:  # noqa: BLE001 - these rows' caches are now unknown
            for r in self.running:
                self._fail(r.job, e)
            self._drop_finished(set(range(n)))
            return
        # all rows sampled together; a row whose sampling fails gets its exception
        events = step_many([r.state for r in self.running], logits, isolate=True, argmax=argmax)
        finished = {
            row
            for row, (r, event) in enumerate(zip(self.running, events, strict=True))
            if self._emit(r, event)
        }
        self._remember(finished)
        self._drop_finished(finished)

    def _emit(self, r: Running, event: TokenEvent | Exception) -> bool:
        """Deliver this job's next token; True when the job is over."""
        try:
            if isinstance(event, Exception):
                raise event
            text, hit = r.text.push(event)
        except Exception as e:  # noqa: BLE001 - one bad job must not stop the others
            self._fail(r.job, e)
            return True
        done = r.state.finished or hit
        r.job.generated += 1
        r.next_token = event.token_id
        _deliver(r.job, Update(text, event, r.text.in_output(event), done))
        return done

    def _fail(self, job: Job, error: BaseException) -> None:
        _deliver(job, Update(done=True, error=error))

    def _drop_finished(self, rows: set[int]) -> None:
        """Free rows; the last running row moves into each hole so rows stay 0..n-1."""
        for row in sorted(rows, reverse=True):
            last = len(self.running) - 1
            if row != last:
                self.cache.move(last, row)
                self.running[row] = self.running[last]
            self.running.pop()
            self.cache.clear(last)


def _run_call(fn: Callable, future: Future) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
        future.set_exception(e)


def _deliver(job: Job, update: Update) -> None:
    """A receiver that fails (its client is gone) cancels its own job, nobody else's."""
    try:
        job.deliver(update)
    except Exception:  # noqa: BLE001
        job.cancelled = True


def _as_kwargs(cfg: DecodingConfig) -> dict:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
