"""The chain's entropy lower bound against closed forms (ALGORITHM.md section 1)."""

import math

import numpy as np
import torch

from omad_train.diffusion import DiffusionActors

D_A, K, S0 = 2, 8, 2.5


def constant_score_chain(shift: float) -> DiffusionActors:
    """A one-agent chain whose score network outputs the constant `shift` (zero weights)."""
    actors = DiffusionActors([3], [D_A], [[-1.0] * D_A], [[1.0] * D_A], hidden=[16, 16], denoising_steps=K, prior_std=S0)
    with torch.no_grad():
        actors.out.weight.zero_()
        actors.out.bias.fill_(shift)
    return actors


def closed_form_entropy(actors: DiffusionActors, shift: float) -> float:
    """x_K ~ N(m_K, v_K) per dim (linear-Gaussian chain); entropy of a = tanh-squashed x_K, by quadrature."""
    eta = actors.step_sizes()[0].detach().double().numpy()
    m, v = 0.0, S0**2
    for e in eta:
        rho = 1.0 - e / S0**2
        m, v = rho * m + e * shift, rho**2 * v + 2.0 * e
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)  # E over N(0, 1)
    x = m + math.sqrt(v) * nodes
    log_jac = 2.0 * (math.log(2.0) - np.abs(x) - np.log1p(np.exp(-2.0 * np.abs(x))))  # log(1 - tanh^2), stable
    per_dim = 0.5 * math.log(2 * math.pi * math.e * v) + (weights * log_jac).sum() / weights.sum()
    return D_A * per_dim


def monte_carlo_bound(actors: DiffusionActors, n: int = 200_000) -> tuple[float, float]:
    torch.manual_seed(0)
    with torch.no_grad():
        out = actors(torch.zeros(1, n, 3), torch.randn(K + 1, 1, n, D_A))
    bound = (-out.cost[0]).double()
    return bound.mean().item(), bound.std().item() / math.sqrt(n)


def test_bound_matches_entropy_of_untrained_chain():
    actors = constant_score_chain(0.0)
    exact = closed_form_entropy(actors, 0.0)
    bound, stderr = monte_carlo_bound(actors)
    assert bound <= exact + 4 * stderr  # a lower bound
    assert abs(bound - exact) < 0.02, (bound, exact)  # q is (almost) the exact reverse of a stationary chain


def test_bound_stays_strictly_below_entropy_for_a_shifted_chain():
    shift = 3.0
    actors = constant_score_chain(shift)
    exact = closed_form_entropy(actors, shift)
    bound, stderr = monte_carlo_bound(actors)
    assert bound < exact - 10 * stderr, (bound, exact, stderr)  # q doesn't know the shift: a real gap
    unshifted_gap = abs(monte_carlo_bound(constant_score_chain(0.0))[0] - closed_form_entropy(constant_score_chain(0.0), 0.0))
    assert exact - bound > unshifted_gap
