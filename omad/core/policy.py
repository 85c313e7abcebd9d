"""The one policy signature, from training to serving (docs/architecture.md, "The policy function").

A torch run dir (`omad.train.policies.AgentPolicy`), an ONNX export (`omad.runtime.onnx_policy.OnnxPolicy`)
and a gRPC server (`omad.serve.client.PolicyClient` and its streams) all answer `Policy.act`. Timing
is never part of the answer: a source that measures it exposes it on its own (e.g. `last_timing`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Policy(Protocol):
    def act(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """One agent: obs [B, d_o] and standard-normal noise [K+1, B, d_a] -> actions [B, d_a] float32,
        deterministic in its inputs (all-zero noise gives the deterministic policy)."""
        ...
