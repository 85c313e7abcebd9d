"""Training throughput (docs/results/performance.md).

Measures gradient updates/s of full algorithm updates on synthetic batches with the real
environment sizes, so the numbers isolate the learner from environment stepping:
  * OMAD at K = 2, 4, 8, 16 (defaults otherwise, policy_delay = 2), at K = 8 without policy delay,
    and at K = 8 with torch.compile switched the other way from the default, on HalfCheetah 2x3 and
    Cooperative Navigation N=3;
  * OMAD with all agents stacked into one batched call vs a Python loop over per-agent networks;
  * the baselines OMAD-Gaussian, HASAC and HATD3 at their own defaults (HASAC/HATD3: batch 1000,
    256x256 networks, sequential per-agent actor updates), and OMAD's update cost relative to HASAC's
    (target: at most 3x). HASAC/HATD3 train on batches of 1000, OMAD on 256, so the
    per-sample cost ratio is reported too.
Every row also reports how close the update comes to the machine's compute limit:
  * FLOPs per update: torch.utils.flop_counter.FlopCounterMode around `policy_delay` updates of an
    eager copy of the algorithm (the compiled update does the same arithmetic), divided by their number;
  * achieved GFLOP/s = FLOPs per update x updates/s;
  * the limit: torch.bmm at the update's matmul shape that carries the most FLOPs (e.g. [n, B, 256] x
    [n, 256, 256], n agents or critic heads), timed in windows interleaved with the update's windows,
    so both see the same machine load;
  * the fraction of the limit reached, and for reference the same shape through oneDNN on the CPU
    (torch's float32 matmul runs on MKL; oneDNN can be faster on CPUs where MKL does not use AVX-512).
Each rate is the median of several timed windows of this one run. With torch.compile on, the first
updates compile: their time minus the steady-state time is reported as compile seconds.
Writes training.json and training.md to --out (default bench/results).

    .venv/bin/python -m bench.training [--quick] [--threads N] [--device auto|cpu|cuda] [--out DIR]
    .venv/bin/python -m bench.training --smoke --out DIR    # tiny networks, one window: checks the script
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from bench.common import RESULTS, command
from omad.core.envs import env_family, get_spec
from omad.train.actors import PerAgentActors
from omad.train.algos import make_algorithm
from omad.train.config import ALGOS, build_config, compile_enabled, fields_for
from omad.train.layout import AgentLayout
from omad.train.replay import ReplaySample
from omad.train.trainer import resolve_device

ENVS = ("mamujoco:HalfCheetah-2x3", "mpe:simple_spread_v3")
# --smoke: one env, tiny networks and batches, eager, one short window per row (measures nothing)
SMOKE = dict(actor_hidden=[16], critic_hidden=[16], batch_size=32, denoising_steps=2, compile=False)
MATMULS = {
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
}


def synthetic_batch(layout: AgentLayout, state_dim: int, batch: int, device: torch.device) -> ReplaySample:
    g = torch.Generator().manual_seed(0)
    sample = ReplaySample(
        state=torch.randn(batch, state_dim, generator=g),
        obs=torch.randn(batch, layout.n, layout.obs_max, generator=g),
        action=torch.rand(batch, layout.joint_dim, generator=g) * 2 - 1,
        reward=torch.randn(batch, generator=g),
        discount=torch.full((batch,), 0.99),
        done=torch.zeros(batch),
        next_state=torch.randn(batch, state_dim, generator=g),
        next_obs=torch.randn(batch, layout.n, layout.obs_max, generator=g),
    )
    return sample.map(lambda t: t.to(device))


class MatmulShapes(TorchDispatchMode):
    """Records the FLOPs of every matmul shape (batch, m, k, n) the update runs."""

    def __init__(self):
        super().__init__()
        self.flops: dict[tuple[int, int, int, int], int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            a, b = args[-2], args[-1]
            batch = a.shape[0] if a.dim() == 3 else 1
            shape = (batch, a.shape[-2], a.shape[-1], b.shape[-1])
            self.flops[shape] = self.flops.get(shape, 0) + 2 * batch * shape[1] * shape[2] * shape[3]
        return func(*args, **(kwargs or {}))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn(). CPU time leaves out the time this process
    waited for a core, which on a shared machine is most of the noise."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def build(env_id: str, device: torch.device, looped: bool = False, **overrides):
    cfg = build_config({"env": env_id, **overrides})
    cfg = cfg.model_copy(update={"compile": compile_enabled(cfg, device.type)})  # as the Trainer resolves `auto`
    spec = get_spec(env_id)
    layout = AgentLayout(spec)
    torch.manual_seed(0)
    algo = make_algorithm(cfg, layout, spec.state_dim, cfg.value_range(env_family(env_id)), device)
    if looped:
        algo.actors = algo.chain = PerAgentActors.split(algo.actors).to(device)
        algo.actor_opt = torch.optim.Adam(algo.actors.parameters(), lr=cfg.lr_actor)
        algo.actor_loss_fn = algo.actor_loss
        algo.critic_loss_fn = algo.critic_loss
    return cfg, algo, synthetic_batch(layout, spec.state_dim, cfg.batch_size, device)


def time_updates(algo, batch: ReplaySample, count: int, device: torch.device) -> tuple[float, float]:
    """Wall and CPU seconds of `count` updates on one batch."""
    return timed(lambda: [algo.update(batch) for _ in range(count)], device)


def updates_per_second(
    env_id: str, windows: int, cycles: int, device: torch.device | None = None, **overrides
) -> float:
    """The median update rate over `windows` timed windows of `cycles` policy-delay cycles, after two
    cycles of warm-up (and compiling, when the resolved config compiles). For budget planning
    (bench.sample_efficiency --plan) and the K table (bench.k_cost); no FLOPs, no limit."""
    device = device or torch.device("cpu")
    cfg, algo, batch = build(env_id, device, **overrides)
    per_window = cycles * cfg.policy_delay
    time_updates(algo, batch, 2 * cfg.policy_delay, device)
    return statistics.median(per_window / time_updates(algo, batch, per_window, device)[0] for _ in range(windows))


def count_flops(
    env_id: str, device: torch.device, looped: bool, **overrides
) -> tuple[float, tuple[int, int, int, int]]:
    """FLOPs per update (mean over one policy-delay cycle) and the matmul shape carrying the most FLOPs."""
    cfg, algo, batch = build(env_id, device, looped, **{**overrides, "compile": False})
    shapes = MatmulShapes()
    with FlopCounterMode(display=False) as counter, shapes:
        for _ in range(cfg.policy_delay):
            algo.update(batch)
    return counter.get_total_flops() / cfg.policy_delay, max(shapes.flops, key=shapes.flops.get)


class MatmulLimit:
    """torch.bmm at one shape, timed in windows of about the length of an update window."""

    def __init__(self, shape: tuple[int, int, int, int], device: torch.device):
        n, m, k, p = shape
        self.a, self.b = torch.randn(n, m, k, device=device), torch.randn(n, k, p, device=device)
        self.flops, self.device, self.reps = 2 * n * m * k * p, device, 1
        for _ in range(3):
            self.window(0.05)

    def window(self, seconds: float) -> tuple[float, float]:
        """GFLOP/s over one window, per wall and per CPU second; later windows last about `seconds`."""
        reps = self.reps
        wall, cpu = timed(lambda: [torch.bmm(self.a, self.b) for _ in range(reps)], self.device)
        self.reps = max(1, round(reps * seconds / wall))
        return self.flops * reps / wall / 1e9, self.flops * reps / cpu / 1e9

    def onednn(self) -> float | None:
        """The same product through oneDNN (CPU only; one stacked member after another), GFLOP per
        CPU second, with the CPU-time bmm rate of windows interleaved with it for comparison."""
        if self.device.type != "cpu" or not torch.backends.mkldnn.is_available():
            return None
        pairs = [(a.to_mkldnn(), b.t().contiguous().to_mkldnn()) for a, b in zip(self.a, self.b)]
        rates = []
        for _ in range(7):
            _, cpu = timed(
                lambda: [torch._C._nn.mkldnn_linear(a, w, None) for _ in range(self.reps) for a, w in pairs],
                self.device,
            )
            rates.append(self.flops * self.reps / cpu / 1e9)
        return statistics.median(rates[2:])


def measure(env_id: str, device: torch.device, windows: int, cycles: int, looped: bool = False, **overrides) -> dict:
    """One row: updates/s, compile seconds, FLOPs, achieved GFLOP/s, the limit and the fraction."""
    flops, shape = count_flops(env_id, device, looped, **overrides)
    cfg, algo, batch = build(env_id, device, looped, **overrides)
    per_window = cycles * cfg.policy_delay  # whole policy-delay cycles: every window does the same work
    compiled = cfg.compile  # `auto` resolved for the default 100k-step budget
    first, _ = time_updates(algo, batch, cfg.policy_delay, device)  # compiles, when compile is on
    time_updates(algo, batch, cfg.policy_delay, device)
    limit = MatmulLimit(shape, device)
    rates: dict[str, list[float]] = {"wall": [], "cpu": [], "limit_wall": [], "limit_cpu": []}
    for _ in range(windows):
        wall, cpu = time_updates(algo, batch, per_window, device)
        rates["wall"].append(per_window / wall)
        rates["cpu"].append(per_window / cpu)
        for key, value in zip(("limit_wall", "limit_cpu"), limit.window(wall)):
            rates[key].append(value)
    med = {k: statistics.median(v) for k, v in rates.items()}
    updates_per_s = med["wall"]
    achieved = flops * updates_per_s / 1e9
    return {
        "updates_per_s": updates_per_s,
        "compile_s": max(0.0, first - cfg.policy_delay / updates_per_s) if compiled else 0.0,
        "gflop_per_update": flops / 1e9,
        "achieved_gflops": achieved,
        "matmul_shape": list(shape),
        "limit_gflops": med["limit_wall"],
        "fraction_of_limit": achieved / med["limit_wall"],
        # the same per CPU second of this process (robust to waiting for a core on a shared machine)
        "updates_per_cpu_s": med["cpu"],
        "limit_gflops_per_cpu_s": med["limit_cpu"],
        "fraction_of_limit_cpu_time": flops * med["cpu"] / 1e9 / med["limit_cpu"],
        "onednn_gflops": limit.onednn(),
        "compile": compiled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer windows and rows")
    parser.add_argument(
        "--smoke", action="store_true", help="one env, tiny networks, one window per row: checks the script"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for training.json and training.md")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--only", action="append", default=[], metavar="'ALGO VARIANT'", help="run only these rows (e.g. 'omad K=8')"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    windows, cycles = (1, 1) if args.smoke else (3, 2) if args.quick else (7, 5)
    compile_default = compile_enabled(build_config({}), device.type)
    variants = [("omad", f"K={K}", dict(denoising_steps=K)) for K in (2, 4, 8, 16)]
    variants += [
        ("omad", "K=8 policy_delay=1", dict(policy_delay=1)),
        ("omad", f"K=8 compile={'off' if compile_default else 'on'}", dict(compile=not compile_default)),
        ("omad", "K=8 agents looped", dict(looped=True, compile=False)),
    ]
    variants += [(algo, "defaults", dict(algo=algo)) for algo in ("omad-gaussian", "hasac", "hatd3")]
    if args.quick:
        variants = [v for v in variants if v[1] in ("K=8", "defaults") or "compile" in v[1]]
    envs = ENVS
    if args.smoke:  # every code path but compiling: the stacked and looped OMAD rows and the baselines
        variants = [
            (a, v, {**o, **fields_for(a, SMOKE, ALGOS)})
            for a, v, o in variants
            if v in ("K=8", "K=8 agents looped", "defaults")
        ]
        envs = ENVS[1:]
    rows = []
    for env_id in envs:
        for algo, variant, overrides in variants:
            if args.only and f"{algo} {variant}" not in args.only:
                continue
            row = {
                "env": env_id,
                "algo": algo,
                "variant": variant,
                **measure(env_id, device, windows, cycles, **overrides),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    def rate(env_id, algo, variant):
        return next(
            (r["updates_per_s"] for r in rows if (r["env"], r["algo"], r["variant"]) == (env_id, algo, variant)), None
        )

    ratios = {}
    for env_id in envs:
        omad, looped, hasac = (
            rate(env_id, "omad", "K=8"),
            rate(env_id, "omad", "K=8 agents looped"),
            rate(env_id, "hasac", "defaults"),
        )
        compiled = any(r["compile"] for r in rows if (r["env"], r["algo"], r["variant"]) == (env_id, "omad", "K=8"))
        eager = rate(env_id, "omad", "K=8 compile=off") if compiled else omad
        if eager and looped:  # both eager: the looped actors are not compiled
            ratios[f"{env_id} stacked/looped (K=8, eager)"] = eager / looped
        if omad and hasac:
            ratios[f"{env_id} OMAD K=8 update cost / HASAC update cost"] = hasac / omad
            ratios[f"{env_id} same, per sample (batch 256 vs 1000)"] = hasac / omad * 1000 / 256
    result = {
        "command": command("bench.training", sys.argv[1:]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(device),
            "load_avg_1min_at_end": os.getloadavg()[0],
        },
        "rows": rows,
        "ratios": ratios,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        (
            f"`{result['command']}`; {result['machine']['cpu_count']} CPUs, torch threads {result['machine']['torch_threads']}, "
            f"load average at the end {result['machine']['load_avg_1min_at_end']:.1f}"
        ),
        "",
        (
            "| env | algo | variant | updates/s | compile s | GFLOP/update | GFLOP/s | limit GFLOP/s (bmm shape) | fraction "
            "| fraction per CPU second | oneDNN GFLOP per CPU s |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        onednn = f"{r['onednn_gflops']:.0f}" if r["onednn_gflops"] else "-"
        lines.append(
            f"| {r['env']} | {r['algo']} | {r['variant']} | {r['updates_per_s']:.1f} | {r['compile_s']:.0f} | "
            f"{r['gflop_per_update']:.2f} | {r['achieved_gflops']:.0f} | {r['limit_gflops']:.0f} ({'x'.join(map(str, r['matmul_shape']))}) | "
            f"{r['fraction_of_limit']:.0%} | {r['fraction_of_limit_cpu_time']:.0%} | {onednn} |"
        )
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f}x |" for k, v in ratios.items()]
    (args.out / "training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
