"""Before/after numbers for the reinforcement-learning demonstrations (README, issue 18).

    python bench/rl_demo.py arithmetic --out runs/rl-arith
    python bench/rl_demo.py rlhf --rm runs/rm --out runs/rl-rlhf
    python bench/rl_demo.py probe --out runs/rl-probe --k 8

- probe: the base's pass rate on the arithmetic training prompts, K samples each at the
  rollout temperature (GRPO learns only from groups where some answers pass and some fail:
  pick a task where this is neither ~0 nor ~1). Nothing is trained.

- arithmetic (verifiable reward, GRPO + QLoRA): SmolLM2-135M-Instruct is asked sums of two
  numbers from 2 to 9 and told to reply with only the equation ("4 + 3 = 7");
  `giraffe.train.verifiers.equation_answer` gives 1 for exactly that equation with the
  right sum and 0 for anything else (no credit for form alone: a reward that paid for a
  bare wrong number was gamed by always answering "15"). The base, sampled at the
  rollouts' temperature, gets it right in a few percent of tries, enough for GRPO to
  compare answers within a group. The policy trains LoRA over the packed GGUF weights
  (`--qlora`), so rollouts run on the compiled decode step with the adapters beside it.
  Held-out prompts (other number pairs), in the same run: greedy answers (reward =
  accuracy, the right number anywhere, the equation form) and K samples per prompt at
  the rollout temperature with fixed seeds (the sampled pass rate), before and after.
- rlhf (reward model, PPO + QLoRA): the reward model `giraffe reward` trained on the
  fine-tuning demo's preference pairs (examples/finetune/prefs_train.jsonl: answers that
  end with a one-line "In short: ..." are preferred) scores answers to the held-out
  preference prompts; before/after: the reward model's mean score and the share of
  answers that follow the rule (`follows_rule`, the program that made the data).

Prompts are generated here with a fixed seed (examples/rl/ holds the arithmetic files).
Writes bench/results/rl-demo-<task>.json with the command, settings, per-step log and
the held-out numbers, as measured.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "examples" / "finetune"))

from giraffe.generate.params import DecodingConfig  # noqa: E402
from giraffe.train.denormals import flush_denormals  # noqa: E402
from giraffe.train.rewards import RewardFailures  # noqa: E402
from giraffe.train.rl import RLConfig, RLRun, check_rl, train_rl  # noqa: E402
from giraffe.train.rollout import row_seed, sample_answers  # noqa: E402
from giraffe.train.verifiers import EQUATION, equation_answer  # noqa: E402

MODEL = "smollm2-135m-instruct"
EXAMPLES = ROOT / "examples" / "rl"
EVAL_SEED = 18_000  # the held-out samples' seeds, apart from any run seed
QUESTION = "What is {a} + {b}? Reply with only the equation."


def arithmetic_sets(seed: int = 18, n_val: int = 24) -> tuple[list, list]:
    """Sums of two numbers from 2 to 9 (64 questions): 40 to train on, 24 held out."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(2, 10) for b in range(2, 10)]
    rng.shuffle(pairs)
    rows = [
        {"prompt": QUESTION.format(a=a, b=b), "question": f"{a} + {b}", "answer": str(a + b)}
        for a, b in pairs
    ]
    return rows[n_val:], rows[:n_val]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def arithmetic(args) -> dict:
    train, val = arithmetic_sets()
    train_path = write_jsonl(EXAMPLES / "arithmetic_train.jsonl", train)
    val_path = write_jsonl(EXAMPLES / "arithmetic_heldout.jsonl", val)
    cfg = RLConfig(
        model=MODEL, prompts=str(train_path), val_prompts=str(val_path), out=args.out,
        reward="python:giraffe.train.verifiers:equation_answer", algo="grpo",
        max_steps=args.steps, batch_size=args.batch_size, group=args.group,
        max_new_tokens=args.answer_tokens, lr=args.lr, temperature=args.temperature,
        lora_r=8, lora_alpha=16, lora_targets="q_proj,v_proj", beta=args.beta, qlora=True,
        template=args.template, eval_every=1000, eval_examples=len(val), save_every=5,
        progress=args.progress,
    )  # fmt: skip
    check_rl(cfg)
    with flush_denormals():
        rl = RLRun(cfg)
        sampled_before = sampled(rl, args.k, args.temperature)
        metrics = run(rl)
        sampled_after = sampled(rl, args.k, args.temperature)
    answers = {row["prompt"]: row for row in val}

    def held(key: str) -> dict:
        texts = [(s[key], answers[s["prompt"]]) for s in metrics["samples"]]
        right = sum(equation_answer("", t, row["answer"], row["question"]) for t, row in texts)
        has = sum(row["answer"] in re.findall(r"-?\d+", t) for t, row in texts)
        form = sum(EQUATION.fullmatch(t.strip().removesuffix(".").strip()) is not None for t, _ in texts)  # fmt: skip
        n = len(texts)
        return {"accuracy": right / n, "right_number_anywhere": has / n, "equation_form": form / n, "n": n}  # fmt: skip

    return {
        **report(cfg, metrics),
        "before": {
            "reward": metrics["first_val_reward"],
            **held("before"),
            "sampled": sampled_before,
        },  # fmt: skip
        "after": {"reward": metrics["val_reward"], **held("after"), "sampled": sampled_after},
    }


def probe(args) -> dict:
    train, _ = arithmetic_sets()
    train_path = write_jsonl(EXAMPLES / "arithmetic_train.jsonl", train)
    cfg = RLConfig(
        model=MODEL, prompts=str(train_path), val_prompts=str(train_path), out=args.out,
        reward="python:giraffe.train.verifiers:equation_answer", max_steps=1, group=2,
        max_new_tokens=args.answer_tokens, temperature=args.temperature, lora_r=8,
        lora_targets="q_proj,v_proj", qlora=True, eval_examples=len(train), progress=False,
    )  # fmt: skip
    check_rl(cfg)
    with flush_denormals():
        rl = RLRun(cfg)  # LoRA's B starts at zero: the policy is the base model
        result = sampled(rl, args.k, args.temperature)
    return {"model": MODEL, "prompts": str(train_path.relative_to(ROOT)), "before": result, "after": None, "wall_seconds": result["seconds"]}  # fmt: skip


def sampled(rl: RLRun, k: int, temperature: float) -> dict:
    """K answers per held-out prompt at the rollout temperature, fixed seeds (the same
    before and after): the share the reward passes, and the prompts with any pass."""
    began = time.monotonic()
    rows = [p for p in rl.val for _ in range(k)]
    decoding = DecodingConfig(max_new_tokens=rl.cfg.max_new_tokens, temperature=temperature)
    seeds = [row_seed(EVAL_SEED, 0, r) for r in range(len(rows))]
    out = sample_answers(rl.lm.model, rl.lm.tokenizer, [list(p.ids) for p in rows], decoding, seeds)  # fmt: skip
    r = rl.reward([p.text for p in rows], out.texts, [p.record for p in rows], RewardFailures())
    passed = (r >= 1.0).float().view(len(rl.val), k)  # (prompts, K)
    return {
        "pass_rate": round(float(passed.mean()), 4),
        "prompts_with_a_pass": int((passed.sum(1) > 0).sum()),
        "k": k,
        "temperature": temperature,
        "answers": len(rows),
        "seconds": round(time.monotonic() - began, 1),
    }


def rlhf(args) -> dict:
    from demo_sets import follows_rule  # the program that decided the preference pairs

    prefs = ROOT / "examples" / "finetune"
    train = [{"prompt": json.loads(x)["prompt"]} for x in (prefs / "prefs_train.jsonl").read_text().splitlines() if x.strip()]  # fmt: skip
    val = [{"prompt": json.loads(x)["prompt"]} for x in (prefs / "prefs_heldout.jsonl").read_text().splitlines() if x.strip()]  # fmt: skip
    train_path = write_jsonl(Path(args.out) / "prompts_train.jsonl", train)
    val_path = write_jsonl(Path(args.out) / "prompts_heldout.jsonl", val[: args.val])
    cfg = RLConfig(
        model=MODEL, prompts=str(train_path), val_prompts=str(val_path), out=args.out,
        reward=args.rm, algo="ppo", max_steps=args.steps, batch_size=4, group=2,
        max_new_tokens=args.tokens, lr=args.lr, lora_r=8, lora_alpha=16,
        lora_targets="all-linear", beta=0.05, qlora=True, eval_every=1000,
        eval_examples=args.val, save_every=5, progress=args.progress,
    )  # fmt: skip
    metrics = run(cfg)

    def rule(key: str) -> float:
        return sum(follows_rule(s[key]) for s in metrics["samples"]) / len(metrics["samples"])

    return {
        **report(cfg, metrics),
        "before": {"reward": metrics["first_val_reward"], "follows_rule": rule("before")},
        "after": {"reward": metrics["val_reward"], "follows_rule": rule("after")},
    }


def run(job: RLConfig | RLRun) -> dict:
    began = time.monotonic()
    metrics = train_rl(job) if isinstance(job, RLConfig) else job.run()
    metrics["wall_seconds"] = round(time.monotonic() - began, 1)
    return metrics


def report(cfg: RLConfig, metrics: dict) -> dict:
    log = [json.loads(x) for x in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
    return {
        "model": MODEL,
        "settings": {k: v for k, v in asdict(cfg).items() if k not in ("progress", "stop_step")},
        "wall_seconds": metrics["wall_seconds"],
        "log": log,
        "samples": metrics["samples"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task", choices=("arithmetic", "rlhf", "probe"))
    p.add_argument("--out", required=True, help="run folder (adapter, log, checkpoints)")
    p.add_argument("--rm", help="rlhf: the reward model folder (giraffe reward ... --out)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tokens", type=int, default=48, help="rlhf: longest answer")
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient")
    p.add_argument("--answer-tokens", type=int, default=12, help="arithmetic: longest answer")
    p.add_argument("--group", type=int, default=8, help="arithmetic: answers per prompt")
    p.add_argument("--batch-size", type=int, default=4, help="arithmetic: prompts per step")
    p.add_argument("--k", type=int, default=8, help="arithmetic: held-out samples per prompt")
    p.add_argument("--temperature", type=float, default=0.7, help="arithmetic: sampling")
    p.add_argument("--template", default=None, help="chat template (default: the model's)")
    p.add_argument("--val", type=int, default=16, help="rlhf: held-out prompts scored")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--results", default=None, help="default bench/results/rl-demo-TASK.json")
    args = p.parse_args()
    result = {"arithmetic": arithmetic, "rlhf": rlhf, "probe": probe}[args.task](args)
    out = Path(args.results or ROOT / "bench" / "results" / f"rl-demo-{args.task}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("before", "after", "wall_seconds")}))


if __name__ == "__main__":
    main()
