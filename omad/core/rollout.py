"""The one episode loop (torch-free), shared by training's evaluations, `omad eval` and the demo.

All episodes run side by side as copies of one vectorised environment, so every policy call is a
batch. The noise stream is drawn here, from a numpy generator seeded by `seed`, and handed to the
policy, so any policy source (torch checkpoint, ONNX in-process, gRPC servers) that computes the
same function gives the same returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from omad.core.envs import VecEnv, get_spec

# The team's policy: act(obs per agent [E, d_o_i], noise per agent [K_i + 1, E, d_a_i]) -> actions per
# agent [E, d_a_i]. Each agent's part is one `omad.core.policy.Policy.act` (or a stack of them).
ActFn = Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int]
    seconds: float  # the control loop (acting and stepping), without the time spent rendering frames
    steps: int
    frames: list[np.ndarray] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    @property
    def control_rate_hz(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("nan")


def draw_noise(rng: np.random.Generator, noise_steps: list[int], act_dims: list[int], batch: int, zero: bool):
    """Per-agent standard-normal noise [K_i + 1, batch, d_a_i], float32 (zeros in zero-noise mode)."""
    out = []
    for k1, d in zip(noise_steps, act_dims):
        out.append(np.zeros((k1, batch, d), np.float32) if zero else rng.standard_normal((k1, batch, d), np.float32))
    return out


def evaluate(
    env_id: str,
    act: ActFn,
    noise_steps: list[int],
    episodes: int,
    seed: int,
    options: dict | None = None,
    zero_noise: bool = False,
    record: bool = False,
) -> EvalResult:
    """Run `episodes` episodes (copy e seeded with seed + e) and return their team returns. With
    `record`, episode 0 is rendered every step; the loop's time leaves the rendering out."""
    envs = VecEnv(env_id, episodes, seed, options, render_mode="rgb_array" if record else None)
    act_dims = [a.act_dim for a in envs.spec.agents]
    rng = np.random.default_rng(seed)
    returns, lengths = np.zeros(episodes), np.zeros(episodes, np.int64)
    active = np.ones(episodes, bool)
    frames: list[np.ndarray] = []
    try:
        obs, _ = envs.reset()
        start, steps, rendering = time.perf_counter(), 0, 0.0
        while active.any():
            if record and active[0]:
                tick = time.perf_counter()
                frames.append(envs.render(0))
                rendering += time.perf_counter() - tick
            actions = act(obs, draw_noise(rng, noise_steps, act_dims, episodes, zero_noise))
            res = envs.step(actions)
            steps += 1
            returns[active] += res.reward[active]
            lengths[active] += 1
            active &= ~(res.terminated | res.truncated)
            obs = res.obs
        seconds = time.perf_counter() - start - rendering
    finally:
        envs.close()
    return EvalResult(returns.tolist(), lengths.tolist(), seconds, steps, frames)


def uniform_random_policy(low: list[np.ndarray], high: list[np.ndarray], seed: int) -> ActFn:
    """The random baseline: each agent's action uniform in its bounds (ignores obs and noise)."""
    rng = np.random.default_rng(seed)

    def act(obs: list[np.ndarray], noise: list[np.ndarray]) -> list[np.ndarray]:
        return [rng.uniform(lo, hi, size=(o.shape[0], len(lo))).astype(np.float32) for o, lo, hi in zip(obs, low, high)]

    return act


def random_baseline(env_id: str, episodes: int, seed: int, options: dict | None = None) -> EvalResult:
    spec = get_spec(env_id, options)
    act = uniform_random_policy(
        [np.array(a.action_low) for a in spec.agents], [np.array(a.action_high) for a in spec.agents], seed
    )
    return evaluate(env_id, act, [1] * len(spec.agents), episodes, seed, options)
