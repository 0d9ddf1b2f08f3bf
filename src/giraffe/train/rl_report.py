"""What an RL run shows and records: `giraffe.train.report.Reporter`'s bar, log.jsonl and
loss.png, plus rl.png (reward, KL, entropy, answer length per step, held-out reward).

A resumed run keeps the log's records up to the step it resumes from. It knows numbers
only, not models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from giraffe.formats.hf import atomic_write
from giraffe.train.report import Reporter

CURVES = (("reward", "reward (mean of the step's answers)"), ("kl", "KL to the reference"),
          ("entropy", "entropy (nats/token)"), ("length", "answer length (tokens)"))  # fmt: skip


@dataclass(frozen=True)
class _Info:
    progress: bool  # what Reporter reads from a run's config
    arch: str
    preset: str


class RLReporter(Reporter):
    def __init__(self, cfg, out: Path, start: int) -> None:
        if start == 0:
            (out / "log.jsonl").unlink(missing_ok=True)  # a fresh run: no records of an old one
        info = _Info(cfg.progress, f"rl-{cfg.algo}", Path(cfg.model).name or cfg.model)
        super().__init__(info, out, main=True, start=start, bytes_per_token=None)
        self.rl_png = out / "rl.png"

    def rl_step(self, record: dict) -> dict:
        self._add(record)
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=record["step"],
                loss=record["reward"],
                rate=record["tokens_per_s"],
            )
        return record

    def evaluation(self, step: int, metrics: dict) -> dict:  # type: ignore[override]
        record = {"step": step, **metrics}
        self._add(record)
        if self.cfg.progress:
            from rich.console import Console

            console = self._progress.console if self._progress is not None else Console()
            shown = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in metrics.items())
            console.print(f"step {step}: {shown}", highlight=False)
        return record

    def finish(self) -> None:
        super().finish()
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r for r in self.records if "reward" in r]
        fig, axes = plt.subplots(2, 2, figsize=(9, 6))
        for ax, (key, label) in zip(axes.flat, CURVES, strict=True):
            ax.plot([r["step"] for r in steps], [r[key] for r in steps], linewidth=0.9)
            if key == "reward":
                held = [r for r in self.records if "val_reward" in r]
                ax.plot([r["step"] for r in held], [r["val_reward"] for r in held], "o-", label="held out (greedy)")  # fmt: skip
                ax.legend()
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        fig.suptitle(f"{self.cfg.arch} {self.cfg.preset}")
        fig.tight_layout()
        atomic_write(self.rl_png, lambda p: fig.savefig(p, format="png", dpi=100))
        plt.close(fig)
