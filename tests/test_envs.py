"""Environment adapters: the registry, the conventions every env follows, and VecEnv."""

from __future__ import annotations

import contextlib
import ctypes.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from omad.core.envs import (
    EnvSpec,
    UnknownEnvError,
    VecEnv,
    builtin_env_ids,
    env_family,
    get_spec,
    make_env,
)
from omad.core.envs.adapter import episode_end_flags
from omad.core.envs.scripted import adversary_to_landmark_nearest_good_agent

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_IDS = builtin_env_ids()
# The shipped example env (examples/meet_env), importable by reference as meet_env:parallel_env.
sys.path.insert(0, str(REPO_ROOT / "examples" / "meet_env"))

# Every id with its default options, plus Cooperative Navigation with 4 agents.
ENV_CASES = [(env_id, None) for env_id in ENV_IDS] + [
    ("mpe:simple_spread_v3", {"N": 4}),
    ("meet_env:parallel_env", None),
    ("meet_env:parallel_env", {"leave_on_arrival": True, "max_cycles": 30}),
]
CASE_IDS = [f"{env_id}{'' if opts is None else opts}" for env_id, opts in ENV_CASES]


def random_actions(spec: EnvSpec, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.uniform(a.action_low, a.action_high).astype(np.float32) for a in spec.agents]


def assert_obs_and_state_match_spec(spec: EnvSpec, obs: list[np.ndarray], state: np.ndarray):
    assert len(obs) == len(spec.agents)
    for agent, agent_obs in zip(spec.agents, obs):
        assert agent_obs.dtype == np.float32 and agent_obs.shape == (agent.obs_dim,)
        assert np.all(np.isfinite(agent_obs))
    assert state.dtype == np.float32 and state.shape == (spec.state_dim,)


def run_episode(env_id, options, seed, num_steps, action_seed=0):
    """Obs, states and rewards of `num_steps` random steps after reset(seed)."""
    env = make_env(env_id, options)
    rng = np.random.default_rng(action_seed)
    obs, state = env.reset(seed=seed)
    trace = [(obs, state, 0.0)]
    for _ in range(num_steps):
        result = env.step(random_actions(env.spec, rng))
        trace.append((result.obs, result.state, result.reward))
        if result.terminated or result.truncated:
            break
    env.close()
    return trace


@pytest.mark.parametrize(("env_id", "options"), ENV_CASES, ids=CASE_IDS)
def test_spec_matches_arrays_and_random_steps_work(env_id, options):
    env = make_env(env_id, options)
    spec = env.spec
    assert spec.env_id == env_id and spec.max_episode_steps > 0 and len(spec.agents) >= 2
    for agent in spec.agents:
        low, high = np.array(agent.action_low), np.array(agent.action_high)
        assert low.shape == high.shape == (agent.act_dim,)
        assert np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low < high)
    assert spec == EnvSpec.from_dict(spec.to_dict())
    assert get_spec(env_id, options) == spec

    obs, state = env.reset(seed=0)
    assert_obs_and_state_match_spec(spec, obs, state)
    rng = np.random.default_rng(0)
    for _ in range(5):
        result = env.step(random_actions(spec, rng))
        assert_obs_and_state_match_spec(spec, result.obs, result.state)
        assert isinstance(result.reward, float) and np.isfinite(result.reward)
        assert isinstance(result.terminated, bool) and isinstance(result.truncated, bool)
        if result.terminated or result.truncated:
            break
    env.close()


def test_agent_order_and_options():
    four_agents = [f"agent_{i}" for i in range(4)]
    assert get_spec("mpe:simple_spread_v3", {"N": 4}).agent_names == four_agents
    assert get_spec("mpe:simple_speaker_listener_v4").agent_names == ["speaker_0", "listener_0"]
    # Physical Deception: the scripted adversary is not part of the team.
    assert get_spec("mpe:simple_adversary_v3").agent_names == ["agent_0", "agent_1"]
    assert get_spec("mamujoco:Ant-4x2").agent_names == four_agents
    spread = get_spec("mpe:simple_spread_v3")
    assert spread.options == {"max_cycles": 25, "N": 3} and spread.max_episode_steps == 25
    assert spread.agents[0].action_low == (0.0,) * 5 and spread.agents[0].action_high == (1.0,) * 5
    cheetah = get_spec("mamujoco:HalfCheetah-2x3", {"max_episode_steps": 7})
    assert cheetah.max_episode_steps == 7 and cheetah.options["agent_obsk"] == 0


def make_raw_mpe(task, **kwargs):
    import importlib

    module = importlib.import_module(f"mpe2.{task}")
    return module.parallel_env(continuous_actions=True, max_cycles=25, **kwargs)


def make_raw_mamujoco(scenario, partition):
    with contextlib.redirect_stderr(io.StringIO()):
        from gymnasium_robotics import mamujoco_v1
    return mamujoco_v1.parallel_env(scenario, partition, agent_obsk=0, max_episode_steps=1000)


@pytest.mark.parametrize(
    ("env_id", "make_raw"),
    [
        ("mpe:simple_spread_v3", lambda: make_raw_mpe("simple_spread_v3", N=3)),
        ("mpe:simple_adversary_v3", lambda: make_raw_mpe("simple_adversary_v3")),
        ("mamujoco:HalfCheetah-2x3", lambda: make_raw_mamujoco("HalfCheetah", "2x3")),
    ],
)
def test_team_reward_is_mean_of_team_agents_raw_rewards(env_id, make_raw):
    env, raw = make_env(env_id), make_raw()
    _obs, _ = env.reset(seed=3)
    raw_obs, _ = raw.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(10):
        actions = random_actions(env.spec, rng)
        raw_actions = dict(zip(env.spec.agent_names, actions))
        if "adversary_0" in raw.possible_agents:
            adversary_obs = raw_obs["adversary_0"]
            raw_actions["adversary_0"] = adversary_to_landmark_nearest_good_agent(adversary_obs)
        result = env.step(actions)
        raw_obs, raw_rewards, *_ = raw.step(raw_actions)
        expected = np.mean([raw_rewards[name] for name in env.spec.agent_names])
        assert result.reward == pytest.approx(expected, rel=1e-6, abs=1e-9)
        for name, agent_obs in zip(env.spec.agent_names, result.obs):
            np.testing.assert_allclose(agent_obs, np.asarray(raw_obs[name], dtype=np.float32))
        np.testing.assert_allclose(result.state, np.asarray(raw.state(), dtype=np.float32))
    env.close()
    raw.close()


@pytest.mark.parametrize(("env_id", "options"), ENV_CASES, ids=CASE_IDS)
def test_same_seed_and_actions_reproduce_the_episode(env_id, options):
    first, second = run_episode(env_id, options, 7, 10), run_episode(env_id, options, 7, 10)
    assert len(first) == len(second)
    for (obs_a, state_a, reward_a), (obs_b, state_b, reward_b) in zip(first, second):
        for a, b in zip(obs_a, obs_b):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(state_a, state_b)
        assert reward_a == reward_b
    other_seed = run_episode(env_id, options, 8, 0)
    assert not np.array_equal(first[0][1], other_seed[0][1])


def test_actions_are_clipped_before_reaching_the_env():
    for env_id in ("mpe:simple_spread_v3", "mpe:simple_adversary_v3", "mamujoco:Hopper-3x1"):
        env = make_env(env_id)
        sent = []
        raw_step = env._env.step
        env._env.step = lambda actions: (sent.append(actions), raw_step(actions))[1]  # noqa: B023 - this iteration's
        env.reset(seed=0)
        rng = np.random.default_rng(0)
        env.step([rng.uniform(-5.0, 5.0, a.act_dim) for a in env.spec.agents])
        (actions,) = sent
        assert set(actions) == set(env._env.possible_agents)  # scripted agents act too
        for name, action in actions.items():
            space = env._env.action_space(name)
            assert action.dtype == np.float32 and space.contains(action), (name, action)
        env.close()


def test_mpe_time_limit_is_truncation():
    env = make_env("mpe:simple_spread_v3", {"max_cycles": 5})
    env.reset(seed=0)
    zeros = [np.zeros(a.act_dim) for a in env.spec.agents]
    flags = [(r.terminated, r.truncated) for r in (env.step(zeros) for _ in range(5))]
    assert flags == [(False, False)] * 4 + [(False, True)]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(zeros)
    env.reset(seed=1)  # usable again after reset
    env.step(zeros)


def test_mamujoco_time_limit_is_truncation():
    env = make_env("mamujoco:HalfCheetah-2x3", {"max_episode_steps": 5})
    assert env.spec.max_episode_steps == 5
    env.reset(seed=0)
    zeros = [np.zeros(a.act_dim) for a in env.spec.agents]
    flags = [(r.terminated, r.truncated) for r in (env.step(zeros) for _ in range(5))]
    assert flags == [(False, False)] * 4 + [(False, True)]


def test_mujoco_fall_is_termination_not_truncation():
    env = make_env("mamujoco:Hopper-3x1")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for step in range(1, 1001):  # noqa: B007 - read after the loop
        result = env.step([rng.uniform(-1, 1, a.act_dim) for a in env.spec.agents])
        if result.terminated or result.truncated:
            break
    assert result.terminated and not result.truncated and step < 1000


def test_episode_end_flag_mapping():
    assert episode_end_flags({"a": False, "b": False}, {"a": False, "b": False}) == (False, False)
    assert episode_end_flags({"a": True, "b": True}, {"a": False, "b": False}) == (True, False)
    assert episode_end_flags({"a": False, "b": False}, {"a": True, "b": True}) == (False, True)
    # a fall on the last allowed step is a true terminal state
    assert episode_end_flags({"a": True, "b": True}, {"a": True, "b": True}) == (True, False)


def test_unknown_id_lists_every_valid_id():
    for bad in ("mpe:simple_tag_v3", "HalfCheetah-2x3", "mamujoco:Ant-8x1"):
        with pytest.raises(UnknownEnvError) as info:
            make_env(bad)
        assert isinstance(info.value, ValueError)
        assert all(env_id in str(info.value) for env_id in ENV_IDS)
    with pytest.raises(UnknownEnvError):
        env_family("nope")
    assert env_family("mpe:simple_spread_v3") == "mpe"
    assert env_family("mamujoco:Humanoid-9|8") == "mamujoco"
    assert len(ENV_IDS) == 13 and len(set(ENV_IDS)) == 13


def test_vec_env_seeds_shapes_and_auto_reset():
    num_envs, seed, horizon = 3, 11, 4
    vec = VecEnv("mpe:simple_spread_v3", num_envs, seed, {"max_cycles": horizon})
    spec = vec.spec
    obs, state = vec.reset()
    assert [o.shape for o in obs] == [(num_envs, a.obs_dim) for a in spec.agents]
    assert state.shape == (num_envs, spec.state_dim) and state.dtype == np.float32
    # copy j starts from seed + j
    for j in range(num_envs):
        single = make_env("mpe:simple_spread_v3", {"max_cycles": horizon})
        np.testing.assert_array_equal(single.reset(seed=seed + j)[1], state[j])

    rng = np.random.default_rng(0)
    rewards = []
    for t in range(1, horizon + 1):
        actions = [rng.uniform(0, 1, (num_envs, a.act_dim)) for a in spec.agents]
        step = vec.step(actions)
        assert step.reward.shape == (num_envs,) and step.reward.dtype == np.float32
        assert step.terminated.dtype == bool and step.truncated.dtype == bool
        rewards.append(step.reward)
        if t < horizon:
            assert not step.truncated.any() and step.episode_returns == []
            np.testing.assert_array_equal(step.state, step.next_state)
            for o, n in zip(step.obs, step.next_obs):
                np.testing.assert_array_equal(o, n)
    # the last step ended every episode: next_* is the true final obs, obs/state the fresh reset
    assert step.truncated.all() and not step.terminated.any()
    assert not np.array_equal(step.state, step.next_state)
    assert all(not np.array_equal(o, n) for o, n in zip(step.obs, step.next_obs))
    expected_returns = np.sum(rewards, axis=0, dtype=np.float64)
    finished = [(j, length) for j, _, length in step.episode_returns]
    assert finished == [(j, horizon) for j in range(num_envs)]
    for j, episode_return, _ in step.episode_returns:
        assert episode_return == pytest.approx(expected_returns[j], rel=1e-5)
    vec.close()


def test_vec_env_is_reproducible_across_auto_resets():
    def trace():
        vec = VecEnv("mamujoco:Hopper-3x1", 2, 5, {"max_episode_steps": 6})
        vec.reset()
        rng = np.random.default_rng(1)
        states = []
        for _ in range(14):
            vec_step = vec.step([rng.uniform(-1, 1, (2, a.act_dim)) for a in vec.spec.agents])
            states.append(vec_step.state)
        vec.close()
        return np.stack(states)

    np.testing.assert_array_equal(trace(), trace())


def test_import_is_torch_free_and_lazy():
    code = (
        "import sys, omad.core.envs\n"
        "heavy = ('torch', 'mujoco', 'mpe2', 'gymnasium_robotics')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, env=env)


def assert_non_blank_rgb(frame: np.ndarray):
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.shape[0] > 16 and frame.shape[1] > 16
    assert frame.std() > 1.0  # not a single flat colour


def test_render_mpe():
    env = make_env("mpe:simple_adversary_v3", render_mode="rgb_array")
    env.reset(seed=0)
    assert_non_blank_rgb(env.render())
    env.close()


@pytest.mark.skipif(
    ctypes.util.find_library("EGL") is None,
    reason="no EGL library for headless MuJoCo rendering (apt: libegl1 libgl1 libgl1-mesa-dri)",
)
def test_render_mamujoco_follows_the_robot():
    """Recordings track the robot: moved 30 m forward, the cheetah is still in the frame (the renderer's
    default free camera stays at the origin and would show an empty floor)."""
    import mujoco

    def robot_pixels(frame: np.ndarray) -> int:  # the cheetah's orange-brown body; the floor is black and pale green
        r, g, b = (frame[..., c].astype(int) for c in range(3))
        return int(((r > 150) & (g > 90) & (g < 200) & (b < 140)).sum())

    env = make_env("mamujoco:HalfCheetah-2x3", render_mode="rgb_array")
    env.reset(seed=0)
    start = env.render()
    assert_non_blank_rgb(start)
    robot = env._env.single_agent_env.unwrapped  # the MuJoCo env under the multi-agent wrapper
    robot.data.qpos[0] += 30.0
    mujoco.mj_forward(robot.model, robot.data)
    assert robot_pixels(env.render()) > 0.5 * robot_pixels(start) > 500
    env.close()


def test_render_without_render_mode_fails_clearly():
    env = make_env("mpe:simple_spread_v3")
    env.reset(seed=0)
    with pytest.raises(RuntimeError, match="rgb_array"):
        env.render()


# ---- any PettingZoo parallel env: registry, references, the adapter's rules ----------------------


def test_builtin_ids_are_the_entry_points_omad_registers():
    """pyproject.toml registers exactly the factories of omad.core.envs.builtin, and the installed
    metadata says the same (a stale install would lack an id)."""
    import tomllib

    from omad.core.envs import registrations
    from omad.core.envs.builtin import FACTORIES

    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["omad.envs"]
    assert sorted(declared) == sorted(f.env_id for f in FACTORIES) == ENV_IDS
    assert len(ENV_IDS) == 13
    for env_id, target in declared.items():
        (registration,) = registrations()[env_id]
        assert (registration.package, registration.target) == ("omad", target)


@pytest.mark.parametrize(
    ("reference", "env_id", "options"),
    [
        ("mpe:simple_spread_v3", "mpe:simple_spread_v3", {}),
        ("mpe:simple_spread_v3?N=4", "mpe:simple_spread_v3", {"N": 4}),
        ("pkg.mod:make?scale=0.5&name=left&on=true", "pkg.mod:make", {"scale": 0.5, "name": "left", "on": True}),
        ("pkg:make?sizes=[1,2]&label=%2212%22", "pkg:make", {"sizes": [1, 2], "label": "12"}),
    ],
)
def test_env_references_read_options_and_write_them_back(reference, env_id, options):
    from omad.core.envs import env_reference, split_env_ref

    assert split_env_ref(reference) == (env_id, options)
    written = env_reference(env_id, options)
    assert split_env_ref(written) == (env_id, options)
    assert env_reference(written) == written  # one canonical form
    assert env_reference(env_id, options) == env_reference(env_id + "?" + written.partition("?")[2])


def test_an_option_given_twice_with_two_values_is_refused():
    from omad.core.envs import EnvOptionsError

    with pytest.raises(EnvOptionsError, match="'N' of mpe:simple_spread_v3 is given twice: 4 in the id, 5"):
        make_env("mpe:simple_spread_v3?N=4", {"N": 5})
    assert get_spec("mpe:simple_spread_v3?N=4", {"N": 4}).agent_names == [f"agent_{i}" for i in range(4)]
    spec = get_spec("mpe:simple_spread_v3?N=4&max_cycles=9")
    assert spec.options == {"N": 4, "max_cycles": 9} and spec.max_episode_steps == 9
    assert spec.reference == "mpe:simple_spread_v3?N=4&max_cycles=9" and spec.env_id == "mpe:simple_spread_v3"


def test_a_factory_by_reference_gets_its_defaults_recorded():
    spec = get_spec("toy_envs:toy", {"max_cycles": 4})
    assert spec.env_id == "toy_envs:toy" and spec.reference == "toy_envs:toy?max_cycles=4"
    assert spec.options == {"max_cycles": 4, "departures": None, "with_state": True}
    assert [(a.name, a.obs_dim, a.act_dim) for a in spec.agents] == [("a", 2, 1), ("b", 3, 2), ("c", 1, 1)]
    assert spec.agents[0].action_low == (-2.0,) and spec.agents[0].action_high == (0.5,)
    assert spec.agents[1].action_low == (0.0, -1.0) and spec.agents[1].action_high == (1.0, 3.0)
    assert spec.state_source == "state" and spec.state_dim == 2 and spec.max_episode_steps == 4
    assert env_family("toy_envs:toy") == "custom" and env_family("mpe:simple_spread_v3?N=4") == "mpe"
    with pytest.raises(Exception, match=r"unknown option 'colour' for toy_envs:toy; known options: departures"):
        make_env("toy_envs:toy", {"colour": 1})


def test_departing_agents_are_masked_and_never_see_a_stale_observation():
    """b terminates at step 2, c drops out (no observation, no flag) at step 3, a is truncated at 5:
    every number below is worked out by hand from Toy's rules."""
    env = make_env("toy_envs:toy", {"max_cycles": 5, "departures": {"b": [2, "terminated"], "c": [3, "dropped"]}})
    raw = env._env
    obs, _state = env.reset(seed=100)
    assert [o.tolist() for o in obs] == [[100, 0], [100, 10, 11], [100]] and env.active == (True, True, True)
    actions = [np.array([-9.0]), np.array([0.5, 9.0]), np.array([0.25])]
    results = [env.step(actions) for _ in range(5)]
    # rewards: mean over the agents that took part (a 1, b 2, c 4)
    assert [r.reward for r in results] == pytest.approx([7 / 3, 7 / 3, 1.0, 1.0, 1.0])
    assert [r.active for r in results] == [(True,) * 3, (True, False, True)] + [(True, False, False)] * 2 + [
        (False,) * 3
    ]
    # b's observation on its last step is its true one (a time limit would bootstrap from it), then zeros
    assert results[1].obs[1].tolist() == [102, 10, 11]
    assert [r.obs[1].tolist() for r in results[2:]] == [[0, 0, 0]] * 3
    # c dropped without an observation: zeros from that step on, never its step-2 one
    assert results[1].obs[2].tolist() == [102] and [r.obs[2].tolist() for r in results[2:]] == [[0]] * 3
    assert [r.obs[0].tolist() for r in results] == [[100 + t, 0] for t in range(1, 6)]
    # agents that left are sent no action; actions are clipped to each agent's own bounds and dtype
    assert [sorted(sent) for sent in raw.received] == [["a", "b", "c"]] * 2 + [["a", "c"]] + [["a"]] * 2
    first = raw.received[0]
    assert first["a"].tolist() == [-2.0] and first["b"].tolist() == [0.5, 3.0] and first["c"].dtype == np.float64
    # the team's episode ends when the last agent leaves: a time limit here
    assert [(r.terminated, r.truncated) for r in results] == [(False, False)] * 4 + [(False, True)]
    assert results[-1].state.tolist() == [5, 6]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(actions)


@pytest.mark.parametrize(
    ("departures", "expected"),
    [
        ({"a": [4, "terminated"], "b": [4, "truncated"], "c": [2, "terminated"]}, (True, False)),
        ({"a": [3, "dropped"], "b": [3, "truncated"], "c": [3, "truncated"]}, (True, False)),
        ({"a": [2, "terminated"], "b": [3, "truncated"], "c": [3, "truncated"]}, (False, True)),
    ],
)
def test_the_last_agents_leaving_decide_terminated_or_truncated(departures, expected):
    env = make_env("toy_envs:toy", {"max_cycles": 9, "departures": departures})
    env.reset(seed=0)
    zeros = [np.zeros(a.act_dim) for a in env.spec.agents]
    flags = []
    while not flags or not any(flags[-1]):
        result = env.step(zeros)
        flags.append((result.terminated, result.truncated))
    assert flags[-1] == expected and all(f == (False, False) for f in flags[:-1])


def test_without_state_the_state_is_the_observations_concatenated():
    env = make_env("toy_envs:toy", {"with_state": False, "departures": {"b": [1, "terminated"]}})
    assert env.spec.state_source == "observations" and env.spec.state_dim == 2 + 3 + 1
    _obs, state = env.reset(seed=7)
    assert state.tolist() == [7, 0, 7, 10, 11, 7]
    result = env.step([np.zeros(a.act_dim) for a in env.spec.agents])
    assert result.state.tolist() == [8, 0, 8, 10, 11, 8]  # b's last observation
    result = env.step([np.zeros(a.act_dim) for a in env.spec.agents])
    assert result.state.tolist() == [9, 0, 0, 0, 0, 9]  # b has left: zeros
    assert EnvSpec.from_dict(env.spec.to_dict()).state_source == "observations"


def test_vec_env_reports_who_acts_and_masks_the_departed_rows():
    vec = VecEnv("toy_envs:toy", 2, 0, {"max_cycles": 4, "departures": {"c": [1, "terminated"]}})
    vec.reset()
    assert vec.active.tolist() == [[True, True, True]] * 2
    step = vec.step([np.ones((2, a.act_dim)) for a in vec.spec.agents])
    assert step.active.tolist() == [[True, True, False]] * 2 and vec.active.tolist() == step.active.tolist()
    stacked = np.ones((3, 2, 2), np.float32)
    masked = vec.mask_departed(stacked)
    assert masked.dtype == np.float32 and masked[:2].tolist() == stacked[:2].tolist() and not masked[2].any()
    for _ in range(3):
        step = vec.step([np.ones((2, a.act_dim)) for a in vec.spec.agents])
    assert step.truncated.all() and step.active.all()  # a fresh episode: everyone acts again


BROKEN_ENVS = [
    ("toy_envs:discrete_action", r"agent b has action space Discrete\(5\); omad trains continuous actions"),
    ("toy_envs:multi_discrete_action", r"agent b has action space MultiDiscrete\(\[3 2\]\)"),
    ("toy_envs:dict_action", r"agent b has action space Dict\("),
    ("toy_envs:unbounded_action", r"agent b's action space Box\(.*\) is unbounded in dims \[1\]"),
    ("toy_envs:spaces_change_on_reset", r"agent c's spaces changed between resets"),
    ("toy_envs:state_grows", r"state\(\) returned 3 values, 2 before"),
    ("toy_envs:raises", r"its factory toy_envs:raises raised RuntimeError: the simulator licence has expired$"),
    ("toy_envs:not_an_env", r"returned a dict without 'possible_agents'; it must return a PettingZoo ParallelEnv"),
    ("toy_envs:NOT_CALLABLE", r"toy_envs:NOT_CALLABLE is a int, not a callable factory"),
    ("toy_envs:missing", r"unknown env id 'toy_envs:missing': module 'toy_envs' has no attribute 'missing'"),
    ("no_such_package.envs:make", r"unknown env id 'no_such_package.envs:make': no module named 'no_such_package'"),
]


@pytest.mark.parametrize(("env_id", "message"), BROKEN_ENVS, ids=[e for e, _ in BROKEN_ENVS])
def test_a_broken_env_is_one_line_naming_the_env(env_id, message):
    from omad.core.errors import OmadError

    with pytest.raises(OmadError) as info:
        get_spec(env_id)
    text = str(info.value)
    assert "\n" not in text and env_id in text, text
    assert re.search(message, text), text


@pytest.mark.parametrize(
    "env_id", ["toy_envs:discrete_action", "toy_envs:unbounded_action", "toy_envs:raises", "toy_envs:state_grows"]
)
def test_omad_train_refuses_a_broken_env_before_writing_anything(env_id, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests"), str(REPO_ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "omad", "train", "--env", env_id, "--out", str(out), "--progress", "false"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and env_id in line
    assert not out.exists()


def test_the_loop_rate_leaves_the_rendering_out(monkeypatch):
    """On a fake clock where acting costs 1 ms and rendering a frame 100 ms, the loop's seconds are
    exactly the acting time."""
    from omad.core import rollout

    clock = [0.0]
    monkeypatch.setattr(rollout.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(rollout.VecEnv, "render", lambda self, copy=0: (clock.__setitem__(0, clock[0] + 0.1), 0)[1])

    def act(obs, noise):
        clock[0] += 0.001
        return [np.zeros((o.shape[0], d)) for o, d in zip(obs, (2, 2))]

    result = rollout.evaluate("meet_env:parallel_env", act, [1, 1], 2, 0, {"max_cycles": 7}, record=True)
    assert result.steps == 7 and len(result.frames) == 7
    assert result.seconds == pytest.approx(0.007) and result.control_rate_hz == pytest.approx(1000.0)


def test_a_state_that_fails_on_a_terminal_step_is_zeros_and_elsewhere_an_error():
    from omad.core.envs import EnvContractError

    fall = {name: [2, "terminated"] for name in ("a", "b", "c")}
    env = make_env("toy_envs:state_fails_when_over", {"departures": fall})
    env.reset(seed=0)
    zeros = [np.zeros(a.act_dim) for a in env.spec.agents]
    assert env.step(zeros).state.tolist() == [1, 2]
    last = env.step(zeros)
    assert last.terminated and last.state.tolist() == [0, 0]
    env = make_env("toy_envs:state_fails_when_over", {"max_cycles": 1})  # a time limit is bootstrapped from
    env.reset(seed=0)
    with pytest.raises(EnvContractError, match=r"toy_envs:state_fails_when_over: state\(\) raised AttributeError"):
        env.step(zeros)
