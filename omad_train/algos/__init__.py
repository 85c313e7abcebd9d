"""Algorithms share one interface: act(), update(), modules(), optimizers(), extra_tensors(), agent_policy()."""

from __future__ import annotations

from ..config import TrainConfig
from ..layout import AgentLayout


def make_algorithm(cfg: TrainConfig, layout: AgentLayout, state_dim: int, value_range: tuple[float, float]):
    if cfg.algo == "omad":
        from .omad import OMAD

        return OMAD(cfg, layout, state_dim, value_range)
    raise NotImplementedError(f"algo '{cfg.algo}' is not implemented yet (only 'omad')")
