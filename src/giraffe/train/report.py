"""What a training run shows and records: a progress bar (loss, tokens/s, ETA), a
JSONL log (one record per step and per evaluation), and a loss-curve PNG.

Only the main rank reports; the others get a Reporter that records nothing. On resume
the log keeps the records before the resumed step, so it reads like one run.

It does not know models or data; the loop hands it numbers and text.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

from giraffe.formats.hf import atomic_write


class Reporter:
    def __init__(self, cfg, out: Path, main: bool, start: int, bytes_per_token: float | None):
        self.cfg, self.main, self.start = cfg, main, start
        self.log_path, self.png_path = out / "log.jsonl", out / "loss.png"
        self.bytes_per_token = bytes_per_token
        self.records: list[dict] = []
        self._progress = self._task = None
        self._last = time.monotonic()
        if main and self.log_path.is_file():
            old = [json.loads(line) for line in self.log_path.read_text().splitlines() if line]
            self.records = [r for r in old if r["step"] <= start]
            self._rewrite()

    # ---- recording ---------------------------------------------------------------------
    def step(self, step: int, loss: float, lr: float, tokens: int) -> dict:
        now = time.monotonic()
        rate = tokens / max(now - self._last, 1e-9)
        self._last = now
        record = {"step": step, "loss": round(loss, 5), "lr": lr, "tokens_per_s": round(rate, 1)}
        self._add(record)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=loss, rate=rate)
        return record

    def evaluation(self, step: int, val_loss: float, extra: dict) -> dict:
        record = {
            "step": step,
            "val_loss": round(val_loss, 5),
            "val_ppl": round(math.exp(min(val_loss, 50)), 3),
        }
        if self.bytes_per_token:
            record["val_bpb"] = round(val_loss / math.log(2) / self.bytes_per_token, 4)
        record.update(extra)
        self._add(record)
        self._self_print(record)
        self._last = time.monotonic()  # evaluation time is not training time
        return record

    def _add(self, record: dict) -> None:
        if not self.main:
            return
        self.records.append(record)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _rewrite(self) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records)
        atomic_write(self.log_path, lambda p: Path(p).write_text(text, encoding="utf-8"))

    def _self_print(self, record: dict) -> None:
        if not (self.main and self.cfg.progress):
            return
        from rich.console import Console

        console = self._progress.console if self._progress is not None else Console()
        parts = [
            f"step {record['step']}: val loss {record['val_loss']:.4f}",
            f"ppl {record['val_ppl']:.2f}",
        ]
        if "val_bpb" in record:
            parts.append(f"bits/byte {record['val_bpb']:.3f}")
        console.print(", ".join(parts))
        if "sample" in record:
            console.print(f"  sample: {record['sample']!r}", markup=False)
        if "mask" in record:
            console.print(
                "  [MASK] -> " + ", ".join(f"{t!r} {p:.3f}" for t, p in record["mask"]),
                markup=False,
            )

    # ---- progress bar and plot ---------------------------------------------------------
    @contextlib.contextmanager
    def bar(self, total: int):
        if not (self.main and self.cfg.progress):
            yield
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (
            TextColumn("step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[rate]:,.0f} tok/s"),
            TimeRemainingColumn(),
        )
        with Progress(*columns) as progress:
            self._progress = progress
            self._task = progress.add_task(
                "train", total=total, completed=self.start, loss=math.nan, rate=0.0
            )
            yield
        self._progress = None

    def finish(self) -> None:
        """Draw the loss curve to loss.png."""
        if not self.main:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [(r["step"], r["loss"]) for r in self.records if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in self.records if "val_loss" in r]
        fig, ax = plt.subplots(figsize=(7, 4))
        if train:
            ax.plot([s for s, _ in train], [v for _, v in train], label="train", linewidth=0.8)
        if val:
            ax.plot([s for s, _ in val], [v for _, v in val], "o-", label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(f"{self.cfg.arch}-{self.cfg.preset}")
        ax.legend()
        ax.grid(alpha=0.3)
        atomic_write(self.png_path, lambda p: fig.savefig(p, format="png", dpi=100))
        plt.close(fig)
