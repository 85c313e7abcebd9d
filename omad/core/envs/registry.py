"""The environment registry: every valid id, its defaults, and how to build it.

Ids are `<family>:<task>`. The env libraries are imported inside `make_env`, so importing this
module costs only numpy.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
from collections.abc import Callable, Iterable
from typing import Any

from omad.core.envs.adapter import ParallelEnvAdapter, ScriptedPolicy
from omad.core.envs.base import EnvSpec, MultiAgentEnv
from omad.core.envs.scripted import adversary_to_landmark_nearest_good_agent
from omad.core.errors import OmadError

# mpe2 task module -> default options (on top of max_cycles=25).
_MPE_TASKS: dict[str, dict[str, Any]] = {
    "simple_spread_v3": {"N": 3},
    "simple_adversary_v3": {},
    "simple_reference_v3": {},
    "simple_speaker_listener_v4": {},
}
_MPE_DEFAULTS: dict[str, Any] = {"max_cycles": 25}
_MPE_SCRIPTED: dict[str, dict[str, ScriptedPolicy]] = {
    "simple_adversary_v3": {"adversary_0": adversary_to_landmark_nearest_good_agent}
}

# MaMuJoCo (scenario, partition); the id is "mamujoco:<scenario>-<partition>".
_MAMUJOCO_TASKS: tuple[tuple[str, str], ...] = (
    ("Ant", "2x4"),
    ("Ant", "2x4d"),
    ("Ant", "4x2"),
    ("HalfCheetah", "2x3"),
    ("HalfCheetah", "6x1"),
    ("Walker2d", "2x3"),
    ("Swimmer", "2x1"),
    ("Hopper", "3x1"),
    ("Humanoid", "9|8"),
)
# agent_obsk=0 (each agent observes its own joints only): HARL's value in every MaMuJoCo tuned config
# (HalfCheetah 2x3 and 6x1, Ant 2x4 and 4x2, Walker2d 2x3, Hopper 3x1), one value for every algorithm.
_MAMUJOCO_DEFAULTS: dict[str, Any] = {"agent_obsk": 0, "max_episode_steps": 1000}

ENV_IDS: tuple[str, ...] = tuple(f"mpe:{task}" for task in _MPE_TASKS) + tuple(
    f"mamujoco:{scenario}-{partition}" for scenario, partition in _MAMUJOCO_TASKS
)

RENDER_MODES = (None, "rgb_array", "human")


class UnknownEnvError(OmadError, ValueError):
    def __init__(self, env_id: str):
        super().__init__(f"unknown env id {env_id!r}; valid ids: {', '.join(ENV_IDS)}")


class EnvOptionsError(OmadError, ValueError):
    """An env option the environment does not know, or a value it rejects."""


# Options of our own (or that we rely on) must be integers at least this large.
_MIN_INT_OPTIONS = {"N": 1, "max_cycles": 1, "max_episode_steps": 1, "agent_obsk": 0}
# Constructor arguments the adapter sets itself.
_SET_BY_ADAPTER = {"continuous_actions", "render_mode", "scenario", "agent_conf", "gym_env"}


def _check_options(env_id: str, options: dict[str, Any], known: Iterable[str]) -> None:
    known = sorted(set(known) - _SET_BY_ADAPTER)
    for name, value in options.items():
        if name not in known:
            raise EnvOptionsError(f"unknown option {name!r} for {env_id}; known options: {', '.join(known)}")
        if name in _MIN_INT_OPTIONS and (
            not isinstance(value, int) or isinstance(value, bool) or value < _MIN_INT_OPTIONS[name]
        ):
            raise EnvOptionsError(
                f"option {name} of {env_id} must be an integer >= {_MIN_INT_OPTIONS[name]}, got {value!r}"
            )


def _construct(env_id: str, options: dict[str, Any], make: Callable[[], Any]) -> Any:
    """The library's env, with a value it rejects reported as one line naming the options."""
    try:
        return make()
    except (TypeError, ValueError, AssertionError) as err:
        raise EnvOptionsError(f"{env_id} rejects the options {options}: {err}") from None


def _parameters(fn: Any) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]


def env_family(env_id: str) -> str:
    """ "mpe" or "mamujoco"."""
    if env_id not in ENV_IDS:
        raise UnknownEnvError(env_id)
    return env_id.split(":", 1)[0]


def make_env(env_id: str, options: dict[str, Any] | None = None, render_mode: str | None = None) -> MultiAgentEnv:
    """Build one environment copy. `options` override the id's defaults and pass through to
    the underlying env constructor (e.g. `N`, `max_cycles`, `local_ratio` for MPE;
    `max_episode_steps`, `agent_obsk` or Gymnasium MuJoCo kwargs for MaMuJoCo)."""
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    family = env_family(env_id)
    task = env_id.split(":", 1)[1]
    if family == "mpe":
        return _make_mpe(env_id, task, dict(options or {}), render_mode)
    return _make_mamujoco(env_id, task, dict(options or {}), render_mode)


def get_spec(env_id: str, options: dict[str, Any] | None = None) -> EnvSpec:
    env = make_env(env_id, options)
    try:
        return env.spec
    finally:
        env.close()


def _make_mpe(env_id: str, task: str, options: dict[str, Any], render_mode: str | None) -> MultiAgentEnv:
    resolved = {**_MPE_DEFAULTS, **_MPE_TASKS[task], **options}
    task_module = importlib.import_module(f"mpe2.{task}")
    _check_options(env_id, resolved, _parameters(task_module.raw_env))
    parallel_env = _construct(
        env_id, options, lambda: task_module.parallel_env(continuous_actions=True, render_mode=render_mode, **resolved)
    )
    return ParallelEnvAdapter(
        env_id,
        parallel_env,
        max_episode_steps=resolved["max_cycles"],
        options=resolved,
        scripted_policies=_MPE_SCRIPTED.get(task),
        render_mode=render_mode,
    )


def _make_mamujoco(env_id: str, task: str, options: dict[str, Any], render_mode: str | None) -> MultiAgentEnv:
    scenario, partition = task.split("-", 1)
    resolved = {**_MAMUJOCO_DEFAULTS, **options}
    if render_mode == "rgb_array":
        # Headless offscreen rendering: EGL with Mesa's software driver works without a display.
        os.environ.setdefault("MUJOCO_GL", "egl")
    import mujoco

    # MuJoCo 4 appends every warning to MUJOCO_LOG.TXT in the working directory: never write it.
    # While the model compiles, console warnings are off too: the gymnasium XMLs use the
    # deprecated `settotalmass`, which MuJoCo would report once per environment copy.
    log_config = mujoco.MjLogConfig.get()
    log_config.logto_file = False
    log_config.logto_console = False
    log_config.set()
    try:
        # gymnasium_robotics prints an unrelated Adroit notice to stderr on import.
        with contextlib.redirect_stderr(io.StringIO()):
            from gymnasium_robotics import mamujoco_v1
        import gymnasium

        # The library's own arguments, gymnasium.make's time limit and the MuJoCo robot's arguments.
        robot = gymnasium.spec(f"{scenario}-v5").entry_point
        robot_class = gymnasium.envs.registration.load_env_creator(robot) if isinstance(robot, str) else robot
        known = [*_parameters(mamujoco_v1.parallel_env), "max_episode_steps", *_parameters(robot_class)]
        _check_options(env_id, resolved, known)
        if render_mode == "rgb_array" and "camera_id" not in resolved:
            # Recordings follow the robot through its model's "track" camera: the renderer's default free
            # camera stays put and loses a runner within seconds.
            resolved.setdefault("camera_name", "track")
        parallel_env = _construct(
            env_id, options, lambda: mamujoco_v1.parallel_env(scenario, partition, render_mode=render_mode, **resolved)
        )
    finally:
        log_config.logto_console = True
        log_config.set()
    return ParallelEnvAdapter(
        env_id,
        parallel_env,
        max_episode_steps=resolved["max_episode_steps"],
        options=resolved,
        render_mode=render_mode,
    )
