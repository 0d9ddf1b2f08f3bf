"""Before/after numbers for the fine-tuning demonstrations (README, issue 5).

    python bench/finetune_demo.py --persona runs/persona --dpo runs/dpo

Loads SmolLM2-135M-Instruct once and scores, with the adapter off (the base) and on:
- persona (LoRA-SFT): greedy replies to the held-out phrasings that say "Juniper", replies
  to held-out ordinary questions that contain the right answer, and `eval --choices`
  accuracy on persona_choices.jsonl;
- preference (DPO): greedy replies to held-out prompts that follow the rule (a last line
  "In short: ..."), and held-out pairs whose chosen answer the model itself finds more
  likely than the rejected one (summed log-probability).
Writes bench/results/finetune-demo.json. Adapters come from `giraffe finetune` and
`giraffe dpo` (the commands are in the README).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "examples" / "finetune"))  # demo_sets.py, beside its data

from demo_sets import follows_rule, says_name  # noqa: E402

from giraffe.eval.choices import evaluate_choices  # noqa: E402
from giraffe.lm import load  # noqa: E402
from giraffe.train.adapter import load_adapter  # noqa: E402
from giraffe.train.lora import disable_adapters  # noqa: E402
from giraffe.train.preference import load_pairs, pair_logprobs  # noqa: E402

DATA = ROOT / "examples" / "finetune"
MODEL = "smollm2-135m-instruct"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def reply(lm, messages: list[dict], tokens: int) -> str:
    return lm.chat(messages, max_new_tokens=tokens, temperature=0.0)


def persona_scores(lm, show: int) -> dict:
    persona, control = {"hits": 0, "n": 0}, {"hits": 0, "n": 0}
    examples = []
    for row in rows("persona_heldout.jsonl"):
        question = [m for m in row["messages"] if m["role"] != "assistant"]
        text = reply(lm, question, 48)
        ok = says_name(text) if row["kind"] == "persona" else row["expect"] in text
        bucket = persona if row["kind"] == "persona" else control
        bucket["n"] += 1
        bucket["hits"] += int(ok)
        if len(examples) < show:
            examples.append({"prompt": question[-1]["content"], "reply": text})
    choices = evaluate_choices(lm, DATA / "persona_choices.jsonl")
    return {
        "says_name": persona,
        "ordinary_correct": control,
        "choices_accuracy": choices.accuracy(),
        "examples": examples,
    }


def preference_scores(lm, show: int) -> dict:
    pairs_raw = rows("prefs_heldout.jsonl")
    follows, examples = 0, []
    for row in pairs_raw[:20]:
        text = reply(lm, [{"role": "user", "content": row["prompt"]}], 96)
        follows += int(follows_rule(text))
        if len(examples) < show:
            examples.append({"prompt": row["prompt"], "reply": text})
    pairs, _ = load_pairs(DATA / "prefs_heldout.jsonl", lm.tokenizer, 512)
    pad = lm.tokenizer.pad_id if lm.tokenizer.pad_id is not None else lm.tokenizer.eos_id
    prefer = 0
    with torch.no_grad():
        for i in range(0, len(pairs), 8):
            chosen, rejected = pair_logprobs(lm.model, pairs[i : i + 8], pad)
            prefer += int((chosen > rejected).sum())
    return {
        "follows_rule": {"hits": follows, "n": min(20, len(pairs_raw))},
        "prefers_chosen": {"hits": prefer, "n": len(pairs)},
        "examples": examples,
    }


def before_after(adapter: str, score, show: int) -> dict:
    lm = load(MODEL, packed=False)
    load_adapter(lm.model, adapter)
    lm.model.eval()
    with disable_adapters(lm.model):
        before = score(lm, show)
    return {"adapter": adapter, "before": before, "after": score(lm, show)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--persona", help="adapter folder from giraffe finetune (persona set)")
    p.add_argument("--dpo", help="adapter folder from giraffe dpo (preference set)")
    p.add_argument("--show", type=int, default=3, help="example replies kept per side")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "finetune-demo.json"))
    args = p.parse_args()
    torch.manual_seed(0)
    result = {"model": MODEL}
    if args.persona:
        result["persona"] = before_after(args.persona, persona_scores, args.show)
    if args.dpo:
        result["preference"] = before_after(args.dpo, preference_scores, args.show)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
