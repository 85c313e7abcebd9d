"""A custom environment through every stage, the way a user adds one.

The example package examples/meet_env registers `meet:v0` through its own `omad.envs` entry point.
Child processes see it as `pip install` would leave it: a dist-info (METADATA and the entry points of
the package's pyproject.toml) on their path. It is trained, exported, served over gRPC and evaluated
without naming the env again; a resume on it is exact; OMAD learns it. A real third-party env,
PettingZoo's multiwalker, goes the same way by module:factory reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from helpers import OMAD, REPO, tiny_config

from omad.core.agent import AgentContract
from omad.core.envs import get_spec
from omad.evaluation import AgentEndpoint, EvalError, PolicySource

EXAMPLE = REPO / "examples" / "meet_env"
MEET = "meet:v0"
MEET_OPTIONS = {"max_cycles": 20}
# A few hundred steps of a small OMAD: every stage runs, nothing is learned.
TINY_FLAGS = [
    "--total-steps", "300", "--learning-starts", "100", "--batch-size", "32", "--eval-every", "300",
    "--eval-episodes", "2", "--checkpoint-every", "300", "--denoising-steps", "2", "--actor-hidden", "[16, 16]",
    "--critic-hidden", "[16, 16]", "--num-atoms", "11", "--progress", "false", "--compile", "false",
]  # fmt: skip

if str(EXAMPLE) not in sys.path:  # meet_env:parallel_env by reference, in this process
    sys.path.insert(0, str(EXAMPLE))


def installed_example(root: Path) -> dict[str, str]:
    """An environment for child processes in which the example package is installed: its module on
    the path and a dist-info whose entry_points.txt holds its pyproject's `omad.envs` entries."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    dist_info = root / f"meet_env-{project['version']}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    entries = project["entry-points"]["omad.envs"]
    (dist_info / "entry_points.txt").write_text(
        "[omad.envs]\n" + "".join(f"{name} = {target}\n" for name, target in entries.items())
    )
    path = os.pathsep.join([str(root), str(EXAMPLE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def omad(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*OMAD, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def eval_json(tmp: Path, name: str, *args: str, env: dict[str, str]) -> dict:
    out = tmp / f"{name}.json"
    result = omad("eval", *args, "--episodes", "3", "--seed", "5", "--json", str(out), env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


def test_the_example_walk_train_export_serve_eval_without_naming_the_env_again(tmp_path):
    from omad.demo import start_servers, stop_servers
    from omad.runtime.onnx_policy import read_manifest

    env = installed_example(tmp_path / "site")
    listed = omad("envs", env=env)
    assert listed.returncode == 0, listed.stderr
    (line,) = [row for row in listed.stdout.splitlines() if row.startswith(MEET + " ")]
    assert line.split()[1:4] == ["meet-env", "0.1.0", "meet_env:parallel_env"]
    assert "mpe:simple_spread_v3" in listed.stdout  # omad's own ids come the same way

    run, export = tmp_path / "run", tmp_path / "export"
    trained = omad("train", "--out", str(run), "--env", MEET, "--env-options", "{max_cycles: 20}", *TINY_FLAGS, env=env)
    assert trained.returncode == 0, trained.stderr
    spec = json.loads((run / "spec.json").read_text())
    assert spec["reference"] == "meet:v0?max_cycles=20" and spec["state_source"] == "state"
    assert [(a["name"], a["obs_dim"], a["act_dim"]) for a in spec["agents"]] == [("scout", 4, 2), ("hauler", 6, 2)]
    exported = omad("export", str(run), "--out", str(export), env=env)
    assert exported.returncode == 0, exported.stderr
    assert read_manifest(export)["env_id"] == "meet:v0?max_cycles=20"  # the env and its options, recorded

    launcher, addrs = start_servers(export, count=2)
    try:
        served = eval_json(tmp_path, "served", "--servers", ",".join(addrs), env=env)
    finally:
        assert stop_servers(launcher) == 0
    onnx = eval_json(tmp_path, "onnx", "--export-dir", str(export), env=env)
    torch = eval_json(tmp_path, "torch", "--run-dir", str(run), env=env)
    assert served["env"] == onnx["env"] == torch["env"] == "meet:v0?max_cycles=20"
    assert served["source"] == "grpc" and set(served["latency_us"]) == {"scout", "hauler"}
    assert served["returns"] == onnx["returns"]  # the same graph
    np.testing.assert_allclose(torch["returns"], onnx["returns"], rtol=1e-4, atol=1e-4)
    assert all(1 <= length <= 20 for length in served["lengths"])

    # --env overrides: a variant with the same agents runs; an env the agents do not fit is refused
    short = eval_json(tmp_path, "short", "--export-dir", str(export), "--env", "meet:v0?max_cycles=4", env=env)
    assert short["env"] == "meet:v0?max_cycles=4" and max(short["lengths"]) <= 4
    for other, why in [
        ("mpe:simple_spread_v3", "has 3 agents, the onnx source gives 2 (trained for env 'meet:v0?max_cycles=20')"),
        (
            "mpe:simple_speaker_listener_v4",
            "trained for env 'meet:v0?max_cycles=20', not 'mpe:simple_speaker_listener_v4'",
        ),
    ]:
        refused = omad("eval", "--export-dir", str(export), "--env", other, env=env)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        (message,) = refused.stderr.strip().splitlines()
        assert why in message, message


def test_a_factory_named_by_a_file_or_server_is_run_only_when_the_user_names_it():
    def source(env_id: str) -> PolicySource:
        agents = [
            AgentEndpoint(AgentContract(a.name, a.obs_dim, a.act_dim, a.action_low, a.action_high, 1, env_id), "x")
            for a in get_spec("meet_env:parallel_env").agents
        ]
        return PolicySource("onnx", agents, [])

    with pytest.raises(EvalError, match=r"pass --env 'subprocess:run\?args=\"ls\"'"):
        source('subprocess:run?args="ls"').trained_env()
    assert source("meet_env:parallel_env").agents[0].contract.env_id == "meet_env:parallel_env"
    with pytest.raises(EvalError, match="a module:factory reference"):
        source("meet_env:parallel_env").trained_env()
    assert source("mpe:simple_spread_v3?N=4").trained_env() == "mpe:simple_spread_v3?N=4"  # a registered id


def test_resume_is_exact_on_a_custom_env_whose_agents_leave(tmp_path):
    """meet_env with leave_on_arrival and a wide radius: agents leave mid-episode often, so the resumed
    run replays episodes with departed agents (masked rows) from their seeds."""
    import torch
    from safetensors.torch import load_file

    from omad.train.checkpoint import latest_checkpoint
    from omad.train.trainer import train

    options = {"leave_on_arrival": True, "radius": 0.6, "max_cycles": 15}
    cfg = dict(env="meet_env:parallel_env", env_options=options, checkpoint_every=150, eval_every=150)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_config(**cfg, total_steps=300), straight)
    train(tiny_config(**cfg, total_steps=150), resumed)
    train(tiny_config(**cfg, total_steps=300), resumed, resume=True)
    parts = sorted(
        p.relative_to(latest_checkpoint(straight)) for p in latest_checkpoint(straight).rglob("*.safetensors")
    )
    assert len(parts) > 5
    for part in parts:  # every network, optimizer moment, the replay buffer and the env copies' actions
        a, b = load_file(latest_checkpoint(straight) / part), load_file(latest_checkpoint(resumed) / part)
        assert a.keys() == b.keys(), part
        for k in a:
            assert torch.equal(a[k], b[k]), (part, k)
    replay = load_file(latest_checkpoint(straight) / "replay.safetensors")
    departed = replay["buffer.obs"].abs().sum(-1) == 0  # [transitions, agent]: rows of agents that had left
    assert departed.any() and not departed.all()
    actions = replay["buffer.action"].reshape(-1, 2, 2)  # scout's 2 dims, then the hauler's 2
    assert not actions[departed].any() and actions[~departed].abs().sum() > 0  # their actions stored as zeros

    def last(run: Path) -> dict:
        return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])

    assert last(straight)["eval_return_mean"] == last(resumed)["eval_return_mean"]


MULTIWALKER = "pettingzoo.sisl.multiwalker_v9:parallel_env"


def test_multiwalker_trains_exports_and_is_evaluated_over_grpc(tmp_path):
    """PettingZoo's multiwalker (SISL, three walkers carrying a package), named by reference like any
    factory: nothing in omad knows it."""
    pytest.importorskip("Box2D", reason="multiwalker needs Box2D: pip install -e '.[sisl]'")
    from omad.demo import start_servers, stop_servers

    run, export = tmp_path / "run", tmp_path / "export"
    options = "{max_cycles: 40}"
    trained = omad("train", "--out", str(run), "--env", MULTIWALKER, "--env-options", options, *TINY_FLAGS)
    assert trained.returncode == 0, trained.stderr
    spec = json.loads((run / "spec.json").read_text())
    assert [a["name"] for a in spec["agents"]] == ["walker_0", "walker_1", "walker_2"]
    assert spec["state_source"] == "state" and spec["state_dim"] == 75 and spec["max_episode_steps"] == 40
    assert omad("export", str(run), "--out", str(export)).returncode == 0
    launcher, addrs = start_servers(export, count=3)
    try:
        refused = omad("eval", "--servers", ",".join(addrs))
        assert refused.returncode == 2 and f"pass --env '{MULTIWALKER}?max_cycles=40'" in refused.stderr
        served = eval_json(
            tmp_path, "served", "--servers", ",".join(addrs), "--env", f"{MULTIWALKER}?max_cycles=40", env=None
        )
    finally:
        assert stop_servers(launcher) == 0
    assert served["source"] == "grpc" and len(served["returns"]) == 3
    assert all(np.isfinite(served["returns"])) and all(1 <= n <= 40 for n in served["lengths"])


# The learning test's budget: small networks, a short warm-up, 4k steps at two updates per step (about a
# minute on one idle core).
MEET_LEARNING = dict(
    env="meet_env:parallel_env",
    total_steps=4000,
    learning_starts=400,
    updates_per_step=2.0,
    batch_size=128,
    eval_every=4000,
    eval_episodes=20,
    checkpoint_every=4000,
    denoising_steps=4,
    actor_hidden=[64, 64],
    critic_hidden=[64, 64],
    num_atoms=51,
    compile=False,
    progress=False,
    seed=0,
)


@pytest.mark.slow
def test_omad_beats_a_random_team_on_meet(tmp_path):
    """After 4k steps the agents head for the target: on the same 20 episodes the deterministic policy's
    return is well above a uniform-random team's (all returns are negative: minus distances)."""
    from omad.core.rollout import random_baseline
    from omad.train.config import build_config
    from omad.train.trainer import train

    cfg = build_config(MEET_LEARNING)
    record = train(cfg, tmp_path / "run")
    seed = cfg.seed + 1_000_003 + cfg.total_steps  # the training's evaluation episodes
    random = random_baseline(cfg.env, cfg.eval_episodes, seed).mean
    trained = record["eval_deterministic_return_mean"]
    assert random < 0 and trained > random + 0.3 * abs(random), (trained, random)
