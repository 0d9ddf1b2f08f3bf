"""LoRA adapter folders in the PEFT layout, both ways.

`save_adapter` writes what `peft.PeftModel.from_pretrained` reads: `adapter_config.json`
(peft_type "LORA", r, lora_alpha, target_modules as Hugging Face module names, ...) and
`adapter_model.safetensors` with PEFT's keys (`base_model.model.<HF module>.lora_A.weight`,
A (r, in) and B (out, r)), each written atomically; plus `giraffe_adapter.json`, a small
fingerprint of the base (shapes and a hash of sampled embedding rows) that PEFT ignores.
`load_adapter` reads such a folder (giraffe's or PEFT's) into a model with `apply_lora`;
`load_with_adapter` is `giraffe.lm.load` followed by it (a packed base = QLoRA inference).

Module names go through `giraffe.formats.names`, the one name table. Where one Hugging
Face module fuses several giraffe layers (Phi-3 qkv_proj and gate_up_proj, GPT-NeoX
query_key_value, GPT-2 c_attn), `giraffe.train.adapter_fused` maps the update exactly
both ways: a fused adapter's A is shared by the parts, each taking its rows of B; giraffe's
adapters on some of the parts are written as one block-diagonal update with the module's
rank and alpha in `rank_pattern`/`alpha_pattern` (patterns are read for fused modules
only). GPT-2's c_proj / c_fc are Conv1D layers whose LoRA matrices have the same (r, in) /
(out, r) shapes as a Linear's, so those map exactly (the config says fan_in_fan_out, as
PEFT does for Conv1D).

Refused rather than ignored, since each would change the adapter's output: options giraffe
does not implement (DoRA, rsLoRA, per-layer ranks or alphas, trained biases,
modules_to_save, ...), tensors that are not LoRA A/B matrices, an adapter for another base
(a module that does not exist, a shape that differs, fewer layers than the model has).
A base with the same shapes but other weights (the same model as GGUF Q4_1 instead of the
float folder) is legitimate and only warned about. It knows nothing of training.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from giraffe.formats import names
from giraffe.formats.hf import atomic_write
from giraffe.lm import LanguageModel, load
from giraffe.train import adapter_fused
from giraffe.train.lora import LoraConfig, LoraLinear, apply_lora, lora_layers

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FINGERPRINT_FILE = "giraffe_adapter.json"
PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model
KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")

# adapter_config.json keys that describe how the adapter was made or which modules it
# selects; the weights file says exactly which modules it holds, so these change nothing.
INFORMATIONAL = {
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "peft_version",
    "auto_mapping",
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
    "fan_in_fan_out",  # how the base stores its weight (Conv1D); the name table knows that
    "megatron_core",
    "qalora_group_size",  # only read when use_qalora is on
}
USED = {"peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "init_lora_weights"}
USED |= {"rank_pattern", "alpha_pattern"}  # checked per module: fused modules only
# Initialisations after which the adapter is plain B @ A over the unchanged base (PiSSA,
# OLoRA, CorDA, LoftQ rewrite the base weights, so their adapters need that base).
PLAIN_INITS = (True, False, "gaussian")
NEUTRAL = (None, False, {}, [], "none")
WHAT = {
    "use_dora": "DoRA, weight-decomposed LoRA",
    "use_rslora": "rank-stabilised LoRA, scale alpha/sqrt(r)",
    "bias": "trained biases",
    "lora_bias": "a bias on lora_B",
    "modules_to_save": "fully trained extra modules",
    "layer_replication": "replicated layers",
    "trainable_token_indices": "trained token embeddings",
    "target_parameters": "LoRA on raw parameters",
    "use_qalora": "QA-LoRA pooled inputs",
}


class AdapterError(ValueError):
    """An adapter folder is missing, malformed, unsupported or made for another base."""


class AdapterWarning(UserWarning):
    """The adapter's base had the same shapes but other weights."""


@dataclass(frozen=True)
class ModuleTable:
    """giraffe module name <-> Hugging Face module name, for one decoder config."""

    to_hf: dict[str, str]  # 1:1 layers
    fused: dict[str, str]  # giraffe layer -> the fused HF module that holds it with others
    hf_conv1d: frozenset[str]  # HF modules stored (in, out)
    n_layers: int
    fused_rules: dict[str, names.Rule]  # fused HF module -> its rule (parts, order, layout)
    config: object  # the model's ModelConfig (row counts of fused parts)

    @property
    def from_hf(self) -> dict[str, str]:
        return {hf: ours for ours, hf in self.to_hf.items()}


def module_table(model: nn.Module) -> ModuleTable:
    cfg = getattr(model, "config", None)
    if cfg is None or cfg.kind != "decoder" or ("hf", cfg.arch) not in names.TABLES:
        what = "this model" if cfg is None else f"a {cfg.arch} {cfg.kind}"
        raise AdapterError(f"PEFT adapter files are written for decoder models, not {what}")
    to_hf, fused, conv1d, rules = {}, {}, set(), {}
    for rule in names.expand("hf", cfg):
        if not all(n.endswith(".weight") for n in rule.ours):
            continue  # biases and other tensors: LoRA adapts weights only
        hf = rule.theirs.removesuffix(".weight")
        ours = [n.removesuffix(".weight") for n in rule.ours]
        if rule.layout == "conv1d":
            conv1d.add(hf)
        if len(ours) > 1:
            fused.update(dict.fromkeys(ours, hf))
            rules[hf] = rule
            continue
        to_hf[ours[0]] = hf
    return ModuleTable(to_hf, fused, frozenset(conv1d), cfg.n_layers, rules, cfg)


# ---- saving ---------------------------------------------------------------------------


def save_adapter(model: nn.Module, folder: str | os.PathLike, base_name: str) -> Path:
    """Write the model's LoRA layers as a PEFT adapter folder; returns the folder."""
    layers = list(lora_layers(model))
    if not layers:
        raise AdapterError("the model has no LoRA layers to save: apply_lora(model, cfg) first")
    table = module_table(model)
    r, alpha, dropout = _shared_settings(layers)
    tensors, hf_modules, fused_parts = {}, [], {}
    for name, layer in layers:
        a, b = (lin.weight.detach().cpu() for lin in (layer.lora_A, layer.lora_B))
        if name in table.fused:  # joined below, one update per fused module
            fused_parts.setdefault(table.fused[name], {})[name] = (a, b)
            continue
        hf = _hf_name(name, table)
        hf_modules.append(hf)
        tensors |= _pair(hf, a, b)
    patterns = {"rank_pattern": {}, "alpha_pattern": {}}
    for hf, parts in fused_parts.items():
        a, b, k = adapter_fused.join(table.fused_rules[hf], parts, table.config)
        hf_modules.append(hf)
        tensors |= _pair(hf, a, b)
        if k > 1:  # block-diagonal: rank k*r, alpha k*alpha keeps the scale alpha/r
            patterns["rank_pattern"][hf] = k * r
            patterns["alpha_pattern"][hf] = _number(k * alpha)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(
        folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})
    )
    config = _peft_config(r, alpha, dropout, hf_modules, table, base_name) | patterns
    _write_json(folder / CONFIG_FILE, config)
    _write_json(folder / FINGERPRINT_FILE, fingerprint(model))
    return folder


def _pair(hf: str, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        f"{PREFIX}{hf}.lora_A.weight": a.contiguous(),
        f"{PREFIX}{hf}.lora_B.weight": b.contiguous(),
    }


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _shared_settings(layers: list[tuple[str, LoraLinear]]) -> tuple[int, float, float]:
    settings = {(m.r, m.alpha, float(getattr(m.dropout, "p", 0.0))) for _, m in layers}
    if len(settings) > 1:
        raise AdapterError(
            f"the LoRA layers differ in (r, alpha, dropout): {sorted(settings)}; giraffe writes "
            "one setting for all layers (no rank_pattern / alpha_pattern)"
        )
    return settings.pop()


def _hf_name(name: str, table: ModuleTable) -> str:
    if name in table.to_hf:
        return table.to_hf[name]
    raise AdapterError(f"{name} has no Hugging Face module name in giraffe's name table")


def _peft_config(r, alpha, dropout, hf_modules, table: ModuleTable, base_name: str) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "revision": None,
        "inference_mode": True,
        "r": r,
        "lora_alpha": _number(alpha),
        "lora_dropout": dropout,
        "target_modules": target_suffixes(hf_modules, _all_hf_modules(table)),
        "exclude_modules": None,
        "bias": "none",
        "fan_in_fan_out": any(m in table.hf_conv1d for m in hf_modules),
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "lora_bias": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def _all_hf_modules(table: ModuleTable) -> list[str]:
    return sorted(set(table.to_hf.values()) | set(table.fused.values()))


def _selects(target: str, module: str) -> bool:
    """PEFT's rule for a target_modules entry: the whole name or a dotted suffix of it."""
    return module == target or module.endswith("." + target)


def target_suffixes(chosen: list[str], every: list[str]) -> list[str]:
    """The shortest name suffixes that select exactly `chosen` among `every` module."""
    picked = set(chosen)
    found = []
    for module in chosen:
        parts = module.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if all(m in picked for m in every if _selects(suffix, m)):
                break
        if suffix not in found:
            found.append(suffix)
    return sorted(found)


def fingerprint(model: nn.Module) -> dict:
    """Shapes of the base plus a hash of every (V // 1024)-th embedding row (float32 bytes)."""
    cfg = model.config
    step = max(1, cfg.vocab_size // 1024)
    ids = torch.arange(0, cfg.vocab_size, step, device=model.norm.weight.device)
    with torch.no_grad():
        rows = model.embed(ids).float().cpu().contiguous()  # (n, C)
    return {
        "giraffe_adapter": 1,
        "arch": cfg.arch,
        "hidden_size": cfg.hidden_size,
        "n_layers": cfg.n_layers,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "embedding_rows_step": step,
        "embedding_sha256": hashlib.sha256(rows.numpy().tobytes()).hexdigest(),
    }


def _write_json(path: Path, content: dict) -> None:
    text = json.dumps(content, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# ---- loading --------------------------------------------------------------------------


def load_adapter(model: nn.Module, folder: str | os.PathLike) -> LoraConfig:
    """Apply the folder's LoRA to `model` (unmerged) and return its settings.

    Everything is checked before the model is touched: a refused adapter leaves it as it was.
    The returned config's targets are the adapted layers' last name parts; the layers
    wrapped are exactly those the file holds weights for.
    """
    folder = Path(folder)
    raw = _read_config(folder / CONFIG_FILE)
    cfg = lora_config_from_peft(raw, folder / CONFIG_FILE)
    pairs = _read_pairs(folder / WEIGHTS_FILE)
    table = module_table(model)
    ours = {}  # giraffe layer -> (HF module, A, B)
    for hf, ab in pairs.items():
        for name, part in _giraffe_parts(hf, ab, raw, cfg, table, folder).items():
            ours[name] = (hf, *part)
    for name, (hf, a, b) in ours.items():
        _check_shapes(model, name, hf, (a, b), cfg.r, folder)
    _check_coverage(raw, table, set(pairs), folder)
    _check_fingerprint(model, folder / FINGERPRINT_FILE)
    wrapped = apply_lora(model, replace(cfg, targets=tuple(ours)))  # model order
    with torch.no_grad():
        for name, (_, a, b) in ours.items():
            layer = model.get_submodule(name)
            layer.lora_A.weight.copy_(a)
            layer.lora_B.weight.copy_(b)
    suffixes = tuple(dict.fromkeys(n.rsplit(".", 1)[-1] for n in wrapped))
    return replace(cfg, targets=suffixes)


def load_with_adapter(
    name_or_path: str | os.PathLike, adapter: str | os.PathLike, packed: bool | None = None
) -> LanguageModel:
    """`giraffe.lm.load` then `load_adapter`: the adapter stays unmerged, so it can be
    disabled, and a packed base keeps its blocks (QLoRA inference)."""
    lm = load(name_or_path, packed=packed)
    load_adapter(lm.model, adapter)
    return lm


def _read_config(path: Path) -> dict:
    if not path.parent.is_dir():
        raise AdapterError(
            f"{path.parent} is not a folder: an adapter is a folder with {path.name}"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(
            f"{path} not found: an adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE}"
        ) from None
    except json.JSONDecodeError as e:
        raise AdapterError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{path} should hold a JSON object, not {type(raw).__name__}")
    return raw


def lora_config_from_peft(raw: dict, where: Path | str = CONFIG_FILE) -> LoraConfig:
    """adapter_config.json -> LoraConfig, refusing every option giraffe does not implement."""
    if raw.get("peft_type") != "LORA":
        raise AdapterError(f"{where}: peft_type is {raw.get('peft_type')!r}; giraffe loads LORA")
    if raw.get("task_type") not in (None, "CAUSAL_LM"):
        raise AdapterError(f"{where}: task_type {raw['task_type']!r}; giraffe loads CAUSAL_LM")
    if raw.get("init_lora_weights", True) not in PLAIN_INITS:
        raise AdapterError(
            f"{where}: init_lora_weights={raw['init_lora_weights']!r} rewrites the base weights; "
            "giraffe applies adapters over an unchanged base only"
        )
    for key, value in raw.items():
        if key not in USED and key not in INFORMATIONAL and value not in NEUTRAL:
            what = f" ({WHAT[key]})" if key in WHAT else ""
            raise AdapterError(
                f"{where}: {key}={value!r}{what} is not implemented by giraffe's LoRA, and "
                "ignoring it would change the adapter's output"
            )
    try:
        return LoraConfig(
            r=raw.get("r", 8),
            alpha=float(raw.get("lora_alpha", 8)),
            dropout=float(raw.get("lora_dropout", 0.0)),
            targets=("*",),  # replaced by the layers the weights file holds
        )
    except (TypeError, ValueError) as e:
        raise AdapterError(f"{where}: {e}") from None


def _read_pairs(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """HF module name -> (A (r, in), B (out, r)) from the weights file."""
    if not path.exists():
        hint = " (.bin adapters: re-save with safe_serialization)" if _has_bin(path) else ""
        raise AdapterError(f"{path} not found: an adapter folder holds {WEIGHTS_FILE}{hint}")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"{path} is not a readable safetensors file ({e})") from None
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = KEY.match(key)
        if m is None:
            raise AdapterError(f"{path}: {_foreign_key(key)}")
        parts.setdefault(m["module"], {})[m["part"]] = t.float()
    if not parts:
        raise AdapterError(f"{path} holds no LoRA weights")
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{path}: {module} has lora_{''.join(ab)} but not both A and B")
    return {module: (ab["A"], ab["B"]) for module, ab in parts.items()}


def _has_bin(path: Path) -> bool:
    return (path.parent / "adapter_model.bin").exists()


def _foreign_key(key: str) -> str:
    if "lora_magnitude_vector" in key:
        return f"{key} is a DoRA magnitude, which giraffe's LoRA does not implement"
    if "lora_embedding_" in key:
        return f"{key} adapts an embedding; giraffe's LoRA adapts linear layers only"
    if key.endswith(".bias") and ".lora_" in key:
        return f"{key} is a LoRA bias, which giraffe's LoRA does not implement"
    return (
        f"{key} is not a LoRA A/B matrix (modules_to_save or trained tokens are not "
        f"supported; keys look like {PREFIX}<module>.lora_A.weight)"
    )


def _giraffe_parts(hf: str, ab, raw: dict, cfg: LoraConfig, table: ModuleTable, folder: Path):
    """giraffe layer -> (A, B) for one HF module's update (several for a fused module)."""
    rank, alpha = (
        _pattern(raw, "rank_pattern", hf, cfg.r),
        _pattern(raw, "alpha_pattern", hf, cfg.alpha),
    )
    if hf not in table.fused_rules:
        name = _giraffe_name(hf, table, folder)
        if (rank, alpha) != (cfg.r, cfg.alpha):
            what = "per-layer ranks" if rank != cfg.r else "per-layer alphas"
            raise AdapterError(
                f"{folder / CONFIG_FILE}: rank_pattern/alpha_pattern give {hf} r={rank}, "
                f"alpha={alpha} ({what}); giraffe's LoRA has one r and alpha for all layers "
                "(patterns are read for fused modules only)"
            )
        return {name: ab}
    a, b = ab
    if a.shape[0] != rank:
        raise AdapterError(f"{folder}: {hf} has rank {a.shape[0]} but {CONFIG_FILE} says {rank}")
    # this module's scale alpha/rank, carried on B so the parts run at giraffe's alpha/r
    b = b * ((alpha / rank) / (cfg.alpha / cfg.r)) if alpha / rank != cfg.alpha / cfg.r else b
    try:
        return adapter_fused.split(table.fused_rules[hf], a, b, cfg.r, table.config)
    except ValueError as e:
        raise AdapterError(f"{folder}: {hf}: {e}") from None


def _pattern(raw: dict, key: str, module: str, default):
    r"""PEFT's rule: a pattern applies where `(.*\.)?PATTERN$` matches the module's name."""
    for pattern, value in (raw.get(key) or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return type(default)(value)
    return default


def _giraffe_name(hf: str, table: ModuleTable, folder: Path) -> str:
    ours = table.from_hf.get(hf)
    if ours is not None:
        return ours
    layer = re.search(r"\.(\d+)\.", hf)
    if layer and int(layer[1]) >= table.n_layers:
        raise AdapterError(
            f"{folder}: the adapter adapts {hf}, but this model has only {table.n_layers} "
            "layers: it was made for a different base model"
        )
    raise AdapterError(
        f"{folder}: the adapter adapts {hf}, which this model does not have: it was made for "
        "a different base model"
    )


def _check_shapes(model, name: str, hf: str, ab, r: int, folder: Path) -> None:
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        layer = None
    if isinstance(layer, LoraLinear):
        raise AdapterError("the model already has LoRA layers: strip_lora(model) first")
    if layer is None or not hasattr(layer, "in_features"):
        raise AdapterError(f"{folder}: {hf} ({name}) is not a linear layer in this model")
    a, b = ab
    if a.shape[0] != r or b.shape[1] != r:
        raise AdapterError(
            f"{folder}: {hf} has rank {a.shape[0]}/{b.shape[1]} (A/B) but {CONFIG_FILE} says r={r}"
        )
    theirs, mine = (b.shape[0], a.shape[1]), (layer.out_features, layer.in_features)
    if theirs != mine:
        raise AdapterError(
            f"{folder}: {hf} ({name}) is {theirs[0]}x{theirs[1]} (out x in) in the adapter but "
            f"{mine[0]}x{mine[1]} in this model: the adapter was made for a different base model"
        )


def _check_coverage(raw: dict, table: ModuleTable, held: set[str], folder: Path) -> None:
    # With a plain target list PEFT adapted every matching module: if the file lacks some
    # of this model's, the adapter's base had fewer layers.
    targets = raw.get("target_modules")
    narrowed = any(raw.get(k) for k in ("layers_to_transform", "layers_pattern", "exclude_modules"))
    if not isinstance(targets, list) or narrowed:
        return
    every = list(table.to_hf.values())
    missing = [m for m in every if any(_selects(t, m) for t in targets) and m not in held]
    if missing:
        raise AdapterError(
            f"{folder}: target_modules {targets} select {missing[0]} (and {len(missing) - 1} "
            f"more) in this {table.n_layers}-layer model, but the adapter has no weights for "
            "them: it was made for a base model with fewer layers"
        )


def _check_fingerprint(model: nn.Module, path: Path) -> None:
    if not path.exists():
        return  # an adapter PEFT wrote: the shape checks are all there is
    try:
        theirs = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path} is not valid JSON ({e})") from None
    mine = fingerprint(model)
    for key in ("arch", "hidden_size", "n_layers", "intermediate_size"):
        if theirs.get(key) != mine[key]:
            raise AdapterError(
                f"{path}: the adapter's base has {key}={theirs.get(key)!r}, this model "
                f"{mine[key]!r}: it was made for a different base model"
            )
    if any(theirs.get(k) != mine[k] for k in ("vocab_size", "embedding_sha256")):
        warnings.warn(
            f"{path}: the adapter was trained on a base with the same shapes but other "
            "weights (another file format or quantization of the model, or another model); "
            "its outputs may differ from the ones it was trained for",
            AdapterWarning,
            stacklevel=3,
        )
