"""Training configuration: one pydantic model, defaults in code, overridable from YAML/JSON and flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from omad_core.errors import OmadError

Algo = Literal["omad", "hasac", "hatd3", "omad-gaussian"]
ALGOS: tuple[str, ...] = get_args(Algo)  # the one list of algorithm names

# Each algorithm's own defaults, applied beneath the user's values (a YAML file or flags override
# them). OMAD's are the field defaults below (ALGORITHM.md section 6). The baselines take HARL's tuned
# values (ALGORITHM.md section 7): 256x256 networks, lr 5e-4, batch 1000, n-step returns. A Gaussian
# actor's cost is its exact -entropy, so a budget of 1.0 per dim is SAC's target entropy -d_a.
ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    "omad": {},
    "omad-gaussian": {"cost_budget_per_dim": 1.0},
    "hasac": {"actor_hidden": [256, 256], "lr_actor": 5e-4, "lr_critic": 5e-4, "batch_size": 1000,
              "policy_delay": 1, "alpha_init": 0.2, "lr_alpha": 3e-4, "cost_budget_per_dim": 1.0},
    "hatd3": {"actor_hidden": [256, 256], "lr_actor": 5e-4, "lr_critic": 5e-4, "batch_size": 1000,
              "policy_delay": 2, "eval_zero_noise": True},
}
ALGO_FAMILY_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("hasac", "mamujoco"): {"n_step": 5}, ("hasac", "mpe"): {"n_step": 20},
    # HATD3 on MPE: 1-step, not HARL's 20. Measured (tests/test_learning.py config, 8k steps, seed 0):
    # n_step 20 gives -26.6, n_step 1 gives -18.5, against -28.3 for the random policy.
    ("hatd3", "mamujoco"): {"n_step": 5}, ("hatd3", "mpe"): {"n_step": 1},
}

# Critic support per environment family. MaMuJoCo returns reach the thousands (the paper's
# ablation: V_max = 200 fails, >= 1000 works); MPE per-step team rewards are a few units.
DEFAULT_VALUE_RANGE = {"mamujoco": (-1000.0, 1000.0), "mpe": (-500.0, 300.0)}


class ConfigError(OmadError, ValueError):
    """A config value is invalid; the message names the field."""


# Fields a resumed run may change: a larger budget, and knobs that do not change what is computed.
RESUME_MAY_CHANGE = frozenset({"total_steps", "progress", "torch_threads", "device"})

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
    compile: bool = Field(False, description="torch.compile the actor chain")
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
    cost_budget_per_dim: float = Field(4.0, description="running-cost budget C = this * sum d_a")
    entropy_norm: Literal["sum", "mean"] = Field("sum", description="l_joint = sum or mean of l_i")

    # HATD3
    explore_std: float = Field(0.1, ge=0, description="HATD3 exploration noise std (in [-1, 1] action units)")
    target_noise: float = Field(0.2, ge=0, description="HATD3 target policy smoothing std")
    target_noise_clip: float = Field(0.5, ge=0, description="HATD3 target smoothing clip")

    @field_validator("env")
    @classmethod
    def _known_env(cls, env: str) -> str:
        from omad_core.envs import ENV_IDS

        if env not in ENV_IDS:
            raise ValueError(f"unknown env id {env!r}; valid ids: {', '.join(ENV_IDS)}")
        return env

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.batch_size > self.buffer_size:
            raise ValueError(f"batch_size {self.batch_size} exceeds buffer_size {self.buffer_size}: no update could run")
        if self.batch_size > self.total_steps:
            raise ValueError(f"batch_size {self.batch_size} exceeds total_steps {self.total_steps}: no update could run")
        if self.v_min is not None and self.v_max is not None and not self.v_min < self.v_max:
            raise ValueError(f"v_min ({self.v_min}) must be below v_max ({self.v_max})")
        return self

    def value_range(self, family: str) -> tuple[float, float]:
        lo, hi = DEFAULT_VALUE_RANGE[family]
        lo = self.v_min if self.v_min is not None else lo
        hi = self.v_max if self.v_max is not None else hi
        if not lo < hi:
            raise ConfigError(f"v_min ({lo}) must be below v_max ({hi})")
        return lo, hi


def algo_defaults(algo: str, env_id: str) -> dict[str, Any]:
    """The defaults `algo` brings for `env_id`'s family (empty for unknown names: validation reports them)."""
    from omad_core.envs import UnknownEnvError, env_family

    try:
        family = env_family(env_id)
    except UnknownEnvError:
        family = ""
    return {**ALGO_DEFAULTS.get(algo, {}), **ALGO_FAMILY_DEFAULTS.get((algo, family), {})}


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
        why = "a resumed run cannot shrink its budget" if name == "total_steps" else "a resumed run keeps its saved config"
        raise ConfigError(f"{flag} {new!r} differs from the run's saved {old!r}: {why} (start a new --out to change it)")
