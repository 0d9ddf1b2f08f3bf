"""lm-evaluation-harness against a real `giraffe serve`, offline.

lm-eval's `local-completions` model runs a multiple-choice task and a `generate_until`
task that the test writes into tmp_path (local JSONL through the `json` dataset
builder, no download). Its tokenizer is the server's own (`tokenizer_backend=remote`:
/tokenizer_info, /tokenize, /detokenize), so nothing is fetched from the Hub.
The oracle for the log-likelihoods is giraffe's own multiple-choice scoring
(`giraffe.eval.choices`, what `giraffe eval --choices` runs) on the same items.
"""

from __future__ import annotations

import json

import pytest
from serve_process import running_server

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
ITEMS = [
    {"question": "The capital of France is", "choices": ["Paris", "Berlin", "Rome"], "answer": 0},
    {"question": "Two plus two equals", "choices": ["three", "four", "five"], "answer": 1},
    {"question": "The sky on a clear day is", "choices": ["green", "blue"], "answer": 1},
    {"question": "Water freezes at zero degrees", "choices": ["Celsius", "Kelvin"], "answer": 0},
]
QUESTIONS = [
    {"question": "Q: What is the capital of France?\nA:", "answer": " Paris"},
    {"question": "Q: What colour is the sky?\nA:", "answer": " Blue"},
]


def _write_tasks(folder, mc_file, gen_file) -> None:
    (folder / "giraffe_mc.yaml").write_text(
        f"""task: giraffe_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {mc_file}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""
    )
    (folder / "giraffe_gen.yaml").write_text(
        f"""task: giraffe_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {gen_file}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
"""
    )


@pytest.fixture(scope="module")
def evaluated(smollm2_gguf, tmp_path_factory):
    """lm-eval's results and the multiple-choice file it read."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    mc, gen = folder / "mc.jsonl", folder / "gen.jsonl"
    mc.write_text("".join(json.dumps(x) + "\n" for x in ITEMS))
    gen.write_text("".join(json.dumps(x) + "\n" for x in QUESTIONS))
    _write_tasks(folder, mc, gen)
    mp = pytest.MonkeyPatch()
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        mp.setenv(var, "1")
    mp.setenv("HF_DATASETS_CACHE", str(folder / "cache"))
    try:
        with running_server(MODEL, "--ctx", "1024", "--max-tokens-limit", "64") as url:
            results = lm_eval.simple_evaluate(
                model="local-completions",
                model_args={
                    "base_url": url + "/v1/completions",
                    "model": MODEL,
                    "tokenizer_backend": "remote",
                    "tokenized_requests": True,
                    "num_concurrent": 1,
                    "max_retries": 1,
                    "max_length": 1024,
                },
                tasks=["giraffe_mc", "giraffe_gen"],
                task_manager=TaskManager(include_path=str(folder)),
                log_samples=True,
            )
    finally:
        mp.undo()
    return results, mc


def test_multiple_choice_log_likelihoods_equal_giraffe_eval_choices(evaluated):
    from giraffe.eval.choices import evaluate_choices
    from giraffe.lm import load

    results, mc = evaluated
    report = evaluate_choices(load(MODEL), mc, chat=False)
    samples = sorted(results["samples"]["giraffe_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == len(ITEMS) == len(report.results)
    for sample, ours in zip(samples, report.results, strict=True):
        theirs = [float(r[0]) for r in sample["filtered_resps"]]
        assert theirs == pytest.approx(ours.logprobs, abs=2e-3)
    acc = results["results"]["giraffe_mc"]["acc,none"]
    assert acc == pytest.approx(report.accuracy("total"))


def test_generate_until_returns_text_cut_at_the_stop(evaluated):
    results, _ = evaluated
    samples = results["samples"]["giraffe_gen"]
    assert len(samples) == len(QUESTIONS)
    texts = [s["filtered_resps"][0] for s in samples]
    assert all(isinstance(t, str) and t.strip() for t in texts)
    assert all("\n" not in t for t in texts)
    assert "exact_match,none" in results["results"]["giraffe_gen"]
