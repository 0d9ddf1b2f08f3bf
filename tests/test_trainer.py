"""The pretraining loop: exact resume, refused checkpoints, atomic checkpoints, the
schedule, the log and plot, the saved model (transformers loads it with the same
logits, GGUF for decoders), and the command-line doors."""

from __future__ import annotations

import argparse
import errno
import json
import math

import pytest
import torch

from giraffe.formats.hf import load_hf
from giraffe.tokenizer.train import train_tokenizer
from giraffe.train import checkpoint
from giraffe.train.checkpoint import CheckpointError
from giraffe.train.command import (
    add_prepare_parser,
    add_pretrain_parser,
    add_train_tokenizer_parser,
    run_compare,
    run_prepare,
    run_pretrain,
    run_train_tokenizer,
)
from giraffe.train.corpus import demo_documents
from giraffe.train.data import prepare
from giraffe.train.loop import TrainConfig, TrainError, pretrain
from giraffe.train.schedule import lr_factor


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    tok = train_tokenizer([t for _, t in demo_documents()][:20], "bpe", 400)
    prepare(["demo"], tok, folder, val_fraction=0.1)
    return folder


def _cfg(shards, out, **kw) -> TrainConfig:
    base = dict(
        preset="tiny",
        data=str(shards),
        out=str(out),
        max_steps=6,
        batch_size=4,
        seq_len=32,
        warmup=2,
        eval_every=3,
        save_every=3,
        eval_batches=1,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def _weights(folder):
    return load_hf(folder).state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "bert", "t5"])
def test_resume_gives_bit_identical_weights(arch, shards, tmp_path):
    pretrain(_cfg(shards, tmp_path / "whole", arch=arch, grad_accum=2, save_every=2))
    pretrain(_cfg(shards, tmp_path / "split", arch=arch, grad_accum=2, save_every=2, stop_step=3))
    latest = json.loads((tmp_path / "split" / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 3  # a stop between checkpoints still saves where it stopped
    pretrain(_cfg(shards, tmp_path / "split", arch=arch, grad_accum=2, save_every=2))
    whole, split = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert whole.keys() == split.keys()
    for name in whole:
        assert torch.equal(whole[name], split[name]), name
    log = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # the resumed log reads like one run
    whole_log = (tmp_path / "whole" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in whole_log if '"loss"' in x] == [
        r["loss"] for r in log if "loss" in r
    ]


def test_training_lowers_the_loss_and_writes_log_plot_and_checkpoints(shards, tmp_path):
    metrics = pretrain(_cfg(shards, tmp_path, arch="llama", max_steps=30, lr=3e-3, eval_every=10))
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 10, 20, 30]
    assert evals[0]["val_loss"] == pytest.approx(math.log(400), abs=0.5)  # untrained ~ ln V
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    assert evals[-1]["val_ppl"] == pytest.approx(math.exp(evals[-1]["val_loss"]), rel=1e-3)
    assert 0 < evals[-1]["val_bpb"] < evals[0]["val_bpb"]
    assert evals[-1]["sample"].startswith("The")
    assert metrics["step"] == 30 and metrics["val_loss"] == evals[-1]["val_loss"]
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert kept == ["step-0000027.pt", "step-0000030.pt"]  # the newest two
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_checkpoint_from_another_config_is_refused(shards, tmp_path):
    pretrain(_cfg(shards, tmp_path, arch="gpt2", stop_step=3))
    with pytest.raises(CheckpointError, match="another model .*(n_heads|intermediate|norm|arch)"):
        pretrain(_cfg(shards, tmp_path, arch="llama"))
    with pytest.raises(CheckpointError, match="other training settings .*seq_len"):
        pretrain(_cfg(shards, tmp_path, arch="gpt2", seq_len=16))
    other = tmp_path / "other-data"  # same vocabulary size, another tokenizer
    texts = [t for _, t in demo_documents()][20:40]
    prepare(["demo"], train_tokenizer(texts, "bpe", 400), other, val_fraction=0.1)
    with pytest.raises(CheckpointError, match="shards of another tokenizer"):
        pretrain(_cfg(other, tmp_path, arch="gpt2"))


def test_a_full_disk_while_checkpointing_leaves_the_previous_checkpoint_latest(
    shards, tmp_path, monkeypatch
):
    pretrain(_cfg(shards, tmp_path, arch="gpt2", stop_step=3))
    real_save = torch.save

    def full_disk(obj, path):
        real_save(obj, path)  # some bytes reach the disk, then it is full
        with open(path, "r+b") as f:
            f.truncate(100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        pretrain(_cfg(shards, tmp_path, arch="gpt2"))
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    folder = tmp_path / "checkpoints"
    assert json.loads((folder / "latest.json").read_text())["step"] == 3
    assert sorted(p.name for p in folder.iterdir()) == ["latest.json", "step-0000003.pt"]
    pretrain(_cfg(shards, tmp_path, arch="gpt2"))  # resumes from step 3 and finishes
    assert json.loads((folder / "latest.json").read_text())["step"] == 6


def test_schedule_warms_up_then_decays_to_the_floor():
    factors = [lr_factor(s, 10, 110, 0.1) for s in range(120)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.55)  # half-way down the cosine
    assert factors[110] == pytest.approx(0.1) and factors[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))


def test_bad_settings_are_refused(shards, tmp_path):
    with pytest.raises(TrainError, match="--batch-size 4 must split into --grad-accum 3"):
        pretrain(_cfg(shards, tmp_path, arch="gpt2", grad_accum=3))
    with pytest.raises(ValueError, match="--preset takes one of"):
        pretrain(_cfg(shards, tmp_path, arch="gpt2", preset="huge"))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert", "t5"])
def test_the_saved_model_loads_in_transformers_with_the_same_logits(arch, shards, tmp_path):
    transformers = pytest.importorskip("transformers")
    pretrain(_cfg(shards, tmp_path, arch=arch, max_steps=3, gguf=arch == "llama"))
    ours = load_hf(tmp_path).eval()
    ids = torch.randint(7, 400, (2, 12))
    kind = {"gpt2": "CausalLM", "llama": "CausalLM", "bert": "MaskedLM", "t5": "Seq2SeqLM"}[arch]
    theirs = getattr(transformers, f"AutoModelFor{kind}").from_pretrained(tmp_path).eval()
    with torch.no_grad():
        if arch == "t5":
            dec = torch.randint(7, 400, (2, 5))
            expected, got = theirs(input_ids=ids, decoder_input_ids=dec).logits, ours(ids, dec)
        else:
            expected, got = theirs(ids).logits, ours(ids)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    if arch == "llama":  # decoders also export to GGUF, read back with the same logits
        import giraffe

        lm = giraffe.lm.load(tmp_path / "model.gguf", packed=False)
        with torch.no_grad():
            torch.testing.assert_close(lm.model(ids), got, atol=1e-4, rtol=1e-4)


def _parse(*argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_train_tokenizer_parser(sub)
    add_prepare_parser(sub)
    add_pretrain_parser(sub)
    return parser.parse_args([str(a) for a in argv])


def test_the_commands_run_end_to_end(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("".join([t for _, t in demo_documents()][:8]))
    run_train_tokenizer(
        _parse(
            "train-tokenizer", text, "--kind", "bpe", "--vocab-size", 300, "--out", tmp_path / "tok"
        )
    )
    run_prepare(
        _parse(
            "prepare",
            text,
            "demo",
            "--tokenizer",
            tmp_path / "tok",
            "--out",
            tmp_path / "data",
            "--val-fraction",
            0.1,
        )
    )
    args = _parse(
        "pretrain",
        "--arch",
        "gpt2",
        "--preset",
        "tiny",
        "--data",
        tmp_path / "data",
        "--out",
        tmp_path / "model",
        "--max-steps",
        2,
        "--batch-size",
        2,
        "--seq-len",
        16,
        "--eval-every",
        1,
        "--no-progress",
    )
    assert (args.max_steps, args.seq_len, args.bf16) == (2, 16, False)
    assert run_pretrain(args) == 0
    out = capsys.readouterr().out
    assert "tokenizer with 300 tokens" in out and "validation tokens" in out
    assert '"step": 2' in out and (tmp_path / "model" / "model.safetensors").is_file()
    run_compare("fast faster fastest", [str(tmp_path / "tok"), str(tmp_path / "model")])
    assert "bytes/token" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _parse("pretrain", "--arch", "gpt5", "--data", "d", "--out", "o")


def test_bf16_autocast_trains(shards, tmp_path):
    metrics = pretrain(_cfg(shards, tmp_path, arch="gpt2", max_steps=3, bf16=True))
    assert math.isfinite(metrics["val_loss"])
