"""How per-agent arrays are padded into one stack and gathered back (torch-free).

Observations stack as [n, B, d_o_max] and actions as [n, B, d_a_max], zero-padded. The critic's
joint action is the agents' real action dimensions concatenated in agent order.
"""

from __future__ import annotations

import numpy as np

from omad.core.envs.base import EnvSpec


class AgentLayout:
    def __init__(self, spec: EnvSpec):
        self.names = spec.agent_names
        self.obs_dims = [a.obs_dim for a in spec.agents]
        self.act_dims = [a.act_dim for a in spec.agents]
        self.n = len(self.names)
        self.obs_max, self.act_max = max(self.obs_dims), max(self.act_dims)
        self.joint_dim = sum(self.act_dims)
        # positions of the real action dims inside a flattened [n * d_a_max] stack
        self.joint_index = np.concatenate([i * self.act_max + np.arange(d) for i, d in enumerate(self.act_dims)])
        self.action_low = [list(a.action_low) for a in spec.agents]
        self.action_high = [list(a.action_high) for a in spec.agents]

    def stack_obs(self, obs: list[np.ndarray]) -> np.ndarray:
        """Per-agent [B, d_o_i] -> [n, B, d_o_max]."""
        out = np.zeros((self.n, obs[0].shape[0], self.obs_max), np.float32)
        for i, o in enumerate(obs):
            out[i, :, : o.shape[-1]] = o
        return out

    def split_actions(self, actions: np.ndarray) -> list[np.ndarray]:
        """[n, B, d_a_max] -> per-agent [B, d_a_i]."""
        return [actions[i, :, :d] for i, d in enumerate(self.act_dims)]

    def joint(self, actions):
        """[n, B, d_a_max] -> [B, sum d_a]; works for numpy arrays and torch tensors alike."""
        flat = actions.swapaxes(0, 1).reshape(actions.shape[1], -1)
        return flat[:, self.joint_index]
