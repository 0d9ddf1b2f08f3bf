"""Continuous batching: jobs join and leave a running batch, each as if it ran alone."""

from __future__ import annotations

import threading
import time

import pytest

from giraffe.generate.params import DecodingConfig, GenerationError
from giraffe.lm import load
from giraffe.serve import scheduler as sched
from giraffe.serve.scheduler import Job, QueueFull, Scheduler


class Collector:
    """Receives a job's updates on the worker thread."""

    def __init__(self):
        self.updates = []
        self.done = threading.Event()

    def __call__(self, update):
        self.updates.append(update)
        if update.done:
            self.done.set()

    def wait(self, timeout=60):
        assert self.done.wait(timeout), "the job did not finish"
        return self

    @property
    def tokens(self):
        return [u.event.token_id for u in self.updates if u.event and u.in_output]

    @property
    def text(self):
        return "".join(u.text for u in self.updates)

    @property
    def error(self):
        return self.updates[-1].error if self.updates else None


@pytest.fixture(scope="module")
def lm(tiny_folder):
    return load(tiny_folder)


@pytest.fixture
def scheduler(lm):
    s = Scheduler(lm, max_batch=4, max_queue=3)
    yield s
    s.close()


def submit(scheduler, lm, prompt, **kw):
    c = Collector()
    cfg = lm.decoding(**{"temperature": 0, "max_new_tokens": 12, "ignore_eos": True, **kw})
    job = Job(lm.tokenizer.encode(prompt), cfg, c)
    scheduler.submit(job)
    return job, c


def wait_for(condition, timeout=30):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


PROMPTS = ["The giraffe", "No, I am not", "Giraffes eat leaves from tall", "0123"]


def test_jobs_joining_a_running_batch_get_what_they_get_alone(scheduler, lm):
    """Rows leave in another order than they came, so compaction moves caches around."""
    lengths = [40, 12, 17, 22]
    first, c0 = submit(scheduler, lm, PROMPTS[0], max_new_tokens=40, logprobs=True)
    wait_for(lambda: len(c0.updates) >= 3)  # the first job is running when the others arrive
    others = [
        submit(scheduler, lm, p, max_new_tokens=n, logprobs=True)
        for p, n in zip(PROMPTS[1:], lengths[1:], strict=True)
    ]
    for (_, c), p, n in zip([(first, c0), *others], PROMPTS, lengths, strict=True):
        c.wait()
        alone = lm.complete(p, temperature=0, max_new_tokens=n, ignore_eos=True, logprobs=True)
        assert c.tokens == alone.token_ids, p
        assert c.text == alone.text
        # log-probabilities see the whole context: a row reading another row's cache shows here
        got = [u.event.logprob for u in c.updates]
        assert got == pytest.approx(alone.logprobs, abs=1e-4), p
        assert c.updates[-1].event.finish_reason == "length"
    sizes = scheduler.stats()["batch_sizes"]
    assert max(sizes) >= 3, f"jobs should have shared decode steps: {sizes}"
    wait_for(lambda: scheduler.stats()["running"] == 0)


def test_seeded_sampling_in_a_batch_equals_sampling_alone(scheduler, lm):
    kw = {"temperature": 0.9, "top_k": 20, "seed": 7, "max_new_tokens": 15}
    jobs = [submit(scheduler, lm, p, **kw) for p in PROMPTS[:3]]
    for (_, c), p in zip(jobs, PROMPTS, strict=False):
        assert c.wait().tokens == lm.complete(p, ignore_eos=True, **kw).token_ids


def test_logprobs_and_stop_strings_match_the_plain_path(scheduler, lm):
    kw = {"temperature": 0, "max_new_tokens": 30, "logprobs": True, "top_logprobs": 3}
    alone = lm.complete(PROMPTS[2], ignore_eos=True, **kw)
    stop = alone.text[5:8]
    _, c = submit(scheduler, lm, PROMPTS[2], stop=[stop], **kw)
    c.wait()
    cut = lm.complete(PROMPTS[2], ignore_eos=True, stop=[stop], **kw)
    assert c.text == cut.text and stop not in c.text
    assert c.updates[-1].event.finish_reason == "stop"
    got = [u.event.logprob for u in c.updates if u.event]
    assert got == pytest.approx(alone.logprobs[: len(got)], abs=1e-4)
    assert [t for t, _ in c.updates[0].event.top] == [t for t, _ in alone.top_logprobs[0]]


def test_cancelling_frees_the_row_at_once_and_others_go_on(scheduler, lm):
    long_job, c_long = submit(scheduler, lm, PROMPTS[0], max_new_tokens=500)
    _, c_other = submit(scheduler, lm, PROMPTS[1], max_new_tokens=60)
    wait_for(lambda: len(c_long.updates) >= 3)
    scheduler.cancel(long_job)
    wait_for(lambda: scheduler.stats()["running"] <= 1)
    assert not c_long.done.is_set()  # a cancelled job hears nothing more
    c_other.wait()
    assert c_other.error is None and len(c_other.tokens) == 60


def test_a_crash_in_one_job_fails_that_job_only(scheduler, lm, monkeypatch):
    """A sampler that raises for one sequence (its prompt starts with "0123")."""
    from giraffe.generate import sequence

    marker = lm.tokenizer.encode("0123")[0]
    real = sequence.process_logits

    def exploding(logits, cfg, *, sequences, n_generated, **kw):
        if n_generated == 3 and any(seq[0] == marker for seq in sequences):
            raise RuntimeError("boom")
        return real(logits, cfg, sequences=sequences, n_generated=n_generated, **kw)

    monkeypatch.setattr(sequence, "process_logits", exploding)
    jobs = [submit(scheduler, lm, p, max_new_tokens=20) for p in (PROMPTS[0], "0123", PROMPTS[1])]
    results = [c.wait() for _, c in jobs]
    assert isinstance(results[1].error, RuntimeError) and len(results[1].tokens) == 3
    for ok in (results[0], results[2]):
        assert ok.error is None and len(ok.tokens) == 20


def test_deadline_fails_the_job_with_a_timeout(scheduler, lm):
    c = Collector()
    cfg = lm.decoding(temperature=0, max_new_tokens=100000 // 100, ignore_eos=True)
    job = Job(lm.tokenizer.encode("The"), cfg, c, deadline=time.monotonic() + 0.05)
    scheduler.submit(job)
    assert isinstance(c.wait().error, sched.JobTimeout)


def test_full_queue_and_overlong_prompt_are_refused(lm):
    s = Scheduler(lm, max_batch=1, max_queue=1, max_context=16)
    try:
        with pytest.raises(GenerationError, match="context is 16"):
            s.submit(Job(list(range(1, 17)), DecodingConfig(), Collector()))
        s.submit(
            Job([1, 2], lm.decoding(max_new_tokens=14, ignore_eos=True, temperature=0), Collector())
        )
        wait_for(lambda: s.stats()["running"] == 1)
        s.submit(Job([1, 2], DecodingConfig(), Collector()))  # waits
        with pytest.raises(QueueFull, match="retry later"):
            s.submit(Job([1, 2], DecodingConfig(), Collector()))
    finally:
        s.close()


def test_a_job_that_reaches_the_context_ends_with_length(lm):
    s = Scheduler(lm, max_batch=2, max_context=16)
    try:
        c = Collector()
        s.submit(
            Job([1, 2, 3, 4], lm.decoding(max_new_tokens=100, ignore_eos=True, temperature=0), c)
        )
        assert len(c.wait().tokens) == 12 and c.updates[-1].event.finish_reason == "length"
    finally:
        s.close()
