"""Progress bar, metrics.jsonl, TensorBoard events and curves.png for a run dir."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm

from omad.core.rundir import RunDir, staging

# Above this share of the critic's target mass clipped at the support's ends (in the last update before
# an evaluation), the log warns: the distributional critic can no longer represent those values.
CLIPPED_WARNING = 0.05


class RunLogger:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, progress: bool = True):
        from torch.utils.tensorboard import SummaryWriter

        self.run = RunDir(run_dir)
        self.metrics_path = self.run.metrics
        self.records = self._read_records(start_step)
        self.writer = SummaryWriter(str(self.run.tensorboard), purge_step=start_step or None)
        # Redraw at most every 0.5 s on a terminal, every 30 s into a log file.
        interval = 0.5 if sys.stderr.isatty() else 30.0
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            disable=not progress,
            dynamic_ncols=True,
            mininterval=interval,
            maxinterval=max(interval, 10.0),
        )
        self.t0, self.step0 = time.perf_counter(), start_step
        self.updates0: int | None = None
        self.step, self.updates = start_step, 0

    def _read_records(self, start_step: int) -> list[dict]:
        """On resume, keep only what the checkpoint covers: later lines came from the killed run."""
        if not self.metrics_path.exists():
            return []
        records = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
        records = [r for r in records if r["step"] <= start_step]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return records

    @property
    def last_record(self) -> dict:
        return self.records[-1] if self.records else {}

    def advance(self, step: int, updates: int) -> None:
        if self.updates0 is None:
            self.updates0 = updates
        updates0 = self.updates0
        self.bar.update(step - self.step)
        self.step, self.updates = step, updates
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        if self.bar.n % 100 == 0 or step >= self.bar.total:
            self.bar.set_postfix(
                env_sps=f"{(step - self.step0) / elapsed:.0f}",
                ups=f"{(updates - updates0) / elapsed:.1f}",
                refresh=False,
            )

    def log(self, record: dict) -> None:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        record = {
            **record,
            "env_steps_per_s": (self.step - self.step0) / elapsed,
            "updates_per_s": (self.updates - (self.updates0 or 0)) / elapsed,
        }
        self.records.append(record)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(k, v, record["step"])
        self.writer.flush()
        self.bar.write(
            f"step {record['step']:>8d}  eval return {record['eval_return_mean']:9.2f} "
            f"+- {record['eval_return_std']:.2f}  alpha {record.get('alpha', float('nan')):.4f}"
        )
        clipped = record.get("critic_target_clipped", 0.0)
        if clipped > CLIPPED_WARNING:
            self.bar.write(
                f"warning: {clipped:.0%} of the critic's target mass fell outside its support and was clipped "
                "to its ends; widen v_min / v_max (docs/algorithm.md, the critic's support)"
            )
        self.plot()

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.records]
        mean = [r["eval_return_mean"] for r in self.records]
        std = [r["eval_return_std"] for r in self.records]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(steps, mean, marker="o")
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.25)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        tmp = staging(self.run.curves)
        fig.savefig(tmp, format="png")
        plt.close(fig)
        tmp.replace(self.run.curves)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
