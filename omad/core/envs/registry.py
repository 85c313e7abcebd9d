"""The environment registry: how an environment is named, found and built.

An environment is named in one of two ways, each optionally followed by options:
- a registered id: a name that an installed package lists under the Python entry-point group
  `omad.envs` (omad's 13 built-in ids are listed there too, in omad's own pyproject.toml);
- a reference `module.path:factory`: the factory is imported from the module.
Options ride along as `ID?key=value&key=value` (each value is read as JSON, `N=4`, `scale=0.5`,
`names=["a","b"]`; a value that is not JSON is a string) and merge with the `options` argument.

A factory is a callable that returns a PettingZoo `ParallelEnv`. The options are its keyword
arguments; `render_mode` is passed only when a recording is asked for. The adapter
(`omad.core.envs.adapter`) turns the env into omad's `MultiAgentEnv`.

Only the ids' names are read on import; the factory and its env library are imported when an
environment is made.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote

from omad.core.envs.adapter import EnvContractError, ParallelEnvAdapter, one_line
from omad.core.envs.base import EnvSpec, MultiAgentEnv
from omad.core.errors import OmadError

ENTRY_POINT_GROUP = "omad.envs"
OMAD_PACKAGE = "omad"  # the distribution whose ids are the built-in families
CUSTOM_FAMILY = "custom"  # env_family of every id that is not one of omad's own
RENDER_MODES = (None, "rgb_array", "human")

# `module.path:attribute.path`, both parts Python identifiers joined by dots.
_REFERENCE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_OPTION_NAME = re.compile(r"[A-Za-z_]\w*")
# Characters left unescaped when writing an option value into a reference (JSON punctuation reads better raw).
_SAFE_IN_VALUE = "[]{}:,\"'-._~"


class UnknownEnvError(OmadError, ValueError):
    """The id is neither registered nor an importable `module:factory` reference."""


class EnvOptionsError(OmadError, ValueError):
    """An env option the environment does not know, or a value it rejects."""


class EnvFactoryError(OmadError, RuntimeError):
    """The environment's factory raised while building it."""


@dataclass(frozen=True)
class Registration:
    """One `omad.envs` entry point: the id, the `module:attribute` it loads, the package that lists it."""

    env_id: str
    target: str
    package: str
    version: str


# -- the entry points ------------------------------------------------------------------------------
def registrations() -> dict[str, tuple[Registration, ...]]:
    """Every registered id (sorted) with the packages that register it (more than one is a conflict)."""
    return _registrations(tuple(sys.path))


@lru_cache(maxsize=4)
def _registrations(_path: tuple[str, ...]) -> dict[str, tuple[Registration, ...]]:
    # Keyed by sys.path: a package put on the path later is seen on the next call.
    found: dict[str, list[Registration]] = {}
    seen: set[tuple[str, str]] = set()
    for dist in importlib.metadata.distributions():
        package = dist.metadata["Name"] or "?"
        for entry in dist.entry_points.select(group=ENTRY_POINT_GROUP):
            if (entry.name, package) in seen:  # the same distribution found twice on the path
                continue
            seen.add((entry.name, package))
            found.setdefault(entry.name, []).append(Registration(entry.name, entry.value, package, dist.version))
    return {env_id: tuple(found[env_id]) for env_id in sorted(found)}


def registered_ids() -> list[str]:
    return list(registrations())


def builtin_env_ids() -> list[str]:
    """The ids omad itself registers (the MPE and MaMuJoCo families)."""
    return [env_id for env_id, regs in registrations().items() if any(r.package == OMAD_PACKAGE for r in regs)]


def _registration(env_id: str) -> Registration | None:
    regs = registrations().get(env_id)
    if not regs:
        return None
    if len(regs) > 1:
        packages = ", ".join(f"{r.package} ({r.target})" for r in regs)
        raise UnknownEnvError(f"env id {env_id!r} is registered by more than one package: {packages}")
    return regs[0]


def is_registered(env: str) -> bool:
    """Whether the id (options aside) is a registered one, as opposed to a `module:factory` reference."""
    return split_env_ref(env)[0] in registrations()


# -- references with options -----------------------------------------------------------------------
def split_env_ref(env: str) -> tuple[str, dict[str, Any]]:
    """`ID?key=value&...` -> (ID, options). Values are JSON where they parse, else strings."""
    env_id, _, query = env.partition("?")
    options: dict[str, Any] = {}
    for part in query.split("&") if query else ():
        name, eq, raw = part.partition("=")
        name = unquote(name)
        if not eq or not _OPTION_NAME.fullmatch(name):
            raise EnvOptionsError(f"env {env!r}: option {part!r} is not key=value with a Python identifier as key")
        if name in options:
            raise EnvOptionsError(f"env {env!r}: option {name!r} is given twice")
        text = unquote(raw)
        try:
            options[name] = json.loads(text)
        except ValueError:
            options[name] = text
    return env_id, options


def env_reference(env_id: str, options: dict[str, Any] | None = None) -> str:
    """The one-string name of an env with options, `ID?key=value&...` (keys sorted), that
    `split_env_ref` reads back to the same id and options."""
    env_id, given = split_env_ref(env_id)
    merged = merge_options(env_id, given, options)
    if not merged:
        return env_id
    return env_id + "?" + "&".join(f"{name}={_encode(merged[name])}" for name in sorted(merged))


def _encode(value: Any) -> str:
    # A string that would read back as something else (a number, true, a quoted string) is written as JSON.
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return quote(value, safe=_SAFE_IN_VALUE)
    try:
        return quote(json.dumps(value, separators=(",", ":")), safe=_SAFE_IN_VALUE)
    except (TypeError, ValueError):
        raise EnvOptionsError(f"option value {value!r} cannot be written into an env reference (not JSON)") from None


def merge_options(env_id: str, in_id: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """Options from the id's `?...` part and from `options`; the same option with two values is refused."""
    merged = dict(in_id)
    for name, value in (given or {}).items():
        if name in merged and merged[name] != value:
            raise EnvOptionsError(
                f"option {name!r} of {env_id} is given twice: {merged[name]!r} in the id, {value!r} in the options"
            )
        merged[name] = value
    return merged


# -- finding the factory ---------------------------------------------------------------------------
def _unknown(env_id: str, why: str) -> UnknownEnvError:
    ids = registered_ids()
    listed = (
        f"registered ids: {', '.join(ids)}"
        if ids
        else "no ids are registered (omad's package metadata is missing: install omad with pip)"
    )
    return UnknownEnvError(f"unknown env id {env_id!r}: {why}; {listed}; or give module.path:factory")


def _load(env_id: str, target: str, registration: Registration | None) -> Callable[..., Any]:
    module_name, _, attribute = target.partition(":")
    where = f"registered by {registration.package} as {target}" if registration else "as module:factory"
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if registration is None and err.name is not None and (module_name + ".").startswith(err.name + "."):
            raise _unknown(env_id, f"no module named {err.name!r}") from None
        raise UnknownEnvError(f"env {env_id!r} ({where}) cannot be imported: {one_line(err)}") from None
    except Exception as err:  # noqa: BLE001 - any error in the env's own module is reported in one line
        raise UnknownEnvError(f"env {env_id!r} ({where}) cannot be imported: {one_line(err)}") from None
    for name in attribute.split("."):
        if not hasattr(obj, name):
            if registration is None:
                raise _unknown(env_id, f"module {module_name!r} has no attribute {attribute!r}")
            raise UnknownEnvError(f"env {env_id!r} ({where}): {module_name} has no attribute {attribute!r}")
        obj = getattr(obj, name)
    if not callable(obj):
        raise UnknownEnvError(f"env {env_id!r} ({where}): {target} is a {type(obj).__name__}, not a callable factory")
    return obj


def resolve_factory(env: str) -> tuple[Callable[..., Any], Registration | None]:
    """The factory an id or reference names (options aside), imported but not called."""
    env_id = split_env_ref(env)[0]
    registration = _registration(env_id)
    if registration is not None:
        return _load(env_id, registration.target, registration), registration
    if not _REFERENCE.fullmatch(env_id):
        raise _unknown(env_id, "not a registered id")
    return _load(env_id, env_id, None), None


def check_env_id(env: str) -> str:
    """Refuse an id that names nothing (UnknownEnvError, one line); the env is not built."""
    split_env_ref(env)
    resolve_factory(env)
    return env


def env_family(env: str) -> str:
    """The family of one of omad's own ids ("mpe", "mamujoco"), else "custom"."""
    env_id = split_env_ref(env)[0]
    _factory, registration = resolve_factory(env_id)
    if registration is not None and registration.package == OMAD_PACKAGE:
        return env_id.split(":", 1)[0]
    return CUSTOM_FAMILY


# -- building --------------------------------------------------------------------------------------
def _json_value(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def resolved_options(env_id: str, factory: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """The options the factory runs with: its keyword defaults (those that are plain data), then the
    given ones. A name the factory cannot take is refused here, naming the ones it takes."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a factory without an inspectable signature: what was given
        return dict(options)
    params = signature.parameters
    named = [
        p for p in params.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "render_mode"
    ]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    known = {p.name for p in named}
    for name in options:
        if name == "render_mode":
            raise EnvOptionsError(f"option render_mode of {env_id} is set by omad (recordings), not by options")
        if name not in known and not takes_any:
            raise EnvOptionsError(
                f"unknown option {name!r} for {env_id}; known options: {', '.join(sorted(known)) or '(none)'}"
            )
    missing = [p.name for p in named if p.default is p.empty and p.name not in options]
    if missing:
        raise EnvOptionsError(f"{env_id} needs the options {', '.join(missing)}")
    defaults = {p.name: p.default for p in named if p.default is not p.empty and _json_value(p.default)}
    return {**defaults, **options}


def make_env(env_id: str, options: dict[str, Any] | None = None, render_mode: str | None = None) -> MultiAgentEnv:
    """Build one environment copy from an id or reference (see the module doc); `options` are the
    factory's keyword arguments (e.g. `N`, `max_cycles` for MPE; `max_episode_steps`, `agent_obsk`
    for MaMuJoCo)."""
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    bare, in_id = split_env_ref(env_id)
    given = merge_options(bare, in_id, options)
    factory, registration = resolve_factory(bare)
    resolved = resolved_options(bare, factory, given)
    kwargs = dict(given)
    if render_mode is not None:
        if not _takes_render_mode(factory):
            raise EnvContractError(f"env {bare} cannot render: its factory takes no render_mode argument")
        kwargs["render_mode"] = render_mode
    source = registration.target if registration else bare
    try:
        parallel_env = factory(**kwargs)
    except OmadError:  # the factory's own one-line errors (omad's built-in factories check their options)
        raise
    except Exception as err:  # noqa: BLE001 - whatever a user's factory raises is reported in one line
        raise EnvFactoryError(f"env {bare}: its factory {source} raised {one_line(err)}") from None
    return ParallelEnvAdapter(
        bare, parallel_env, options=resolved, reference=env_reference(bare, given), render_mode=render_mode
    )


def _takes_render_mode(factory: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True
    return "render_mode" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def get_spec(env_id: str, options: dict[str, Any] | None = None) -> EnvSpec:
    """The env's spec, after checking that it keeps its contract over two resets and a step
    (`ParallelEnvAdapter.check`), so that a broken env is refused before anything trains on it."""
    env = make_env(env_id, options)
    try:
        env.check()
        return env.spec
    finally:
        env.close()


def can_record(env_id: str, options: dict[str, Any] | None = None) -> bool:
    """Whether the env declares the `rgb_array` render mode (recordings need it)."""
    env = make_env(env_id, options)
    try:
        return "rgb_array" in env.render_modes
    finally:
        env.close()
