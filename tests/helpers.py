"""Helpers that several test modules share (fixtures live in conftest.py). Test modules import from
here, never from each other. torch and the training package are imported inside the functions that
need them, so that serving tests which use this module stay torch-free."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from omad.core.envs.base import AgentSpec, EnvSpec

if TYPE_CHECKING:
    import torch

    from omad.runtime.onnx_policy import OnnxPolicy

REPO = Path(__file__).resolve().parent.parent
OMAD = [sys.executable, "-m", "omad"]  # the CLI as a child process

# ---- a tiny OMAD run on Cooperative Navigation --------------------------------------------------

TINY = dict(
    env="mpe:simple_spread_v3",
    total_steps=300,
    learning_starts=100,
    batch_size=32,
    eval_every=300,
    eval_episodes=2,
    checkpoint_every=300,
    denoising_steps=4,
    actor_hidden=[32, 32],
    critic_hidden=[32, 32],
    num_atoms=21,
    progress=False,
    seed=0,
)


def tiny_config(**overrides):
    """TINY for the algo in `overrides` (default omad): the fields of TINY that algo takes, and `overrides`."""
    from omad.train.config import ALGOS, build_config, fields_for

    return build_config(fields_for(overrides.get("algo", "omad"), TINY, ALGOS), **overrides)


# ---- child processes ----------------------------------------------------------------------------


def is_gone(pid: int) -> bool:
    """Exited (reaped, or a zombie waiting for a reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(map(is_gone, pids)):
        time.sleep(0.05)
    return [pid for pid in pids if not is_gone(pid)]


class Process:
    """An `omad` child process whose stdout lines and stderr JSON log events are collected by threads."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [*OMAD, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.events: queue.Queue[dict] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))

    def wait_for_event(self, name: str, timeout_s: float = 60) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if event.get("event") == name:
                return event
        raise AssertionError(f"no {name!r} event; stderr:\n{''.join(self.stderr)}")

    def line(self, timeout_s: float = 30) -> str:
        return self.lines.get(timeout=timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---- serving and closed-loop evaluation ---------------------------------------------------------


def random_inputs(policy: OnnxPolicy, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal observations [B, d_o] and noise [K+1, B, d_a] for a served graph."""
    rng = np.random.default_rng(seed)
    info = policy.info
    return (
        rng.standard_normal((batch, info.obs_dim), dtype=np.float32),
        rng.standard_normal((info.noise_steps, batch, info.act_dim), dtype=np.float32),
    )


def serve_all(stack: ExitStack, export_dir: Path) -> list:
    """One in-process server per agent of an export, stopped when `stack` closes."""
    from omad.runtime.onnx_policy import read_manifest
    from omad.serve.config import ServeConfig
    from omad.serve.testing import ServerThread

    return [
        stack.enter_context(ServerThread(ServeConfig(model=Path(export_dir) / a["file"], port=0)))
        for a in read_manifest(export_dir)["agents"]
    ]


def three_way(env_id, run_dir, export_dir, options=None, episodes=3, seed=7, zero_noise=False) -> dict[str, Any]:
    """The same episodes evaluated from the checkpoint (torch), the export (ONNX) and served agents (gRPC)."""
    from omad.evaluation import grpc_source, onnx_source, run_eval, torch_source

    reports = {
        "torch": run_eval(env_id, torch_source(run_dir), episodes, seed, zero_noise, options=options),
        "onnx": run_eval(env_id, onnx_source(export_dir), episodes, seed, zero_noise, options=options),
    }
    with ExitStack() as stack:
        servers = serve_all(stack, export_dir)
        reports["grpc"] = run_eval(
            env_id, grpc_source([s.addr for s in servers]), episodes, seed, zero_noise, options=options
        )
    return reports


# ---- toy multi-agent problems for the algorithms ------------------------------------------------


def toy_spec(obs_dims, act_dims, state_dim=4) -> EnvSpec:
    """Agents of the given sizes, all with bounds [-1, 1]."""
    agents = tuple(
        AgentSpec(f"agent_{i}", o, a, (-1.0,) * a, (1.0,) * a) for i, (o, a) in enumerate(zip(obs_dims, act_dims))
    )
    return EnvSpec("toy", agents, state_dim, 1)


def bimodal_reward(actions: torch.Tensor) -> torch.Tensor:
    """Team reward (mean over agents) of r_i = -min((a_i - 0.8)^2, (a_i + 0.8)^2)."""
    import torch

    per_agent = -torch.minimum((actions - 0.8) ** 2, (actions + 0.8) ** 2)
    return per_agent.mean(-1)


def train_on_the_bimodal_game(algo, updates: int, rng: np.random.Generator, batch: int = 256) -> None:
    """`updates` updates on fresh uniform-random joint actions of the two-agent one-step game: done = 1,
    so the critic target is the reward itself."""
    import torch

    from omad.train.replay import ReplaySample

    zeros = torch.zeros(batch, 2, 1)
    for _ in range(updates):
        actions = torch.from_numpy(rng.uniform(-1, 1, (batch, 2)).astype(np.float32))
        algo.update(
            ReplaySample(
                state=torch.zeros(batch, 1),
                obs=zeros,
                action=actions,
                reward=bimodal_reward(actions),
                discount=torch.ones(batch),
                done=torch.ones(batch),
                next_state=torch.zeros(batch, 1),
                next_obs=zeros,
            )
        )


TOY_ALGOS = ("omad", "omad-gaussian", "hasac", "hatd3")
# Agents of different sizes with asymmetric bounds, so padding and the bounds' affine map matter.
TOY = EnvSpec(
    "toy", (AgentSpec("left", 3, 2, (0.0, -0.4), (1.0, 0.4)), AgentSpec("right", 5, 1, (-2.0,), (1.0,))), 4, 1
)


def toy_algorithm(name: str, seed: int, perturbed: bool = True):
    """An algorithm on TOY with every network setting away from its default (so that a setting which
    does not reach the networks shows), its actors' weights perturbed large enough that every layer
    shows in the actions."""
    import torch

    from omad.train.algos import make_algorithm
    from omad.train.config import build_config, fields_for
    from omad.train.layout import AgentLayout

    torch.manual_seed(seed)
    settings = dict(
        env="mpe:simple_spread_v3",
        algo=name,
        actor_hidden=[16, 12, 8],
        critic_hidden=[16, 16],
        denoising_steps=3,
        num_atoms=11,
        batch_size=8,
        policy_delay=1,
        lr_actor=1e-2,
        lr_critic=1e-2,
        prior_std=1.7,
        time_features=8,
        dt_init=0.07,
        explore_std=0.3,
    )
    cfg = build_config(fields_for(name, settings, TOY_ALGOS))  # each algorithm takes its own fields
    algo = make_algorithm(cfg, AgentLayout(TOY), TOY.state_dim, (-5.0, 5.0))
    with torch.no_grad():
        for p in algo.actors.parameters() if perturbed else ():
            p.add_(torch.randn_like(p) * 0.3)
    return algo


def toy_inputs(algo, B: int = 6):
    """Observations [n, B, d_o_max] and noise [K+1, n, B, d_a_max], zero in each agent's padding."""
    import torch

    L = algo.layout
    obs = torch.zeros(L.n, B, L.obs_max)
    noise = torch.zeros(algo.actors.noise_steps, L.n, B, L.act_max)
    for i, (o, a) in enumerate(zip(L.obs_dims, L.act_dims)):
        obs[i, :, :o] = torch.randn(B, o)
        noise[:, i, :, :a] = torch.randn(algo.actors.noise_steps, B, a)
    return obs, noise


def toy_replay_sample(B: int = 8):
    """A replay batch for TOY (random values, no episode ends)."""
    import torch

    from omad.train.layout import AgentLayout
    from omad.train.replay import ReplaySample

    g = torch.Generator().manual_seed(5)
    L = AgentLayout(TOY)
    return ReplaySample(
        state=torch.randn(B, TOY.state_dim, generator=g),
        obs=torch.randn(B, L.n, L.obs_max, generator=g),
        action=torch.rand(B, L.joint_dim, generator=g) * 2 - 1,
        reward=torch.randn(B, generator=g),
        discount=torch.full((B,), 0.9),
        done=torch.zeros(B),
        next_state=torch.randn(B, TOY.state_dim, generator=g),
        next_obs=torch.randn(B, L.n, L.obs_max, generator=g),
    )


# ---- networks written out in numpy --------------------------------------------------------------


def randomized_params(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """Every parameter drawn anew (LayerNorm gains and offsets too, so that they matter), as float64."""
    import torch

    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)
    return {k: v.detach().double().numpy() for k, v in module.named_parameters()}


def mlp_by_hand(x: np.ndarray, params: dict[str, np.ndarray], head: int, hidden: int, layer_norm: bool) -> np.ndarray:
    """Linear (-> LayerNorm) -> ReLU per hidden layer, then a linear output, from a stack's parameters."""
    keys = iter(sorted({k.rsplit(".", 1)[0] for k in params}, key=lambda k: int(k.split(".")[-1])))
    h = x
    for _ in range(hidden):
        linear = next(keys)
        h = h @ params[f"{linear}.weight"][head] + params[f"{linear}.bias"][head]
        if layer_norm:
            norm = next(keys)
            h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
            h = h * params[f"{norm}.weight"][head] + params[f"{norm}.bias"][head]
        h = np.maximum(h, 0.0)
    out = next(keys)
    return h @ params[f"{out}.weight"][head] + params[f"{out}.bias"][head]


def toy_batch(layout, state_dim: int, B: int, rng: np.random.Generator):
    """A random replay batch for `layout` (no episode ends), joint actions uniform in [-1, 1]."""
    import torch

    from omad.train.replay import ReplaySample

    return ReplaySample(
        state=torch.randn(B, state_dim),
        obs=torch.randn(B, layout.n, layout.obs_max),
        action=torch.from_numpy(rng.uniform(-1, 1, (B, layout.joint_dim)).astype(np.float32)),
        reward=torch.randn(B),
        discount=torch.full((B,), 0.99),
        done=torch.zeros(B),
        next_state=torch.randn(B, state_dim),
        next_obs=torch.randn(B, layout.n, layout.obs_max),
    )


def toy_omad_config(**overrides):
    """A small OMAD config for update-level tests: 2 denoising steps, 11 atoms, actor updates every
    second critic update."""
    from omad.train.config import build_config

    base = dict(
        env="mpe:simple_spread_v3",
        actor_hidden=[16, 16],
        critic_hidden=[16],
        denoising_steps=2,
        num_atoms=11,
        policy_delay=2,
    )
    return build_config({**base, **overrides})
