"""The algorithms, by their config model (omad.train.config.CONFIG_CLASSES); each is an `common.Algorithm`."""

from __future__ import annotations

import torch

from omad.train.algos.common import Algorithm
from omad.train.algos.omad import OMAD
from omad.train.algos.sequential import HASAC, HATD3
from omad.train.config import HasacConfig, OmadUpdateConfig, TrainConfig
from omad.train.layout import AgentLayout


def make_algorithm(
    cfg: TrainConfig,
    layout: AgentLayout,
    state_dim: int,
    value_range: tuple[float, float],
    device: torch.device | str = "cpu",
) -> Algorithm:
    """The networks are initialised on the CPU (the same weights on every device), then moved to `device`."""
    if isinstance(cfg, OmadUpdateConfig):  # the Gaussian ablation differs only in its actors
        return OMAD(cfg, layout, state_dim, value_range, device)
    if isinstance(cfg, HasacConfig):
        return HASAC(cfg, layout, state_dim, device)
    return HATD3(cfg, layout, state_dim, device)
