"""OMAD's update: gradients reach every agent, stacked agents equal a per-agent loop, and the
diffusion policy keeps both modes of a bimodal reward (the paper's expressiveness claim in miniature)."""

import shutil

import numpy as np
import pytest
import torch
from helpers import bimodal_reward, toy_batch, toy_omad_config, toy_spec, train_on_the_bimodal_game

from omad.train.algos.omad import OMAD
from omad.train.config import build_config
from omad.train.diffusion import DiffusionActors
from omad.train.layout import AgentLayout


def test_actor_loss_sends_gradient_to_every_agent():
    spec = toy_spec([5, 7, 3], [2, 3, 1])
    layout = AgentLayout(spec)
    cfg = build_config(dict(env="mpe:simple_spread_v3", actor_hidden=[32, 32], critic_hidden=[32], denoising_steps=3))
    algo = OMAD(cfg, layout, spec.state_dim, (-10.0, 10.0))
    before = {k: v.clone() for k, v in algo.actors.state_dict().items()}
    algo.update(toy_batch(layout, spec.state_dim, 64, np.random.default_rng(0)))
    after = algo.actors.state_dict()
    for key in ("hidden_layers.0.weight", "obs_in.weight", "out.weight", "dt_raw", "time_phase"):
        for i in range(layout.n):
            assert not torch.equal(before[key][i], after[key][i]), f"{key} of agent {i} did not change"


# compiling takes about a minute at these sizes (several on a loaded machine); compile is a default path (auto)
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_update_equals_the_eager_one():
    """cfg.compile compiles the losses (chain, bound, critic, target, temperature inputs); with the same
    noise they must compute the eager update, step after step: updates 0 and 2 step the actors and the
    temperature (policy_delay 2), update 1 only the critic."""
    from torch._dynamo.utils import counters

    spec = toy_spec([5, 7, 3], [2, 3, 1])
    layout = AgentLayout(spec)
    rng = np.random.default_rng(0)
    batches = [toy_batch(layout, spec.state_dim, 32, rng) for _ in range(3)]
    algos = []
    for compile_ in (False, True):
        cfg = toy_omad_config(compile=compile_)
        torch.manual_seed(0)
        algo = OMAD(cfg, layout, spec.state_dim, (-10.0, 10.0))
        algo.metrics = [algo.update(b) for b in batches]
        algos.append(algo)
    eager, compiled = algos
    assert counters["stats"]["unique_graphs"] > 0  # the compiled path really ran compiled code
    for m_eager, m_compiled in zip(eager.metrics, compiled.metrics):
        assert m_eager.keys() == m_compiled.keys()
        for key in m_eager:
            torch.testing.assert_close(m_compiled[key], m_eager[key], rtol=1e-4, atol=1e-5, msg=key)
    for name in ("actors", "critic", "critic_target"):
        torch.testing.assert_close(
            compiled.modules()[name].state_dict(), eager.modules()[name].state_dict(), rtol=1e-4, atol=1e-5
        )
    torch.testing.assert_close(compiled.log_alpha, eager.log_alpha)


def test_update_hands_the_batch_and_the_actor_step_to_the_cuda_graphs_and_returns_their_metrics():
    """On CUDA a captured graph replaces the eager step; `update` must pass it each batch with the
    policy-delay schedule (actor steps at updates 0 and 2 of delay 2) and return what it computed.
    A recording stand-in takes the graph's place, so this runs on the CPU."""
    spec = toy_spec([5, 7, 3], [2, 3, 1])
    layout = AgentLayout(spec)
    algo = OMAD(toy_omad_config(), layout, spec.state_dim, (-10.0, 10.0))
    calls = []

    def graphs(batch, actor_step):
        calls.append((batch, actor_step))
        return {"critic_loss": torch.tensor(float(len(calls)))}

    algo.graphs = graphs
    before = {k: v.clone() for k, v in algo.critic.state_dict().items()}
    rng = np.random.default_rng(0)
    batches = [toy_batch(layout, spec.state_dim, 8, rng) for _ in range(3)]
    returned = [algo.update(b) for b in batches]
    assert [(b is batch, step) for (b, step), batch in zip(calls, batches)] == [
        (True, True),
        (True, False),
        (True, True),
    ]
    assert [m["critic_loss"].item() for m in returned] == [1.0, 2.0, 3.0]
    assert algo.num_updates == 3
    for key, value in algo.critic.state_dict().items():  # the eager step did not run as well
        assert torch.equal(value, before[key]), key


def test_cuda_graphs_are_refused_off_cuda_and_not_chosen_for_a_compiled_cpu_update():
    spec = toy_spec([5, 7, 3], [2, 3, 1])
    layout = AgentLayout(spec)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device, not cpu"):
        OMAD(toy_omad_config(), layout, spec.state_dim, (-10.0, 10.0), cuda_graphs=True)
    compiled = OMAD(toy_omad_config(compile=True), layout, spec.state_dim, (-10.0, 10.0))  # compiles lazily
    assert compiled.graphs is None


def test_stacked_agents_equal_a_per_agent_loop():
    obs_dims, act_dims = [6, 9, 4], [2, 3, 1]
    low = [[-1.0] * d for d in act_dims]
    high = [[2.0] * d for d in act_dims]
    stack = DiffusionActors(
        obs_dims, act_dims, low, high, hidden=[32, 32, 32], denoising_steps=5, prior_std=2.5, time_features=16
    )
    with torch.no_grad():  # make the score network matter
        stack.out.weight.normal_(0, 0.3)
    B = 16
    obs = torch.randn(3, B, max(obs_dims))
    noise = torch.randn(6, 3, B, max(act_dims))
    for i, o in enumerate(obs_dims):
        obs[i, :, o:] = 0.0
    out = stack(obs, noise)
    for i, (o, a) in enumerate(zip(obs_dims, act_dims)):
        single = DiffusionActors(**stack.agent_hparams(i))
        single.load_state_dict(stack.agent_state_dict(i))
        ref = single(obs[i : i + 1, :, :o], noise[:, i : i + 1, :, :a])
        torch.testing.assert_close(out.action[i, :, :a], ref.action[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.cost[i], ref.cost[0], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(out.running_cost[i], ref.running_cost[0], atol=1e-4, rtol=1e-5)
        # padded action dims must not leak into the real ones
        noise2 = noise.clone()
        noise2[:, i, :, a:] = torch.randn_like(noise2[:, i, :, a:])
        assert torch.equal(stack(obs, noise2).action[i, :, :a], out.action[i, :, :a])


def test_diffusion_policy_keeps_both_modes_of_a_bimodal_reward():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    spec = toy_spec([1, 1], [1, 1], state_dim=1)
    layout = AgentLayout(spec)
    cfg = build_config(
        dict(
            env="mpe:simple_spread_v3",
            actor_hidden=[64, 64],
            critic_hidden=[64, 64],
            denoising_steps=8,
            num_atoms=51,
            lr_actor=1e-3,
            lr_critic=1e-3,
            batch_size=256,
            policy_delay=1,
        )
    )
    algo = OMAD(cfg, layout, spec.state_dim, (-1.0, 0.5))
    train_on_the_bimodal_game(algo, 1500, rng)
    samples = algo.act(np.zeros((2, 4000, 1), np.float32))[:, :, 0]  # [agent, sample]
    for i in range(2):
        a = samples[i]
        near_plus = np.mean(np.abs(a - 0.8) < 0.3)
        near_minus = np.mean(np.abs(a + 0.8) < 0.3)
        assert near_plus >= 0.25 and near_minus >= 0.25, (i, near_plus, near_minus)
    # and it learned where the modes are: the untrained (prior) policy scores about -0.077 here
    learned = bimodal_reward(torch.from_numpy(samples.T)).mean().item()
    print(f"mode masses {near_plus:.2f}/{near_minus:.2f}, mean reward {learned:.4f}")
    assert learned > -0.055
