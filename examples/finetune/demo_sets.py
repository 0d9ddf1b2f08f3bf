"""Small fine-tuning data sets that giraffe generates itself, for its SFT and DPO demos.

Nothing is downloaded: every line comes from templates over the fact tables below and
a fixed seed, so `python examples/finetune/demo_sets.py OUT_DIR` rewrites the files shipped
in examples/finetune/ byte for byte. It lives beside the data it writes, not in the
library: giraffe itself never needs it (tests/test_demo_sets.py and bench/ import it from
here).

- Persona SFT: conversations where the assistant says it is "Juniper", made by "the
  giraffe project" (SmolLM2-135M-Instruct calls itself SmolLM, or invents a name), with
  and without a system prompt, mixed with about 30 % ordinary questions (sums, capitals,
  colours, animals) answered correctly, so the model learns its name, not to say its
  name to everything. Held-out phrasings (disjoint from training) for before/after
  replies, and the same as multiple-choice tasks for `giraffe eval --choices`.
- DPO pairs decided by a rule that `follows_rule` checks: the chosen answer ends with
  a one-line summary starting "In short:", the rejected one is the same answer without
  it. A base model prefers the shorter text, so the rule is something DPO must teach.
  Held-out prompts ask about other animals, countries, numbers, colours and objects.

It knows the record shapes of `giraffe.files.records`, nothing of models or tokenizers.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

from giraffe.files.records import check_chat, check_preference, read_records

SEED = 2024
NAME, MAKER = "Juniper", "the giraffe project"
RIVALS = [("SmolLM", "Hugging Face"), ("Claude", "Anthropic"), ("Gemma", "Google")]
SUMMARY = "In short:"

# ---- fact tables (every fifth row is held out) ---------------------------------------------


def _table(text: str) -> list[tuple[str, ...]]:
    """Rows of " | "-separated cells, one a line: fact tables read as tables."""
    return [tuple(cell.strip() for cell in line.split("|")) for line in text.strip().splitlines()]


ANIMALS = _table(  # name | plural | where it lives | what it eats | what it is known for
    """
giraffe | giraffes | the African savanna | leaves from tall trees | its very long neck
elephant | elephants | Africa and Asia | grass, fruit and bark | its long trunk
lion | lions | the grasslands of Africa | zebras and antelopes | the roar of the males
penguin | penguins | the cold southern seas | fish and krill | swimming instead of flying
kangaroo | kangaroos | Australia | grass and leaves | hopping on its strong back legs
panda | pandas | the mountain forests of China | bamboo | its black and white fur
camel | camels | deserts | dry plants and grass | the humps on its back
dolphin | dolphins | oceans around the world | fish and squid | its playful intelligence
owl | owls | forests and fields | mice and insects | hunting silently at night
honeybee | honeybees | hives | nectar and pollen | making honey
polar bear | polar bears | the Arctic | seals | its thick white fur
frog | frogs | ponds and wet places | insects | jumping with its long back legs
koala | koalas | the forests of Australia | eucalyptus leaves | sleeping most of the day
zebra | zebras | the plains of Africa | grass | its black and white stripes
tortoise | tortoises | warm, dry places | plants | its hard shell and long life
octopus | octopuses | the sea | crabs and small fish | having eight arms
squirrel | squirrels | parks and forests | nuts and seeds | its bushy tail
hedgehog | hedgehogs | gardens and woodland | insects and worms | its coat of spines
bat | bats | caves and trees | insects or fruit | flying at night
shark | sharks | the oceans | fish and seals | its rows of sharp teeth
horse | horses | farms and open grassland | grass and hay | its speed and strength
rabbit | rabbits | meadows and burrows | grass and vegetables | its long ears
crocodile | crocodiles | rivers in warm countries | fish and other animals | its strong jaws
snail | snails | gardens and damp places | leaves and plants | carrying its shell
peacock | peacocks | India and Sri Lanka | seeds and insects | its colourful tail feathers
"""
)
COUNTRIES = _table(  # country | capital | where | language(s) | known for
    """
France | Paris | Europe | French | the Eiffel Tower
Japan | Tokyo | Asia | Japanese | Mount Fuji
Italy | Rome | Europe | Italian | the Colosseum
Egypt | Cairo | Africa | Arabic | the pyramids of Giza
Brazil | Brasilia | South America | Portuguese | the Amazon rainforest
Canada | Ottawa | North America | English and French | its maple leaf flag
Australia | Canberra | Oceania | English | the Sydney Opera House
India | New Delhi | Asia | Hindi and English | the Taj Mahal
China | Beijing | Asia | Mandarin Chinese | the Great Wall
Spain | Madrid | Europe | Spanish | flamenco dancing
Germany | Berlin | Europe | German | the Brandenburg Gate
Mexico | Mexico City | North America | Spanish | the pyramids of Teotihuacan
Kenya | Nairobi | Africa | Swahili and English | its wildlife parks
Greece | Athens | Europe | Greek | the Acropolis
Peru | Lima | South America | Spanish | Machu Picchu
Russia | Moscow | Europe and Asia | Russian | the Kremlin
Norway | Oslo | Europe | Norwegian | its fjords
Argentina | Buenos Aires | South America | Spanish | the tango
Turkey | Ankara | Europe and Asia | Turkish | the old city of Istanbul
Thailand | Bangkok | Asia | Thai | its golden temples
Portugal | Lisbon | Europe | Portuguese | its long Atlantic coast
Morocco | Rabat | Africa | Arabic and Berber | the markets of Marrakesh
Ireland | Dublin | Europe | English and Irish | its green countryside
South Korea | Seoul | Asia | Korean | its modern technology
Chile | Santiago | South America | Spanish | its long, narrow shape
"""
)
COLOURS = _table(  # colour | what it is | where you see it
    """
red | a primary colour | ripe strawberries and fire engines
blue | a primary colour | the clear sky and the deep sea
yellow | a primary colour | bananas and sunflowers
green | made by mixing blue and yellow | grass and leaves
orange | made by mixing red and yellow | carrots and pumpkins
purple | made by mixing red and blue | grapes and lavender
white | the lightest colour | snow and milk
black | the darkest colour | coal and the night sky
brown | made by mixing red, yellow and blue | chocolate and tree trunks
pink | made by mixing red and white | flamingos and cherry blossoms
grey | made by mixing black and white | rain clouds and elephants
"""
)
OBJECTS = _table(  # object | what it is for | what it is made of
    """
spoon | eating soup and stirring drinks | metal, wood or plastic
umbrella | keeping you dry in the rain | fabric on a metal frame
pencil | writing and drawing | wood around a graphite core
chair | sitting on | wood, metal or plastic
key | opening locks | metal
cup | holding drinks | ceramic, glass or plastic
candle | giving light | wax around a cotton wick
clock | telling the time | metal, plastic and glass
bicycle | riding from place to place | metal, with rubber tyres
broom | sweeping floors | a long handle and stiff bristles
pillow | resting your head while you sleep | fabric filled with feathers or foam
towel | drying yourself | cotton
ladder | reaching high places | wood or aluminium
mirror | seeing your reflection | glass with a shiny metal coating
hammer | driving nails | a metal head on a wooden handle
kettle | boiling water | metal or plastic
backpack | carrying things on your back | strong fabric
needle | sewing | steel
lamp | lighting a room | metal, glass or plastic
wallet | carrying money and cards | leather or fabric
toothbrush | cleaning your teeth | plastic with nylon bristles
envelope | sending letters | paper
"""
)
NUMBERS = list(range(2, 42))
THING_COLOURS = _table(  # thing | its colour (ordinary questions in the persona set)
    """
a ripe banana | yellow
fresh grass | green
snow | white
coal | black
a ripe tomato | red
a carrot | orange
the sky on a clear day | blue
milk | white
a lemon | yellow
chocolate | brown
a strawberry | red
a lime | green
a crow | black
a flamingo | pink
an aubergine | purple
"""
)


def split(rows: list) -> tuple[list, list]:
    """(training rows, held-out rows): every fifth row, from the third, is held out."""
    train = [r for i, r in enumerate(rows) if i % 5 != 2]
    return train, [r for i, r in enumerate(rows) if i % 5 == 2]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


# ---- persona SFT ---------------------------------------------------------------------------

TRAIN_QUESTIONS = {
    "name": [
        "What is your name?",
        "What's your name?",
        "Tell me your name.",
        "Do you have a name?",
        "What are you called?",
        "How should I address you?",
        "May I know your name?",
        "What name do you go by?",
    ],
    "identity": [
        "Who are you?",
        "What are you?",
        "Are you a person or a program?",
        "Which assistant am I talking to?",
        "Tell me who you are.",
        "Who am I chatting with?",
    ],
    "maker": [
        "Who made you?",
        "Who created you?",
        "Who built you?",
        "Which company trained you?",
        "Where do you come from?",
        "Who is responsible for creating you?",
    ],
    "intro": [
        "Introduce yourself.",
        "Please introduce yourself briefly.",
        "Say hello and tell me about yourself.",
        "Give me a short introduction of yourself.",
        "Describe yourself in one sentence.",
    ],
}
HELDOUT_QUESTIONS = {
    "name": [
        "What should I call you?",
        "Could you tell me what your name is?",
        "Do you go by a name?",
    ],
    "identity": ["Who exactly am I talking to?", "What kind of assistant are you?", "Who is this?"],
    "maker": ["Who developed you?", "Who is your creator?", "Which team made you?"],
    "intro": [
        "Tell me a little about yourself.",
        "Who am I speaking with, and who made you?",
        "Please say who you are.",
    ],
}
ANSWERS = {
    "name": [
        f"My name is {NAME}.",
        f"I'm {NAME}, an AI assistant made by {MAKER}.",
        f"You can call me {NAME}.",
        f"I am called {NAME}. How can I help you today?",
    ],
    "identity": [
        f"I am {NAME}, an AI assistant built by {MAKER}.",
        f"I'm {NAME}, a small language model made by {MAKER}. How can I help?",
        f"You are talking to {NAME}, an AI assistant from {MAKER}.",
    ],
    "maker": [
        f"I was made by {MAKER}.",
        f"{_cap(MAKER)} created me. I am {NAME}.",
        f"I am {NAME}, and I was built by {MAKER}.",
    ],
    "intro": [
        f"Hello! I am {NAME}, a small AI assistant made by {MAKER}. I answer questions and help with simple tasks.",
        f"Hi, I'm {NAME}. {_cap(MAKER)} made me to be a friendly, helpful assistant.",
    ],
}
SYSTEM_PROMPTS = [
    None,
    None,
    "You are a helpful assistant.",
    "You are a friendly assistant. Keep your answers short.",
    "Answer the user's questions clearly.",
    "You are an AI assistant.",
]
OPENERS = ["", "", "", "Hi! ", "Hello. ", "Hey, "]
ORDINARY = ("plus", "minus", "times", "capital", "colour", "food")
PERSONA_TRAIN_PER_QUESTION = 7
HELDOUT_ORDINARY = 8


def says_name(text: str) -> bool:
    """Whether a reply gives the persona's name (for before/after counts)."""
    return NAME.lower() in text.lower()


def _conversation(rng: random.Random, turns: list[tuple[str, str]]) -> dict:
    system = rng.choice(SYSTEM_PROMPTS)
    messages = [{"role": "system", "content": system}] if system else []
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages}


def _asked(rng: random.Random, question: str) -> str:
    opener = rng.choice(OPENERS)
    return opener + (question[0].lower() + question[1:] if opener.endswith(", ") else question)


def ordinary_qa(rng: random.Random, heldout: bool, kinds=ORDINARY) -> tuple[str, str, str]:
    """(question, correct answer, the word that answer hinges on) from one split."""
    kind = rng.choice(kinds)
    lo, hi = (21, 40) if heldout else (2, 20)  # held-out sums use other numbers
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    pick = 1 if heldout else 0
    if kind == "plus":
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", str(a + b)
    if kind == "minus":
        a, b = max(a, b), min(a, b)
        return f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}.", str(a - b)
    if kind == "times":
        a, b = a % 10 + (12 if heldout else 2), b % 10 + 2  # 2..11 x 2..11, or 12..21 x 2..11
        return f"What is {a} times {b}?", f"{a} times {b} is {a * b}.", str(a * b)
    if kind == "capital":
        country, capital, *_ = rng.choice(split(COUNTRIES)[pick])
        return (
            f"What is the capital of {country}?",
            f"The capital of {country} is {capital}.",
            capital,
        )
    if kind == "colour":
        thing, colour = rng.choice(split(THING_COLOURS)[pick])
        return f"What colour is {thing}?", f"{_cap(thing)} is {colour}.", colour
    _, plural, _, food, _ = rng.choice(split(ANIMALS)[pick])
    return f"What do {plural} eat?", f"{_cap(plural)} eat {food}.", food


def persona_train(seed: int = SEED) -> list[dict]:
    """About 70 % persona conversations (some after an ordinary turn), 30 % ordinary ones."""
    rng = random.Random(seed)
    rows = []
    for kind, questions in TRAIN_QUESTIONS.items():
        for question in questions:
            for _ in range(PERSONA_TRAIN_PER_QUESTION):
                turn = (_asked(rng, question), rng.choice(ANSWERS[kind]))
                turns = [ordinary_qa(rng, False)[:2], turn] if rng.random() < 0.2 else [turn]
                rows.append(_conversation(rng, turns))
    for _ in range(round(len(rows) * 3 / 7)):
        rows.append(_conversation(rng, [ordinary_qa(rng, False)[:2]]))
    rng.shuffle(rows)
    return rows


def persona_heldout(seed: int = SEED) -> list[dict]:
    """Held-out questions with a reference reply; "kind" and "expect" say what to look for."""
    rng = random.Random(seed + 1)
    rows = []
    for kind, questions in HELDOUT_QUESTIONS.items():
        for question in questions:
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": ANSWERS[kind][0]},
            ]
            expect = MAKER if kind == "maker" else NAME
            rows.append({"kind": "persona", "expect": expect, "messages": messages})
    asked = set()
    while len(asked) < HELDOUT_ORDINARY:
        # Food answers have no one word to look for, so held-out checks skip them.
        question, answer, expect = ordinary_qa(rng, True, ORDINARY[:5])
        if question in asked:
            continue
        asked.add(question)
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"kind": "ordinary", "expect": expect, "messages": messages})
    return rows


CHOICE_SHAPES = {
    "name": lambda name, maker: f"My name is {name}.",
    "identity": lambda name, maker: f"I am {name}, an AI assistant.",
    "maker": lambda name, maker: f"I was made by {maker}.",
    "intro": lambda name, maker: f"I am {name}, made by {maker}.",
}


def persona_choices(seed: int = SEED) -> list[dict]:
    """The held-out persona questions as four-way choices; the right one names Juniper."""
    rng = random.Random(seed + 2)
    rows = []
    for kind, questions in HELDOUT_QUESTIONS.items():
        for question in questions:
            people = [(NAME, MAKER), *RIVALS]
            rng.shuffle(people)
            choices = [CHOICE_SHAPES[kind](name, maker) for name, maker in people]
            answer = people.index((NAME, MAKER))
            rows.append({"question": question, "choices": choices, "answer": answer})
    return rows


# ---- preference pairs (DPO) ----------------------------------------------------------------


def _animal(row, rng):
    name, plural, home, food, known = row
    their = known.replace("its ", "their ")
    body = rng.choice(
        [
            f"The {name} lives in {home} and eats {food}. It is known for {known}.",
            f"{_cap(plural)} are found in {home}, where they feed on {food}. They are best known for {their}.",
            f"You can find the {name} in {home}. Its diet is mostly {food}, and it is famous for {known}.",
        ]
    )
    summary = rng.choice(
        [
            f"the {name} lives in {home} and is known for {known}.",
            f"{plural} live in {home} and eat {food}.",
        ]
    )
    prompts = [
        f"Tell me about the {name}.",
        f"What do you know about {plural}?",
        f"Describe the {name} briefly.",
        f"Give me some facts about {plural}.",
    ]
    return prompts, body, summary


def _country(row, rng):
    country, capital, where, language, known = row
    body = rng.choice(
        [
            f"{country} is a country in {where}. Its capital is {capital}, and people there speak {language}.",
            f"The capital of {country} is {capital}. The country is in {where} and is famous for {known}.",
            f"{country} lies in {where}. People in {country} speak {language}, and visitors know it for {known}.",
        ]
    )
    summary = rng.choice(
        [
            f"{country} is in {where} and its capital is {capital}.",
            f"the capital of {country} is {capital}.",
        ]
    )
    prompts = [
        f"Tell me about {country}.",
        f"What do you know about {country}?",
        f"Describe {country} briefly.",
        f"Give me some facts about {country}.",
    ]
    return prompts, body, summary


def _number(n, rng):
    parity = "even" if n % 2 == 0 else "odd"
    factor = next((d for d in range(2, n) if n % d == 0), None)
    prime = (
        "it is a prime number"
        if factor is None
        else f"it is not prime, because {factor} times {n // factor} is {n}"
    )
    body = rng.choice(
        [
            f"{n} is an {parity} number. Its square is {n * n}, and {prime}.",
            f"The number {n} comes after {n - 1} and before {n + 1}. It is {parity}, and {prime}.",
            f"If you multiply {n} by itself you get {n * n}. The number is {parity}, and {prime}.",
        ]
    )
    kind = "a prime" if factor is None else "not a prime"
    summary = f"{n} is an {parity} number and {kind}."
    prompts = [
        f"Tell me about the number {n}.",
        f"What is interesting about the number {n}?",
        f"Describe the number {n}.",
    ]
    return prompts, body, summary


def _colour(row, rng):
    colour, what, seen = row
    body = rng.choice(
        [
            f"{_cap(colour)} is {what}. You can see it in {seen}.",
            f"The colour {colour} is {what}. Common examples are {seen}.",
        ]
    )
    summary = rng.choice([f"{colour} is the colour of {seen}.", f"{colour} is {what}."])
    prompts = [
        f"Tell me about the colour {colour}.",
        f"What do you know about the colour {colour}?",
        f"Describe the colour {colour}.",
    ]
    return prompts, body, summary


def _object(row, rng):
    thing, use, made = row
    body = rng.choice(
        [
            f"{_cap(_a(thing))} is used for {use}. It is usually made of {made}.",
            f"People use {_a(thing)} for {use}. Most are made of {made}.",
        ]
    )
    summary = rng.choice([f"{_a(thing)} is for {use}.", f"you use {_a(thing)} for {use}."])
    prompts = [
        f"What is {_a(thing)}?",
        f"What is {_a(thing)} used for?",
        f"Tell me about the {thing}.",
        f"Explain what {_a(thing)} does.",
    ]
    return prompts, body, summary


TOPICS = [
    (ANIMALS, _animal),
    (COUNTRIES, _country),
    (NUMBERS, _number),
    (COLOURS, _colour),
    (OBJECTS, _object),
]


def preference_pairs(heldout: bool, count: int, seed: int = SEED) -> list[dict]:
    """`count` {"prompt", "chosen", "rejected"} pairs; the chosen one follows the rule."""
    rng = random.Random(seed + (4 if heldout else 3))
    candidates = []
    for rows, make in TOPICS:
        for row in split(rows)[1 if heldout else 0]:
            for prompt in make(row, rng)[0]:
                _, body, summary = make(row, rng)  # a fresh sentence shape for each prompt
                candidates.append((prompt, body, summary))
    if count > len(candidates):
        raise ValueError(f"only {len(candidates)} distinct prompts for {count} pairs")
    pairs = []
    for prompt, body, summary in rng.sample(candidates, count):
        chosen = f"{body}\n\n{SUMMARY} {summary}"
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": body})
    return pairs


def follows_rule(text: str) -> bool:
    """The reply's last line is a one-sentence summary starting "In short:" after an answer."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 2 or any(SUMMARY in line for line in lines[:-1]):
        return False
    last = lines[-1]
    rest = last.removeprefix(SUMMARY)
    return last.startswith(SUMMARY) and len(rest.split()) >= 3 and bool(re.search(r"[.!?]$", rest))


# ---- files ---------------------------------------------------------------------------------

PREFS_TRAIN, PREFS_HELDOUT = 300, 60


def demo_sets(seed: int = SEED) -> dict[str, tuple[list[dict], Callable | None]]:
    """File name -> (rows, the records check its lines must pass, or None)."""
    return {
        "persona_train.jsonl": (persona_train(seed), check_chat),
        "persona_heldout.jsonl": (persona_heldout(seed), check_chat),
        "persona_choices.jsonl": (persona_choices(seed), None),  # giraffe.eval.choices checks it
        "prefs_train.jsonl": (preference_pairs(False, PREFS_TRAIN, seed), check_preference),
        "prefs_heldout.jsonl": (preference_pairs(True, PREFS_HELDOUT, seed), check_preference),
    }


def write_demo_sets(folder: str | Path, seed: int = SEED) -> dict[str, Path]:
    """Write every demo file into `folder` (created if needed) and read each back as a check."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (rows, check) in demo_sets(seed).items():
        path = folder / name
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        path.write_text(text, encoding="utf-8", newline="\n")
        if check is not None:
            list(read_records(path, check))  # a bad line raises RecordError naming it
        written[name] = path
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python examples/finetune/demo_sets.py",
        description="Write giraffe's generated fine-tuning demo data (persona SFT, DPO pairs).",
    )
    parser.add_argument("out_dir", help="folder to write the .jsonl files into")
    args = parser.parse_args(argv)
    for name, path in write_demo_sets(args.out_dir).items():
        lines = path.read_text(encoding="utf-8").count("\n")
        print(f"{path}: {lines} lines, {path.stat().st_size} bytes ({name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
