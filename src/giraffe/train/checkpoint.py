"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint holds the model and optimiser state, the scheduler's, the step (which is
the data position: batches are a function of the step, `giraffe.train.shards`), the
RNG states, the model config and the training settings that shape the run. It is
written to a temporary file and renamed, then `latest.json` is rewritten the same way,
so a crash or a full disk mid-write leaves the previous checkpoint as the latest.

It does not know the loop itself; `giraffe.train.loop` decides when to save.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from giraffe.formats.hf import atomic_write

KEEP = 2  # checkpoints kept on disk (the newest ones)


class CheckpointError(ValueError):
    """A checkpoint cannot be used to resume this run."""


def rng_states() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(folder: Path, state: dict) -> Path:
    """Write folder/step-NNNNNNN.pt, point latest.json at it, prune old ones."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{state['step']:07d}.pt"
    atomic_write(path, lambda p: torch.save(state, p))
    pointer = json.dumps({"latest": path.name, "step": state["step"]}) + "\n"
    atomic_write(folder / "latest.json", lambda p: Path(p).write_text(pointer))
    for old in sorted(folder.glob("step-*.pt"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(folder: Path) -> Path | None:
    pointer = folder / "latest.json"
    if not pointer.is_file():
        return None
    path = folder / json.loads(pointer.read_text())["latest"]
    if not path.is_file():
        raise CheckpointError(
            f"{pointer} names {path.name}, which is missing; delete {pointer} to start over"
        )
    return path


def load_checkpoint(path: Path, model_config: dict, run: dict) -> dict:
    """The state at `path`, refused when it belongs to another model or run shape."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["model_config"] != model_config:
        diff = sorted(k for k in model_config if state["model_config"].get(k) != model_config[k])
        raise CheckpointError(
            f"{path} was written for another model (differs in {', '.join(diff)}): "
            "use another --out folder, or the same --arch/--preset/data as that run"
        )
    changed = sorted(k for k in run if state["run"].get(k) != run[k])
    if "tokenizer_sha256" in changed:
        raise CheckpointError(
            f"{path} was trained on shards of another tokenizer: resume with the data it "
            "was trained on, or use another --out"
        )
    if changed:
        raise CheckpointError(
            f"{path} was written with other training settings ({', '.join(changed)}); an "
            "exact resume needs the same ones: repeat the original command or use another --out"
        )
    return state
