"""Training throughput (BENCHMARKS.md, "Training throughput").

Measures gradient updates/s of full algorithm updates on synthetic batches with the real
environment sizes, so the numbers isolate the learner from environment stepping:
  * OMAD at K = 2, 4, 8, 16 (defaults otherwise, policy_delay = 2) and at K = 8 without policy delay,
    on HalfCheetah 2x3 and Cooperative Navigation N=3;
  * OMAD with all agents stacked into one batched call vs a Python loop over per-agent networks;
  * the baselines OMAD-Gaussian, HASAC and HATD3 at their own defaults (HASAC/HATD3: batch 1000,
    256x256 networks, sequential per-agent actor updates), and OMAD's update cost relative to HASAC's
    (BENCHMARKS.md target: at most 3x). HASAC/HATD3 train on batches of 1000, OMAD on 256, so the
    per-sample cost ratio is reported too.
Every rate is the median of several timed windows measured in this one run; ratios compare
numbers from the same run. Writes bench/results/training.json and training.md.

    .venv/bin/python bench/training.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from omad_core.envs import env_family, get_spec
from omad_train.actors import PerAgentActors
from omad_train.algos import make_algorithm
from omad_train.config import build_config
from omad_train.layout import AgentLayout

RESULTS = Path(__file__).parent / "results"
ENVS = ("mamujoco:HalfCheetah-2x3", "mpe:simple_spread_v3")


def synthetic_batch(layout: AgentLayout, state_dim: int, batch: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "state": torch.randn(batch, state_dim, generator=g),
        "obs": torch.randn(batch, layout.n, layout.obs_max, generator=g),
        "action": torch.rand(batch, layout.joint_dim, generator=g) * 2 - 1,
        "reward": torch.randn(batch, generator=g),
        "discount": torch.full((batch,), 0.99),
        "done": torch.zeros(batch),
        "next_state": torch.randn(batch, state_dim, generator=g),
        "next_obs": torch.randn(batch, layout.n, layout.obs_max, generator=g),
    }


def updates_per_second(env_id: str, windows: int, window_updates: int, looped: bool = False, **overrides) -> float:
    cfg = build_config({"env": env_id, **overrides})
    spec = get_spec(env_id)
    layout = AgentLayout(spec)
    torch.manual_seed(0)
    algo = make_algorithm(cfg, layout, spec.state_dim, cfg.value_range(env_family(env_id)))
    if looped:
        algo.actors = algo.chain = PerAgentActors.split(algo.actors)
        algo.actor_opt = torch.optim.Adam(algo.actors.parameters(), lr=cfg.lr_actor)
    batch = synthetic_batch(layout, spec.state_dim, cfg.batch_size)
    for _ in range(3):  # warm-up (and compilation, if asked for)
        algo.update(batch)
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(window_updates):
            algo.update(batch)
        rates.append(window_updates / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    windows, per_window = (2, 3) if args.quick else (5, 10)
    rows = []

    def record(**row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    for env_id in ENVS:
        for K in (2, 4, 8, 16):
            record(env=env_id, algo="omad", variant=f"K={K}", updates_per_s=updates_per_second(env_id, windows, per_window, denoising_steps=K))
        record(env=env_id, algo="omad", variant="K=8 policy_delay=1", updates_per_s=updates_per_second(env_id, windows, per_window, policy_delay=1))
        record(env=env_id, algo="omad", variant="K=8 agents looped", updates_per_s=updates_per_second(env_id, windows, per_window, looped=True))
        for algo in ("omad-gaussian", "hasac", "hatd3"):
            record(env=env_id, algo=algo, variant="defaults", updates_per_s=updates_per_second(env_id, windows, per_window, algo=algo))

    def rate(env_id, variant):
        return next(r["updates_per_s"] for r in rows if r["env"] == env_id and r["variant"] == variant)

    def algo_rate(env_id, algo):
        return next(r["updates_per_s"] for r in rows if r["env"] == env_id and r["algo"] == algo)

    ratios = {}
    for env_id in ENVS:
        ratios[f"{env_id} stacked/looped (K=8)"] = rate(env_id, "K=8") / rate(env_id, "K=8 agents looped")
        hasac = algo_rate(env_id, "hasac")
        ratios[f"{env_id} OMAD K=8 update cost / HASAC update cost"] = hasac / rate(env_id, "K=8")
        ratios[f"{env_id} same, per sample (batch 256 vs 1000)"] = hasac / rate(env_id, "K=8") * 1000 / 256
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
        "rows": rows,
        "ratios": ratios,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| env | algo | variant | updates/s |", "|---|---|---|---|"]
    lines += [f"| {r['env']} | {r['algo']} | {r['variant']} | {r['updates_per_s']:.1f} |" for r in rows]
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f}x |" for k, v in ratios.items()]
    (RESULTS / "training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
