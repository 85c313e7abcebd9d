"""Algorithms share one interface (common.Algorithm): act(), update(), modules(), optimizers(),
extra_tensors(), agent_policy()."""

from __future__ import annotations

import torch

from ..config import TrainConfig
from ..layout import AgentLayout


def make_algorithm(cfg: TrainConfig, layout: AgentLayout, state_dim: int, value_range: tuple[float, float],
                   device: torch.device | str = "cpu"):
    """The networks are initialised on the CPU (the same weights on every device), then moved to `device`."""
    if cfg.algo in ("omad", "omad-gaussian"):
        from .omad import OMAD

        return OMAD(cfg, layout, state_dim, value_range, device)
    from .sequential import HASAC, HATD3

    return {"hasac": HASAC, "hatd3": HATD3}[cfg.algo](cfg, layout, state_dim, device)
