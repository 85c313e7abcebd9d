"""n-step returns, truncation vs termination."""

import numpy as np
import pytest

from omad_train.replay import ReplayBuffer, Transition

GAMMA = 0.9


def make_buffer(n_step, num_envs=1):
    return ReplayBuffer(100, {"state": (1,), "obs": (1, 1), "action": (1,)}, num_envs, n_step, GAMMA)


def step(t, reward, terminated=False, truncated=False):
    f = np.float32
    return Transition(np.array([t], f), np.array([[t]], f), np.array([t], f), reward,
                      np.array([t + 1], f), np.array([[t + 1]], f), terminated, truncated)


def stored(buf):
    d = buf.data
    return [(d["state"][i, 0], d["reward"][i], d["discount"][i], d["done"][i], d["next_state"][i, 0]) for i in range(len(buf))]


def test_n_step_return_without_episode_end():
    buf = make_buffer(3)
    for t, r in enumerate([1.0, 2.0, 3.0, 4.0]):
        buf.add(0, step(t, r))
    rows = stored(buf)
    assert len(rows) == 2
    assert rows[0] == pytest.approx((0, 1 + 0.9 * 2 + 0.81 * 3, 0.729, 0.0, 3))
    assert rows[1] == pytest.approx((1, 2 + 0.9 * 3 + 0.81 * 4, 0.729, 0.0, 4))


def test_termination_flushes_shortened_windows_without_bootstrap():
    buf = make_buffer(3)
    buf.add(0, step(0, 1.0))
    buf.add(0, step(1, 2.0, terminated=True))
    rows = stored(buf)
    assert rows[0] == pytest.approx((0, 1 + 0.9 * 2, 0.81, 1.0, 2))
    assert rows[1] == pytest.approx((1, 2.0, 0.9, 1.0, 2))


def test_truncation_bootstraps_from_the_true_next_state():
    buf = make_buffer(3)
    buf.add(0, step(0, 1.0))
    buf.add(0, step(1, 2.0, truncated=True))
    rows = stored(buf)
    assert rows[0] == pytest.approx((0, 1 + 0.9 * 2, 0.81, 0.0, 2))
    assert rows[1] == pytest.approx((1, 2.0, 0.9, 0.0, 2))
    # the next episode starts a fresh window
    buf.add(0, step(10, 5.0))
    assert len(buf) == 2


def test_one_step_and_env_copies_are_independent():
    buf = make_buffer(1, num_envs=2)
    buf.add(0, step(0, 1.0))
    buf.add(1, step(5, 7.0, terminated=True))
    assert np.allclose(stored(buf), [(0, 1.0, 0.9, 0.0, 1), (5, 7.0, 0.9, 1.0, 6)])


def test_state_round_trip_keeps_pending_windows():
    buf = make_buffer(3)
    for t in range(5):
        buf.add(0, step(t, float(t)))
    copy = make_buffer(3)
    copy.load_state(buf.state_arrays(), buf.state_meta())
    for b in (buf, copy):
        b.add(0, step(5, 5.0, terminated=True))
    assert len(buf) == len(copy) == 6  # 3 full windows, then 3 flushed at termination
    assert np.array_equal(stored(buf), stored(copy))
