"""The update's arithmetic, checked by hand: critic targets (OMAD's projected soft C51 target, HASAC's
soft twin-Q target, HATD3's smoothed twin-Q target) recomputed here from the networks' raw outputs,
the update mechanics (Polyak step, policy delay, actor-loss sign, the optimizers' first steps, the
temperature, gradient clipping), and what an algorithm holds (the state a checkpoint needs, the device
of every tensor), reports and compiles.

Two agents with different obs/action sizes and asymmetric bounds; a stored n-step discount gamma^m,
reward_scale != 1 and target networks perturbed away from the online ones, so using gamma, the
online net, the wrong twin head or the wrong alpha changes a number checked here. The actors and
critics are only used as networks (their outputs); targets, twin-Q reductions, the C51 projection and
the bound mapping are written out independently below.
"""

from __future__ import annotations

import copy
import math
import types

import numpy as np
import pytest
import torch
from helpers import TOY_ALGOS, toy_algorithm, toy_replay_sample

from omad.core.envs.base import AgentSpec, EnvSpec
from omad.train.algos import make_algorithm
from omad.train.algos.common import clip_grad_norm_per_agent
from omad.train.algos.sequential import HASAC, HATD3
from omad.train.config import ALGOS as EVERY_ALGO
from omad.train.config import fields_for, parse_config
from omad.train.layout import AgentLayout
from omad.train.replay import ReplaySample

OBS_DIMS, ACT_DIMS, STATE_DIM = [3, 5], [2, 1], 4
LOW, HIGH = [[0.0, -2.0], [-0.4]], [[1.0, 0.5], [0.4]]
JOINT_LOW, JOINT_HIGH = torch.tensor([0.0, -2.0, -0.4]), torch.tensor([1.0, 0.5, 0.4])  # the joint action's bounds
LAYOUT = AgentLayout(
    EnvSpec(
        "toy",
        tuple(
            AgentSpec(f"agent_{i}", o, a, tuple(lo), tuple(hi))
            for i, (o, a, lo, hi) in enumerate(zip(OBS_DIMS, ACT_DIMS, LOW, HIGH))
        ),
        STATE_DIM,
        1,
    )
)
V_MIN, V_MAX, M = -12.0, 8.0, 21  # atoms -12, -11, ..., 8
GAMMA, REWARD_SCALE, TAU = 0.95, 2.5, 0.1
REWARD = [0.5, -1.0, 2.0, 0.3, -2.5, 1.5]
STEPS = [3, 3, 1, 2, 3, 5]  # n-step window lengths m: the stored discount is gamma^m
DONE = {"none": [0.0] * 6, "all": [1.0] * 6, "mixed": [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]}
B = len(REWARD)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a thread pool only adds overhead (measured 25x slower per update on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_algo(name: str, **overrides):
    torch.manual_seed(0)
    cfg = dict(
        algo=name,
        actor_hidden=[16, 16],
        critic_hidden=[16],
        denoising_steps=3,
        num_atoms=M,
        gamma=GAMMA,
        n_step=3,
        reward_scale=REWARD_SCALE,
        tau=TAU,
        policy_delay=1,
        grad_clip=0.0,
        alpha_init=0.37,
        lr_alpha=0.5,
        compile=False,
        progress=False,
    )
    # `cfg` and the tests' overrides hold fields of every algorithm; `name` takes its own
    return make_algorithm(
        parse_config(fields_for(name, {**cfg, **overrides}, EVERY_ALGO)), LAYOUT, STATE_DIM, (V_MIN, V_MAX)
    )


@torch.no_grad()
def perturb(module: torch.nn.Module, scale: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(torch.randn(p.shape, generator=gen) * scale)


def perturb_all(algo) -> None:
    """Online and target networks all different: a test then notices one used in place of the other."""
    perturb(algo.critic, 0.5, 1)
    perturb(algo.critic_target, 0.5, 2)
    perturb(algo.actors, 0.3, 3)
    if hasattr(algo, "actor_target"):
        perturb(algo.actor_target, 1.0, 4)  # large: many target actions saturate, so the clip to [-1, 1] acts


def make_batch(done: list[float], seed: int = 0) -> ReplaySample[torch.Tensor]:
    """The trainer's batch: obs [B, n, d_o_max] zero-padded, joint actions inside each agent's bounds."""
    gen = torch.Generator().manual_seed(seed)

    def obs():
        o = torch.randn(B, LAYOUT.n, LAYOUT.obs_max, generator=gen)
        for i, d in enumerate(OBS_DIMS):
            o[:, i, d:] = 0.0
        return o

    low, high = JOINT_LOW, JOINT_HIGH
    return ReplaySample(
        state=torch.randn(B, STATE_DIM, generator=gen),
        obs=obs(),
        action=low + torch.rand(B, len(low), generator=gen) * (high - low),
        reward=torch.tensor(REWARD),
        discount=torch.tensor([GAMMA**m for m in STEPS]),
        done=torch.tensor(done),
        next_state=torch.randn(B, STATE_DIM, generator=gen),
        next_obs=obs(),
    )


def fix_noise(algo) -> torch.Tensor:
    """Every policy-noise draw returns the same standard-normal tensor, so the test can replay it."""
    shape = (algo.actors.noise_steps, LAYOUT.n, B, LAYOUT.act_max)
    algo.noise = lambda batch: torch.randn(shape, generator=torch.Generator().manual_seed(batch))
    return algo.noise(B)


def joint_of(actions: torch.Tensor) -> torch.Tensor:
    """[n, B, d_a_max] -> [B, sum d_a]: each agent's real dims, in agent order."""
    return torch.cat([actions[i, :, :d] for i, d in enumerate(ACT_DIMS)], -1)


def c51_project(probs: list[float], values: list[float]) -> list[float]:
    """Mass probs[j] at values[j], clipped to [V_MIN, V_MAX], split linearly between the two nearest atoms."""
    delta = (V_MAX - V_MIN) / (M - 1)
    out = [0.0] * M
    for p, v in zip(probs, values):
        pos = (min(max(v, V_MIN), V_MAX) - V_MIN) / delta
        lo = math.floor(pos)
        if lo >= M - 1:
            out[M - 1] += p
        else:
            out[lo] += p * (lo + 1 - pos)
            out[lo + 1] += p * (pos - lo)
    return out


def update_with_critic_grads(algo, batch):
    """One update; returns its metrics and the critic gradient the critic optimizer stepped with."""
    grads = []
    params = list(algo.critic.parameters())
    hook = algo.optimizers()["critic_opt"].register_step_pre_hook(
        lambda *_: grads.append([p.grad.clone() for p in params])
    )
    metrics = {k: float(v) for k, v in algo.update(batch).items()}  # 0-d tensors, read as the trainer logs them
    hook.remove()
    assert len(grads) == 1
    return metrics, grads[0]


def check_critic_step(algo, batch, loss_of) -> dict:
    """`loss_of(critic)` is the critic loss written by hand; the update must report it and step with its gradient."""
    critic = copy.deepcopy(algo.critic)
    expected = loss_of(critic)
    expected.backward()
    metrics, grads = update_with_critic_grads(algo, batch)
    assert metrics["critic_loss"] == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    for p, g in zip(critic.parameters(), grads):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
    return metrics


# -- 1. critic targets ------------------------------------------------------------------------


def omad_target(algo, batch, noise, reduce: str):
    """The projected soft target as a function of alpha, from the networks as they are now: the mass
    of next-state atom z_j moves to r_scaled + gamma^m (1 - done)(z_j - alpha c_joint)."""
    atoms = [V_MIN + j * (V_MAX - V_MIN) / (M - 1) for j in range(M)]
    with torch.no_grad():
        nxt = algo.actors(batch.next_obs.transpose(0, 1), noise)  # the actor is not under test here
        probs = algo.critic_target.logits(batch.next_state, joint_of(nxt.action)).softmax(-1).tolist()  # [2][B][M]
    costs = [nxt.cost[0, b].item() + nxt.cost[1, b].item() for b in range(B)]  # entropy_norm "sum"

    def target(alpha: float, clipped: list[float] | None = None) -> torch.Tensor:
        """The target rows; `clipped`, if given, receives each sample's mass outside [V_MIN, V_MAX]."""
        rows = []
        for b in range(B):
            heads = [probs[0][b], probs[1][b]]
            if reduce == "mean":
                p = [(x + y) / 2 for x, y in zip(*heads)]
            else:  # the head with the lower expected value
                q = [sum(pj * z for pj, z in zip(h, atoms)) for h in heads]
                p = heads[0] if q[0] <= q[1] else heads[1]
            keep = batch.discount[b].item() * (1.0 - batch.done[b].item())
            r = REWARD_SCALE * REWARD[b]
            values = [r + keep * (z - alpha * costs[b]) for z in atoms]
            if clipped is not None:
                clipped.append(sum(pj for pj, v in zip(p, values) if not V_MIN <= v <= V_MAX))
            rows.append(c51_project(p, values))
        return torch.tensor(rows)

    return target


def c51_loss(batch, target):
    """Cross-entropy to the target, averaged over the batch, summed over the two heads."""
    return lambda critic: -(target * critic.logits(batch.state, batch.action).log_softmax(-1)).sum(-1).mean(-1).sum()


@pytest.mark.parametrize("done", DONE)
@pytest.mark.parametrize("reduce", ["mean", "min"])
def test_omad_critic_target_is_the_projected_soft_target(reduce, done):
    algo = make_algo("omad", critic_target_reduce=reduce)
    perturb_all(algo)
    noise = fix_noise(algo)
    batch = make_batch(DONE[done])
    alpha = algo.log_alpha.exp().item()
    assert alpha == pytest.approx(0.37)
    target = omad_target(algo, batch, noise, reduce)
    critic_before = copy.deepcopy(algo.critic)
    clipped: list[float] = []
    metrics = check_critic_step(algo, batch, c51_loss(batch, target(alpha, clipped)))
    # the mass clipped at the support's ends: none when every target is a reward inside it, some otherwise
    assert metrics["critic_target_clipped"] == pytest.approx(sum(clipped) / B, abs=1e-6)
    assert (sum(clipped) == 0) if done == "all" else (0 < sum(clipped) < B)

    if done == "none":
        # the temperature stepped in this update (auto_alpha, lr_alpha 0.5); the target must use the
        # alpha from before the step, and the post-step one gives a measurably different loss
        assert abs(metrics["alpha"] - alpha) > 0.05
        late = c51_loss(batch, target(metrics["alpha"]))(critic_before).item()
        assert abs(late - metrics["critic_loss"]) > 0.05


def twin_q_loss(batch, target):
    """Squared error to the target, averaged over the batch, summed over the two heads."""
    return lambda critic: (critic(batch.state, batch.action) - target).pow(2).mean(-1).sum()


def bootstrapped(batch, next_value: torch.Tensor) -> torch.Tensor:
    out = []
    for b in range(B):
        keep = batch.discount[b].item() * (1.0 - batch.done[b].item())
        out.append(REWARD_SCALE * REWARD[b] + keep * next_value[b].item())
    return torch.tensor(out)


@pytest.mark.parametrize("done", DONE)
def test_hasac_critic_target_is_min_twin_q_minus_summed_alpha_log_pi(done):
    algo = make_algo("hasac")
    perturb_all(algo)
    alphas = [0.3, 0.7]  # one temperature per agent, different, so a mixed-up index shows
    with torch.no_grad():
        algo.log_alpha.copy_(torch.tensor(alphas).log())
    noise = fix_noise(algo)
    batch = make_batch(DONE[done])
    with torch.no_grad():
        nxt = algo.actors(batch.next_obs.transpose(0, 1), noise)  # cost = log pi per agent
        q = algo.critic_target(batch.next_state, joint_of(nxt.action))
    value = [
        min(q[0, b].item(), q[1, b].item()) - sum(alphas[i] * nxt.cost[i, b].item() for i in range(2)) for b in range(B)
    ]
    assert any(abs(q[0, b] - q[1, b]) > 0.1 for b in range(B))  # the twin heads disagree: min matters
    check_critic_step(algo, batch, twin_q_loss(batch, bootstrapped(batch, torch.tensor(value))))


@pytest.mark.parametrize("done", DONE)
def test_hatd3_critic_target_uses_smoothed_target_actions_and_min_twin_q(done):
    algo = make_algo("hatd3", target_noise=0.4, target_noise_clip=0.3)  # a clip that acts on many draws
    perturb_all(algo)
    batch = make_batch(DONE[done])
    next_obs = batch.next_obs.transpose(0, 1)
    torch.manual_seed(7)
    draw = torch.randn(1, LAYOUT.n, B, LAYOUT.act_max)  # the update's first random draw: the smoothing noise
    actions = []
    clipped_noise = clipped_action = False
    for i, d in enumerate(ACT_DIMS):
        with torch.no_grad():
            mu = algo.actor_target.singles[i].mean(next_obs[i : i + 1, :, : OBS_DIMS[i]])[0]  # [B, d] in [-1, 1]
        eps = draw[0, i, :, :d] * 0.4
        y = (mu + eps.clamp(-0.3, 0.3)).clamp(-1.0, 1.0)
        clipped_noise |= bool((eps.abs() > 0.3).any())
        clipped_action |= bool(((mu + eps.clamp(-0.3, 0.3)).abs() > 1.0).any())
        low, high = torch.tensor(LOW[i]), torch.tensor(HIGH[i])
        actions.append(low + (y + 1.0) * (high - low) / 2.0)
    assert clipped_noise and clipped_action  # both clips are exercised
    with torch.no_grad():
        q = algo.critic_target(batch.next_state, torch.cat(actions, -1))
    assert any(abs(q[0, b] - q[1, b]) > 0.1 for b in range(B))
    target = bootstrapped(batch, torch.minimum(q[0], q[1]))
    torch.manual_seed(7)
    check_critic_step(algo, batch, twin_q_loss(batch, target))


# -- 2. update mechanics ----------------------------------------------------------------------

ALGOS = ("omad", "hasac", "hatd3")


@pytest.mark.parametrize("name", ALGOS)
def test_polyak_moves_each_target_parameter_by_tau_toward_the_online_one(name):
    algo = make_algo(name)
    perturb_all(algo)
    fix_noise(algo)
    pairs = [(algo.critic_target, algo.critic)]
    if name == "hatd3":
        pairs.append((algo.actor_target, algo.actors))
    before = [{k: v.clone() for k, v in t.named_parameters()} for t, _ in pairs]
    algo.update(make_batch(DONE["none"]))
    for (target, online), old in zip(pairs, before):
        online = dict(online.named_parameters())
        for k, p in target.named_parameters():
            expected = (1 - TAU) * old[k] + TAU * online[k].detach()
            torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-6, msg=k)
            assert not torch.allclose(p, online[k], atol=1e-3), k  # it moved toward, not onto, the online net


@pytest.mark.parametrize("delay", [2, 3, 4])
@pytest.mark.parametrize("name", ALGOS)
def test_actor_and_temperature_step_once_every_policy_delay_updates(name, delay):
    updates = 8
    algo = make_algo(name, policy_delay=delay)
    fix_noise(algo)
    stepped = []  # per update, the names of the optimizers that stepped
    for k, opt in algo.optimizers().items():
        opt.register_step_pre_hook(lambda *_, k=k: stepped[-1].append(k))
    actor_target_moved = []
    for u in range(updates):
        stepped.append([])
        old = [p.clone() for p in algo.actor_target.parameters()] if name == "hatd3" else []
        algo.update(make_batch(DONE["none"], seed=u))
        if name == "hatd3":
            actor_target_moved.append(
                int(any(not torch.equal(a, b) for a, b in zip(old, algo.actor_target.parameters())))
            )
    steps = {k: [s.count(k) for s in stepped] for k in algo.optimizers()}

    assert steps.pop("critic_opt") == [1] * updates
    delayed = {
        "omad": ["actor_opt", "alpha_opt"],
        "hasac": ["actor_opt_0", "actor_opt_1", "alpha_opt"],
        "hatd3": ["actor_opt_0", "actor_opt_1"],
    }[name]
    assert sorted(steps) == sorted(delayed)
    pattern = steps[delayed[0]]
    for k in delayed:  # actors and temperature step together, at most once per update
        assert steps[k] == pattern, (k, steps)
    if name == "hatd3":  # the actor target follows the actor steps
        assert actor_target_moved == pattern
    # a step at updates 0, delay, 2 delay, ... (the first at the first update: a run's phase, which a
    # resumed run must keep), and the counter a checkpoint stores counts every update once
    assert pattern == [int(u % delay == 0) for u in range(updates)], pattern
    assert algo.num_updates == updates


def actor_objective(name, algo, actors, critic, obs, state, noise, alphas) -> float:
    """What the actor step must lower on a fixed batch and fixed noise: -Q + alpha * cost."""
    with torch.no_grad():
        if name == "hatd3":  # deterministic actors, trained on the first head
            out = actors(obs, torch.zeros_like(noise), with_cost=False)
            return -critic(state, joint_of(out.action))[0].mean().item()
        out = actors(obs, noise)
        if name == "omad":
            q = critic.q_values(state, joint_of(out.action)).mean(0)
        else:
            q = critic(state, joint_of(out.action)).min(0).values
        cost = sum(a * c for a, c in zip(alphas, out.cost))
        return (-q + cost).mean().item()


@pytest.mark.parametrize(
    ("name", "alpha"), [("omad", 1e-6), ("omad", 0.5), ("hasac", 1e-6), ("hasac", 0.5), ("hatd3", 0.5)]
)
def test_one_actor_step_lowers_the_actor_objective(name, alpha):
    """alpha ~ 0 checks the Q part alone; at 0.5 the cost part dominates the step (measured: a 50x larger change)."""
    algo = make_algo(name, auto_alpha=False, alpha_init=alpha, lr_actor=1e-3)
    perturb_all(algo)
    noise = fix_noise(algo)
    batch = make_batch(DONE["none"])
    obs, state = batch.obs.transpose(0, 1), batch.state
    actors_before = copy.deepcopy(algo.actors)
    algo.update(batch)  # the actor step follows the critic step: judge it with the stepped critic
    before = actor_objective(name, algo, actors_before, algo.critic, obs, state, noise, [alpha, alpha])
    after = actor_objective(name, algo, algo.actors, algo.critic, obs, state, noise, [alpha, alpha])
    assert after < before - 1e-4, (before, after)


def install_linear_critic(name, algo, w: torch.Tensor, second_head_sign: float = 1.0) -> None:
    """Replace the online critic's output by a known increasing function of w . joint_action (for the
    twin-Q baselines: Q1 = w . a, Q2 = second_head_sign * w . a).
    `0 * param` keeps the critic step's backward valid; the critic's own weights no longer matter."""
    param = next(algo.critic.parameters())
    if name == "omad":  # two-point distribution on V_MIN / V_MAX with P(V_MAX) = sigmoid(w . a)

        def logits(state, joint_action):
            n = len(joint_action)
            parts = [torch.zeros(n, 1), torch.full((n, M - 2), -50.0), (joint_action @ w).unsqueeze(-1)]
            return torch.cat(parts, -1).expand(2, n, M) + 0.0 * param.sum()

        algo.critic.logits = logits
    else:
        algo.critic.forward = lambda state, joint_action: (
            torch.stack([joint_action @ w, second_head_sign * (joint_action @ w)]) + 0.0 * param.sum()
        )


@pytest.mark.parametrize(
    ("name", "second_head_sign"),
    # HATD3 with Q2 = -Q1: TD3's actor ascends Q1 alone, so the actions still follow w
    [(name, 1.0) for name in ALGOS] + [("hatd3", -1.0)],
)
def test_actors_follow_a_hand_built_critic_gradient(name, second_head_sign):
    w = torch.tensor([2.0, -1.0, -1.5])  # agent 0: up, down; agent 1: down
    algo = make_algo(name, auto_alpha=False, alpha_init=1e-3, lr_actor=1e-2)
    perturb(algo.actors, 0.3, 3)
    noise = fix_noise(algo)
    install_linear_critic(name, algo, w, second_head_sign)
    batch = make_batch(DONE["none"])
    obs = batch.obs.transpose(0, 1)
    act_noise = torch.zeros_like(noise) if name == "hatd3" else noise
    with torch.no_grad():
        before = joint_of(algo.actors(obs, act_noise, with_cost=False).action).mean(0)
    for _ in range(20):
        algo.update(batch)
    with torch.no_grad():
        after = joint_of(algo.actors(obs, act_noise, with_cost=False).action).mean(0)
    moved = (after - before) / (JOINT_HIGH - JOINT_LOW)
    assert torch.all(moved * w.sign() > 0.05), moved


def test_hasac_temperature_step_follows_each_agents_cost_minus_its_budget():
    """HASAC's temperature loss is -sum_i log alpha_i (c_i - b_i), b_i = d_a_i * cost_budget_per_dim: with
    plain SGD at lr 1, one step moves log alpha_i by exactly c_i - b_i (alpha rises while the policy's
    cost, its mean log pi, is above the budget). Costs on both sides of the budget, a budget per dim != 1."""
    algo = make_algo("hasac", cost_budget_per_dim=-0.7)
    budget = torch.tensor(LAYOUT.act_dims, dtype=torch.float32) * -0.7
    torch.testing.assert_close(algo.cost_budget, budget)
    algo.alpha_opt = torch.optim.SGD([algo.log_alpha], lr=1.0)
    costs = budget + torch.tensor([0.9, -1.3][: LAYOUT.n])
    algo.pass_costs = list(costs)
    before = algo.log_alpha.detach().clone()
    algo.after_actor_pass()
    torch.testing.assert_close(algo.log_alpha.detach() - before, costs - budget)


def test_per_agent_clipping_scales_each_agents_gradient_to_max_norm_by_hand():
    """Agent axis 0. Agent 0's gradient has norm 13 (3-4-12 over two tensors) and is scaled by
    max_norm / (13 + 1e-6); agent 1's (norm 0.5) is below max_norm and stays; agent 2's tiny norm
    shows the 1e-6 in the denominator."""
    a, b = torch.zeros(3, 2, requires_grad=True), torch.zeros(3, 1, 1, requires_grad=True)
    a.grad = torch.tensor([[3.0, -4.0], [0.3, 0.0], [3e-6, 0.0]])
    b.grad = torch.tensor([[[-12.0]], [[-0.4]], [[-4e-6]]])
    clip_grad_norm_per_agent(
        [a, b, torch.zeros(3, requires_grad=True)], max_norm=1.0
    )  # a parameter without grad is skipped
    scale = torch.tensor([1.0 / (13.0 + 1e-6), 1.0, 1.0])
    torch.testing.assert_close(a.grad, torch.tensor([[3.0, -4.0], [0.3, 0.0], [3e-6, 0.0]]) * scale[:, None])
    torch.testing.assert_close(b.grad, torch.tensor([[[-12.0]], [[-0.4]], [[-4e-6]]]) * scale[:, None, None])
    tiny = torch.zeros(1, 2, requires_grad=True)
    tiny.grad = torch.tensor([[3e-6, 4e-6]])  # norm 5e-6 above max_norm 1e-6: scaled by 1e-6 / (5e-6 + 1e-6)
    clip_grad_norm_per_agent([tiny], max_norm=1e-6)
    torch.testing.assert_close(tiny.grad, torch.tensor([[3e-6, 4e-6]]) / 6.0, rtol=1e-5, atol=0)


def test_joint_cost_sums_or_averages_over_agents():
    per_agent = torch.tensor([[1.0, 2.0, -3.0], [0.5, 4.0, 1.0]])  # [n = 2, B = 3]
    for norm, joint in (("sum", [1.5, 6.0, -2.0]), ("mean", [0.75, 3.0, -1.0])):
        algo = make_algo("omad", entropy_norm=norm, cost_budget_per_dim=-0.5)
        torch.testing.assert_close(algo.joint(per_agent), torch.tensor(joint))
        # the budget is combined the same way: act dims 2 and 1 at -0.5 per dim
        torch.testing.assert_close(algo.cost_budget, torch.tensor(-1.5 if norm == "sum" else -0.75))


def test_actors_are_built_from_the_config():
    """OMAD-Gaussian gets Gaussian actors of the configured widths; OMAD's diffusion actors take the
    configured width, step-size init and time features."""
    from omad.train.actors import GaussianActors

    gaussian = make_algo("omad-gaussian", actor_hidden=[24, 12])
    assert isinstance(gaussian.actors, GaussianActors) and gaussian.actors.hidden == [24, 12]
    diffusion = make_algo("omad", actor_hidden=[24, 12], dt_init=0.3, time_features=5)
    actors = diffusion.actors
    assert actors.hidden == [24, 12] and actors.time_features == 5 and actors.time_phase.shape[-1] == 5
    torch.testing.assert_close(torch.nn.functional.softplus(actors.dt_raw), torch.full_like(actors.dt_raw, 0.3))


@pytest.mark.parametrize("name", ["omad", "hasac"])
def test_temperature_gradient_and_first_step_by_hand(name):
    """d loss / d log alpha = -(cost - budget): OMAD's cost is the batch mean of the joint running cost
    against sum_i d_a_i * budget; HASAC's is agent i's mean log pi against d_a_i * budget, per agent.
    Adam's first step then moves log alpha by lr against the gradient's sign."""
    budget, lr = -0.5, 0.05
    algo = make_algo(name, auto_alpha=True, alpha_init=0.37, lr_alpha=lr, cost_budget_per_dim=budget)
    perturb(algo.actors, 0.3, 3)
    noise = fix_noise(algo)
    batch = make_batch(DONE["none"])
    obs = batch.obs.transpose(0, 1)
    actors = copy.deepcopy(algo.actors)
    with torch.no_grad():
        if name == "omad":
            cost = actors(obs, noise).running_cost.sum(0).mean().view(1)  # entropy_norm "sum" over agents
            target = torch.tensor([float(sum(ACT_DIMS)) * budget])
        else:
            cost = torch.stack([actors.agent(i, obs, noise).cost[0].mean() for i in range(LAYOUT.n)])
            target = torch.tensor(ACT_DIMS, dtype=torch.float32) * budget
    before = algo.log_alpha.detach().clone()
    metrics = algo.update(batch)
    if name == "omad":  # the logged entropy bound: minus the joint cost of this actor step's samples
        with torch.no_grad():
            torch.testing.assert_close(metrics["entropy_bound"], -actors(obs, noise).cost.sum(0).mean())
    grad = -(cost - target)
    torch.testing.assert_close(algo.log_alpha.grad.view(-1), grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(algo.log_alpha.detach().view(-1), before.view(-1) - lr * grad.sign(), rtol=0, atol=1e-6)
    assert metrics["alpha"] == pytest.approx(algo.log_alpha.detach().exp().mean().item())


@pytest.mark.parametrize("name", ["omad", "omad-gaussian", "hasac", "hatd3"])
def test_first_optimizer_steps_move_each_weight_by_its_learning_rate(name):
    """Adam's first step moves a weight by lr against its gradient's sign (|grad| >> eps): the critic by
    lr_critic, every actor by lr_actor."""
    lr_critic, lr_actor = 0.02, 0.005
    algo = make_algo(name, lr_critic=lr_critic, lr_actor=lr_actor, auto_alpha=False)
    fix_noise(algo)
    modules = ((algo.critic, lr_critic), (algo.actors, lr_actor))
    before = [[p.detach().clone() for p in module.parameters()] for module, _ in modules]
    algo.update(make_batch(DONE["none"]))
    for (module, lr), old_params in zip(modules, before):
        checked = 0
        for p, old in zip(module.parameters(), old_params):
            if p.grad is not None:
                clear = p.grad.abs() > 1e-5
                torch.testing.assert_close((p.detach() - old)[clear], -lr * p.grad.sign()[clear], rtol=1e-3, atol=1e-7)
                checked += int(clear.sum())
        assert checked > 100


@pytest.mark.parametrize("name", ["omad", "hasac", "hatd3"])
def test_gradients_are_clipped_to_grad_clip_per_agent(name):
    """After an update the critic and each agent's actor hold the gradient of their last step, clipped
    to a norm of grad_clip (far below what this batch gives): one norm over the critic, one per agent
    (OMAD's actors are one stack with the agent on axis 0 of every parameter)."""
    max_norm = 1e-3
    algo = make_algo(name, grad_clip=max_norm)
    perturb(algo.actors, 0.3, 3)
    algo.update(make_batch(DONE["none"]))

    def norm(grads):
        return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()

    if name == "omad":
        agents = [[p.grad[i] for p in algo.actors.parameters()] for i in range(LAYOUT.n)]
    else:
        agents = [[p.grad for p in single.parameters()] for single in algo.actors.singles]
    norms = [norm(p.grad for p in algo.critic.parameters()), *(norm(grads) for grads in agents)]
    assert norms == pytest.approx([max_norm] * (1 + LAYOUT.n), rel=1e-3)


def test_hasac_actor_loss_is_alpha_times_log_pi_minus_the_twin_minimum():
    algo = make_algo("hasac")  # alpha_init 0.37
    q = torch.tensor([[1.0, -2.0, 0.5], [0.25, -1.0, 3.0]])  # [twin, B]
    out = types.SimpleNamespace(cost=torch.tensor([[0.5, -1.5, 2.0]]))  # [1, B]: this agent's log pi
    expected = np.mean([0.37 * 0.5 - 0.25, 0.37 * -1.5 + 2.0, 0.37 * 2.0 - 0.5])
    assert algo.actor_loss(1, q, out).item() == pytest.approx(expected, rel=1e-6)


# -- 3. what an algorithm holds, reports and compiles ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "logged"),
    [
        ("omad", ["actor_loss", "alpha", "critic_loss", "critic_target_clipped", "entropy_bound", "q", "running_cost"]),
        ("hasac", ["actor_loss", "alpha", "critic_loss", "q"]),
        ("hatd3", ["actor_loss", "critic_loss", "q"]),
    ],
)
def test_an_update_reports_the_metrics_the_logs_and_reports_read(name, logged):
    metrics = make_algo(name).update(make_batch(DONE["none"]))
    assert sorted(metrics) == logged
    assert all(torch.isfinite(value) and value.dim() == 0 for value in metrics.values())


@pytest.mark.parametrize("name", TOY_ALGOS)
def test_the_state_an_algorithm_lists_is_all_it_needs_to_continue_exactly(name):
    """Copy what modules(), optimizers() and extra_tensors() list (what a checkpoint stores) from a
    trained algorithm into a fresh one: the next update of both is the same."""
    trained, fresh = toy_algorithm(name, seed=0), toy_algorithm(name, seed=1)
    batch = toy_replay_sample()
    for _ in range(3):
        trained.update(batch)
    for key, module in trained.modules().items():
        fresh.modules()[key].load_state_dict(module.state_dict())
    for key, opt in trained.optimizers().items():  # a copy: load_state_dict would share the moment tensors
        fresh.optimizers()[key].load_state_dict(copy.deepcopy(opt.state_dict()))
    with torch.no_grad():
        for key, tensor in trained.extra_tensors().items():
            fresh.extra_tensors()[key].copy_(tensor)
    fresh.num_updates = trained.num_updates
    results = []
    for algo in (trained, fresh):
        torch.manual_seed(2)
        results.append((algo.update(batch), {k: m.state_dict() for k, m in algo.modules().items()}))
    (metrics_a, state_a), (metrics_b, state_b) = results
    assert {k: float(v) for k, v in metrics_a.items()} == {k: float(v) for k, v in metrics_b.items()}
    assert (
        state_a.keys()
        == state_b.keys()
        == {"actors", "critic", "critic_target"} | ({"actor_target"} if name == "hatd3" else set())
    )
    # the names checkpoints store them under
    assert trained.extra_tensors().keys() == (set() if name == "hatd3" else {"log_alpha"})
    for key in state_a:
        for param, value in state_a[key].items():
            torch.testing.assert_close(state_b[key][param], value, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["omad", "omad-gaussian", "hasac", "hatd3"])
def test_every_tensor_an_algorithm_holds_lives_on_its_device(name):
    """The meta device stands in for an accelerator: networks, temperatures and budgets all move there."""
    algo = make_algorithm(
        parse_config(dict(algo=name, actor_hidden=[8], critic_hidden=[8], compile=False, progress=False)),
        LAYOUT,
        3,
        (-5.0, 5.0),
        device="meta",
    )

    def tensors(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, torch.nn.Module):
            yield from value.parameters()
            yield from value.buffers()
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from tensors(item)

    held = [(key, t.device.type) for key, value in vars(algo).items() for t in tensors(value)]
    assert {key for key, _ in held} >= {"actors", "critic", "critic_target"}
    assert [key for key, device in held if device != "meta"] == []
    # and the noise it draws during an update (HATD3: the zero update noise and the smoothed target)
    next_obs = torch.zeros(LAYOUT.n, 4, LAYOUT.obs_max, device="meta")
    drawn = [algo.noise(4), *((algo.update_noise(4), algo.target_actions(next_obs)) if name == "hatd3" else ())]
    assert [t.device.type for t in drawn] == ["meta"] * len(drawn)


def test_policy_noise_is_made_on_the_algorithms_device():
    """The meta device stands in for an accelerator: the noise must be created where the networks live."""
    algo = make_algo("hasac")
    algo.device = torch.device("meta")
    noise = algo.noise(5)
    assert noise.device.type == "meta" and noise.shape == (algo.actors.noise_steps, LAYOUT.n, 5, LAYOUT.act_max)


@pytest.mark.parametrize("cls", [HASAC, HATD3])
def test_a_baseline_built_without_a_device_is_on_the_cpu(cls):
    algo = cls(parse_config(dict(algo=cls.__name__.lower(), actor_hidden=[8], critic_hidden=[8])), LAYOUT, 3)
    assert algo.device == torch.device("cpu")


@pytest.mark.parametrize("compile_", [True, False])
def test_omad_compiles_the_chain_and_both_losses_only_when_asked(compile_):
    """Building is enough to see it: torch.compile wraps at once and compiles at the first call."""
    algo = make_algo("omad", compile=compile_)
    wrapped = [algo.chain, algo.critic_loss_fn, algo.actor_loss_fn]
    plain = [algo.actors, algo.critic_loss, algo.actor_loss]
    assert [w != p for w, p in zip(wrapped, plain)] == [compile_] * 3  # equal bound methods compare equal
    if compile_:
        assert isinstance(algo.chain, torch._dynamo.eval_frame.OptimizedModule) and algo.chain._orig_mod is algo.actors


def test_critic_target_clipped_counts_only_the_mass_past_the_support_ends():
    """Terminal transitions at reward scale 1: each target is the reward itself, all of its mass on one
    value. On an end of the support nothing is clipped; past an end, all of that sample's mass."""
    algo = make_algo("omad", reward_scale=1.0)
    batch = make_batch(DONE["all"])
    for rewards, share in (
        ([V_MIN, V_MAX, V_MIN, V_MAX, 0.0, 1.0], 0.0),
        ([V_MIN - 0.5, V_MAX, V_MAX + 0.5, V_MIN, 0.0, 1.0], 2 / 6),
    ):
        _, clipped = algo.critic_loss(batch._replace(reward=torch.tensor(rewards)), algo.noise(B), algo.alpha)
        assert clipped.item() == pytest.approx(share)
