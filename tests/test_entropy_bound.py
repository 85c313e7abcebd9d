"""The chain's entropy lower bound and the squashed Gaussian's log-probability against closed forms
(docs/algorithm.md, "The entropy lower bound"), with symmetric and asymmetric action bounds."""

import math

import numpy as np
import pytest
import torch

from omad.train.actors import LOG_STD_MAX, LOG_STD_MIN, GaussianActors
from omad.train.diffusion import DiffusionActors

# The space the code counts entropy in. True: the action space [low, high], so log pi includes the
# affine log(half-range) of [-1, 1] -> [low, high]. False: the squashed space [-1, 1]^d, as
# docs/algorithm.md states (and DIME, HARL and SB3 do): the code follows it.
COUNTS_AFFINE_TERM = False

D_A, K, S0 = 2, 8, 2.5
# One agent per case: bounds per dimension (low, high).
BOUNDS = {
    "symmetric": ([-1.0, -1.0], [1.0, 1.0]),
    "unit": ([0.0, 0.0], [1.0, 1.0]),
    "narrow": ([-0.4, -0.4], [0.4, 0.4]),
    "mixed": ([0.0, -0.4], [1.0, 0.4]),
}


def log_jacobian(x: np.ndarray, low, high) -> np.ndarray:
    """log|d(counted action)/dx| per dim for the pre-tanh x: log(1 - tanh^2 x), stably, plus the
    affine log(half-range) when the code counts it."""
    log_tanh = 2.0 * (math.log(2.0) - np.abs(x) - np.log1p(np.exp(-2.0 * np.abs(x))))
    affine = np.log((np.asarray(high) - np.asarray(low)) / 2.0) if COUNTS_AFFINE_TERM else 0.0
    return log_tanh + affine


def to_bounds(x: np.ndarray, low, high) -> np.ndarray:
    low, high = np.asarray(low), np.asarray(high)
    return low + (np.tanh(x) + 1.0) * (high - low) / 2.0


# -- diffusion chain ----------------------------------------------------------------------------
def constant_score_chain(shift: float, lows, highs) -> DiffusionActors:
    """A chain per agent whose score network outputs the constant `shift` (zero weights)."""
    actors = DiffusionActors(
        [3] * len(lows),
        [D_A] * len(lows),
        list(lows),
        list(highs),
        hidden=[16, 16],
        denoising_steps=K,
        prior_std=S0,
        time_features=16,
    )
    with torch.no_grad():
        actors.out.weight.zero_()
        actors.out.bias.fill_(shift)
    return actors


def closed_form_entropy(eta: np.ndarray, shift: float, low, high) -> float:
    """x_K ~ N(m_K, v_K) per dim (linear-Gaussian chain); entropy of the mapped x_K, by quadrature."""
    m, v = 0.0, S0**2
    for e in eta:
        rho = 1.0 - e / S0**2
        m, v = rho * m + e * shift, rho**2 * v + 2.0 * e
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)  # E over N(0, 1)
    x = m + math.sqrt(v) * nodes
    gaussian = 0.5 * math.log(2 * math.pi * math.e * v)
    return sum(gaussian + (weights * log_jacobian(x, lo, hi)).sum() / weights.sum() for lo, hi in zip(low, high))


def monte_carlo_bound(actors: DiffusionActors, n: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Per agent: the mean of the per-sample bound -c, and its standard error."""
    torch.manual_seed(0)
    agents = actors.num_agents
    with torch.no_grad():
        out = actors(torch.zeros(agents, n, 3), torch.randn(K + 1, agents, n, D_A))
    bound = (-out.cost).double()
    return bound.mean(1).numpy(), bound.std(1).numpy() / math.sqrt(n)


def exact_entropies(actors: DiffusionActors, shift: float, lows, highs) -> np.ndarray:
    eta = actors.step_sizes().detach().double().numpy()
    return np.array([closed_form_entropy(eta[i], shift, lo, hi) for i, (lo, hi) in enumerate(zip(lows, highs))])


def test_bound_matches_entropy_of_untrained_chain():
    """One stack, one agent per bounds case: each agent's bound tracks its own mapped entropy."""
    lows, highs = zip(*BOUNDS.values())
    actors = constant_score_chain(0.0, lows, highs)
    exact = exact_entropies(actors, 0.0, lows, highs)
    bound, stderr = monte_carlo_bound(actors)
    for name, b, e, s in zip(BOUNDS, bound, exact, stderr):
        assert b <= e + 4 * s, (name, b, e)  # a lower bound
        assert abs(b - e) < 0.02, (name, b, e)  # q is (almost) the exact reverse of a stationary chain


def test_bound_stays_strictly_below_entropy_for_a_shifted_chain():
    shift, (low, high) = 3.0, BOUNDS["mixed"]
    actors = constant_score_chain(shift, [low], [high])
    exact = exact_entropies(actors, shift, [low], [high])[0]
    bound, stderr = (a[0] for a in monte_carlo_bound(actors))
    assert bound < exact - 10 * stderr, (bound, exact, stderr)  # q doesn't know the shift: a real gap
    unshifted = constant_score_chain(0.0, [low], [high])
    unshifted_gap = abs(monte_carlo_bound(unshifted)[0][0] - exact_entropies(unshifted, 0.0, [low], [high])[0])
    assert exact - bound > unshifted_gap


# -- squashed Gaussian --------------------------------------------------------------------------
@pytest.mark.parametrize("bounds", BOUNDS, ids=list(BOUNDS))
def test_gaussian_log_prob_is_the_change_of_variables(bounds):
    """a = low + (tanh(u) + 1)(high - low)/2 with u ~ N(mu, sigma^2): the cost is log pi(a|o), the
    density of u minus the log-Jacobian of the map, both computed here in float64."""
    low, high = BOUNDS[bounds]
    mu, sigma = np.array([0.3, -0.7]), np.array([0.5, 1.3])
    actors = GaussianActors([3], [D_A], [low], [high], hidden=[8])
    with torch.no_grad():  # constant mu and sigma: zero weights, biases set (log-std clamped as HARL's)
        actors.mu.weight.zero_()
        actors.log_std.weight.zero_()
        actors.mu.bias.copy_(torch.tensor(mu).view(1, 1, D_A))
        assert np.log(sigma).min() > LOG_STD_MIN and np.log(sigma).max() < LOG_STD_MAX
        actors.log_std.bias.copy_(torch.tensor(np.log(sigma)).view(1, 1, D_A))
    noise = torch.randn(1, 1, 500, D_A, generator=torch.Generator().manual_seed(1)) * 1.5  # reaches the tails
    with torch.no_grad():
        out = actors(torch.randn(1, 500, 3), noise)

    u = mu + sigma * noise[0, 0].double().numpy()
    np.testing.assert_allclose(out.action[0].double().numpy(), to_bounds(u, low, high), atol=1e-6)
    log_density_u = -0.5 * ((u - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * math.log(2 * math.pi)
    log_pi = (log_density_u - log_jacobian(u, low, high)).sum(-1)
    np.testing.assert_allclose(out.cost[0].double().numpy(), log_pi, atol=1e-4)
    np.testing.assert_array_equal(out.running_cost[0].numpy(), out.cost[0].numpy())


# -- where the bounds enter -----------------------------------------------------------------------
def affine_term(low, high) -> float:
    """What counting entropy in [low, high] instead of [-1, 1] adds to a bound: sum log(half-range)."""
    return float(np.log((np.asarray(high) - np.asarray(low)) / 2.0).sum()) if COUNTS_AFFINE_TERM else 0.0


@pytest.mark.parametrize("kind", ["diffusion", "gaussian"])
def test_the_bounds_change_the_actions_and_not_the_entropy(kind):
    """Agents that differ only in their bounds, fed the same noise: their actions are each other's affine
    images, and their per-sample costs differ by exactly the affine term (zero in the squashed space,
    so on MPE's [0, 1] a target means what it means on MuJoCo's [-1, 1])."""
    lows, highs = zip(*BOUNDS.values())
    n, B = len(lows), 256
    if kind == "diffusion":
        actors, steps = constant_score_chain(0.7, lows, highs), K + 1
    else:
        actors, steps = GaussianActors([3] * n, [D_A] * n, list(lows), list(highs), hidden=[8]), 1
        with torch.no_grad():
            for p in actors.parameters():
                p.copy_(p[:1].expand_as(p))  # every agent the same network
    noise = torch.randn(steps, 1, B, D_A, generator=torch.Generator().manual_seed(2)).expand(steps, n, B, D_A)
    with torch.no_grad():
        out = actors(torch.ones(n, B, 3), noise.contiguous())
    unit = (out.action[0] - torch.tensor(lows[0])) / (torch.tensor(highs[0]) - torch.tensor(lows[0]))
    for i, (low, high) in enumerate(zip(lows, highs)):
        torch.testing.assert_close(out.action[i], torch.tensor(low) + unit * (torch.tensor(high) - torch.tensor(low)))
        expected_shift = affine_term(low, high) - affine_term(lows[0], highs[0])
        torch.testing.assert_close(-out.cost[i] + out.cost[0], torch.full((B,), expected_shift), atol=1e-5, rtol=0)
