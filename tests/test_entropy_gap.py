"""bench/entropy_gap.py's grid entropy against a closed form, and the bound below it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.entropy_gap import bound, grid_entropy, make_algo


def test_grid_entropy_of_a_linear_chain_is_the_gaussians():
    """With the network's output zeroed the drift is -x / s0^2, so x_K is Gaussian with variance
    v_{k+1} = v_k (1 - eta_k / s0^2)^2 + 2 eta_k from v_0 = s0^2. The entropy of tanh(x_K) is then
    0.5 log(2 pi e v_K) + E[log(1 - tanh(x)^2)], the expectation by Gauss-Hermite quadrature."""
    algo = make_algo(K=3)
    chain = algo.actors
    with torch.no_grad():
        chain.out.weight.zero_()
        chain.out.bias.zero_()
    s0 = chain.prior_std
    v = s0**2
    for eta in chain.step_sizes()[0].tolist():
        v = v * (1 - eta / s0**2) ** 2 + 2 * eta
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)  # E[f(X)] for X ~ N(0, 1)
    ax = np.abs(math.sqrt(v) * nodes)
    log_jac = np.log(4.0) - 2.0 * ax - 2.0 * np.log1p(np.exp(-2.0 * ax))  # log(1 - tanh^2) = log(4 / (e^x + e^-x)^2)
    expected = 0.5 * math.log(2 * math.pi * math.e * v) + float(weights @ log_jac) / math.sqrt(2 * math.pi)
    entropy, mass = grid_entropy(algo, 4001)
    assert mass == pytest.approx(1.0, abs=1e-6)
    assert entropy == pytest.approx(expected, abs=2e-3)
    # the bound's Monte Carlo estimate lies below the true entropy (the gap is an expected KL, >= 0),
    # up to its sampling error; a wrong sign or a missing Jacobian term would put it far off
    lower, stderr = bound(algo, 50_000, seed=0)
    assert entropy - 0.1 < lower < entropy + 3 * stderr
