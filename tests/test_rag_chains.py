"""Summary chains with a fake model: the planner's count bounds the calls, map-reduce
terminates with a tiny context and a long input, refine and stuff behave."""

from __future__ import annotations

import pytest

from giraffe.rag.chains import PlanError, Trace, _cut, make_plan, summarize


def count(text: str) -> int:
    return len(text.split())


def long_text(n_sentences: int) -> str:
    return " ".join(f"Sentence {i} says something about topic {i % 7}." for i in range(n_sentences))


class Fake:
    """A 'model' that answers with `words` words (the worst case when words = the limit)."""

    def __init__(self, words: int) -> None:
        self.words, self.prompts = words, []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return " ".join(f"s{len(self.prompts)}w{i}" for i in range(self.words))


@pytest.mark.parametrize("words", [20, 7, 1])
def test_map_reduce_terminates_within_the_plan(words):
    text = long_text(3000)  # 24000 words into prompts of 80
    plan = make_plan(text, "map-reduce", count, budget=80, summary_tokens=20)
    assert len(plan.chunks) > 300
    fake, trace = Fake(words), Trace()
    summary = summarize(text, plan, fake, count, trace)
    assert count(summary) <= 20 and trace.calls == len(fake.prompts)
    assert trace.calls <= plan.calls
    if words == 20:  # the worst case is close to what the planner counts (it adds separators)
        assert trace.calls >= 0.95 * plan.calls and trace.rounds >= 3
    assert all(count(p) <= 80 for p in fake.prompts), "every prompt fits the budget"
    assert f"{plan.calls} model calls" in plan.describe()


def test_overlong_answers_are_cut_with_a_notice():
    text = long_text(200)
    plan = make_plan(text, "map-reduce", count, budget=80, summary_tokens=20)
    trace = Trace()
    summarize(text, plan, Fake(500), count, trace)
    assert trace.calls <= plan.calls and trace.notices
    assert "cut to 20 tokens" in trace.notices[0]


def test_refine_makes_one_call_per_chunk():
    text = long_text(300)
    plan = make_plan(text, "refine", count, budget=80, summary_tokens=20)
    fake = Fake(20)
    trace = Trace()
    summarize(text, plan, fake, count, trace)
    assert trace.calls == plan.calls == len(plan.chunks) > 1
    assert "s1w0" in fake.prompts[1], "the running summary is carried into the next call"
    assert all(count(p) <= 80 for p in fake.prompts)


def test_stuff_and_short_texts_make_one_call():
    text = long_text(3)
    for method in ("stuff", "map-reduce", "refine"):
        plan = make_plan(text, method, count, budget=200, summary_tokens=20)
        fake = Fake(5)
        summarize(text, plan, fake, count)
        assert plan.calls == len(fake.prompts) == 1
    with pytest.raises(PlanError, match="map-reduce or refine"):
        make_plan(long_text(100), "stuff", count, budget=200, summary_tokens=20)


def test_impossible_plans_are_refused():
    with pytest.raises(PlanError, match="never finish"):
        make_plan(long_text(100), "map-reduce", count, budget=40, summary_tokens=20)
    with pytest.raises(PlanError, match="empty"):
        make_plan("  ", "refine", count, budget=400, summary_tokens=20)
    with pytest.raises(PlanError, match="--method"):
        make_plan("text", "tree", count, budget=400, summary_tokens=20)


def test_cut_keeps_whole_words():
    assert _cut("one two three four", count, 2) == "one two"
    assert _cut("one", count, 0) == ""
