"""The training loop: collect, update, evaluate, checkpoint, resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from omad.core.envs import VecEnv, env_family, get_spec
from omad.core.envs.base import EnvSpec
from omad.core.rollout import evaluate
from omad.core.rundir import RunDir, write_atomic
from omad.train.algos import make_algorithm
from omad.train.checkpoint import ActorFile, LoopCounters, restore_training, save_training
from omad.train.config import (
    ConfigError,
    TrainConfig,
    check_resume,
    compile_enabled,
    load_run_config,
    save_config,
)
from omad.train.coverage import Coverage
from omad.train.cuda import make_sampler
from omad.train.layout import AgentLayout
from omad.train.logger import RunLogger
from omad.train.replay import ReplayBuffer, ReplaySample, Transition

# Every evaluation runs both modes: with the policy's noise, and with zero noise.
EVAL_MODES = {"stochastic": False, "deterministic": True}


def crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (before, after]: a periodic task is due."""
    return after // every > before // every


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when present, else the CPU. Asking for CUDA without it is a config error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "invalid config field 'device': cuda was asked for, but torch sees no CUDA device "
            f"(torch {torch.__version__}); use --device cpu or auto"
        )
    return torch.device(name)


class Trainer:
    """Environments step on the CPU; networks, replay samples and updates live on `cfg.device`."""

    def __init__(self, cfg: TrainConfig, out: Path):
        self.cfg, self.out = cfg, Path(out)
        self.device = resolve_device(cfg.device)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        self.spec: EnvSpec = get_spec(cfg.env, cfg.env_options)
        self.layout = AgentLayout(self.spec)
        value_range = cfg.value_range(env_family(cfg.env))
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        # `compile: auto` is this run's decision (its budget, this machine's compiler); config.json keeps "auto"
        self.compiled = compile_enabled(cfg, self.device.type)
        if self.compiled:
            # `auto` means "where it works": a toolchain inductor cannot use falls back to eager (with
            # torch's warning) instead of failing the run; `--compile true` keeps such errors fatal.
            # (Set either way: the flag is process-wide and an earlier run may have set it.)
            torch._dynamo.config.suppress_errors = cfg.compile == "auto"
        algo_cfg = cfg.model_copy(update={"compile": self.compiled})
        self.algo = make_algorithm(algo_cfg, self.layout, self.spec.state_dim, value_range, self.device)
        self.envs = VecEnv(cfg.env, cfg.num_envs, cfg.seed, cfg.env_options)
        L = self.layout
        shapes = {"state": (self.spec.state_dim,), "obs": (L.n, L.obs_max), "action": (L.joint_dim,)}
        self.buffer = ReplayBuffer(cfg.buffer_size, shapes, cfg.num_envs, cfg.n_step, cfg.gamma)
        # on CUDA: gathered on the device, into the captured update's static batch when there is one
        self.sampler = make_sampler(self.buffer, self.device, cfg.batch_size, self.algo.batch_rows)
        self.step, self.update_debt = 0, 0.0
        self.episodes_done, self.last_train_return = 0, float("nan")
        self.coverage = Coverage.for_run(cfg.env, self.out)  # Ant only: torso (x, y) state coverage
        # Wall seconds per part of the loop, logged with every record. On CUDA, "update" counts the
        # time to queue the updates: the loop never waits for the device except to act.
        self.seconds = dict.fromkeys(("env", "update", "eval", "checkpoint"), 0.0)

    # -- acting ---------------------------------------------------------------------------------
    def random_actions(self, batch: int) -> np.ndarray:
        L = self.layout
        actions = np.zeros((L.n, batch, L.act_max), np.float32)
        for i, (lo, hi) in enumerate(zip(L.action_low, L.action_high)):
            actions[i, :, : L.act_dims[i]] = self.rng.uniform(lo, hi, size=(batch, L.act_dims[i]))
        return actions

    def eval_policy(self, obs: list[np.ndarray], noise: list[np.ndarray]) -> list[np.ndarray]:
        """Evaluation through the stacked training actors, fed the evaluation loop's noise."""
        L = self.layout
        B = obs[0].shape[0]
        stacked = np.zeros((noise[0].shape[0], L.n, B, L.act_max), np.float32)
        for i, z in enumerate(noise):
            stacked[:, i, :, : z.shape[-1]] = z
        with torch.no_grad():
            device = self.device
            out = self.algo.actors(
                torch.from_numpy(L.stack_obs(obs)).to(device), torch.from_numpy(stacked).to(device), with_cost=False
            )
        return L.split_actions(out.action.cpu().numpy())

    def run_evaluation(self) -> dict:
        """Both evaluation modes on the same episodes (same seeds): `eval_stochastic_*` with the policy's
        noise, `eval_deterministic_*` with zero noise (for OMAD, the chain run with zero noise). The plain
        `eval_return_*` keys repeat the mode the config asks for (`eval_zero_noise`)."""
        cfg = self.cfg
        seed = cfg.seed + 1_000_003 + self.step  # fresh seeds, apart from training's, same on resume
        record: dict[str, float] = {}
        for mode, zero_noise in EVAL_MODES.items():
            result = evaluate(
                cfg.env,
                self.eval_policy,
                [self.algo.actors.noise_steps] * self.layout.n,
                cfg.eval_episodes,
                seed,
                cfg.env_options,
                zero_noise=zero_noise,
            )
            record[f"eval_{mode}_return_mean"] = result.mean
            record[f"eval_{mode}_return_std"] = result.std
            if zero_noise == cfg.eval_zero_noise:
                record["eval_return_mean"] = result.mean
                record["eval_return_std"] = result.std
                record["eval_length_mean"] = float(np.mean(result.lengths))
        return record

    def sample(self) -> ReplaySample[torch.Tensor]:
        return self.sampler(self.rng)

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self) -> Path:
        algo = self.algo
        actors = {}
        for i, name in enumerate(self.layout.names):
            policy = algo.agent_policy(i)
            actors[name] = ActorFile(policy.kind, policy.hparams, policy.actors.state_dict())
        counters = LoopCounters(
            self.step, self.update_debt, self.episodes_done, self.last_train_return, algo.num_updates
        )
        return save_training(self.out, counters, algo, actors, self.buffer, self.envs, self.rng, self.device)

    def restore(self) -> None:
        counters = restore_training(self.out, self.algo, self.buffer, self.envs, self.rng, self.device)
        self.step, self.update_debt = counters.step, counters.update_debt
        self.episodes_done, self.last_train_return = counters.episodes_done, counters.last_train_return
        self.algo.num_updates = counters.num_updates

    # -- the loop -------------------------------------------------------------------------------
    def lap(self, part: str, since: float) -> float:
        """Add the time since `since` to `part`; returns now."""
        now = time.perf_counter()
        self.seconds[part] += now - since
        return now

    def train(self, resume: bool = False) -> dict:
        cfg, L = self.cfg, self.layout
        if resume:
            self.restore()
            obs, state = self.envs.current()
        else:
            save_config(cfg, self.out)
            write_atomic(RunDir(self.out).spec, json.dumps(self.spec.to_dict(), indent=2) + "\n")
            obs, state = self.envs.reset()
        logger = RunLogger(self.out, cfg.total_steps, self.step, cfg.progress)
        last: dict = {}
        try:
            while self.step < cfg.total_steps:
                tick = time.perf_counter()
                stacked_obs = L.stack_obs(obs)
                if self.step < cfg.learning_starts:
                    actions = self.random_actions(cfg.num_envs)
                else:
                    actions = self.algo.act(stacked_obs)
                actions = self.envs.mask_departed(actions)  # agents that left their episode store zeros
                res = self.envs.step(L.split_actions(actions))
                joint = L.joint(actions)
                next_stacked = L.stack_obs(res.next_obs)
                for j in range(cfg.num_envs):
                    self.buffer.add(
                        j,
                        Transition(
                            state[j],
                            stacked_obs[:, j],
                            joint[j],
                            float(res.reward[j]),
                            res.next_state[j],
                            next_stacked[:, j],
                            bool(res.terminated[j]),
                            bool(res.truncated[j]),
                        ),
                    )
                for _, ret, _ in res.episode_returns:
                    self.episodes_done += 1
                    self.last_train_return = float(ret)
                obs, state = res.obs, res.state
                prev_step, self.step = self.step, self.step + cfg.num_envs
                if self.coverage is not None:
                    self.coverage.observe(self.envs, prev_step)
                tick = self.lap("env", tick)

                if self.step >= cfg.learning_starts and len(self.buffer) >= cfg.batch_size:
                    self.update_debt += cfg.num_envs * cfg.updates_per_step
                    while self.update_debt >= 1.0:
                        last = self.algo.update(self.sample())
                        self.update_debt -= 1.0
                    tick = self.lap("update", tick)
                logger.advance(self.step, self.algo.num_updates)

                if crossed(prev_step, self.step, cfg.eval_every) or self.step >= cfg.total_steps:
                    record = {
                        "step": self.step,
                        "updates": self.algo.num_updates,
                        "compiled": self.compiled,  # what `compile` (perhaps `auto`) resolved to in this process
                        "episodes": self.episodes_done,
                        "train_return_last": self.last_train_return,
                        **{k: float(v) for k, v in last.items()},
                        **self.run_evaluation(),
                    }
                    tick = self.lap("eval", tick)
                    logger.log({**record, **{f"seconds_{k}": v for k, v in self.seconds.items()}})
                if crossed(prev_step, self.step, cfg.checkpoint_every) or self.step >= cfg.total_steps:
                    if self.coverage is not None:  # before the checkpoint: see omad/train/coverage.py
                        self.coverage.save(self.out)
                    self.save()
                    tick = self.lap("checkpoint", tick)
        finally:
            logger.close()
            self.envs.close()
        return logger.last_record


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, overwrite: bool = False) -> dict:
    """Train per `cfg` into run dir `out`; returns the last evaluation record. With `resume`, `cfg`
    must equal the run's saved config except a larger `total_steps` and the runtime knobs."""
    out = Path(out)
    resolve_device(cfg.device)  # fail before touching the run dir
    # Everything a user can get wrong is checked before anything is written.
    get_spec(cfg.env, cfg.env_options)
    cfg.value_range(env_family(cfg.env))
    if resume:
        check_resume(load_run_config(out), cfg)
    run = RunDir(out)
    with run.locked():
        if not resume:
            run.clear(overwrite)
        trainer = Trainer(cfg, out)
        if resume:
            save_config(cfg, out)
        return trainer.train(resume=resume)
