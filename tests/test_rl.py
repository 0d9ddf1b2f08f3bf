"""`giraffe rl` on a tiny model: it learns a toy reward, zero learning rate changes
nothing (KL stays 0), a resumed run equals an uninterrupted one bit for bit, a failing
reward function fails its samples only, the RLHF path scores with a reward model, and bad
input gets one-line errors."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from giraffe.cli import main
from giraffe.files.records import RecordError
from giraffe.formats.hf import load_hf
from giraffe.train.rewards import RewardError
from giraffe.train.rl import RewardWarning, RLConfig, train_rl
from giraffe.train.rollout import Rollout, folded_lora


def says_seven(prompt, completion, **fields):
    """The toy reward: 1 when the answer starts with the character 7."""
    return float(completion.strip().startswith("7"))


def flaky(prompt, completion, **fields):
    if prompt[-1] in "1357":
        raise RuntimeError("cannot judge this one")
    return 1.0


def slow(prompt, completion, **fields):
    time.sleep(5)
    return 1.0


TOY = f"python:{__name__}:says_seven"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("rl") / "prompts.jsonl"
    rows = [{"prompt": f"giraffe {i}", "answer": "7"} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(tiny_folder, prompts, out, **kw) -> RLConfig:
    base = dict(
        model=str(tiny_folder),
        prompts=str(prompts),
        reward=TOY,
        out=str(out),
        max_steps=3,
        batch_size=2,
        group=4,
        max_new_tokens=2,
        lr=1e-2,
        eval_every=100,
        save_every=100,
        val_fraction=0.25,
        progress=False,
    )
    return RLConfig(**{**base, **kw})


def _log(out) -> list[dict]:
    timing = ("generate_s", "score_s", "update_s")
    return [
        {k: v for k, v in json.loads(line).items() if "per_s" not in k and k not in timing}
        for line in (out / "log.jsonl").read_text().splitlines()
    ]


@pytest.mark.parametrize(
    "algo",
    [
        "grpo",
        pytest.param("rloo", marks=pytest.mark.slow),
        pytest.param("ppo", marks=pytest.mark.slow),
    ],
)
def test_learns_to_say_seven(tiny_folder, prompts, tmp_path, algo):
    cfg = _cfg(tiny_folder, prompts, tmp_path, algo=algo, max_steps=30, group=8, batch_size=4,
               max_new_tokens=1, lr=2e-2)  # fmt: skip
    metrics = train_rl(cfg)
    steps = [r for r in _log(tmp_path) if "reward" in r]
    assert steps[0]["reward"] < 0.2  # a random model rarely starts with 7
    assert sum(r["reward"] for r in steps[-3:]) / 3 >= 0.75
    assert metrics["val_success"] == 1.0 and metrics["first_val_success"] == 0.0
    assert (tmp_path / "rl.png").stat().st_size > 0 and (tmp_path / "loss.png").is_file()


@pytest.mark.parametrize("lora", [0, 4])
def test_zero_learning_rate_changes_nothing(tiny_folder, prompts, tmp_path, lora):
    cfg = _cfg(tiny_folder, prompts, tmp_path, lr=0.0, lora_r=lora, beta=0.1)
    train_rl(cfg)
    steps = [r for r in _log(tmp_path) if "reward" in r]
    assert [r["kl"] for r in steps] == [0.0] * 3
    if lora:
        b = [
            v for k, v in load_file(tmp_path / "adapter_model.safetensors").items() if "lora_B" in k
        ]
        assert b and all(torch.count_nonzero(t) == 0 for t in b)
    else:
        before, after = load_hf(tiny_folder), load_hf(tmp_path)
        for (name, p), q in zip(
            before.state_dict().items(), after.state_dict().values(), strict=True
        ):
            assert torch.equal(p, q), name


@pytest.mark.parametrize(("algo", "lora", "updates"), [("grpo", 4, 2), ("ppo", 0, 1)])
def test_resume_equals_uninterrupted(tiny_folder, prompts, tmp_path, algo, lora, updates):
    kw = dict(algo=algo, lora_r=lora, updates=updates, max_steps=4, save_every=1, grad_accum=2)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_rl(_cfg(tiny_folder, prompts, whole, **kw))
    assert train_rl(_cfg(tiny_folder, prompts, parts, stop_step=2, **kw)) == {"stopped_at": 2}
    train_rl(_cfg(tiny_folder, prompts, parts, **kw))
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    a, b = load_file(whole / name), load_file(parts / name)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _log(whole) == _log(parts)


def test_qlora_samples_and_trains_over_packed_weights(
    tiny_folder, prompts, tmp_path, float_activations
):
    from giraffe.lm import load
    from giraffe.train.tuning import is_packed

    gguf = tmp_path / "tiny-q8_0.gguf"
    load(tiny_folder).save_gguf(gguf, dtype="q8_0")
    kw = dict(lora_r=4, qlora=True, lora_targets="all-linear", max_steps=3, save_every=1)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    metrics = train_rl(_cfg(gguf, prompts, whole, **kw))
    assert metrics["step"] == 3 and is_packed(load(gguf, packed=True).model)
    b = [v for k, v in load_file(whole / "adapter_model.safetensors").items() if "lora_B" in k]
    assert any(torch.count_nonzero(t) for t in b)  # the adapters learned through packed layers
    train_rl(_cfg(gguf, prompts, parts, stop_step=1, **kw))
    train_rl(_cfg(gguf, prompts, parts, **kw))
    a, c = (
        load_file(whole / "adapter_model.safetensors"),
        load_file(parts / "adapter_model.safetensors"),
    )
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_resume_refuses_other_settings(tiny_folder, prompts, tmp_path):
    train_rl(_cfg(tiny_folder, prompts, tmp_path, stop_step=1))
    with pytest.raises(ValueError, match="other training settings"):
        train_rl(_cfg(tiny_folder, prompts, tmp_path, lr=5e-3))


def test_failing_reward_fails_its_samples_only(tiny_folder, prompts, tmp_path):
    cfg = _cfg(tiny_folder, prompts, tmp_path, reward=f"python:{__name__}:flaky", val_fraction=0.0, max_steps=2)  # fmt: skip
    with pytest.warns(RewardWarning, match="raised RuntimeError: cannot judge this one"):
        metrics = train_rl(cfg)
    steps = [r for r in _log(tmp_path) if "reward" in r]
    assert metrics["reward_failures"] > 0
    # every failed sample got 0, every other 1: the failures account for the missing reward
    assert round(sum((1 - r["reward"]) * 8 for r in steps)) == metrics["reward_failures"]


def test_slow_reward_times_out_per_sample(tiny_folder, prompts, tmp_path):
    cfg = _cfg(tiny_folder, prompts, tmp_path, reward=f"python:{__name__}:slow",
               reward_timeout=0.05, val_fraction=0.0, max_steps=1, batch_size=1, group=2)  # fmt: skip
    with pytest.warns(RewardWarning, match="ran past 0.05 s"):
        metrics = train_rl(cfg)
    assert metrics["reward_failures"] == 2


def test_rlhf_with_a_reward_model(tiny_folder, prompts, tmp_path):
    from giraffe.lm import load
    from giraffe.train.reward import RewardModel, save_reward_model

    lm = load(tiny_folder)
    torch.manual_seed(1)
    save_reward_model(RewardModel(lm.model, 0), lm.tokenizer, tmp_path / "rm")
    cfg = _cfg(tiny_folder, prompts, tmp_path / "out", reward=str(tmp_path / "rm"), algo="ppo", lora_r=4)  # fmt: skip
    metrics = train_rl(cfg)
    assert metrics["reward_failures"] == 0 and metrics["step"] == 3
    steps = [r for r in _log(tmp_path / "out") if "reward" in r]
    assert len({r["reward"] for r in steps}) > 1  # the model's scores, not a constant


def test_folded_lora_restores_the_same_tensors(tiny_folder):
    from giraffe.lm import load
    from giraffe.train.lora import LoraConfig, apply_lora, lora_layers

    model = load(tiny_folder).model
    apply_lora(model, LoraConfig(r=2))
    for _, layer in lora_layers(model):
        torch.nn.init.normal_(layer.lora_B.weight)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        plain = model(ids)
        saved = [layer.base.weight.data.clone() for _, layer in lora_layers(model)]
        with folded_lora(model):
            folded = model(ids)
        again = model(ids)
    assert torch.allclose(plain, folded, atol=1e-5)
    assert torch.equal(plain, again)
    assert all(
        torch.equal(s, layer.base.weight.data)
        for s, (_, layer) in zip(saved, lora_layers(model), strict=True)
    )


def test_rollout_equals_plain_generation(tiny_folder):
    """The rollout is giraffe's batched generation: the same seeds give the same tokens
    as LanguageModel.complete_batch (rows of different lengths, left-padded)."""
    from giraffe.generate.params import DecodingConfig
    from giraffe.lm import load
    from giraffe.train.rl_data import prompt_ids
    from giraffe.train.rollout import sample_answers

    lm = load(tiny_folder)
    rows = [prompt_ids(lm.tokenizer, p, None) for p in ("giraffe 1", "tall trees and leaves")]
    rows = [r for r in rows for _ in range(3)]
    seeds = [11, 12, 13, 14, 15, 16]
    decoding = DecodingConfig(max_new_tokens=6, temperature=0.8)
    ours = sample_answers(lm.model, lm.tokenizer, rows, decoding, seeds)
    plain = lm.complete_batch(rows, seeds=seeds, max_new_tokens=6, temperature=0.8)
    stops = set(lm.tokenizer.stop_ids)
    assert [[t for t in a if t not in stops] for a in ours.answers] == [c.token_ids for c in plain]
    assert ours.texts == [c.text for c in plain]


def test_rollout_tensors_layout():
    r = Rollout([[1, 2], [3]], [[4, 5, 6], [7]], ["", ""], [True, False])
    ids, picked, mask = r.tensors(pad=0)
    assert ids.tolist() == [[1, 2, 4, 5, 6], [3, 7, 0, 0, 0]]
    assert picked.tolist() == [[False, True, True, True], [True, False, False, False]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]


# ---- bad input -----------------------------------------------------------------------------


def test_prompts_without_the_field_name_the_line(tiny_folder, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"question": "where is the prompt?"}\n')
    with pytest.raises(RecordError, match=r'line 2: needs a "prompt" field'):
        train_rl(_cfg(tiny_folder, bad, tmp_path / "out"))


def test_reward_model_of_another_tokenizer_is_refused(tiny_folder, prompts, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from giraffe.config import PRESETS
    from giraffe.models import Decoder
    from giraffe.tokenizer import load_tokenizer_file
    from giraffe.train.reward import RewardModel, save_reward_model

    other = Tokenizer(models.BPE())
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    other.train_from_iterator(["zebras run fast " * 50], trainers.BpeTrainer(vocab_size=300))
    (tmp_path / "tok").mkdir()
    other.save(str(tmp_path / "tok" / "tokenizer.json"))
    tok = load_tokenizer_file(tmp_path / "tok")
    body = Decoder(PRESETS["llama-tiny"].replace(vocab_size=tok.vocab_size))
    save_reward_model(RewardModel(body, 0), tok, tmp_path / "rm")
    with pytest.raises(RewardError, match="uses another tokenizer"):
        train_rl(_cfg(tiny_folder, prompts, tmp_path / "out", reward=str(tmp_path / "rm")))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("python:no_such_module_here:f", "cannot import module 'no_such_module_here'"),
        (f"python:{__name__}:no_such_function", "has no function 'no_such_function'"),
        ("python:justone", "write python:module:function"),
        ("/no/such/folder", "neither a reward model folder"),
    ],
)
def test_reward_that_cannot_be_loaded(tiny_folder, prompts, tmp_path, spec, message):
    with pytest.raises(RewardError, match=message):
        train_rl(_cfg(tiny_folder, prompts, tmp_path, reward=spec))


def test_command_line(tiny_folder, prompts, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["rl", str(tiny_folder), "--prompts", str(prompts), "--reward", TOY, "--out", str(out),
            "--max-steps", "2", "--group", "2", "--batch-size", "2", "--max-new-tokens", "2",
            "--lora-r", "4", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "saved to" in capsys.readouterr().out
    assert (out / "adapter_config.json").is_file()
    with pytest.raises(SystemExit):
        main([*args, "--algo", "dqn"])  # argparse names the choices
    assert "invalid choice: 'dqn'" in capsys.readouterr().err
    bad = ["rl", str(tiny_folder), "--prompts", str(prompts), "--reward", "python:nope:f",
           "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("giraffe rl: error:") and "\n" not in err
