"""Command-line flags generated from a tuning config dataclass: one flag per field.

The field's comment in the dataclass is its help text, its annotation gives the type,
and its default stays in the dataclass: every flag defaults to None and only the flags
given reach the config (`config_from_args`). So a setting is written once, where the
config declares it, and every tuning command (`giraffe finetune`, `dpo`, `reward`, `rl`)
offers the same flags for the same fields.

Mapping: `int`/`float`/`str` (optionally `| None`) -> a typed flag; `bool` -> a switch
(`--name` when the default is False, `--no-name` when it is True); `tuple[str, ...]` -> a
repeatable flag; a field named in `choices` takes only those values. `model` is the
positional argument; `required` fields must be given. It imports no torch.
"""

from __future__ import annotations

import argparse
import inspect
import re
from dataclasses import MISSING, fields

FIELD = re.compile(r"^    (\w+): ([^=]+?)\s*(?:=.*?)?(?:#\s*(.*))?$")
COMMENT = re.compile(r"^    #\s?(.*)$")
TYPES = {"int": int, "float": float, "str": str}
NEVER = ("progress", "stop_step")  # progress has --no-progress below; stop_step is for tests


def field_help(cls) -> dict[str, str]:
    """Field name -> its comment, from the class and its dataclass bases (nearest wins)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not hasattr(klass, "__dataclass_fields__"):
            continue
        pending: list[str] = []
        for line in inspect.getsource(klass).splitlines():
            c = COMMENT.match(line)
            if c:
                pending.append(c.group(1))
                continue
            f = FIELD.match(line)
            if f and f.group(1) in klass.__dataclass_fields__:
                text = f.group(3) or " ".join(pending)
                if text:
                    out[f.group(1)] = text.replace("%", "%%")
            pending = []
    return out


def add_config_flags(
    p: argparse.ArgumentParser,
    cls,
    required: tuple[str, ...] = (),
    choices: dict[str, tuple] | None = None,
    flag_names: dict[str, str] | None = None,
) -> None:
    """Add `model` (positional) and one flag per other field of `cls`."""
    helps, choices, flag_names = field_help(cls), choices or {}, flag_names or {}
    for f in fields(cls):
        name, text = f.name, helps.get(f.name, "")
        if name in NEVER:
            continue
        if name == "model":
            p.add_argument("model", help=text)
            continue
        flag = flag_names.get(name, "--" + name.replace("_", "-"))
        kind = str(f.type).replace(" | None", "").strip()
        kw: dict = {"dest": name, "help": text, "default": None}
        if name in required:
            kw["required"] = True
        if kind == "bool":
            on = f.default is MISSING or not f.default
            flag = flag if on else "--no-" + name.replace("_", "-")
            kw["action"] = "store_true" if on else "store_false"
            kw["help"] = text if on else f"turn off ({text})"
        elif kind.startswith("tuple"):
            kw["action"] = "append"
        else:
            kw["type"] = TYPES.get(kind, str)
            if name in choices:
                kw["choices"] = choices[name]
        p.add_argument(flag, **kw)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(cls, args):
    """The config from the flags given; the others keep the dataclass defaults."""
    names = {f.name for f in fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    for f in fields(cls):
        if f.name in given and str(f.type).startswith("tuple"):
            given[f.name] = tuple(given[f.name])
    return cls(**given, progress=not args.no_progress)
