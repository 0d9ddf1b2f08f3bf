"""Turn a bag of external tensors into a giraffe model, and a model back into one.

Shared by the Hugging Face and GGUF paths: it walks the name table, reports missing and
unexpected tensors by name, and builds the model (`Decoder` or `Encoder`, as the config's
kind says) without first filling it with random weights. An encoder checkpoint without
masked-LM head tensors (MiniLM) gives an `Encoder` without that head. It does not know
how tensors are stored on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from giraffe.config import ModelConfig
from giraffe.formats import names
from giraffe.formats.names import WeightsError
from giraffe.models import Decoder, Encoder, build_model


def assemble(
    cfg: ModelConfig,
    fmt: str,
    available: Iterable[str],
    fetch: Callable[[str], torch.Tensor],
    source: str,
    rope_permuted: bool = False,
) -> Decoder | Encoder:
    """Build a model from external tensors: `fetch(name)` returns one as float32."""
    available = set(available)
    expected = _expected_parameters(cfg)
    params: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for rule in names.expand(fmt, cfg):
        if rule.theirs not in available or not set(rule.ours) <= expected:
            continue
        params.update(names.to_giraffe(rule, fetch(rule.theirs).float(), cfg, rope_permuted))
        used.add(rule.theirs)
    kw = {}
    if cfg.kind == "encoder":  # a checkpoint without MLM head tensors gives no head
        kw["mlm_head"] = any(n.startswith("mlm_head.") for n in params)
        expected = _expected_parameters(cfg, **kw)
    _check_complete(expected, params, available - used, source, cfg)
    with torch.device("meta"):
        model = build_model(cfg, **kw)
    model.load_state_dict(params, strict=True, assign=True)
    model.reset_buffers()
    return model.eval()


def disassemble(
    model: Decoder | Encoder, fmt: str, rope_permuted: bool = False
) -> dict[str, torch.Tensor]:
    """External name -> tensor for every parameter of the model (inverse of `assemble`)."""
    cfg = model.config
    params = {k: v.detach() for k, v in model.state_dict().items()}
    out = {}
    for rule in names.expand(fmt, cfg):
        if all(n in params for n in rule.ours):
            out[rule.theirs] = names.from_giraffe(rule, params, cfg, rope_permuted)
    return out


def _expected_parameters(cfg: ModelConfig, **kw) -> set[str]:
    with torch.device("meta"):
        return set(build_model(cfg, **kw).state_dict())


def _check_complete(expected, params, leftover, source, cfg) -> None:
    missing = sorted(expected - set(params))
    if missing:
        raise WeightsError(
            f"{source} lacks {len(missing)} weight(s) the {cfg.arch} config needs, "
            f"e.g. {', '.join(missing[:3])}: the file is incomplete or its config does not match"
        )
    unknown = sorted(n for n in leftover if not _ignorable(n, cfg))
    if unknown:
        raise WeightsError(
            f"{source} has {len(unknown)} tensor(s) giraffe does not know, "
            f"e.g. {', '.join(unknown[:3])}: this architecture variant is not supported"
        )


def _ignorable(name: str, cfg: ModelConfig) -> bool:
    # A tied model may still carry a copy of the output head.
    tied_head = cfg.tie_embeddings and name in names.TIED_HEAD_NAMES
    # configuration stored as a tensor: the format's loader read it into the config
    return tied_head or name.endswith(names.IGNORED_SUFFIXES) or name in names.CONFIG_TENSORS
