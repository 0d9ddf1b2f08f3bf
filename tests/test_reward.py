"""Reward model: read at the last non-pad token as transformers reads it, the pairwise
loss by hand, the saved folder scored identically by transformers'
*ForSequenceClassification and by giraffe, a tiny model learning a rule-decided
preference, and the command line."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from giraffe.config import PRESETS
from giraffe.files.records import RecordError
from giraffe.models import Decoder
from giraffe.tokenizer.tokenizer import load_tokenizer_file
from giraffe.train.preference import load_pairs
from giraffe.train.reward import (
    RewardConfig,
    RewardModel,
    evaluate_rewards,
    last_token_index,
    load_reward_model,
    pairwise_loss,
    save_reward_model,
    train_reward,
)
from giraffe.train.tune_command import add_reward_parser, run_reward
from giraffe.train.tuning import FinetuneError, split_items


def test_last_non_pad_token_is_the_rightmost():
    pad = 0
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 0, 7, 8, 9], [0, 0, 0, 0, 0], [5, 6, 0, 0, 4]])
    assert last_token_index(ids, pad).tolist() == [2, 4, 0, 4]


def test_pairwise_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.5])
    hand = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.5))) / 2
    assert float(pairwise_loss(chosen, rejected)) == pytest.approx(hand, rel=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_transformers_scores_the_saved_model_the_same(tiny_folder, tmp_path, arch):
    import transformers

    tok = load_tokenizer_file(tiny_folder)
    torch.manual_seed(0)
    body = Decoder(PRESETS[f"{arch}-tiny"].replace(vocab_size=tok.vocab_size))
    pad = tok.eos_id
    rm = RewardModel(body, pad).eval()
    with torch.no_grad():
        rm.score.weight.normal_(0, 1.0)  # big enough that wrong tokens would show
    save_reward_model(rm, tok, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    family = {"llama": "Llama", "gpt2": "GPT2"}[arch]
    assert config["architectures"] == [f"{family}ForSequenceClassification"]
    assert config["num_labels"] == 1 and config["pad_token_id"] == pad

    lengths = [9, 4, 12, 1]
    ids = torch.full((4, 12), pad)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(3, tok.vocab_size, (n,))  # 0..2 are the special tokens
    attention = (torch.arange(12) < torch.tensor(lengths)[:, None]).long()
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == f"{family}ForSequenceClassification"
    loaded, _ = load_reward_model(tmp_path)
    with torch.no_grad():
        ours = rm(ids)
        theirs = hf(input_ids=ids, attention_mask=attention).logits[:, 0]
        alone = torch.stack([rm(ids[r : r + 1, :n])[0] for r, n in enumerate(lengths)])
        again = loaded(ids)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)
    assert torch.allclose(ours, alone, atol=1e-5)  # padding never changes a score
    assert torch.allclose(ours, again, atol=1e-6)
    assert ours.std() > 0.1  # the rows really differ


def _cfg(tiny_folder, prefs, out, **kw) -> RewardConfig:
    base = dict(
        model=str(tiny_folder),
        data=str(prefs),
        out=str(out),
        max_steps=20,
        batch_size=4,
        seq_len=128,
        lr=1e-3,
        warmup=2,
        eval_every=10,
        val_fraction=0.2,
        progress=False,
    )
    return RewardConfig(**{**base, **kw})


def test_tiny_reward_model_learns_a_rule_decided_preference(tiny_folder, prefs, tmp_path):
    cfg = _cfg(tiny_folder, prefs, tmp_path)
    metrics = train_reward(cfg)
    assert metrics["val_pairs"] == 8
    assert metrics["val_accuracy"] == 1.0 and metrics["val_loss"] < 0.2
    assert metrics["val_margin"] > 1.0
    rm, tok = load_reward_model(tmp_path)  # the saved model gives the reported numbers
    pairs, _ = load_pairs(prefs, tok, cfg.seq_len)
    _, val = split_items(pairs, cfg.val_fraction, cfg.seed)
    held = evaluate_rewards(rm, val, cfg.batch_size)
    assert held["loss"] == pytest.approx(metrics["val_loss"], abs=1e-4)
    assert held["accuracy"] == metrics["val_accuracy"]


def test_a_folder_without_a_score_head_is_refused(tiny_folder):
    with pytest.raises(FinetuneError, match="no score.weight: it is not a reward model"):
        load_reward_model(tiny_folder)


def _parse(argv):
    parser = argparse.ArgumentParser(prog="giraffe")
    add_reward_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["reward", *argv])


def test_command_line(tiny_folder, prefs, tmp_path, capsys):
    argv = [str(tiny_folder), "--data", str(prefs), "--out", str(tmp_path / "o")]
    argv += ["--max-steps", "2", "--seq-len", "128", "--no-progress"]
    assert run_reward(_parse(argv)) == 0
    assert "saved to" in capsys.readouterr().out
    assert (tmp_path / "o" / "tokenizer.json").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "x"}\n')
    argv[2] = str(bad)
    with pytest.raises(RecordError, match='bad.jsonl line 1: needs a non-empty "rejected"'):
        run_reward(_parse(argv))
