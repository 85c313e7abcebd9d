"""Training configuration: one pydantic model per algorithm, defaults in code, presets beneath the
user's values, overridable from YAML/JSON and flags.

    TrainConfigBase          fields every algorithm takes (the run, replay, schedule, networks)
    TemperatureConfig        + a learned temperature (alpha) holding a cost budget
    OmadUpdateConfig         + OMAD's update: distributional critic, joint temperature, prior scale
        OmadConfig           algo "omad": + the diffusion chain
        OmadGaussianConfig   algo "omad-gaussian": squashed-Gaussian actors in OMAD's update
    HasacConfig              algo "hasac": TemperatureConfig's fields
    Hatd3Config              algo "hatd3": + exploration and target-smoothing noise

A value the chosen algorithm does not take is refused, naming the field and the algorithm, wherever it
comes from (a flag, a --config file, a sweep's --set). A run's saved config.json is read leniently
instead: runs written when one flat model held every field saved every algorithm's fields, and the
ones the run's algorithm does not take (they never had an effect) are dropped on reading.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from omad.core.errors import OmadError
from omad.core.rundir import RunDir, write_atomic

Algo = Literal["omad", "hasac", "hatd3", "omad-gaussian"]
ALGOS: tuple[str, ...] = get_args(Algo)  # the one list of algorithm names
DEFAULT_ALGO: Algo = "omad"

# A network's hidden layer widths: at least one layer, every width positive.
Widths = Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)]


class Preset(TypedDict, total=False):
    """Values an algorithm starts from on a task, beneath the user's (a subset of its config's fields)."""

    batch_size: int
    gamma: float
    tau: float
    learning_starts: int
    grad_clip: float
    eval_zero_noise: bool
    policy_delay: int
    n_step: int
    lr_actor: float
    lr_critic: float
    actor_hidden: list[int]
    critic_hidden: list[int]
    auto_alpha: bool
    alpha_init: float
    lr_alpha: float
    cost_budget_per_dim: float
    explore_std: float
    target_noise: float
    target_noise_clip: float


# Defaults beneath the user's values (a YAML file or flags override them); config.json records the
# resolved values. OMAD's are the field defaults below.
#
# PRESETS: the baselines at HARL's tuned configs (PKU-MARL/HARL tuned_configs/<env>/<task>/<algo>/
# config.json), per (env id, algo), in our field names. Tasks HARL ships no config for here take their
# family's entry (PRESET_FOR_FAMILY). Where HARL's config file and HARL's code disagree, the preset
# follows the code, which is what HARL ran:
# - `use_feature_normalization`, `initialization_method: orthogonal_` and `gain: 0.01` are read only by
#   HARL's on-policy MLPBase; its off-policy networks (PlainMLP in SquashedGaussianPolicy,
#   DeterministicPolicy and ContinuousQNet) have no input LayerNorm and PyTorch's default init;
# One exception: `alpha: 0.2` is read by HARL only when `auto_alpha` is false; with auto_alpha HARL
# starts every log alpha at 0 (alpha 1.0, off_policy_base_runner.py). The preset starts at 0.2, the `alpha`
# of HARL's config file: at one update per env step, alpha 1.0 (with alpha lr 3e-4) is still
# far from its working level after 8k steps and HASAC stays at the random policy's return on
# Cooperative Navigation (tests/test_learning.py, seed 0: -27.9 from 1.0, -21.6 from 0.2, random -28.3).
# Evaluation episodes, rollout threads and the update-to-data ratio are study-wide choices, not
# presets (docs/guides/baselines.md, "Deviations from HARL").
_HARL = Preset(batch_size=1000, gamma=0.99, tau=0.005, learning_starts=10_000, grad_clip=0.0, eval_zero_noise=True)
_HASAC = Preset(**_HARL, policy_delay=1, auto_alpha=True, alpha_init=0.2, lr_alpha=3e-4, cost_budget_per_dim=1.0)
_HATD3 = Preset(**_HARL, policy_delay=2, explore_std=0.1, target_noise=0.2, target_noise_clip=0.5)
PRESETS: dict[tuple[str, str], Preset] = {  # (env id, algo) -> preset
    ("mamujoco:HalfCheetah-2x3", "hasac"): Preset(
        **_HASAC, lr_actor=1e-3, lr_critic=1e-3, actor_hidden=[256, 256], critic_hidden=[256, 256], n_step=10
    ),
    ("mamujoco:HalfCheetah-2x3", "hatd3"): Preset(
        **_HATD3, lr_actor=5e-4, lr_critic=1e-3, actor_hidden=[256, 256], critic_hidden=[256, 256], n_step=10
    ),
    ("mpe:simple_spread_v3", "hasac"): Preset(
        **_HASAC, lr_actor=5e-4, lr_critic=5e-4, actor_hidden=[256, 256], critic_hidden=[256, 256], n_step=20
    ),
    ("mpe:simple_spread_v3", "hatd3"): Preset(
        **_HATD3, lr_actor=5e-4, lr_critic=1e-3, actor_hidden=[128, 128], critic_hidden=[128, 128], n_step=1
    ),
}
PRESET_FOR_FAMILY = {"mamujoco": "mamujoco:HalfCheetah-2x3", "mpe": "mpe:simple_spread_v3"}

# The critic's support: V = reward_scale * r / (1 - gamma) over a per-step team-reward range per family
# (time limits are bootstrapped, so values are infinite-horizon). MaMuJoCo: up to 20 per step covers
# the paper's HalfCheetah 2x3 level (14369 per 1000 steps, about 14.4 per step, V about 1440) with room;
# -10 per step covers running backwards plus control costs and the soft value's entropy term.
# MPE (Cooperative Navigation on the mean-over-agents scale): about -1.1 per step at random, down to -5
# when agents wander off and collide; up to +3 for Physical Deception's good agents.
# Any other env ("custom": a registered or module:factory env outside omad's families): a wide guess of
# +-10 per step; set v_min and v_max to its discounted returns (docs/guides/environments.md).
STEP_REWARD_RANGE = {"mamujoco": (-10.0, 20.0), "mpe": (-5.0, 3.0), "custom": (-10.0, 10.0)}


def prior_entropy_per_dim(prior_std: float) -> float:
    """Entropy of the chain's prior N(0, s0^2) per dimension: 0.5 log(2 pi e s0^2) (2.33 nats at 2.5)."""
    return 0.5 * math.log(2.0 * math.pi * math.e * prior_std**2)


class ConfigError(OmadError, ValueError):
    """A config value is invalid; the message names the field."""


# Fields a resumed run may change: a larger budget, and knobs that do not change what is computed.
# (`compile` computes the same update, to float tolerance: tests/test_omad.py.)
RESUME_MAY_CHANGE = frozenset({"total_steps", "progress", "torch_threads", "device", "compile"})

# torch.compile's cost is paid once per process (31-112 s for OMAD K = 8 at 2 idle cores with a cold
# inductor cache, 4-30 s warm) and saves about 7 ms per update there (+15-24% updates/s): it pays back
# after 4k-16k updates. `compile: auto` turns it on from 10k updates, where a cold-cache compile about
# breaks even (the demo: 41.8 ms per update, compile included, against 46-51 eager) and a warm one
# gains (docs/results/performance.md). The budget counts, not the updates left after a resume.
COMPILE_PAYS_AFTER_UPDATES = 10_000


class TrainConfigBase(BaseModel):
    """The fields every algorithm takes: the run, the replay and update schedule, evaluation,
    checkpoints, the discounting and the networks' sizes and learning rates. HASAC and HATD3 start from
    their HARL preset for the task (PRESETS; a task without one takes its family's), OMAD and
    OMAD-Gaussian from these defaults; the user's values override both."""

    # Every float finite: an inf or nan learning rate, scale or budget is refused before training starts.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # run
    env: str = Field("mamujoco:HalfCheetah-2x3", description="environment id (see `omad envs`)")
    env_options: dict[str, Any] = Field(default_factory=dict, description="adapter options, e.g. {N: 4}")
    algo: Algo = Field(DEFAULT_ALGO, description="the algorithm; it decides which other fields apply")
    seed: int = Field(0, ge=0, description="seeds the networks, replay sampling, exploration and environments")
    total_steps: int = Field(100_000, gt=0, description="environment steps (summed over env copies)")
    num_envs: int = Field(1, gt=0, description="environment copies stepped together")
    learning_starts: int = Field(5000, ge=0, description="uniform-random warm-up steps")
    batch_size: int = Field(256, gt=0, description="transitions per gradient update")
    buffer_size: int = Field(1_000_000, gt=0, description="replay capacity in transitions")
    updates_per_step: float = Field(1.0, gt=0, description="gradient updates per env step (UTD)")
    eval_every: int = Field(5000, gt=0, description="env steps between evaluations")
    eval_episodes: int = Field(5, gt=0, description="episodes per evaluation mode")
    eval_zero_noise: bool = Field(
        False,
        description="the mode the plain eval_return_* records repeat: zero noise (deterministic) when true, "
        "the policy's noise when false; every evaluation records both modes",
    )
    checkpoint_every: int = Field(10_000, gt=0, description="env steps between checkpoints")
    torch_threads: int = Field(0, ge=0, description="CPU threads of torch; 0 = torch default")
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile OMAD's update losses and acting chain; auto = on when the run makes at least "
        f"{COMPILE_PAYS_AFTER_UPDATES} updates and a compiler is at hand (see `compile_enabled`); "
        "HASAC and HATD3 always run eager",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="networks and updates; auto = cuda when present")
    progress: bool = Field(True, description="show a progress bar")

    # RL
    gamma: float = Field(0.99, gt=0, le=1, description="discount factor")
    tau: float = Field(0.005, gt=0, le=1, description="Polyak rate of the target networks")
    n_step: int = Field(1, ge=1, description="rewards summed into one replay transition (n-step returns)")
    reward_scale: float = Field(1.0, gt=0, description="multiplies every reward in the critic's target")
    grad_clip: float = Field(1.0, ge=0, description="max grad norm; 0 disables")
    policy_delay: int = Field(2, ge=1, description="actor (and temperature) update every N critic updates")

    # networks
    actor_hidden: Widths = Field(
        default_factory=lambda: [256, 256, 256], description="hidden layer widths of each agent's actor"
    )
    lr_actor: float = Field(3e-4, gt=0, description="actors' Adam learning rate")
    critic_hidden: Widths = Field(default_factory=lambda: [256, 256], description="hidden layer widths of the critic")
    lr_critic: float = Field(3e-4, gt=0, description="critic's Adam learning rate")

    @field_validator("env")
    @classmethod
    def _known_env(cls, env: str) -> str:
        """A registered id or an importable module:factory (options after `?` included), resolved
        but not built: UnknownEnvError (a ValueError) names the id and the registered ones."""
        from omad.core.envs import check_env_id

        return check_env_id(env)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfigBase:
        if self.batch_size > self.buffer_size:
            raise ValueError(
                f"batch_size {self.batch_size} exceeds buffer_size {self.buffer_size}: no update could run"
            )
        if self.batch_size > self.total_steps:
            raise ValueError(
                f"batch_size {self.batch_size} exceeds total_steps {self.total_steps}: no update could run"
            )
        return self

    def value_range(self, family: str) -> tuple[float, float]:
        """(v_min, v_max) of a categorical critic's support: reward_scale * STEP_REWARD_RANGE / (1 - gamma).
        Only OMAD's update has such a critic; its config (OmadUpdateConfig) lets v_min and v_max replace
        either end."""
        return _support(family, self.reward_scale, self.gamma, None, None)


class TemperatureConfig(TrainConfigBase):
    """The fields of an algorithm with a learned temperature alpha, which weighs the policy's cost
    (log-probability, or OMAD's bound on it) against the critic's value."""

    auto_alpha: bool = Field(True, description="tune alpha to hold the cost budget; false keeps alpha at alpha_init")
    alpha_init: float = Field(0.1, gt=0, description="the temperature alpha at the start")
    lr_alpha: float = Field(1e-3, gt=0, description="the temperature's Adam learning rate (on log alpha)")
    cost_budget_per_dim: float = Field(
        4.0,
        description="temperature budget per action dim: OMAD's running cost "
        "(OMAD-Gaussian: the same entropy level), HASAC's -target entropy",
    )

    def temperature_budget_per_dim(self) -> float:
        """The per-dim budget the temperature holds the constrained cost at: `cost_budget_per_dim`
        (OMAD: the chain's running cost; HASAC: -(target entropy))."""
        return self.cost_budget_per_dim


class OmadUpdateConfig(TemperatureConfig):
    """OMAD's update, shared by OMAD and the OMAD-Gaussian ablation: a distributional (C51) critic on
    the global state and joint action, one temperature on the agents' joint cost, all agents' actors
    updated at once."""

    prior_std: float = Field(
        2.5,
        gt=0,
        description="s0, the std of the diffusion chain's prior N(0, s0^2) (OMAD-Gaussian: sets the entropy "
        "level its budget matches, see cost_budget_per_dim)",
    )
    entropy_norm: Literal["sum", "mean"] = Field("sum", description="joint cost = sum or mean of the agents' costs")
    num_atoms: int = Field(101, ge=2, description="atoms of the critic's categorical value distribution")
    v_min: float | None = Field(
        None,
        description="lowest atom of the critic's support; null = reward_scale * the env family's lowest "
        "per-step reward / (1 - gamma)",
    )
    v_max: float | None = Field(
        None, description="highest atom of the critic's support; null = as v_min, from the highest"
    )
    critic_target_reduce: Literal["mean", "min"] = Field(
        "mean",
        description="how the target combines the two critic heads: the mean of their distributions, or the "
        "head with the lower expected value",
    )

    @model_validator(mode="after")
    def _support_ordered(self) -> OmadUpdateConfig:
        if self.v_min is not None and self.v_max is not None and not self.v_min < self.v_max:
            raise ValueError(f"v_min ({self.v_min}) must be below v_max ({self.v_max})")
        return self

    def value_range(self, family: str) -> tuple[float, float]:
        """(v_min, v_max): the config's values where set, else reward_scale * STEP_REWARD_RANGE / (1 - gamma)."""
        return _support(family, self.reward_scale, self.gamma, self.v_min, self.v_max)


class OmadConfig(OmadUpdateConfig):
    """OMAD: each agent's actor is a K-step diffusion chain from the prior N(0, s0^2); the temperature
    holds the chain's running cost at `cost_budget_per_dim` per action dim."""

    algo: Literal["omad"] = Field("omad", description="the algorithm; it decides which other fields apply")
    denoising_steps: int = Field(8, ge=1, description="K, the denoising steps of each agent's chain")
    dt_init: float = Field(0.1, gt=0, description="initial step size of the chain's learned per-agent schedule")
    time_features: int = Field(16, gt=0, description="Fourier features of the chain's time input")


class OmadGaussianConfig(OmadUpdateConfig):
    """The OMAD-Gaussian ablation: OMAD's update with squashed-Gaussian actors, whose exact log-probability
    is the cost; the temperature holds it at the entropy level OMAD's budget implies."""

    algo: Literal["omad-gaussian"] = Field(
        "omad-gaussian", description="the algorithm; it decides which other fields apply"
    )

    def temperature_budget_per_dim(self) -> float:
        """At OMAD's budget C its cost c = log p_prior(x_0) + running cost has mean C - H_prior per dim,
        an entropy bound of H_prior - C (2.33 - 4 = -1.67 nats per dim at s0 = 2.5, C = 4); the ablation
        holds its exact log pi at the same level, so it changes only the actor."""
        return self.cost_budget_per_dim - prior_entropy_per_dim(self.prior_std)


class HasacConfig(TemperatureConfig):
    """HASAC: per-agent squashed-Gaussian actors updated one after another in a random order, a twin
    scalar Q critic, one temperature per agent with target entropy -cost_budget_per_dim x d_a."""

    algo: Literal["hasac"] = Field("hasac", description="the algorithm; it decides which other fields apply")

    @field_validator("compile")
    @classmethod
    def _eager(cls, value: bool | str) -> bool | str:
        return _eager_only("hasac", value)


class Hatd3Config(TrainConfigBase):
    """HATD3: per-agent deterministic actors updated one after another in a random order, a twin scalar
    Q critic with target policy smoothing, Gaussian exploration noise."""

    algo: Literal["hatd3"] = Field("hatd3", description="the algorithm; it decides which other fields apply")
    explore_std: float = Field(0.1, ge=0, description="exploration noise std (in [-1, 1] action units)")
    target_noise: float = Field(0.2, ge=0, description="target policy smoothing std (in [-1, 1] action units)")
    target_noise_clip: float = Field(0.5, ge=0, description="target policy smoothing noise clipped to +-this")

    @field_validator("compile")
    @classmethod
    def _eager(cls, value: bool | str) -> bool | str:
        return _eager_only("hatd3", value)


def _eager_only(algo: str, compile: bool | str) -> bool | str:
    if compile is True:
        raise ValueError(f"{algo} has nothing to compile (only omad and omad-gaussian do)")
    return compile


TrainConfig = OmadConfig | OmadGaussianConfig | HasacConfig | Hatd3Config
CONFIG_CLASSES: dict[str, type[TrainConfig]] = {
    "omad": OmadConfig,
    "hasac": HasacConfig,
    "hatd3": Hatd3Config,
    "omad-gaussian": OmadGaussianConfig,
}


def _support(
    family: str, reward_scale: float, gamma: float, v_min: float | None, v_max: float | None
) -> tuple[float, float]:
    if (v_min is None or v_max is None) and gamma >= 1.0:
        raise ConfigError("gamma = 1 has no default critic support: set v_min and v_max")
    lo, hi = (round(reward_scale * r / (1.0 - gamma), 6) if gamma < 1.0 else 0.0 for r in STEP_REWARD_RANGE[family])
    lo = v_min if v_min is not None else lo
    hi = v_max if v_max is not None else hi
    if not lo < hi:
        raise ConfigError(f"v_min ({lo}) must be below v_max ({hi})")
    return lo, hi


# -- which algorithm takes which field --------------------------------------------------------------
def config_class(algo: str) -> type[TrainConfig]:
    """The config model of `algo`; an unknown algo is a ConfigError naming the valid ones."""
    try:
        return CONFIG_CLASSES[algo]
    except (KeyError, TypeError):
        raise ConfigError(
            f"invalid config field 'algo': unknown algo {algo!r}; valid algos: {', '.join(ALGOS)}"
        ) from None


def all_fields() -> list[str]:
    """Every field of any algorithm, in declaration order (the shared fields first)."""
    return list(dict.fromkeys(name for cls in CONFIG_CLASSES.values() for name in cls.model_fields))


def algos_taking(name: str) -> list[str]:
    """The algorithms whose config has field `name`, in ALGOS order."""
    return [algo for algo in ALGOS if name in CONFIG_CLASSES[algo].model_fields]


def _plural(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def check_fields(data: Iterable[str], algos: Iterable[str]) -> None:
    """Refuse a field known to some algorithm that none of `algos` takes, in one line naming the field,
    its flag and the algorithms (unknown names are left to validation, which refuses them too)."""
    algos = list(algos)
    known = set(all_fields())
    problems = []
    for name in data:
        takers = algos_taking(name)
        if name in known and not set(takers) & set(algos):
            problems.append(
                f"config field '{name}' (--{name.replace('_', '-')}) does not apply to algo "
                f"{_plural(algos)}: it is a field of {_plural(takers)}"
            )
    if problems:
        raise ConfigError("; ".join(problems))


def fields_for(algo: str, data: Mapping[str, Any], algos: Iterable[str]) -> dict[str, Any]:
    """The values of a config shared by runs of several algorithms (a sweep's --config and --set) that
    `algo`'s runs take. Each field must apply to at least one of `algos` (`check_fields`)."""
    check_fields(data, algos)
    known = set(all_fields())
    own = config_class(algo).model_fields
    return {k: v for k, v in data.items() if k in own or k not in known}


# -- presets and what --help and the docs say about defaults ---------------------------------------
def algo_defaults(algo: str, env_id: str) -> Preset:
    """The defaults `algo` brings for `env_id` beneath the user's values: its HARL preset (the task's,
    else its family's), or none (OMAD and OMAD-Gaussian: the field defaults)."""
    from omad.core.envs import UnknownEnvError, env_family

    key = env_id
    if (env_id, algo) not in PRESETS:
        try:
            key = PRESET_FOR_FAMILY.get(env_family(env_id), "")
        except UnknownEnvError:  # validation reports it
            return Preset()
    preset = PRESETS.get((key, algo))
    return json.loads(json.dumps(preset)) if preset else Preset()  # a copy: the caller may change it


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value)


def field_presets(name: str) -> dict[str, str]:
    """{algo: its preset values of field `name`}, e.g. {"hasac": "0.001 on mamujoco, 0.0005 on mpe"};
    one value where every task of the algo's presets has the same. Algos without a preset for the field
    are left out (they take the field's default)."""
    family_of = {env: family for family, env in PRESET_FOR_FAMILY.items()}
    per_algo: dict[str, dict[str, str]] = {}
    for (env, algo), preset in PRESETS.items():
        values: Mapping[str, object] = preset
        if name in values:
            per_algo.setdefault(algo, {})[family_of.get(env, env)] = _value(values[name])
    out: dict[str, str] = {}
    for algo in ALGOS:
        if algo in per_algo:
            values = per_algo[algo]
            same = len(set(values.values())) == 1
            out[algo] = next(iter(values.values())) if same else ", ".join(f"{v} on {k}" for k, v in values.items())
    return out


def defaults_text(name: str) -> str:
    """What field `name` defaults to, per algorithm: "default 256 (hasac, hatd3: 1000)"."""
    cls = next(CONFIG_CLASSES[a] for a in algos_taking(name))
    default = cls.model_fields[name].get_default(call_default_factory=True)
    text = f"default {_value(default)}"
    presets: dict[str, list[str]] = {}
    for algo, value in field_presets(name).items():
        presets.setdefault(value, []).append(algo)
    if presets:
        text += " (HARL presets: " + "; ".join(f"{', '.join(algos)} {v}" for v, algos in presets.items()) + ")"
    return text


def presets_markdown() -> str:
    """PRESETS as the table of docs/guides/baselines.md (a test checks the page holds exactly this)."""

    def num(x: float) -> str:
        return f"{x:.0e}".replace("e-0", "e-") if x < 0.01 else f"{x:g}"

    rows = [
        (
            "| task | algo | lr actor / critic | hidden (actor and critic) | batch | n_step | gamma, tau | "
            "warm-up | temperature | noise: exploration / target (clip) | policy delay | grad clip | evaluation |"
        ),
        "|---|---|---|---|---:|---:|---|---:|---|---|---:|---|---|",
    ]
    for (env, algo), p in PRESETS.items():
        temperature = (
            f"auto from {p['alpha_init']:g}, lr {num(p['lr_alpha'])}, target -{p['cost_budget_per_dim']:g} x d_a"
            if algo == "hasac"
            else "-"
        )
        noise = f"{p['explore_std']:g} / {p['target_noise']:g} ({p['target_noise_clip']:g})" if algo == "hatd3" else "-"
        rows.append(
            f"| `{env}` | `{algo}` | {num(p['lr_actor'])} / {num(p['lr_critic'])} | {'x'.join(map(str, p['actor_hidden']))} | "
            f"{p['batch_size']} | {p['n_step']} | {p['gamma']:g}, {p['tau']:g} | {p['learning_starts']} | {temperature} | "
            f"{noise} | {p['policy_delay']} | {'off' if not p['grad_clip'] else p['grad_clip']} | "
            f"{'deterministic' if p['eval_zero_noise'] else 'stochastic'} |"
        )
    return "\n".join(rows) + "\n"


# -- building, saving and loading -------------------------------------------------------------------
def _describe(err: ValidationError) -> str:
    """One line naming every offending field."""
    problems = []
    for e in err.errors():
        name = ".".join(str(p) for p in e["loc"])
        where = f"invalid config field '{name}'" if name else "invalid config"
        if e["type"] == "value_error":  # our own validators' messages name the values
            problems.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
        else:
            problems.append(f"{where}: {e['msg']} (got {e['input']!r})")
    return "; ".join(problems)


def parse_config(data: Mapping[str, Any]) -> TrainConfig:
    """Validate `data` as the config of its algo (default omad), strictly: a field of another algorithm
    is refused (`check_fields`), as is an unknown field. No presets (see `build_config`)."""
    algo = data.get("algo", DEFAULT_ALGO)
    cls = config_class(algo)
    check_fields(data, [algo])
    try:
        return cls(**data)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def build_config(base: Mapping[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """Validate a config from a dict plus overrides (None values skipped), with the algo's preset for
    the env beneath them; errors name the offending field."""
    data = dict(base or {})
    data.update({k: v for k, v in overrides.items() if v is not None})
    algo = data.get("algo", DEFAULT_ALGO)
    config_class(algo)  # an unknown algo is named before its fields are checked
    check_fields(data, [algo])
    env = data.get("env", TrainConfigBase.model_fields["env"].default)
    return parse_config({**algo_defaults(algo, env), **data})


def compile_enabled(cfg: TrainConfig, device_type: str) -> bool:
    """Whether OMAD's update runs through torch.compile on `device_type` ("cpu" or "cuda"): as set,
    or for `auto`, when the budget makes at least COMPILE_PAYS_AFTER_UPDATES updates and the device
    can compile (inductor needs a C++ compiler on the CPU, triton on CUDA). `auto` compiles OMAD only;
    `true` compiles OMAD-Gaussian too; HASAC and HATD3 never compile."""
    if cfg.algo not in ("omad", "omad-gaussian"):  # HASAC and HATD3 have nothing compiled
        return False
    if cfg.compile != "auto":
        return cfg.compile
    updates = max(0, cfg.total_steps - cfg.learning_starts) * cfg.updates_per_step
    if cfg.algo != "omad" or updates < COMPILE_PAYS_AFTER_UPDATES:  # OMAD-Gaussian's gain is unmeasured
        return False
    if device_type == "cuda":
        return importlib.util.find_spec("triton") is not None
    return shutil.which(os.environ.get("CXX") or "g++") is not None


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value")
    return {k.replace("-", "_"): v for k, v in data.items()}


def save_config(cfg: TrainConfig, run_dir: Path) -> None:
    """The run dir's config.json: every field of the run's algorithm, resolved."""
    write_atomic(RunDir(run_dir).config, json.dumps(cfg.model_dump(), indent=2) + "\n")


def load_run_config(run_dir: Path) -> TrainConfig:
    """A run dir's saved config.json, validated like any other config except that fields of other
    algorithms are dropped: runs written by the one flat config model saved them all."""
    path = RunDir(run_dir).config
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{run_dir} is not a run dir (no {path.name})") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping of field: value, got {type(data).__name__}")
    try:
        algo = data.get("algo", DEFAULT_ALGO)
        return parse_config(fields_for(algo, data, ALGOS))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def resume_config(saved: TrainConfig, given: Mapping[str, Any]) -> TrainConfig:
    """The saved config with the values given for a resumed run (flags or a config file), each of which
    must be one the run's algorithm takes and one a resumed run may change (`check_resume`)."""
    given = {k: v for k, v in given.items() if v is not None}
    if given.get("algo", saved.algo) != saved.algo:
        raise ConfigError(_changed("algo", saved.algo, given["algo"]))
    cfg = parse_config({**saved.model_dump(), **given})
    check_resume(saved, cfg)
    return cfg


def _changed(name: str, old: Any, new: Any) -> str:
    flag = "--" + name.replace("_", "-")
    why = "a resumed run cannot shrink its budget" if name == "total_steps" else "a resumed run keeps its saved config"
    return f"{flag} {new!r} differs from the run's saved {old!r}: {why} (start a new --out to change it)"


def check_resume(saved: TrainConfig, cfg: TrainConfig) -> None:
    """Refuse a resumed run whose config differs from the saved one, except `RESUME_MAY_CHANGE`."""
    if cfg.algo != saved.algo:
        raise ConfigError(_changed("algo", saved.algo, cfg.algo))
    for name in type(saved).model_fields:
        old, new = getattr(saved, name), getattr(cfg, name)
        if old == new or (name in RESUME_MAY_CHANGE and not (name == "total_steps" and new < old)):
            continue
        raise ConfigError(_changed(name, old, new))
