"""The baselines: HASAC's sequential update, HATD3's target smoothing, every baseline learning the
one-step game, and every actor kind exporting and serving through the same path as OMAD's."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import bimodal_reward, three_way, tiny_config, toy_batch, toy_spec, train_on_the_bimodal_game

from omad.train.algos import make_algorithm
from omad.train.algos.sequential import HASAC, smoothed_target_noise
from omad.train.config import ALGOS, build_config, fields_for
from omad.train.layout import AgentLayout

BASELINES = ("hasac", "hatd3", "omad-gaussian")


def test_hasac_agent_sees_the_already_updated_actions_of_the_agents_before_it():
    torch.manual_seed(0)
    layout = AgentLayout(toy_spec([3, 5, 4], [2, 1, 3]))
    cfg = build_config(
        dict(env="mpe:simple_spread_v3", algo="hasac", actor_hidden=[16, 16], critic_hidden=[16, 16], lr_actor=1e-2)
    )
    algo = HASAC(cfg, layout, 4)
    batch = toy_batch(layout, 4, 8, np.random.default_rng(0))
    before = copy.deepcopy(algo.actors)

    noises, critic_inputs, order = [], [], []
    draw, critic, agent_actor = algo.noise, algo.critic.forward, algo.agent_actor
    algo.noise = lambda B: noises.append(draw(B)) or noises[-1]
    algo.critic.forward = lambda s, a: critic_inputs.append(a.detach().clone()) or critic(s, a)
    algo.agent_actor = lambda i, obs, noise: (
        (order.append(i) if not order or order[-1] != i else None) or agent_actor(i, obs, noise)
    )
    torch.manual_seed(1)
    algo.update(batch)

    # noises: [critic target, initial joint action, then one per agent in update order]
    # critic_inputs: [critic loss, actor loss of agent order[0], order[1], order[2]] (the target net is a separate module)
    assert sorted(order) == [0, 1, 2] and len(critic_inputs) == 4
    critic_inputs = critic_inputs[1:]
    obs = batch.obs.transpose(0, 1)
    for position in range(1, 3):
        joint_seen = critic_inputs[position]
        for earlier_pos in range(position):
            j = order[earlier_pos]
            cols = slice(sum(layout.act_dims[:j]), sum(layout.act_dims[: j + 1]))
            with torch.no_grad():
                updated = algo.actors.agent(j, obs, noises[2 + earlier_pos]).action[0]
                stale = before.agent(j, obs, noises[2 + earlier_pos]).action[0]
            torch.testing.assert_close(joint_seen[:, cols], updated)
            assert not torch.allclose(joint_seen[:, cols], stale, atol=1e-4)
    # and the first agent in the order saw every other agent's pre-update action
    first_seen = critic_inputs[0]
    with torch.no_grad():
        initial = before(obs, noises[1], with_cost=False).action
    for j in order[1:]:
        cols = slice(sum(layout.act_dims[:j]), sum(layout.act_dims[: j + 1]))
        torch.testing.assert_close(first_seen[:, cols], initial[j, :, : layout.act_dims[j]])


def test_hatd3_target_smoothing_is_clipped():
    torch.manual_seed(0)
    noise = smoothed_target_noise((4, 10_000), std=0.2, clip=0.5)
    assert noise.abs().max().item() == pytest.approx(0.5)
    assert 0.0 < (noise.abs() == 0.5).float().mean().item() < 0.05  # about P(|N(0, 0.2)| > 0.5) = 1.2%
    assert noise.std().item() == pytest.approx(0.2, rel=0.05)

    layout = AgentLayout(toy_spec([3, 5], [2, 3]))
    cfg = build_config(
        dict(env="mpe:simple_spread_v3", algo="hatd3", actor_hidden=[16, 16], critic_hidden=[16, 16], target_noise=5.0)
    )
    algo = make_algorithm(cfg, layout, 4, None)
    obs = torch.randn(2, 1000, layout.obs_max)
    with torch.no_grad():
        mean = algo.actor_target(obs, torch.zeros(1, 2, 1000, layout.act_max), with_cost=False).action
        smoothed = algo.target_actions(obs)
    offset = layout.joint(smoothed - mean)  # the real action dims only
    # actions span [-1, 1] here, so the clip at 0.5 bounds the shift by 0.5, and the bounds still hold
    assert offset.abs().max().item() <= 0.5 + 1e-6
    assert (offset.abs() > 0.49).float().mean().item() > 0.3  # std 5 clips most draws
    assert layout.joint(smoothed).abs().max().item() <= 1.0


@pytest.mark.parametrize("algo_name", BASELINES)
def test_baseline_learns_the_one_step_bimodal_game(algo_name):
    """The one-step game of OMAD's multimodality test: a unimodal actor cannot keep both modes, but
    every baseline must beat the uniform-random policy (-0.077) clearly; the untrained actors, narrow
    around 0, score about -0.5. Rewards here are below 1, so the temperature starts at 1e-3 rather
    than at the defaults tuned for MaMuJoCo."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    layout = AgentLayout(toy_spec([1, 1], [1, 1], state_dim=1))
    cfg = build_config(
        fields_for(  # the fields of every algorithm of the test: `algo_name` takes its own
            algo_name,
            dict(
                env="mpe:simple_spread_v3",
                algo=algo_name,
                actor_hidden=[64, 64],
                critic_hidden=[64, 64],
                num_atoms=51,
                lr_actor=1e-3,
                lr_critic=1e-3,
                batch_size=256,
                policy_delay=1,
                alpha_init=1e-3,
            ),
            ALGOS,
        )
    )
    algo = make_algorithm(cfg, layout, 1, (-1.0, 0.5))
    train_on_the_bimodal_game(algo, 600, rng)
    samples = algo.act(np.zeros((2, 4000, 1), np.float32), zero_noise=algo_name == "hatd3")[:, :, 0]
    learned = bimodal_reward(torch.from_numpy(samples.T)).mean().item()
    print(f"{algo_name}: mean reward {learned:.4f}")
    assert learned > -0.065


@pytest.fixture(scope="module", params=BASELINES)
def baseline_export(request, tmp_path_factory):
    from omad.export.onnx import export_run
    from omad.train.trainer import train

    root = tmp_path_factory.mktemp(request.param)
    train(tiny_config(algo=request.param, batch_size=32), root / "run")
    export_run(root / "run", root / "export")  # checks ORT == torch at B = 1 and B = 64 on the way
    return request.param, root / "run", root / "export"


def test_baseline_exports_and_serves_the_trained_policy(baseline_export):
    algo, run_dir, export_dir = baseline_export
    from omad.runtime.onnx_policy import read_manifest
    from omad.train.policies import load_policies

    policies = load_policies(run_dir)
    kind = {"hasac": "gaussian", "omad-gaussian": "gaussian", "hatd3": "deterministic"}[algo]
    assert {p.kind for p in policies.values()} == {kind}
    assert all(a["denoising_steps"] == 0 for a in read_manifest(export_dir)["agents"])
    for zero_noise in (False, True):
        reports = three_way("mpe:simple_spread_v3", run_dir, export_dir, zero_noise=zero_noise)
        np.testing.assert_allclose(reports["onnx"]["returns"], reports["torch"]["returns"], rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(reports["grpc"]["returns"], reports["onnx"]["returns"])


# HARL's tuned HalfCheetah 2x3 HASAC config (tuned_configs/<env>/<task>/<algo>/config.json in PKU-MARL/HARL),
# transcribed by hand in HARL's names.
HARL_HALFCHEETAH_2X3_HASAC = {
    "lr": 1e-3,
    "critic_lr": 1e-3,
    "hidden_sizes": [256, 256],
    "batch_size": 1000,
    "n_step": 10,
    "gamma": 0.99,
    "polyak": 0.005,
    "auto_alpha": True,
    "alpha": 0.2,
    "alpha_lr": 3e-4,
    "fixed_order": False,
    "agent_obsk": 0,
    "warmup_steps": 10_000,
    "deterministic_eval": True,
}


def test_halfcheetah_hasac_preset_is_harls_tuned_config():
    from omad.core.envs import get_spec

    harl = HARL_HALFCHEETAH_2X3_HASAC
    cfg = build_config(dict(env="mamujoco:HalfCheetah-2x3", algo="hasac"))
    assert (cfg.lr_actor, cfg.lr_critic, cfg.lr_alpha) == (harl["lr"], harl["critic_lr"], harl["alpha_lr"])
    assert cfg.actor_hidden == cfg.critic_hidden == harl["hidden_sizes"]
    assert (cfg.batch_size, cfg.n_step, cfg.gamma, cfg.tau) == (
        harl["batch_size"],
        harl["n_step"],
        harl["gamma"],
        harl["polyak"],
    )
    assert cfg.learning_starts == harl["warmup_steps"] and cfg.auto_alpha == harl["auto_alpha"]
    assert cfg.alpha_init == harl["alpha"]
    assert cfg.eval_zero_noise == harl["deterministic_eval"]
    assert get_spec(cfg.env, cfg.env_options).options["agent_obsk"] == harl["agent_obsk"]
    # HARL's off-policy networks ignore the file's feature normalization and orthogonal init
    # (omad/train/config.py, PRESETS): the preset follows HARL's code and has neither.
    assert not {"feature_norm", "orthogonal_init", "use_feature_normalization"} & set(cfg.model_dump())
    # HARL does not clip gradients; its actor updates every critic update (no policy_freq key).
    assert (cfg.grad_clip, cfg.policy_delay) == (0.0, 1)
    # HARL's other tuned configs, per (task, algo).
    hatd3 = build_config(dict(env="mamujoco:HalfCheetah-2x3", algo="hatd3"))
    assert (hatd3.lr_actor, hatd3.lr_critic, hatd3.n_step, hatd3.policy_delay) == (5e-4, 1e-3, 10, 2)
    assert (hatd3.explore_std, hatd3.target_noise, hatd3.target_noise_clip) == (0.1, 0.2, 0.5)
    spread_hasac = build_config(dict(env="mpe:simple_spread_v3", algo="hasac"))
    assert (spread_hasac.lr_actor, spread_hasac.lr_critic, spread_hasac.n_step) == (5e-4, 5e-4, 20)
    spread_hatd3 = build_config(dict(env="mpe:simple_spread_v3", algo="hatd3"))
    assert (spread_hatd3.lr_actor, spread_hatd3.lr_critic, spread_hatd3.n_step) == (5e-4, 1e-3, 1)
    assert spread_hatd3.actor_hidden == spread_hatd3.critic_hidden == [128, 128]


def test_presets_apply_beneath_user_values_and_fall_back_to_the_family():
    assert build_config(dict(env="mamujoco:HalfCheetah-2x3", algo="hasac", lr_actor=3e-3, n_step=1)).lr_actor == 3e-3
    ant = build_config(dict(env="mamujoco:Ant-2x4", algo="hasac"))  # HARL's HalfCheetah 2x3 values stand in
    assert (ant.lr_actor, ant.n_step, ant.batch_size) == (1e-3, 10, 1000)
    omad = build_config(dict(env="mamujoco:HalfCheetah-2x3", algo="omad"))  # OMAD keeps its own defaults
    assert (omad.lr_actor, omad.batch_size, omad.n_step, omad.alpha_init) == (3e-4, 256, 1, 0.1)


def test_docs_baseline_table_is_generated_from_the_presets():
    from pathlib import Path

    from omad.train.config import presets_markdown

    table = presets_markdown()
    assert "| `mamujoco:HalfCheetah-2x3` | `hasac` |" in table and "1e-3" in table
    assert table in (Path(__file__).parents[1] / "docs" / "guides" / "baselines.md").read_text()


def test_omad_gaussian_targets_the_entropy_level_of_omads_running_cost_budget():
    """At OMAD's budget C per dim, the chain's cost log p_prior(x_0) + running cost has mean C minus the
    prior's entropy 0.5 log(2 pi e s0^2) per dim; the ablation's Gaussian holds its exact cost there."""
    import math

    from omad.train.algos.omad import OMAD

    layout = AgentLayout(toy_spec([3, 5], [2, 3]))
    small = dict(env="mpe:simple_spread_v3", actor_hidden=[8, 8], critic_hidden=[8])
    for s0, budget in ((2.5, 4.0), (1.0, 3.0)):
        gaussian = OMAD(
            build_config(dict(small, algo="omad-gaussian", prior_std=s0, cost_budget_per_dim=budget)),
            layout,
            4,
            (-1, 1),
        )
        omad = OMAD(
            build_config(dict(small, algo="omad", denoising_steps=2, prior_std=s0, cost_budget_per_dim=budget)),
            layout,
            4,
            (-1, 1),
        )
        h_prior = 0.5 * math.log(2 * math.pi * s0**2) + 0.5  # N(0, s0^2) per dim
        assert omad.cost_budget.item() == pytest.approx(5 * budget)
        assert gaussian.cost_budget.item() == pytest.approx(5 * (budget - h_prior), rel=1e-6)
    # the defaults: an entropy bound of about -1.67 nats per action dimension
    assert -gaussian.cost_budget.item() / 5 == pytest.approx(-(3.0 - (0.5 * math.log(2 * math.pi) + 0.5)), rel=1e-6)
    default = build_config(dict(small, algo="omad-gaussian"))
    assert -default.temperature_budget_per_dim() == pytest.approx(-1.665, abs=1e-3)


def test_gaussian_zero_noise_is_the_squashed_mean_and_hasac_evaluates_it():
    from omad.train.actors import GaussianActors

    torch.manual_seed(0)
    actors = GaussianActors([3], [2], [[0.0, -0.4]], [[1.0, 0.4]], hidden=[8, 8])
    obs = torch.randn(1, 16, 3)
    with torch.no_grad():
        out = actors(obs, torch.zeros(1, 1, 16, 2), with_cost=False).action
        h = torch.tanh(actors.net(obs))  # HARL: tanh on the last hidden layer
        mu = torch.baddbmm(actors.mu.bias, h, actors.mu.weight)
    low, high = torch.tensor([0.0, -0.4]), torch.tensor([1.0, 0.4])
    torch.testing.assert_close(out, low + (torch.tanh(mu) + 1) * (high - low) / 2)
    assert build_config(dict(env="mpe:simple_spread_v3", algo="hasac")).eval_zero_noise


def test_critic_support_covers_the_papers_returns():
    """V = reward_scale * r / (1 - gamma) over each family's per-step range; the paper's HalfCheetah 2x3
    level, 14369 per 1000 steps, is about 14.4 per step: its value 1437 must lie inside."""
    cfg = build_config(dict(env="mamujoco:HalfCheetah-2x3"))
    lo, hi = cfg.value_range("mamujoco")
    assert (lo, hi) == (-1000.0, 2000.0) and lo < 14369 / 1000 / (1 - 0.99) < hi
    scaled = build_config(dict(env="mamujoco:HalfCheetah-2x3", reward_scale=0.1, gamma=0.995))
    assert scaled.value_range("mamujoco") == pytest.approx((0.1 * -10 / 0.005, 0.1 * 20 / 0.005))
    assert build_config(dict(env="mpe:simple_spread_v3", v_max=50.0)).value_range("mpe") == (-500.0, 50.0)


@pytest.mark.parametrize("algo_name", ["hatd3", "hasac"])
def test_critic_target_moves_only_on_actor_updates(algo_name):
    """With policy_delay 2 the critic target moves on updates 0, 2, 4, ... (TD3, HARL): after update 1
    it still holds its value after update 0, and update 2 moves it by tau towards the online critic."""
    torch.manual_seed(0)
    layout = AgentLayout(toy_spec([3, 5], [2, 1]))
    cfg = build_config(
        dict(env="mpe:simple_spread_v3", algo=algo_name, actor_hidden=[8], critic_hidden=[8], policy_delay=2, tau=0.3)
    )
    algo = make_algorithm(cfg, layout, 4, (-10.0, 10.0))
    batch = toy_batch(layout, 4, 8, np.random.default_rng(0))

    def target():
        return [p.detach().clone() for p in algo.critic_target.parameters()]

    initial = target()
    algo.update(batch)
    after_0 = target()
    assert any(not torch.equal(a, b) for a, b in zip(after_0, initial))
    algo.update(batch)
    for a, b in zip(target(), after_0):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    algo.update(batch)  # update 2: polyak after the critic step, which changes `online` first
    online = [p.detach().clone() for p in algo.critic.parameters()]
    for new, old, w in zip(target(), after_0, online):
        torch.testing.assert_close(new, 0.7 * old + 0.3 * w)
