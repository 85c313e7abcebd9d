"""State coverage on multi-agent Ant (docs/algorithm.md, "State coverage": the paper's exploration measure).

The fraction of the cells of a 2-D grid over the torso's (x, y) that training visits in its first
`max_steps` env steps (250k in the paper, on Ant 2x4). The paper does not give its grid; ours is a
square of `extent` metres around the start position split into `cell_size` cells (defaults below).
Positions outside the grid are counted in `outside` and mark no cell (clipping them would inflate
the border cells).

Recording: after every training env step the trainer passes its env copies; each copy's torso
(x, y) comes from its environment adapter (`MultiAgentEnv.torso_xy`). A copy whose episode just ended has
already been reset, so for it the step records the new episode's start instead of the terminal
position (one position per episode; the start cell is visited anyway).

Resume: `coverage.json` in the run dir is written before every checkpoint and loaded when the
trainer starts. Written before, it may hold positions from a few steps past the checkpoint a killed
run leaves behind; the resumed run replays exactly those steps (resume is exact) and the visited set
is a set, so the result equals an uninterrupted run's. The step count is the trainer's, not a
running sum, for the same reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from omad.core.envs import VecEnv
from omad.core.rundir import RunDir, staging

MAX_STEPS = 250_000  # the paper's window: the first 250k training env steps
EXTENT = 20.0  # metres: the grid spans [-EXTENT, EXTENT] in x and in y around the start (0, 0)
CELL_SIZE = 1.0  # metres: a 40 x 40 grid with the defaults


def records_coverage(env_id: str) -> bool:
    """Coverage is recorded for the MaMuJoCo Ant tasks only (Ant-2x4, Ant-2x4d, Ant-4x2)."""
    return env_id.startswith("mamujoco:Ant-")


def torso_xy(envs: VecEnv) -> np.ndarray:
    """[num_envs, 2] torso (x, y) of every copy of a MaMuJoCo `VecEnv`."""
    return np.array([copy.torso_xy() for copy in envs.copies], dtype=np.float64)


class Coverage:
    def __init__(self, extent: float = EXTENT, cell_size: float = CELL_SIZE, max_steps: int = MAX_STEPS):
        if extent <= 0 or cell_size <= 0 or max_steps <= 0:
            raise ValueError("extent, cell_size and max_steps must be positive")
        self.extent, self.cell_size, self.max_steps = float(extent), float(cell_size), int(max_steps)
        self.cells_per_side = round(2 * extent / cell_size)
        self.visited = np.zeros((self.cells_per_side, self.cells_per_side), dtype=bool)
        self.steps = 0  # env steps covered so far (at most max_steps)
        self.outside = 0  # recorded positions that fell outside the grid

    @classmethod
    def for_run(cls, env_id: str, run_dir: Path) -> Coverage | None:
        """The trainer's recorder: None unless the env is an Ant; continues `run_dir/coverage.json` if present."""
        if not records_coverage(env_id):
            return None
        path = RunDir(run_dir).coverage
        return cls.load(path) if path.is_file() else cls()

    # -- recording ------------------------------------------------------------------------------
    def record(self, xy: np.ndarray, step: int) -> None:
        """Mark the cells of positions `xy` [n, 2], reached by the env steps after training step `step`
        (the env-step count before them). Positions past `max_steps` are ignored."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)[: max(0, self.max_steps - step)]
        if not len(xy):
            return
        idx = np.floor((xy + self.extent) / self.cell_size).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < self.cells_per_side), axis=1)
        self.visited[idx[inside, 0], idx[inside, 1]] = True
        self.outside += int((~inside).sum())
        self.steps = max(self.steps, step + len(xy))

    def observe(self, envs: VecEnv, step: int) -> None:
        """The trainer's hook: record every copy's torso position after an env step."""
        if step < self.max_steps:
            self.record(torso_xy(envs), step)

    @property
    def cells_visited(self) -> int:
        return int(self.visited.sum())

    @property
    def fraction(self) -> float:
        return self.cells_visited / self.visited.size

    # -- files (JSON, never pickle) -----------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "fraction": self.fraction,
            "cells_visited": self.cells_visited,
            "cells_total": int(self.visited.size),
            "steps": self.steps,
            "max_steps": self.max_steps,
            "extent": self.extent,
            "cell_size": self.cell_size,
            "outside": self.outside,
            "visited_cells": np.argwhere(
                self.visited
            ).tolist(),  # [[ix, iy], ...]; x = -extent + (ix + 0.5) * cell_size
        }

    def save(self, run_dir: Path) -> Path:
        path = RunDir(run_dir).coverage
        tmp = staging(path)
        tmp.write_text(json.dumps(self.to_dict()) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path) -> Coverage:
        data = json.loads(Path(path).read_text())
        cov = cls(data["extent"], data["cell_size"], data["max_steps"])
        cells = np.asarray(data["visited_cells"], dtype=np.int64).reshape(-1, 2)
        cov.visited[cells[:, 0], cells[:, 1]] = True
        cov.steps, cov.outside = int(data["steps"]), int(data["outside"])
        return cov
