"""Cooperative Navigation's return scale: where a random and a scripted policy land on our scale, and
why the paper's numbers (OMAD -23.9 for N = 3, -57.9 for N = 4 after about 3M steps) sit elsewhere.

Our env (`mpe:simple_spread_v3`, mpe2, 25 steps) reports the team reward as the *mean* of the agents'
rewards, each `(1 - local_ratio) * global + local_ratio * local` with local_ratio 0.5, global = -(sum
over landmarks of the distance to the nearest agent) and local = -1 per collision of that agent.
HARL's MPE wrapper (which the paper's baselines come from) gives every agent the *sum* over agents and
reports the episode's sum: N times ours. This script runs every policy on the same episode seeds and
splits the return into its parts, so each candidate explanation (episode length, summing over agents,
the local/global ratio) can be put to numbers.

    .venv/bin/python -m bench.coop_nav_scale [--episodes 200] [--out DIR]
    .venv/bin/python -m bench.coop_nav_scale --smoke --out DIR    # 2 episodes: checks the script

Writes coop_nav_scale.json and .md to --out (default bench/results).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, command
from omad.core.envs import get_spec
from omad.core.rollout import evaluate, uniform_random_policy

ENV = "mpe:simple_spread_v3"
PAPER = {3: -23.9, 4: -57.9}  # the paper's OMAD on Cooperative Navigation N = 3 and 4 (arXiv 2602.18291)
KP, KD = (
    5.0,
    1.5,
)  # the PD gains: best of a 5 x 4 grid (kp 1-8, kd 0.5-3) on 50 episodes of seeds 10000+, apart from the measured ones


def scripted_policy(n: int, kp: float = KP, kd: float = KD):
    """Every agent rebuilds all positions from its own observation ([vel, pos, landmarks rel., other agents
    rel. (in agent order, itself left out), comm]), solves the same minimum-total-distance assignment of
    agents to landmarks (all N! permutations), and pushes toward its landmark with a PD law; mpe2's
    continuous action is [no_op, left, right, down, up] in [0, 1]."""
    perms = np.array(list(itertools.permutations(range(n))))

    def act(obs: list[np.ndarray], noise: list[np.ndarray]) -> list[np.ndarray]:
        actions = []
        for i, o in enumerate(obs):
            vel, pos = o[:, 0:2], o[:, 2:4]
            landmarks = pos[:, None, :] + o[:, 4 : 4 + 2 * n].reshape(-1, n, 2)
            others = pos[:, None, :] + o[:, 4 + 2 * n : 4 + 4 * n - 2].reshape(-1, n - 1, 2)
            agents = np.concatenate([others[:, :i], pos[:, None, :], others[:, i:]], axis=1)  # [B, n, 2]
            dist = np.linalg.norm(agents[:, :, None, :] - landmarks[:, None, :, :], axis=-1)  # [B, agent, landmark]
            cost = dist[:, np.arange(n), perms].sum(-1)  # [B, perms]
            target = landmarks[np.arange(len(o)), perms[cost.argmin(1), i]]
            u = np.clip(kp * (target - pos) - kd * vel, -1.0, 1.0)
            a = np.zeros((len(o), 5), np.float32)
            a[:, 1], a[:, 2] = np.maximum(-u[:, 0], 0), np.maximum(u[:, 0], 0)
            a[:, 3], a[:, 4] = np.maximum(-u[:, 1], 0), np.maximum(u[:, 1], 0)
            actions.append(a)
        return actions

    return act


def still_policy(n: int):
    """Nobody moves: the return of the start configuration."""
    return lambda obs, noise: [np.zeros((len(o), 5), np.float32) for o in obs]


def returns(policy_factory, n: int, episodes: int, seed: int, local_ratio: float) -> np.ndarray:
    options = {"N": n, "local_ratio": local_ratio}
    return np.array(evaluate(ENV, policy_factory(), [1] * n, episodes, seed, options).returns)


def measure(n: int, episodes: int, seed: int) -> dict:
    spec = get_spec(ENV, {"N": n})
    low = [np.array(a.action_low) for a in spec.agents]
    high = [np.array(a.action_high) for a in spec.agents]
    policies = {
        "random": lambda: uniform_random_policy(low, high, seed),
        "still": lambda: still_policy(n),
        "scripted": lambda: scripted_policy(n),
    }
    out = {}
    for name, factory in policies.items():
        ours = returns(factory, n, episodes, seed, 0.5)  # what training and evaluation report
        g = returns(factory, n, episodes, seed, 0.0)  # episode sum of the global reward
        local = returns(factory, n, episodes, seed, 1.0)  # episode sum of the mean collision penalty
        np.testing.assert_allclose(ours, 0.5 * g + 0.5 * local, atol=1e-3)  # same trajectories at every ratio
        out[name] = {
            "ours_mean_over_agents": [float(ours.mean()), float(ours.std())],
            "harl_sum_over_agents": [float(n * ours.mean()), float(n * ours.std())],
            "global_only": [float(g.mean()), float(g.std())],
            "collisions_per_agent": float(-local.mean()),
            "harl_per_step": float(n * ours.mean() / spec.max_episode_steps),
        }
    return {
        "N": n,
        "episodes": episodes,
        "steps_per_episode": spec.max_episode_steps,
        "policies": out,
        "paper_omad": PAPER[n],
    }


def write(out: Path, results: list[dict], seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record = {"command": command("bench.coop_nav_scale", sys.argv[1:]), "results": results, "seconds": seconds}
    (out / "coop_nav_scale.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "# Cooperative Navigation: return scales (bench.coop_nav_scale)",
        "",
        (
            f"Episode returns over {results[0]['episodes']} episodes (seeds 0..{results[0]['episodes'] - 1}), "
            f"{results[0]['steps_per_episode']} steps each, mean ± std. Ours: team reward = mean over agents "
            "(local_ratio 0.5). HARL's: every agent gets the sum over agents (N x ours). Global only: "
            "local_ratio 0 (no collision term). Collisions: the episode's collision count per agent."
        ),
        "",
        (
            "| N | policy | ours (mean over agents) | HARL's scale (sum over agents) | global reward only | "
            "collisions per agent | paper's OMAD (3M steps) |"
        ),
        "|---:|---|---|---|---|---:|---:|",
    ]
    for r in results:
        for name, p in r["policies"].items():
            pm = lambda v: f"{v[0]:.2f} ± {v[1]:.2f}"  # noqa: E731
            lines.append(
                f"| {r['N']} | {name} | {pm(p['ours_mean_over_agents'])} | {pm(p['harl_sum_over_agents'])} | "
                f"{pm(p['global_only'])} | {p['collisions_per_agent']:.2f} | {r['paper_omad']} |"
            )
    lines += ["", f"Wall time {seconds:.0f} s; command: `{record['command']}`."]
    (out / "coop_nav_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for coop_nav_scale.json and .md")
    parser.add_argument("--smoke", action="store_true", help="2 episodes: checks the script, measures nothing")
    args = parser.parse_args()
    t0 = time.perf_counter()
    results = [measure(n, 2 if args.smoke else args.episodes, args.seed) for n in (3, 4)]
    write(args.out, results, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
