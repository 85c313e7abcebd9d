"""The training loop: collect, update, evaluate, checkpoint, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from omad_core.envs import VecEnv, env_family, get_spec
from omad_core.envs.base import EnvSpec
from omad_core.errors import OmadError
from omad_core.rollout import evaluate
from omad_train.algos import make_algorithm
from omad_train.checkpoint import (
    FORMAT_VERSION,
    latest_checkpoint,
    load_arrays,
    load_into,
    load_tensors,
    optimizer_tensors,
    restore_optimizer,
    save_checkpoint,
)
from omad_train.config import ConfigError, TrainConfig, save_config
from omad_train.coverage import Coverage
from omad_train.layout import AgentLayout
from omad_train.logger import RunLogger
from omad_train.replay import ReplayBuffer, Transition


class RunDirError(OmadError, RuntimeError):
    pass


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (out / "config.json").is_file():
            raise RunDirError(f"--resume: {out} is not a run dir (no config.json)")
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunDirError(f"output dir {out} already exists; pass --resume to continue it or --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (before, after]: a periodic task is due."""
    return after // every > before // every


class Trainer:
    def __init__(self, cfg: TrainConfig, out: Path):
        self.cfg, self.out = cfg, Path(out)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        self.spec: EnvSpec = get_spec(cfg.env, cfg.env_options)
        self.layout = AgentLayout(self.spec)
        value_range = cfg.value_range(env_family(cfg.env))
        if cfg.batch_size > cfg.total_steps:
            raise ConfigError(f"invalid config field 'batch_size': {cfg.batch_size} exceeds total_steps {cfg.total_steps}")
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.algo = make_algorithm(cfg, self.layout, self.spec.state_dim, value_range)
        self.envs = VecEnv(cfg.env, cfg.num_envs, cfg.seed, cfg.env_options)
        L = self.layout
        shapes = {"state": (self.spec.state_dim,), "obs": (L.n, L.obs_max), "action": (L.joint_dim,)}
        self.buffer = ReplayBuffer(cfg.buffer_size, shapes, cfg.num_envs, cfg.n_step, cfg.gamma)
        self.step, self.update_debt = 0, 0.0
        self.episodes_done, self.last_train_return = 0, float("nan")
        self.coverage = Coverage.for_run(cfg.env, self.out)  # Ant only: torso (x, y) state coverage

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
            out = self.algo.actors(torch.from_numpy(L.stack_obs(obs)), torch.from_numpy(stacked), with_cost=False)
        return L.split_actions(out.action.numpy())

    def run_evaluation(self) -> dict:
        cfg = self.cfg
        seed = cfg.seed + 1_000_003 + self.step  # fresh seeds, apart from training's, same on resume
        result = evaluate(
            cfg.env, self.eval_policy, [self.algo.actors.noise_steps] * self.layout.n, cfg.eval_episodes, seed,
            cfg.env_options, zero_noise=cfg.eval_zero_noise,
        )
        return {"eval_return_mean": result.mean, "eval_return_std": result.std, "eval_length_mean": float(np.mean(result.lengths))}

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self) -> Path:
        algo = self.algo
        tensors: dict[str, torch.Tensor] = {}
        opt_meta = {}
        for name, module in algo.modules().items():
            tensors.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
        for name, opt in algo.optimizers().items():
            t, meta = optimizer_tensors(name, opt)
            tensors.update(t)
            opt_meta[name] = meta
        tensors.update({f"extra.{k}": v.detach().clone().reshape(-1) for k, v in algo.extra_tensors().items()})
        tensors["rng.torch"] = torch.get_rng_state()
        env_meta, env_arrays = self.envs.snapshot()
        replay = self.buffer.state_arrays()
        replay.update({f"envs.{k}": v for k, v in env_arrays.items()})
        state = {
            "format_version": FORMAT_VERSION,
            "step": self.step,
            "update_debt": self.update_debt,
            "episodes_done": self.episodes_done,
            "last_train_return": self.last_train_return,
            "num_updates": algo.num_updates,
            "numpy_rng": self.rng.bit_generator.state,
            "optimizers": opt_meta,
            "replay": self.buffer.state_meta(),
            "envs": env_meta,
        }
        actor_files = {}
        for i, name in enumerate(self.layout.names):
            policy = algo.agent_policy(i)
            actor_files[name] = (
                {k: v.contiguous() for k, v in policy.actors.state_dict().items()},
                {"format_version": str(FORMAT_VERSION), "agent": name, "actor": policy.kind,
                 "hparams": json.dumps(policy.hparams)},
            )
        return save_checkpoint(self.out, self.step, actor_files, tensors, replay, state)

    def restore(self) -> None:
        ckpt = latest_checkpoint(self.out)
        state = json.loads((ckpt / "train_state.json").read_text())
        tensors = load_tensors(ckpt / "train.safetensors")
        arrays = load_arrays(ckpt / "replay.safetensors")
        algo = self.algo
        for name, module in algo.modules().items():
            load_into(module, tensors, ckpt / "train.safetensors", prefix=f"{name}.")
        for name, opt in algo.optimizers().items():
            restore_optimizer(name, opt, tensors, state["optimizers"][name])
        with torch.no_grad():
            for k, v in algo.extra_tensors().items():
                v.copy_(tensors[f"extra.{k}"].reshape(v.shape))
        torch.set_rng_state(tensors["rng.torch"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.buffer.load_state(arrays, state["replay"])
        self.envs.restore(state["envs"], {k[5:]: v for k, v in arrays.items() if k.startswith("envs.")})
        self.step, self.update_debt = state["step"], state["update_debt"]
        self.episodes_done = state["episodes_done"]
        self.last_train_return = state["last_train_return"]
        algo.num_updates = state["num_updates"]

    # -- the loop -------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> dict:
        cfg, L = self.cfg, self.layout
        if resume:
            self.restore()
            obs, state = self.envs.current()
        else:
            save_config(cfg, self.out / "config.json")
            (self.out / "spec.json").write_text(json.dumps(self.spec.to_dict(), indent=2) + "\n")
            obs, state = self.envs.reset()
        logger = RunLogger(self.out, cfg.total_steps, self.step, cfg.progress)
        last: dict = {}
        try:
            while self.step < cfg.total_steps:
                stacked_obs = L.stack_obs(obs)
                if self.step < cfg.learning_starts:
                    actions = self.random_actions(cfg.num_envs)
                else:
                    actions = self.algo.act(stacked_obs)
                res = self.envs.step(L.split_actions(actions))
                joint = L.joint(actions)
                next_stacked = L.stack_obs(res.next_obs)
                for j in range(cfg.num_envs):
                    self.buffer.add(j, Transition(
                        state[j], stacked_obs[:, j], joint[j], float(res.reward[j]), res.next_state[j],
                        next_stacked[:, j], bool(res.terminated[j]), bool(res.truncated[j]),
                    ))
                for _, ret, _ in res.episode_returns:
                    self.episodes_done += 1
                    self.last_train_return = float(ret)
                obs, state = res.obs, res.state
                prev_step, self.step = self.step, self.step + cfg.num_envs
                if self.coverage is not None:
                    self.coverage.observe(self.envs, prev_step)

                if self.step >= cfg.learning_starts and len(self.buffer) >= cfg.batch_size:
                    self.update_debt += cfg.num_envs * cfg.updates_per_step
                    while self.update_debt >= 1.0:
                        batch = {k: torch.from_numpy(v) for k, v in self.buffer.sample(self.rng, cfg.batch_size).items()}
                        last = self.algo.update(batch)
                        self.update_debt -= 1.0
                logger.advance(self.step, self.algo.num_updates)

                if crossed(prev_step, self.step, cfg.eval_every) or self.step >= cfg.total_steps:
                    record = {"step": self.step, "updates": self.algo.num_updates, "episodes": self.episodes_done,
                              "train_return_last": self.last_train_return, **last, **self.run_evaluation()}
                    logger.log(record)
                if crossed(prev_step, self.step, cfg.checkpoint_every) or self.step >= cfg.total_steps:
                    if self.coverage is not None:  # before the checkpoint: see omad_train/coverage.py
                        self.coverage.save(self.out)
                    self.save()
        finally:
            logger.close()
            self.envs.close()
        return logger.last_record


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, overwrite: bool = False) -> dict:
    """Train per `cfg` into run dir `out`; returns the last evaluation record."""
    out = Path(out)
    if resume:
        prepare_run_dir(out, resume=True, overwrite=False)
        saved = json.loads((out / "config.json").read_text())
        if saved != cfg.model_dump():
            cfg = TrainConfig(**{**saved, "total_steps": cfg.total_steps, "progress": cfg.progress})
    else:
        prepare_run_dir(out, resume=False, overwrite=overwrite)
    trainer = Trainer(cfg, out)
    if resume:
        save_config(cfg, out / "config.json")
    return trainer.train(resume=resume)
