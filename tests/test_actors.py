"""The actors against forward passes written out in numpy (the diffusion chain with its costs, the
Gaussian and deterministic one-shot actors), and the deployable cuts of a trained stack: one agent's
policy, and a stack split into per-agent networks. Agents of different sizes with asymmetric bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import TOY, TOY_ALGOS, mlp_by_hand, randomized_params, toy_algorithm, toy_inputs

from omad.train.actors import LOG_STD_MAX, LOG_STD_MIN, GaussianActors, PerAgentActors
from omad.train.policies import AgentPolicy


@pytest.mark.parametrize("name", TOY_ALGOS)
def test_agent_policy_computes_what_the_trained_stack_computes_for_that_agent(name):
    algo = toy_algorithm(name, seed=0)
    kind = {"omad": "diffusion", "omad-gaussian": "gaussian", "hasac": "gaussian", "hatd3": "deterministic"}[name]
    assert algo.actors.kind == kind
    obs, noise = toy_inputs(algo)
    stacked = algo.actors(obs, noise, with_cost=algo.actors.kind != "deterministic")
    for i, agent in enumerate(TOY.agents):
        torch.manual_seed(11)
        expected_rng = torch.rand(3)
        torch.manual_seed(11)
        policy = algo.agent_policy(i)
        torch.testing.assert_close(torch.rand(3), expected_rng)  # building a policy draws nothing from the caller's RNG
        assert (policy.name, policy.kind, policy.obs_dim, policy.act_dim) == (
            agent.name,
            algo.actors.kind,
            agent.obs_dim,
            agent.act_dim,
        )
        assert policy.denoising_steps + 1 == algo.actors.noise_steps
        np.testing.assert_allclose(policy.action_low, agent.action_low)
        np.testing.assert_allclose(policy.action_high, agent.action_high)
        # the config reaches every network: prior std, time features, initial step size, exploration noise
        expected = {
            "diffusion": dict(prior_std=1.7, time_features=8, denoising_steps=3, hidden=[16, 12, 8]),
            "gaussian": dict(hidden=[16, 12, 8]),
            "deterministic": dict(explore_std=0.3, hidden=[16, 12, 8]),
        }[kind]
        assert {k: policy.hparams[k] for k in expected} == expected
        obs_i, noise_i = obs[i, :, : agent.obs_dim], noise[:, i, :, : agent.act_dim]
        action = policy(obs_i, noise_i)
        torch.testing.assert_close(action, stacked.action[i, :, : agent.act_dim], rtol=1e-5, atol=1e-5)
        if stacked.cost is None:
            with pytest.raises(ValueError, match="a deterministic policy has no entropy bound"):
                policy.sample_with_bound(obs_i, noise_i)
        else:
            sampled, bound = policy.sample_with_bound(obs_i, noise_i)
            torch.testing.assert_close(sampled, action)
            torch.testing.assert_close(bound, -stacked.cost[i], rtol=1e-4, atol=1e-4)
    if kind == "diffusion":  # the first step size starts at dt_init
        torch.testing.assert_close(
            toy_algorithm(name, 0, perturbed=False).actors.step_sizes()[:, 0], torch.tensor([0.07, 0.07])
        )


def test_agent_policy_is_a_diffusion_policy_by_default_and_refuses_an_unknown_kind_or_several_agents():
    hparams = toy_algorithm("omad", seed=0).actors.agent_hparams(0)
    assert AgentPolicy("left", hparams).kind == "diffusion"
    with pytest.raises(
        ValueError, match=r"unknown actor kind 'flow' \(known: \['deterministic', 'diffusion', 'gaussian'\]\)"
    ):
        AgentPolicy("left", hparams, kind="flow")
    two = {
        **hparams,
        "obs_dims": [3, 3],
        "act_dims": [2, 2],
        "action_low": [[0.0, -0.4]] * 2,
        "action_high": [[1.0, 0.4]] * 2,
    }
    with pytest.raises(ValueError, match=r"^AgentPolicy wraps a one-agent stack$"):
        AgentPolicy("left", two, kind="diffusion")


@pytest.mark.parametrize("name", ["omad", "omad-gaussian"])
def test_a_stack_split_into_per_agent_networks_computes_the_same(name):
    algo = toy_algorithm(name, seed=0)
    obs, noise = toy_inputs(algo)
    split = PerAgentActors.split(algo.actors)
    assert split.num_agents == 2 and split.kind == algo.actors.kind
    stacked, looped = algo.actors(obs, noise), split(obs, noise)
    for i, agent in enumerate(TOY.agents):
        torch.testing.assert_close(
            looped.action[i, :, : agent.act_dim], stacked.action[i, :, : agent.act_dim], rtol=1e-5, atol=1e-5
        )
        assert split.agent_hparams(i) == algo.actors.agent_hparams(i)
    torch.testing.assert_close(looped.cost, stacked.cost, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(looped.running_cost, stacked.running_cost, rtol=1e-4, atol=1e-4)


def test_a_single_agent_runs_through_the_per_agent_wrapper():
    single = GaussianActors([3], [2], [[0.0, -0.4]], [[1.0, 0.4]], hidden=[8, 8])
    wrapped = PerAgentActors([single])
    assert (wrapped.kind, wrapped.noise_steps, wrapped.num_agents) == ("gaussian", 1, 1)
    obs, noise = torch.randn(1, 4, 3), torch.randn(1, 1, 4, 2)
    out, ref = wrapped(obs, noise), single(obs, noise)
    torch.testing.assert_close(out.action, ref.action)
    torch.testing.assert_close(out.cost, ref.cost)
    torch.testing.assert_close(out.running_cost, ref.running_cost)


def gelu_by_hand(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def diffusion_chain_by_hand(params, i, obs, noise, K, s0, low, high):
    """One agent's chain (docs/algorithm.md), in float64 numpy from its real slices of the stacked parameters.
    obs [B, d_o], noise [K+1, B, d_a] -> (action, cost, running cost)."""
    d_o, d_a = obs.shape[1], noise.shape[2]
    F = params["time_phase"].shape[2]

    def linear(x, name, rows=None, cols=None):
        w, b = params[f"{name}.weight"][i], params[f"{name}.bias"][i][0]
        return x @ w[rows or slice(None), cols or slice(None)] + b[cols or slice(None)]

    obs_proj = linear(obs, "obs_in", rows=slice(0, d_o))
    eta = np.log1p(np.exp(params["dt_raw"][i].item())) * 0.5 * (1.0 + np.cos(np.pi * np.arange(K) / K))
    x = s0 * noise[0]
    running = np.zeros(obs.shape[0])
    for k in range(K):
        angle = k / K * np.linspace(1.0, 30.0, F) + params["time_phase"][i][0]
        time_proj = linear(
            gelu_by_hand(linear(np.concatenate([np.sin(angle), np.cos(angle)]), "time_mlp.0")), "time_mlp.2"
        )
        h = gelu_by_hand(x @ params["x_in"][i][:d_a] + obs_proj + time_proj)
        for j in range(len([key for key in params if key.startswith("hidden_layers.") and key.endswith(".weight")])):
            h = gelu_by_hand(linear(h, f"hidden_layers.{j}"))
        drift = -x / s0**2 + linear(h, "out", cols=slice(0, d_a))
        x_next = x + eta[k] * drift + np.sqrt(2.0 * eta[k]) * noise[k + 1]
        back = x - x_next * (1.0 - eta[k] / s0**2)  # the reverse kernel's mean residual
        running += (-0.5 * noise[k + 1] ** 2 + back**2 / (4.0 * eta[k])).sum(-1)
        x = x_next
    y = np.tanh(x)
    running -= np.log1p(-(y**2)).sum(-1)  # log |d tanh / dx|, in the squashed space
    log_prior = (-0.5 * noise[0] ** 2).sum(-1) - 0.5 * d_a * np.log(2 * np.pi * s0**2)
    return low + (y + 1.0) * (high - low) / 2.0, log_prior + running, running


def test_the_diffusion_chain_against_a_numpy_forward_pass_by_hand():
    """Every parameter drawn anew (the time phase and the step size too), two agents of different
    sizes with asymmetric bounds, K = 3, prior std 1.7: actions, costs and running costs match an
    independent float64 implementation; the chain also runs on the device of its inputs."""
    algo = toy_algorithm("omad", seed=0)
    actors = algo.actors.double()
    params = randomized_params(actors)
    obs, noise = toy_inputs(algo)
    out = actors(obs.double(), noise.double())
    for i, agent in enumerate(TOY.agents):
        o, a = agent.obs_dim, agent.act_dim
        action, cost, running = diffusion_chain_by_hand(
            params,
            i,
            obs[i, :, :o].double().numpy(),
            noise[:, i, :, :a].double().numpy(),
            K=3,
            s0=1.7,
            low=np.array(agent.action_low),
            high=np.array(agent.action_high),
        )
        # float64 throughout, but the module's time frequencies and step schedule are float32 buffers
        np.testing.assert_allclose(out.action[i, :, :a].detach().numpy(), action, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.cost[i].detach().numpy(), cost, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.running_cost[i].detach().numpy(), running, rtol=1e-5, atol=1e-5)
    on_meta = actors.to("meta")(obs.double().to("meta"), noise.double().to("meta"))
    assert {t.device.type for t in (on_meta.action, on_meta.cost, on_meta.running_cost)} == {"meta"}


def test_an_untrained_diffusion_chain_is_the_prior_ou_process():
    """The score network's output layer starts near zero: a fresh chain's actions are, to within 1e-3,
    those of the same chain with that layer at zero (pure Ornstein-Uhlenbeck drift toward the prior)."""
    algo = toy_algorithm("omad", seed=0, perturbed=False)
    obs, noise = toy_inputs(algo, B=64)
    fresh = algo.actors(obs, noise, with_cost=False).action
    with torch.no_grad():
        algo.actors.out.weight.zero_()
        algo.actors.out.bias.zero_()
    prior = algo.actors(obs, noise, with_cost=False).action
    assert (fresh - prior).abs().max().item() < 1e-3


def test_one_shot_actors_against_a_forward_pass_by_hand():
    """HARL's actors on a ReLU trunk. Gaussian: tanh on the last hidden layer, a = bounds(tanh(mu +
    exp(log_std) * noise[0])) with log_std clamped to [LOG_STD_MIN, LOG_STD_MAX]; deterministic:
    a = bounds(clip(tanh(mu) + std * noise[0], -1, 1))."""
    for name in ("omad-gaussian", "hatd3"):
        algo = toy_algorithm(name, seed=0)
        obs, noise = toy_inputs(algo)
        for i, agent in enumerate(TOY.agents):
            actor = algo.actors.singles[i] if name == "hatd3" else algo.actors
            row = 0 if name == "hatd3" else i
            params = randomized_params(actor)
            trunk = {k[len("net.") :]: v for k, v in params.items() if k.startswith("net.")}
            x = obs[i, :, : trunk["net.0.weight"].shape[1]].double().numpy()  # a stack takes the padded obs
            last = mlp_by_hand(x, trunk, row, 2, layer_norm=False)
            h = np.maximum(last, 0.0) if name == "hatd3" else np.tanh(last)
            mu = h @ params["mu.weight"][row][:, : agent.act_dim] + params["mu.bias"][row][:, : agent.act_dim]
            eps = noise[0, i, :, : agent.act_dim].double().numpy()
            if name == "hatd3":
                y = np.clip(np.tanh(mu) + actor.explore_std * eps, -1.0, 1.0)
                action = actor(obs[i : i + 1, :, : agent.obs_dim], noise[:, i : i + 1, :, : agent.act_dim]).action[0]
            else:
                raw = (
                    h @ params["log_std.weight"][row][:, : agent.act_dim]
                    + params["log_std.bias"][row][:, : agent.act_dim]
                )
                y = np.tanh(mu + np.exp(np.clip(raw, LOG_STD_MIN, LOG_STD_MAX)) * eps)
                action = actor(obs, noise).action[i, :, : agent.act_dim]
            low, high = np.array(agent.action_low), np.array(agent.action_high)
            np.testing.assert_allclose(
                action.detach().numpy(), low + (y + 1.0) * (high - low) / 2.0, rtol=1e-4, atol=1e-5
            )


def test_gaussian_log_std_is_clamped_on_both_sides():
    """With zero noise the action is tanh(mu) = 0 here, log|d tanh| = 0, and log pi = -sum(log_std) -
    d/2 log(2 pi): a log-std head asking for 5 and -25 must be held at LOG_STD_MAX and LOG_STD_MIN."""
    actors = GaussianActors([3], [2], [[0.0, -0.4]], [[1.0, 0.4]], hidden=[8])
    with torch.no_grad():
        for p in (actors.mu.weight, actors.mu.bias, actors.log_std.weight):
            p.zero_()
        actors.log_std.bias.copy_(torch.tensor([5.0, -25.0]).view_as(actors.log_std.bias))
    out = actors(torch.randn(1, 4, 3), torch.zeros(1, 1, 4, 2))
    expected = -(LOG_STD_MAX + LOG_STD_MIN) - np.log(2 * np.pi)
    np.testing.assert_allclose(out.cost.detach().numpy(), np.full((1, 4), expected), rtol=1e-6)
    np.testing.assert_allclose(out.action.detach().numpy(), np.tile([0.5, 0.0], (1, 4, 1)), atol=1e-7)


def test_gaussian_actor_cost_is_the_exact_log_density_per_agent_with_padded_dims():
    """cost = log pi of each agent's own action dims only, by hand: a Gaussian log-density in u minus
    log |d tanh(u)/du| (the squashed space of docs/algorithm.md: the affine map to [lo, hi] is not
    counted), with a = lo + (hi - lo) (tanh u + 1) / 2. Agent 1 has 1 action dim padded to 2: its padded
    dim must count nowhere (not in the density, its normaliser or the Jacobian)."""
    low, high = [[0.0, -2.0], [-0.4]], [[1.0, 0.5], [0.4]]
    torch.manual_seed(0)
    actors = GaussianActors([3, 4], [2, 1], low, high, hidden=[8, 6])
    obs, noise = torch.randn(2, 5, 4), torch.randn(1, 2, 5, 2)
    with torch.no_grad():
        out = actors(obs, noise)
        h = torch.tanh(actors.net(obs))
        mu, log_std = actors.mu(h), actors.log_std(h).clamp(-20, 2)
    for i, d in enumerate([2, 1]):
        u = mu[i, :, :d] + log_std[i, :, :d].exp() * noise[0, i, :, :d]
        density = torch.distributions.Normal(mu[i, :, :d], log_std[i, :, :d].exp()).log_prob(u).sum(-1)
        half_range = (torch.tensor(high[i]) - torch.tensor(low[i])) / 2
        log_jacobian = torch.log(1 - torch.tanh(u) ** 2).sum(-1)
        torch.testing.assert_close(out.cost[i], density - log_jacobian, rtol=1e-5, atol=1e-5)
        action = torch.tensor(low[i]) + half_range * (torch.tanh(u) + 1)
        torch.testing.assert_close(out.action[i, :, :d], action, rtol=1e-5, atol=1e-5)
