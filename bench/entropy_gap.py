"""How far OMAD's entropy bound lies below the policy's true entropy, on one-dimensional chains.

OMAD's per-sample cost c = log p_prior(x_0) + sum_k [log pi(x_{k+1}|x_k) - log q(x_k|x_{k+1})] - log|J_tanh|
is a one-sample estimate of a lower bound: -E[c] = H(a) - E_a[KL(pi(path|a) || q(path|a))] <= H(a), with
H(a) the entropy of the action in the squashed space [-1, 1]. OMAD-Gaussian holds its exact entropy at
the level OMAD's bound is held at, so it runs below OMAD's true entropy by this gap.

For a one-dimensional action the chain's marginal is computed on a grid: the prior's density is pushed
through each Gaussian transition kernel N(x + eta_k drift_k(x), 2 eta_k) (the actor's own `drift`), and
the entropy of tanh(x_K) is H(x_K) + E[log(1 - tanh(x_K)^2)]. The bound is the Monte Carlo mean of -c
over many chains. Both are measured for an untrained chain and for one trained on the two-agent one-step
bimodal game (reward -min((a - 0.8)^2, (a + 0.8)^2)), at several K.

    .venv/bin/python -m bench.entropy_gap [--smoke] [--out bench/results/entropy_gap]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from omad.core.envs.base import AgentSpec, EnvSpec
from omad.train.algos.omad import OMAD
from omad.train.config import build_config
from omad.train.layout import AgentLayout
from omad.train.replay import ReplaySample

RESULTS = Path(__file__).parent / "results" / "entropy_gap"


def bimodal_game(algo: OMAD, updates: int, rng: np.random.Generator, batch: int = 256) -> None:
    """One-step game of two one-dimensional agents (done = 1: the critic's target is the reward)."""
    zeros = torch.zeros(batch, 2, 1)
    for _ in range(updates):
        actions = torch.from_numpy(rng.uniform(-1, 1, (batch, 2)).astype(np.float32))
        reward = -torch.minimum((actions - 0.8) ** 2, (actions + 0.8) ** 2).mean(-1)
        algo.update(
            ReplaySample(
                torch.zeros(batch, 1), zeros, actions, reward, torch.ones(batch), torch.ones(batch),
                torch.zeros(batch, 1), zeros,
            )
        )  # fmt: skip


@torch.no_grad()
def grid_entropy(algo: OMAD, points: int) -> tuple[float, float]:
    """Agent 0's action entropy (squashed space) by pushing the prior's density through the chain on a
    grid, and the probability mass the grid kept (close to 1 when the grid covers the chain)."""
    chain = algo.actors
    s0, K = chain.prior_std, chain.denoising_steps
    eta = chain.step_sizes()[0].double()
    x = torch.linspace(-6 * s0, 6 * s0, points, dtype=torch.float64)
    dx = float(x[1] - x[0])
    density = torch.exp(-0.5 * (x / s0) ** 2) / math.sqrt(2 * math.pi * s0**2)
    n, d_o, d_a = chain.num_agents, max(chain.obs_dims), max(chain.act_dims)
    obs_proj, time_proj = chain.conditioning(torch.zeros(n, 1, d_o))
    grid = torch.zeros(n, points, d_a)
    grid[0, :, 0] = x.float()
    for k in range(K):
        mean = x + eta[k] * chain.drift(grid, k, obs_proj, time_proj)[0, :, 0].double()
        var = 2.0 * eta[k]
        kernel = torch.exp(-0.5 * (x.view(-1, 1) - mean.view(1, -1)) ** 2 / var) / torch.sqrt(2 * math.pi * var)
        density = kernel @ (density * dx)  # p_{k+1}(y) = sum_x N(y; m(x), 2 eta) p_k(x) dx
    mass = density * dx
    h_x = -(mass * torch.log(density.clamp_min(1e-300))).sum()
    log_jac = 2.0 * (math.log(2.0) - x - torch.nn.functional.softplus(-2.0 * x))  # log(1 - tanh(x)^2)
    return float(h_x + (mass * log_jac).sum()), float(mass.sum())


@torch.no_grad()
def bound(algo: OMAD, samples: int, seed: int) -> tuple[float, float]:
    """The Monte Carlo mean of -c over `samples` chains of agent 0 (the entropy lower bound) and its
    standard error."""
    generator = torch.Generator().manual_seed(seed)
    chain = algo.actors
    n, d_o, d_a = chain.num_agents, max(chain.obs_dims), max(chain.act_dims)
    noise = torch.randn(chain.noise_steps, n, samples, d_a, generator=generator)
    out = chain(torch.zeros(n, samples, d_o), noise)
    cost = out.cost[0].double()
    return float(-cost.mean()), float(cost.std() / math.sqrt(samples))


def make_algo(K: int) -> OMAD:
    """OMAD for two one-dimensional agents with bounds [-1, 1], K denoising steps (seeded)."""
    torch.manual_seed(0)
    spec = EnvSpec("bimodal", tuple(AgentSpec(f"agent_{i}", 1, 1, (-1.0,), (1.0,)) for i in range(2)), 1, 1)
    cfg = build_config(
        dict(
            env="mpe:simple_spread_v3",
            actor_hidden=[64, 64],
            critic_hidden=[64, 64],
            denoising_steps=K,
            num_atoms=51,
            lr_actor=1e-3,
            lr_critic=1e-3,
            policy_delay=1,
            compile=False,
        )
    )
    return OMAD(cfg, AgentLayout(spec), 1, (-1.0, 0.5))


def measure(K: int, updates: int, points: int, samples: int) -> dict:
    algo = make_algo(K)
    rows = {}
    for stage, todo in (("untrained", 0), ("trained", updates)):
        bimodal_game(algo, todo, np.random.default_rng(0))
        entropy, mass = grid_entropy(algo, points)
        lower, stderr = bound(algo, samples, seed=1)
        rows[stage] = {
            "entropy": entropy,
            "bound": lower,
            "bound_stderr": stderr,
            "gap": entropy - lower,
            "grid_mass": mass,
        }
    return {"K": K, "updates": updates, **rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny grid, few samples and updates: checks the script")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    Ks, updates, points, samples = ((2,), 20, 201, 2000) if args.smoke else ((1, 2, 4, 8), 1500, 4001, 200_000)
    results = [measure(K, updates, points, samples) for K in Ks]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "entropy_gap.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "| K | policy | entropy (grid), nats | bound -E[c] ± s.e., nats | gap, nats |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in results:
        for stage in ("untrained", "trained"):
            row = r[stage]
            label = "untrained" if stage == "untrained" else f"after {r['updates']} updates"
            lines.append(
                f"| {r['K']} | {label} | {row['entropy']:.3f} | {row['bound']:.3f} ± {row['bound_stderr']:.3f} | {row['gap']:.3f} |"
            )
    (args.out / "entropy_gap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
