"""omad's own environment factories: the MPE and MaMuJoCo ids, registered in pyproject.toml under
the `omad.envs` entry points like any other package's (one path for every env).

Each factory returns a PettingZoo parallel env; its keyword defaults are the id's default options.
- `mpe:*` — mpe2 with continuous actions in [0, 1] ([no_op, left, right, down, up] plus
  communication where the task has it). Options: `max_cycles` (default 25; the time limit,
  reported as truncated), `N` for simple_spread (default 3), any other mpe2 argument.
  Physical Deception (`mpe:simple_adversary_v3`): the team is agent_0 and agent_1; the adversary
  runs a fixed scripted policy (`omad.core.envs.scripted`).
- `mamujoco:<Scenario>-<partition>` — `gymnasium_robotics.mamujoco_v1.parallel_env(scenario,
  partition)` over Gymnasium's `<Scenario>-v5` MuJoCo envs. Options: `agent_obsk` (default 0,
  HARL's value in every MaMuJoCo tuned config: own joints only), `max_episode_steps` (default
  1000), any other Gymnasium MuJoCo argument. Recordings follow the robot through its "track"
  camera; `render_mode="rgb_array"` sets MUJOCO_GL=egl unless it is set (headless rendering).
The env libraries are imported when a factory is called.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
from collections.abc import Callable, Iterable
from typing import Any

from omad.core.envs.registry import EnvOptionsError
from omad.core.envs.scripted import ScriptedAgents, ScriptedPolicy, adversary_to_landmark_nearest_good_agent

# Options of our own (or that we rely on) must be integers at least this large.
_MIN_INT_OPTIONS = {"N": 1, "max_cycles": 1, "max_episode_steps": 1, "agent_obsk": 0}
# Constructor arguments the factory sets itself.
_SET_BY_FACTORY = {"continuous_actions", "render_mode", "scenario", "agent_conf", "gym_env"}


def _check_options(env_id: str, options: dict[str, Any], known: Iterable[str]) -> None:
    known = sorted(set(known) - _SET_BY_FACTORY)
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


def _signature(defaults: dict[str, Any]) -> inspect.Signature:
    """`(*, <default options>, render_mode=None, **options)`: what the registry reads the defaults from."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    return inspect.Signature(
        [
            *(inspect.Parameter(name, keyword, default=value) for name, value in defaults.items()),
            inspect.Parameter("render_mode", keyword, default=None),
            inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD),
        ]
    )


class MpeTask:
    """Factory of `mpe:<task>`."""

    def __init__(self, task: str, defaults: dict[str, Any], scripted: dict[str, ScriptedPolicy] | None = None):
        self.env_id = f"mpe:{task}"
        self.task = task
        self.defaults = {"max_cycles": 25, **defaults}
        self.scripted = dict(scripted or {})
        self.__signature__ = _signature(self.defaults)

    def __call__(self, render_mode: str | None = None, **options: Any) -> Any:
        resolved = {**self.defaults, **options}
        task_module = importlib.import_module(f"mpe2.{self.task}")
        _check_options(self.env_id, resolved, _parameters(task_module.raw_env))
        env = _construct(
            self.env_id,
            options,
            lambda: task_module.parallel_env(continuous_actions=True, render_mode=render_mode, **resolved),
        )
        return ScriptedAgents(env, self.scripted) if self.scripted else env


class MaMuJoCoTask:
    """Factory of `mamujoco:<scenario>-<partition>`."""

    def __init__(self, scenario: str, partition: str):
        self.env_id = f"mamujoco:{scenario}-{partition}"
        self.scenario, self.partition = scenario, partition
        self.defaults: dict[str, Any] = {"agent_obsk": 0, "max_episode_steps": 1000}
        self.__signature__ = _signature(self.defaults)

    def __call__(self, render_mode: str | None = None, **options: Any) -> Any:
        resolved = {**self.defaults, **options}
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
            robot = gymnasium.spec(f"{self.scenario}-v5").entry_point
            robot_class = gymnasium.envs.registration.load_env_creator(robot) if isinstance(robot, str) else robot
            known = [*_parameters(mamujoco_v1.parallel_env), "max_episode_steps", *_parameters(robot_class)]
            _check_options(self.env_id, resolved, known)
            if render_mode == "rgb_array" and "camera_id" not in resolved:
                # Recordings follow the robot through its model's "track" camera: the renderer's default free
                # camera stays put and loses a runner within seconds.
                resolved.setdefault("camera_name", "track")
            return _construct(
                self.env_id,
                options,
                lambda: mamujoco_v1.parallel_env(self.scenario, self.partition, render_mode=render_mode, **resolved),
            )
        finally:
            log_config.logto_console = True
            log_config.set()


simple_spread_v3 = MpeTask("simple_spread_v3", {"N": 3})
simple_adversary_v3 = MpeTask(
    "simple_adversary_v3", {}, scripted={"adversary_0": adversary_to_landmark_nearest_good_agent}
)
simple_reference_v3 = MpeTask("simple_reference_v3", {})
simple_speaker_listener_v4 = MpeTask("simple_speaker_listener_v4", {})

ant_2x4 = MaMuJoCoTask("Ant", "2x4")
ant_2x4d = MaMuJoCoTask("Ant", "2x4d")
ant_4x2 = MaMuJoCoTask("Ant", "4x2")
half_cheetah_2x3 = MaMuJoCoTask("HalfCheetah", "2x3")
half_cheetah_6x1 = MaMuJoCoTask("HalfCheetah", "6x1")
walker2d_2x3 = MaMuJoCoTask("Walker2d", "2x3")
swimmer_2x1 = MaMuJoCoTask("Swimmer", "2x1")
hopper_3x1 = MaMuJoCoTask("Hopper", "3x1")
humanoid_9_8 = MaMuJoCoTask("Humanoid", "9|8")

# Every factory of this module (the registration test checks that pyproject.toml registers exactly these).
FACTORIES: tuple[MpeTask | MaMuJoCoTask, ...] = tuple(
    value for value in dict(globals()).values() if isinstance(value, (MpeTask, MaMuJoCoTask))
)
