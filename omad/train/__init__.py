"""omad training: OMAD and the baselines, replay, the training loop, checkpoints (environments: omad.core)."""

from __future__ import annotations


def load_policies(run_dir):
    """`{agent name: AgentPolicy}` in env order from a run dir's latest checkpoint (see policies.py)."""
    from omad.train.policies import load_policies as _load

    return _load(run_dir)


__all__ = ["load_policies"]
