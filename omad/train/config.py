"""Training configuration: one pydantic model, defaults in code, overridable from YAML/JSON and flags."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from omad.core.errors import OmadError

Algo = Literal["omad", "hasac", "hatd3", "omad-gaussian"]
ALGOS: tuple[str, ...] = get_args(Algo)  # the one list of algorithm names

# Defaults beneath the user's values (a YAML file or flags override them); config.json records the
# resolved values. OMAD's are the field defaults below (ALGORITHM.md section 6).
#
# PRESETS: the baselines at HARL's tuned configs (PKU-MARL/HARL tuned_configs/<env>/<task>/<algo>/
# config.json, summarised in shared/reference/harl_tuned.md), per (env id, algo), in our field names.
# Tasks HARL ships no config for here take their family's entry (PRESET_FOR_FAMILY). Where HARL's
# config file and HARL's code disagree, the preset follows the code, which is what HARL ran:
# - `use_feature_normalization`, `initialization_method: orthogonal_` and `gain: 0.01` are read only by
#   HARL's on-policy MLPBase; its off-policy networks (PlainMLP in SquashedGaussianPolicy,
#   DeterministicPolicy and ContinuousQNet) have no input LayerNorm and PyTorch's default init;
# One exception: `alpha: 0.2` is read by HARL only when `auto_alpha` is false; with auto_alpha HARL
# starts every log alpha at 0 (alpha 1.0, off_policy_base_runner.py). The preset starts at 0.2, as
# ALGORITHM.md section 7 and harl_tuned.md ask: at one update per env step, alpha 1.0 (with alpha lr
# 3e-4) is still far from its working level after 8k steps and HASAC stays at the random policy's
# return on Cooperative Navigation (tests/test_learning.py, seed 0: -27.9 from 1.0, -21.6 from 0.2,
# random -28.3).
# Evaluation episodes, rollout threads and the update-to-data ratio are study-wide choices, not
# presets (README, "Deviations from HARL").
_HARL = dict(batch_size=1000, gamma=0.99, tau=0.005, learning_starts=10_000, grad_clip=0.0, eval_zero_noise=True)
_HASAC = dict(_HARL, policy_delay=1, auto_alpha=True, alpha_init=0.2, lr_alpha=3e-4, cost_budget_per_dim=1.0)
_HATD3 = dict(_HARL, policy_delay=2, explore_std=0.1, target_noise=0.2, target_noise_clip=0.5)
PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("mamujoco:HalfCheetah-2x3", "hasac"): dict(
        _HASAC, lr_actor=1e-3, lr_critic=1e-3, actor_hidden=[256, 256], critic_hidden=[256, 256], n_step=10
    ),
    ("mamujoco:HalfCheetah-2x3", "hatd3"): dict(
        _HATD3, lr_actor=5e-4, lr_critic=1e-3, actor_hidden=[256, 256], critic_hidden=[256, 256], n_step=10
    ),
    ("mpe:simple_spread_v3", "hasac"): dict(
        _HASAC, lr_actor=5e-4, lr_critic=5e-4, actor_hidden=[256, 256], critic_hidden=[256, 256], n_step=20
    ),
    ("mpe:simple_spread_v3", "hatd3"): dict(
        _HATD3, lr_actor=5e-4, lr_critic=1e-3, actor_hidden=[128, 128], critic_hidden=[128, 128], n_step=1
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
# gains (README, "Training throughput"). The budget counts, not the updates left after a resume.
COMPILE_PAYS_AFTER_UPDATES = 10_000

# A network's hidden layer widths: at least one layer, every width positive.
Widths = Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)]


class TrainConfig(BaseModel):
    # Every float finite: an inf or nan learning rate, scale or budget is refused before training starts.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # run
    env: str = Field("mamujoco:HalfCheetah-2x3", description="environment id (see `omad envs`)")
    env_options: dict[str, Any] = Field(default_factory=dict, description="adapter options, e.g. {N: 4}")
    algo: Algo = "omad"
    seed: int = Field(0, ge=0)
    total_steps: int = Field(100_000, gt=0, description="environment steps (summed over env copies)")
    num_envs: int = Field(1, gt=0, description="environment copies stepped together")
    learning_starts: int = Field(5000, ge=0, description="uniform-random warm-up steps")
    batch_size: int = Field(256, gt=0)
    buffer_size: int = Field(1_000_000, gt=0)
    updates_per_step: float = Field(1.0, gt=0, description="gradient updates per env step (UTD)")
    eval_every: int = Field(5000, gt=0, description="env steps between evaluations")
    eval_episodes: int = Field(5, gt=0)
    eval_zero_noise: bool = Field(False, description="evaluate the zero-noise (deterministic) policy")
    checkpoint_every: int = Field(10_000, gt=0, description="env steps between checkpoints")
    torch_threads: int = Field(0, ge=0, description="0 = torch default")
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile OMAD's update losses and acting chain; auto = on when the run makes at least "
        f"{COMPILE_PAYS_AFTER_UPDATES} updates and a compiler is at hand (see `compile_enabled`)",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="networks and updates; auto = cuda when present")
    progress: bool = True

    # RL
    gamma: float = Field(0.99, gt=0, le=1)
    tau: float = Field(0.005, gt=0, le=1)
    n_step: int = Field(1, ge=1)
    reward_scale: float = Field(1.0, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="max grad norm; 0 disables")
    policy_delay: int = Field(2, ge=1, description="actor + temperature update every N critic updates")

    # diffusion actor
    denoising_steps: int = Field(8, ge=1, description="K")
    prior_std: float = Field(2.5, gt=0, description="s0")
    dt_init: float = Field(0.1, gt=0)
    actor_hidden: Widths = Field(default_factory=lambda: [256, 256, 256])
    time_features: int = Field(16, gt=0)
    lr_actor: float = Field(3e-4, gt=0)

    # critic
    critic_hidden: Widths = Field(default_factory=lambda: [256, 256])
    num_atoms: int = Field(101, ge=2)
    v_min: float | None = Field(None, description="critic support; None = family default")
    v_max: float | None = None
    critic_target_reduce: Literal["mean", "min"] = "mean"
    lr_critic: float = Field(3e-4, gt=0)

    # temperature
    auto_alpha: bool = True
    alpha_init: float = Field(0.1, gt=0)
    lr_alpha: float = Field(1e-3, gt=0)
    cost_budget_per_dim: float = Field(
        4.0,
        description="temperature budget per action dim: OMAD's running cost "
        "(OMAD-Gaussian: the same entropy level), HASAC's -target entropy",
    )
    entropy_norm: Literal["sum", "mean"] = Field("sum", description="l_joint = sum or mean of l_i")

    # HATD3
    explore_std: float = Field(0.1, ge=0, description="HATD3 exploration noise std (in [-1, 1] action units)")
    target_noise: float = Field(0.2, ge=0, description="HATD3 target policy smoothing std")
    target_noise_clip: float = Field(0.5, ge=0, description="HATD3 target smoothing clip")

    @field_validator("env")
    @classmethod
    def _known_env(cls, env: str) -> str:
        """A registered id or an importable module:factory (options after `?` included), resolved
        but not built: UnknownEnvError (a ValueError) names the id and the registered ones."""
        from omad.core.envs import check_env_id

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.batch_size > self.buffer_size:
            raise ValueError(
                f"batch_size {self.batch_size} exceeds buffer_size {self.buffer_size}: no update could run"
            )
        if self.batch_size > self.total_steps:
            raise ValueError(
                f"batch_size {self.batch_size} exceeds total_steps {self.total_steps}: no update could run"
            )
        if self.v_min is not None and self.v_max is not None and not self.v_min < self.v_max:
            raise ValueError(f"v_min ({self.v_min}) must be below v_max ({self.v_max})")
        return self

    def value_range(self, family: str) -> tuple[float, float]:
        """(v_min, v_max): the config's values where set, else reward_scale * STEP_REWARD_RANGE / (1 - gamma)."""
        if (self.v_min is None or self.v_max is None) and self.gamma >= 1.0:
            raise ConfigError("gamma = 1 has no default critic support: set v_min and v_max")
        lo, hi = (
            round(self.reward_scale * r / (1.0 - self.gamma), 6) if self.gamma < 1.0 else 0.0
            for r in STEP_REWARD_RANGE[family]
        )
        lo = self.v_min if self.v_min is not None else lo
        hi = self.v_max if self.v_max is not None else hi
        if not lo < hi:
            raise ConfigError(f"v_min ({lo}) must be below v_max ({hi})")
        return lo, hi

    def temperature_budget_per_dim(self) -> float:
        """The per-dim budget the temperature holds the constrained cost at (ALGORITHM.md section 5).
        OMAD: the chain's running cost, `cost_budget_per_dim`. OMAD-Gaussian: its exact cost log pi, at
        the level OMAD's budget implies. At the budget OMAD's cost c = log p_prior(x_0) + running cost
        has mean C - H_prior per dim, an entropy bound of H_prior - C (2.33 - 4 = -1.67 nats per dim at
        s0 = 2.5, C = 4), so the ablation changes only the actor. HASAC: -(target entropy) per dim."""
        if self.algo == "omad-gaussian":
            return self.cost_budget_per_dim - prior_entropy_per_dim(self.prior_std)
        return self.cost_budget_per_dim


def algo_defaults(algo: str, env_id: str) -> dict[str, Any]:
    """The defaults `algo` brings for `env_id`: its HARL preset (the task's, else its family's), or {}."""
    from omad.core.envs import UnknownEnvError, env_family

    key = env_id
    if (env_id, algo) not in PRESETS:
        try:
            key = PRESET_FOR_FAMILY.get(env_family(env_id), "")
        except UnknownEnvError:  # validation reports it
            return {}
    return copy.deepcopy(PRESETS.get((key, algo), {}))


def presets_markdown() -> str:
    """PRESETS as the README's table (a test checks the README holds exactly this)."""

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


def build_config(base: dict[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """Validate a config from a dict plus overrides; errors name the offending field."""
    data = dict(base or {})
    data.update({k: v for k, v in overrides.items() if v is not None})
    data = {**algo_defaults(data.get("algo", "omad"), data.get("env", TrainConfig.model_fields["env"].default)), **data}
    try:
        return TrainConfig(**data)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


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


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(cfg.model_dump(), indent=2) + "\n")


def load_run_config(run_dir: Path) -> TrainConfig:
    """A run dir's saved config.json, validated like any other config."""
    path = Path(run_dir) / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{run_dir} is not a run dir (no config.json)") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping of field: value, got {type(data).__name__}")
    try:
        return TrainConfig(**data)
    except ValidationError as err:
        raise ConfigError(f"{path}: {_describe(err)}") from None


def resume_config(saved: TrainConfig, given: dict[str, Any]) -> TrainConfig:
    """The saved config with the values given for a resumed run (flags or a config file), each of which
    must be one a resumed run may change (`check_resume`)."""
    try:
        cfg = TrainConfig(**{**saved.model_dump(), **{k: v for k, v in given.items() if v is not None}})
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None
    check_resume(saved, cfg)
    return cfg


def check_resume(saved: TrainConfig, cfg: TrainConfig) -> None:
    """Refuse a resumed run whose config differs from the saved one, except `RESUME_MAY_CHANGE`."""
    for name in TrainConfig.model_fields:
        old, new = getattr(saved, name), getattr(cfg, name)
        if old == new or (name in RESUME_MAY_CHANGE and not (name == "total_steps" and new < old)):
            continue
        flag = "--" + name.replace("_", "-")
        why = (
            "a resumed run cannot shrink its budget"
            if name == "total_steps"
            else "a resumed run keeps its saved config"
        )
        raise ConfigError(
            f"{flag} {new!r} differs from the run's saved {old!r}: {why} (start a new --out to change it)"
        )
