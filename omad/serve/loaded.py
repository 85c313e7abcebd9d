"""The model a server answers with: the verified policy, its GetSpec reply and the batcher that runs it.

One immutable `LoadedModel` serves at a time. A reload builds a complete new one beside it and swaps
it in with a single assignment (omad.serve.lifecycle), so a call sees either the old model or the
new one, whole, never a mix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from omad.runtime.onnx_policy import OnnxPolicy
from omad.runtime.schema import ModelInfo
from omad.serve._generated import policy_pb2
from omad.serve.batching import MicroBatcher
from omad.serve.config import ServeConfig
from omad.serve.spec import spec_message

MAX_WARMUP_ROWS = 256


@dataclass(frozen=True)
class LoadedModel:
    policy: OnnxPolicy
    spec: policy_pb2.Spec  # the GetSpec reply (never modified once built)
    batcher: MicroBatcher  # runs this policy and no other

    @property
    def info(self) -> ModelInfo:
        return self.policy.info

    @property
    def team_id(self) -> str:
        """The team id stamped in the graph (omad.runtime.team), or "unknown"."""
        return self.policy.team_id

    @classmethod
    def start(
        cls,
        policy: OnnxPolicy,
        config: ServeConfig,
        on_batch: Callable[[int, float], None],
        on_failure: Callable[[BaseException], None],
    ) -> LoadedModel:
        """Wrap a loaded policy and start its batcher (on the running event loop)."""
        batcher = MicroBatcher(
            policy,
            config.max_batch,
            config.max_delay_us,
            merge=config.batching,
            offload=config.offload_inference,
            on_batch=on_batch,
            on_failure=on_failure,
        )
        batcher.start()
        return cls(policy, spec_message(policy.info, config.max_batch, policy.team_id), batcher)


def load_and_warm_up(config: ServeConfig) -> OnnxPolicy:
    """Load and verify the model file (OnnxPolicy: metadata, weights hash, manifest if present), then
    run it once per warm-up size: first calls allocate buffers. Blocking; servers run it in a thread."""
    policy = OnnxPolicy(config.model, threads=config.threads, provider=config.provider)
    for rows in sorted({1, min(config.max_batch, MAX_WARMUP_ROWS)}):
        policy.act(np.zeros((rows, policy.info.obs_dim), np.float32), zero_noise=True)
    return policy
