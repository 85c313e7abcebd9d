"""The critics: the C51 projection on exact cases, the start distribution, and both critics' forward
passes against an MLP written out in numpy."""

import numpy as np
import torch
from helpers import mlp_by_hand, randomized_params

from omad.train.critic import CategoricalCritic, TwinQCritic, project_distribution

V_MIN, V_MAX, M = -10.0, 10.0, 21  # atoms at -10, -9, ..., 10
ATOMS = torch.linspace(V_MIN, V_MAX, M)


def project(probs, targets):
    return project_distribution(probs, targets, V_MIN, V_MAX, M)


def test_atom_aligned_targets_move_mass_without_splitting():
    probs = torch.softmax(torch.randn(4, M), -1)
    out = project(probs, ATOMS.expand(4, M) + 2.0)  # shift by exactly two atoms
    assert torch.allclose(out[:, 2:-1], probs[:, : M - 3], atol=1e-7)
    assert torch.allclose(out[:, -1], probs[:, -3:].sum(-1), atol=1e-6)  # the top three clip onto V_MAX
    assert torch.all(out[:, :2] == 0)


def test_mass_is_conserved():
    probs = torch.softmax(torch.randn(64, M), -1)
    out = project(probs, torch.randn(64, M) * 20)
    assert torch.allclose(out.sum(-1), torch.ones(64), atol=1e-6)
    assert torch.all(out >= 0)


def test_targets_outside_the_support_are_clipped():
    probs = torch.softmax(torch.randn(3, M), -1)
    high = project(probs, torch.full((3, M), 1e6))
    low = project(probs, torch.full((3, M), -1e6))
    assert torch.allclose(high[:, -1], torch.ones(3)) and torch.all(high[:, :-1] == 0)
    assert torch.allclose(low[:, 0], torch.ones(3)) and torch.all(low[:, 1:] == 0)


def test_between_atoms_splits_linearly():
    probs = torch.zeros(1, M)
    probs[0, 5] = 1.0
    targets = torch.zeros(1, M)
    targets[0, 5] = 0.25  # a quarter of the way from atom 10 (0.0) to atom 11 (1.0)
    out = project(probs, targets)
    assert torch.isclose(out[0, 10], torch.tensor(0.75)) and torch.isclose(out[0, 11], torch.tensor(0.25))
    assert torch.isclose(out.sum(), torch.tensor(1.0))
    # and the expected value is preserved inside the support
    assert torch.isclose((out * ATOMS).sum(), torch.tensor(0.25))


def test_critic_starts_from_a_narrow_distribution_around_zero():
    """Q = 0 at the start, with the mass within a few atoms of 0 rather than spread over the support."""
    torch.manual_seed(0)
    for v_min, v_max in [(-1000.0, 1000.0), (-500.0, 300.0), (10.0, 50.0)]:
        critic = CategoricalCritic(8, [64, 64], 101, v_min, v_max)
        probs = critic.logits(torch.randn(256, 5), torch.rand(256, 3)).softmax(-1)
        delta = (v_max - v_min) / 100
        center = min(max(0.0, v_min), v_max)
        q = (probs * critic.atoms).sum(-1)
        assert (q - center).abs().max().item() < 2 * delta
        near = ((critic.atoms - center).abs() <= 5 * delta).float()
        assert (probs * near).sum(-1).min().item() > 0.95


def test_projection_onto_a_support_with_half_unit_spacing():
    """Support -1, -0.5, ..., 2 (delta 0.5). Each source atom's mass goes to the two support atoms
    around its target, split linearly; targets outside [-1, 2] clip to the ends."""
    probs = torch.tensor([[0.05, 0.1, 0.15, 0.2, 0.25, 0.15, 0.1]])
    targets = torch.tensor([[0.8, -1.3, 2.0, 0.0, 1.1, 2.7, -0.2]])
    # 0.8: 0.4 / 0.6 onto 0.5 / 1.0; -1.3 -> -1; 2.0 and 2.7 -> 2; 0.0 on atom 0.0; 1.1: 0.8 / 0.2 onto
    # 1.0 / 1.5; -0.2: 0.4 / 0.6 onto -0.5 / 0.0
    expected = torch.tensor([[0.1, 0.04, 0.2 + 0.06, 0.02, 0.03 + 0.2, 0.05, 0.15 + 0.15]])
    torch.testing.assert_close(project_distribution(probs, targets, -1.0, 2.0, 7), expected, rtol=0, atol=1e-6)


def test_categorical_critic_is_a_layer_normed_relu_mlp_per_head_and_q_is_the_mean_atom():
    critic = CategoricalCritic(5, [16, 8], 9, -3.0, 5.0, heads=3)
    params = randomized_params(critic.net)
    state, action = torch.randn(6, 3), torch.rand(6, 2) * 2 - 1
    logits = critic.logits(state, action)
    x = torch.cat([state, action], -1).double().numpy()
    atoms = np.linspace(-3.0, 5.0, 9)
    for head in range(3):
        by_hand = mlp_by_hand(x, params, head, 2, layer_norm=True)
        np.testing.assert_allclose(logits[head].detach().numpy(), by_hand, rtol=1e-4, atol=1e-4)
        probs = np.exp(by_hand - by_hand.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        np.testing.assert_allclose(
            critic.q_values(state, action)[head].detach().numpy(), probs @ atoms, rtol=1e-4, atol=1e-4
        )


def test_twin_q_critic_is_a_relu_mlp_per_head():
    critic = TwinQCritic(5, [16, 8])
    params = randomized_params(critic.net)
    state, action = torch.randn(6, 3), torch.rand(6, 2) * 2 - 1
    q = critic(state, action)
    assert q.shape == (2, 6)
    x = torch.cat([state, action], -1).double().numpy()
    for head in range(2):
        np.testing.assert_allclose(
            q[head].detach().numpy(), mlp_by_hand(x, params, head, 2, layer_norm=False)[:, 0], rtol=1e-4, atol=1e-4
        )
