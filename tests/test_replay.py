"""n-step returns, truncation vs termination, the ring once it wraps, checkpoint round trips."""

import numpy as np
import pytest

from omad.train.replay import ReplayBuffer, ReplaySample, RowLayout, Transition

GAMMA = 0.9


def make_buffer(n_step, num_envs=1, capacity=100):
    return ReplayBuffer(capacity, {"state": (1,), "obs": (1, 1), "action": (1,)}, num_envs, n_step, GAMMA)


def step(t, reward, terminated=False, truncated=False):
    """Every field of step t distinct: state t, obs t + 0.25, action t + 0.5, next state t + 1, next obs t + 1.25."""
    f = np.float32
    return Transition(
        np.array([t], f),
        np.array([[t + 0.25]], f),
        np.array([t + 0.5], f),
        reward,
        np.array([t + 1], f),
        np.array([[t + 1.25]], f),
        terminated,
        truncated,
    )


def stored(buf):
    d = buf.data
    return [
        (d["state"][i, 0], d["reward"][i], d["discount"][i], d["done"][i], d["next_state"][i, 0])
        for i in range(len(buf))
    ]


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


def every_field(buf):
    """All stored rows, every field (a restored window must keep its obs and action too)."""
    return {k: v[: len(buf)] for k, v in buf.data.items()}


def assert_same_rows(a, b):
    fields_a, fields_b = every_field(a), every_field(b)
    assert fields_a.keys() == fields_b.keys()
    for k in fields_a:
        np.testing.assert_array_equal(fields_a[k], fields_b[k], err_msg=k)


def test_state_round_trip_keeps_pending_windows():
    """Restored pending windows write every field as if the buffer had never been checkpointed."""
    buf = make_buffer(3)
    for t in range(5):  # 3 rows written, 2 steps pending
        buf.add(0, step(t, float(t)))
    copy = make_buffer(3)
    copy.load_state(buf.state_arrays(), buf.state_meta())
    for b in (buf, copy):
        b.add(0, step(5, 5.0, terminated=True))
    assert len(buf) == len(copy) == 6  # 3 full windows, then 3 flushed at termination
    assert_same_rows(buf, copy)
    np.testing.assert_allclose(copy.data["obs"][:6, 0, 0], np.arange(6) + 0.25)  # row i starts at step i
    np.testing.assert_allclose(copy.data["action"][:6, 0], np.arange(6) + 0.5)


# -- the ring wraps -------------------------------------------------------------------------------
def wrapped_buffer():
    """Capacity 7, 17 rows written (n_step 3, reward of step t = t + 1):
    episode 1 is steps 0..13 ending in a termination, which flushes rows 11..13 just before the
    ring's second wrap; episode 2 is steps 20..22 ending in a truncation, flushing rows 14..16 after it."""
    buf = make_buffer(3, capacity=7)
    for t in range(14):
        buf.add(0, step(t, t + 1.0, terminated=t == 13))
    for t in (20, 21, 22):
        buf.add(0, step(t, t + 1.0, truncated=t == 22))
    return buf


# The 7 surviving rows (10..16), by hand: state -> (return, discount, done, next_state). Rows 0..9 are evicted.
WRAPPED_ROWS = {
    10: (11 + 0.9 * 12 + 0.81 * 13, 0.729, 0.0, 13),  # a full window before the episode's end
    11: (12 + 0.9 * 13 + 0.81 * 14, 0.729, 1.0, 14),  # full window ending in the termination
    12: (13 + 0.9 * 14, 0.81, 1.0, 14),
    13: (14.0, 0.9, 1.0, 14),  # written to the ring's last slot
    20: (21 + 0.9 * 22 + 0.81 * 23, 0.729, 0.0, 23),  # slot 0 again; truncated, so no done
    21: (22 + 0.9 * 23, 0.81, 0.0, 23),
    22: (23.0, 0.9, 0.0, 23),
}


def sampled_rows(buf, seed=0, draws=2000):
    batch = buf.sample(np.random.default_rng(seed), draws)
    fields = batch.state[:, 0], batch.reward, batch.discount, batch.done, batch.next_state[:, 0]
    return batch, list(zip(*fields))


def test_wrapped_ring_samples_every_stored_row_and_no_evicted_one():
    buf = wrapped_buffer()
    assert len(buf) == 7
    batch, rows = sampled_rows(buf)
    assert {int(r[0]) for r in rows} == set(WRAPPED_ROWS)
    for state, *fields in rows:
        assert fields == pytest.approx(WRAPPED_ROWS[int(state)]), state
    # the other fields travel with their row
    np.testing.assert_array_equal(batch.obs[:, 0, 0], batch.state[:, 0] + 0.25)
    np.testing.assert_array_equal(batch.action[:, 0], batch.state[:, 0] + 0.5)
    np.testing.assert_array_equal(batch.next_obs[:, 0, 0], batch.next_state[:, 0] + 0.25)


def test_wrapped_ring_round_trips_through_a_checkpoint():
    buf = wrapped_buffer()
    copy = make_buffer(3, capacity=7)
    copy.load_state(buf.state_arrays(), buf.state_meta())
    original, restored = sampled_rows(buf, seed=5)[0], sampled_rows(copy, seed=5)[0]
    for key in original._fields:
        np.testing.assert_array_equal(getattr(original, key), getattr(restored, key), err_msg=key)
    # both keep writing at the same slot: the next row evicts the oldest (state 10) in both
    for b in (buf, copy):
        b.add(0, step(30, 1.0, terminated=True))
        assert {int(r[0]) for r in sampled_rows(b)[1]} == set(WRAPPED_ROWS) - {10} | {30}
    assert_same_rows(buf, copy)


def test_map_applies_the_function_to_every_field_in_storage_order():
    fields = ReplaySample(*(np.full(2, float(i)) for i in range(len(ReplaySample._fields))))
    mapped = fields.map(lambda v: v * 10 + 1)
    assert isinstance(mapped, ReplaySample)
    assert [m.tolist() for m in mapped] == [[10.0 * i + 1] * 2 for i in range(len(ReplaySample._fields))]


def test_growing_storage_keeps_every_row_and_a_restore_allocates_what_it_needs():
    """Storage starts empty and grows only when a row does not fit: to 1024 rows, then doubling, capped at
    the capacity (amortised O(1) per row, at most twice the memory in use). 4200 one-step rows must all
    survive the growth, sample as float32, and load into a fresh buffer that never grew."""
    buf = make_buffer(1, capacity=5000)
    growth = {}  # rows stored when the storage grew -> its new size
    for t in range(4200):
        allocated = len(buf.data["reward"])
        buf.add(0, step(t, float(t)))
        if len(buf.data["reward"]) != allocated:
            growth[len(buf)] = len(buf.data["reward"])
    assert growth == {1: 1024, 1025: 2048, 2049: 4096, 4097: 5000}
    np.testing.assert_array_equal(buf.data["state"][:4200, 0], np.arange(4200))
    np.testing.assert_allclose(buf.data["action"][:4200, 0], np.arange(4200) + 0.5)
    batch = buf.sample(np.random.default_rng(0), 64)
    assert all(v.dtype == np.float32 for v in batch)
    restored = make_buffer(1, capacity=5000)
    restored.load_state(buf.state_arrays(), buf.state_meta())
    for key, values in buf.data.items():
        np.testing.assert_array_equal(restored.data[key][:4200], values[:4200], err_msg=key)


# -- one row per transition, and the device copy (omad/train/cuda.py; here on the CPU) ----------------
def test_row_layout_puts_the_fields_side_by_side_in_storage_order():
    layout = RowLayout({"state": (3,), "obs": (2, 4), "action": (5,)})
    # by hand: state 3, obs 8, action 5, reward, discount, done 1 each, next_state 3, next_obs 8
    assert layout.offsets == {
        "state": 0,
        "obs": 3,
        "action": 11,
        "reward": 16,
        "discount": 17,
        "done": 18,
        "next_state": 19,
        "next_obs": 22,
    }
    assert layout.width == 30
    rng = np.random.default_rng(0)
    data = {k: rng.standard_normal((6, *shape)).astype(np.float32) for k, shape in layout.shapes.items()}
    rows = layout.pack(data, 1, 4)
    assert rows.shape == (3, 30)
    np.testing.assert_array_equal(rows[:, 3:11], data["obs"][1:4].reshape(3, 8))
    np.testing.assert_array_equal(rows[:, 17], data["discount"][1:4])
    unpacked = layout.unpack(rows)
    for key in ReplaySample._fields:
        np.testing.assert_array_equal(getattr(unpacked, key), data[key][1:4], err_msg=key)
        assert np.shares_memory(getattr(unpacked, key), rows), key  # views, not copies


def distinct_step(t):
    """Step t with every field distinct from every other step's (two agents' obs of width 2)."""
    f = np.float32
    return Transition(
        np.array([t, -t], f),
        np.array([[t + 0.25, t], [t + 0.75, -t]], f),
        np.array([t + 0.5, t - 0.5, 2 * t], f),
        float(t) + 0.125,
        np.array([t + 1, -t - 1], f),
        np.array([[t + 1.25, t], [t + 1.75, -t]], f),
        t % 7 == 6,
        False,
    )


def test_device_copy_samples_exactly_what_the_buffer_samples():
    """Same generator state, same batch, bit for bit: before and after the ring wraps, after a few
    more rows (uploaded alone) and after a restore (uploaded whole). Rows come back as views of one
    [B, width] tensor, the same tensor every time."""
    import torch

    from omad.train.cuda import DeviceReplay

    shapes = {"state": (2,), "obs": (2, 2), "action": (3,)}
    buf = ReplayBuffer(50, shapes, 1, 1, GAMMA)
    copy = DeviceReplay(buf, "cpu", 16)
    uploads = []
    upload = copy._upload
    copy._upload = lambda start, stop: (uploads.append((start, stop)), upload(start, stop))

    def check(seed):
        """Sample both ways and compare; returns the device batch and the uploads this sample made."""
        uploads.clear()
        device_batch = copy.sample(np.random.default_rng(seed))
        host_batch = buf.sample(np.random.default_rng(seed), 16)
        for key in ReplaySample._fields:
            np.testing.assert_array_equal(getattr(device_batch, key).numpy(), getattr(host_batch, key), err_msg=key)
            assert getattr(device_batch, key).data_ptr() >= copy.rows.data_ptr()
        return device_batch, list(uploads)

    for t in range(37):
        buf.add(0, distinct_step(t))
    assert check(0)[1] == [(0, 37)]
    for t in range(37, 48):
        buf.add(0, distinct_step(t))
    assert check(1)[1] == [(37, 48)]
    for t in range(48, 53):  # slots 48, 49, then 0, 1, 2: the ring wraps
        buf.add(0, distinct_step(t))
    assert check(2)[1] == [(48, 50), (0, 3)]
    for t in range(53, 120):  # more rows than the capacity: everything is new
        buf.add(0, distinct_step(t))
    assert check(3)[1] == [(0, 50)]
    batch, uploads_made = check(4)
    assert uploads_made == [] and batch.state.data_ptr() == copy.rows.data_ptr()

    restored = ReplayBuffer(50, shapes, 1, 1, GAMMA)
    for s in range(10):
        restored.add(0, distinct_step(1000 + s))
    restored_copy = DeviceReplay(restored, "cpu", 16)
    restored_copy.sample(np.random.default_rng(0))
    restored.load_state(buf.state_arrays(), buf.state_meta())  # a resume replaces the buffer's contents

    def same(copy, source):
        for seed in range(3):
            got = copy.sample(np.random.default_rng(seed))
            want = source.sample(np.random.default_rng(seed), 16)
            for key in ReplaySample._fields:
                assert torch.equal(getattr(got, key), torch.from_numpy(getattr(want, key))), key

    same(restored_copy, buf)
    # A second restore with no write in between (a run resumed twice) is uploaded whole again.
    other = ReplayBuffer(50, shapes, 1, 1, GAMMA)
    for s in range(30):
        other.add(0, distinct_step(2000 + s))
    restored.load_state(other.state_arrays(), other.state_meta())
    same(restored_copy, other)
    # A copy made before the restore and synced only after it (how a resumed run starts).
    fresh = ReplayBuffer(50, shapes, 1, 1, GAMMA)
    fresh_copy = DeviceReplay(fresh, "cpu", 16)
    fresh.load_state(buf.state_arrays(), buf.state_meta())
    same(fresh_copy, buf)


def test_storage_is_float32_as_it_grows_and_after_a_restore():
    """Half the memory of numpy's default float64, and the dtype the sample rows are packed in."""
    buf = make_buffer(n_step=1, capacity=3000)
    for t in range(1500):  # past the first allocation of 1024 rows
        buf.add(0, step(t, 1.0))
    assert {v.dtype for v in buf.data.values()} == {np.dtype(np.float32)}
    restored = make_buffer(n_step=1, capacity=3000)
    restored.load_state(buf.state_arrays(), buf.state_meta())
    assert {v.dtype for v in restored.data.values()} == {np.dtype(np.float32)}
    assert all(v.dtype == np.float32 for v in restored.sample(np.random.default_rng(0), 8))


def test_device_copy_refuses_rows_of_the_wrong_width():
    import torch

    from omad.train.cuda import DeviceReplay

    buf = ReplayBuffer(10, {"state": (2,), "obs": (2, 2), "action": (3,)}, 1, 1, GAMMA)
    with pytest.raises(ValueError, match=r"float32 \[4, 18\]"):
        DeviceReplay(buf, "cpu", 4, rows=torch.zeros(4, 17))
