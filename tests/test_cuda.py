"""The CUDA paths: OMAD's update captured as CUDA graphs, replay sampled on the device, acting with one
observation transfer per step, and serving through ONNX Runtime's CUDA provider. Each compares against
the plain path it replaces. Without a CUDA device (or without onnxruntime's CUDA provider) they skip,
saying so; `bench/gpu_check.sh` runs them on a GPU machine. The one test not marked runs everywhere:
the I/O-binding code path that serving takes on CUDA, run on the CPU against a plain session."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import random_inputs, toy_batch, toy_omad_config, toy_spec

from omad.runtime.onnx_policy import BoundRunner, OnnxPolicy
from omad.train.algos.omad import OMAD
from omad.train.config import build_config
from omad.train.cuda import DeviceReplay, make_sampler
from omad.train.layout import AgentLayout
from omad.train.replay import ReplayBuffer, ReplaySample, Transition

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")
needs_ort_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs onnxruntime's CUDAExecutionProvider (the `gpu` extra on a CUDA machine)",
)

SPEC = toy_spec([5, 7, 3], [2, 3, 1])  # unequal agents: padding must not leak
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def toy_omad(device: str, compile_: bool, cuda_graphs: bool | None = None, seed: int = 0) -> OMAD:
    cfg = toy_omad_config(batch_size=32, compile=compile_)
    torch.manual_seed(seed)
    return OMAD(cfg, AgentLayout(SPEC), SPEC.state_dim, (-10.0, 10.0), device, cuda_graphs=cuda_graphs)


# -- training ---------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("compile_", [False, True], ids=["graphs", "compiled+graphs"])
def test_graphed_update_equals_the_eager_update(compile_):
    """14 updates (policy_delay 2): each kind warms up eagerly 3 times, is captured at its 4th and
    replayed after; every update's metrics and the final weights must match the eager CUDA update."""
    layout = AgentLayout(SPEC)
    rng = np.random.default_rng(0)
    batches = [toy_batch(layout, SPEC.state_dim, 32, rng).map(lambda t: t.cuda()) for _ in range(14)]
    eager = toy_omad("cuda", compile_=False, cuda_graphs=False)
    graphed = toy_omad("cuda", compile_=compile_, cuda_graphs=True)
    torch.cuda.manual_seed(0)
    eager_metrics = [{k: v.clone() for k, v in eager.update(b).items()} for b in batches]
    torch.cuda.manual_seed(0)
    graphed_metrics = [graphed.update(b) for b in batches]
    assert graphed.graphs is not None and graphed.graphs.failure is None
    assert set(graphed.graphs.graphs) == {False, True} and graphed.graphs.replays == 14 - 2 * 3
    for i, (want, got) in enumerate(zip(eager_metrics, graphed_metrics)):
        assert want.keys() == got.keys(), i
        for key in want:
            torch.testing.assert_close(got[key], want[key], **TOLERANCE, msg=f"update {i}: {key}")
    for name in ("actors", "critic", "critic_target"):
        torch.testing.assert_close(
            graphed.modules()[name].state_dict(), eager.modules()[name].state_dict(), **TOLERANCE
        )
    torch.testing.assert_close(graphed.log_alpha, eager.log_alpha, **TOLERANCE)
    # Adam is capturable only while capturing: a checkpoint of this run resumes on the CPU too
    assert not any(g["capturable"] for opt in graphed.optimizers().values() for g in opt.param_groups)


@needs_cuda
def test_restored_optimizer_state_is_recaptured():
    """Loading optimizer state replaces the tensors a graph captured: the next update must warm up and
    capture again, and then compute what an eager copy given the same state computes."""
    layout = AgentLayout(SPEC)
    rng = np.random.default_rng(1)
    batches = [toy_batch(layout, SPEC.state_dim, 32, rng).map(lambda t: t.cuda()) for _ in range(20)]
    graphed = toy_omad("cuda", compile_=False, cuda_graphs=True)
    for b in batches[:10]:
        graphed.update(b)
    eager = toy_omad("cuda", compile_=False, cuda_graphs=False)
    for name, module in graphed.modules().items():
        eager.modules()[name].load_state_dict(module.state_dict())
    for name, opt in graphed.optimizers().items():
        eager.optimizers()[name].load_state_dict(copy.deepcopy(opt.state_dict()))
        opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # as a checkpoint restore does: new state tensors
    with torch.no_grad():
        eager.log_alpha.copy_(graphed.log_alpha)
    eager.num_updates = graphed.num_updates
    replays = graphed.graphs.replays
    torch.cuda.manual_seed(3)
    for b in batches[10:]:
        graphed.update(b)
    torch.cuda.manual_seed(3)
    for b in batches[10:]:
        eager.update(b)
    assert graphed.graphs.replays == replays + 10 - 2 * 3  # warmed up and captured again
    for name in ("actors", "critic", "critic_target"):
        torch.testing.assert_close(
            graphed.modules()[name].state_dict(), eager.modules()[name].state_dict(), **TOLERANCE
        )


def random_transition(rng: np.random.Generator, terminated: bool) -> Transition:
    layout = AgentLayout(SPEC)

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    action = rng.uniform(-1, 1, layout.joint_dim).astype(np.float32)
    obs_shape = (layout.n, layout.obs_max)
    return Transition(
        normal(SPEC.state_dim),
        normal(*obs_shape),
        action,
        float(rng.standard_normal()),
        normal(SPEC.state_dim),
        normal(*obs_shape),
        terminated,
        False,
    )


def filled_buffer(capacity: int, writes: int, rng: np.random.Generator) -> ReplayBuffer:
    layout = AgentLayout(SPEC)
    shapes = {"state": (SPEC.state_dim,), "obs": (layout.n, layout.obs_max), "action": (layout.joint_dim,)}
    buf = ReplayBuffer(capacity, shapes, 1, 1, 0.99)
    for t in range(writes):
        buf.add(0, random_transition(rng, terminated=t % 50 == 49))
    return buf


@needs_cuda
@pytest.mark.parametrize("on_device", [True, False], ids=["device-rows", "pinned-host-rows"])
def test_device_sampling_equals_host_sampling(on_device):
    rng = np.random.default_rng(0)
    buf = filled_buffer(300, 420, rng)  # the ring has wrapped
    replay = DeviceReplay(buf, "cuda", 64, on_device=on_device)
    assert replay.storage.is_cuda == on_device and replay.storage.is_pinned() == (not on_device)
    for seed in range(3):
        got = replay.sample(np.random.default_rng(seed))
        want = buf.sample(np.random.default_rng(seed), 64)
        for key in ReplaySample._fields:
            assert getattr(got, key).is_cuda
            assert torch.equal(getattr(got, key).cpu(), torch.from_numpy(getattr(want, key))), key
        for _ in range(5):  # new rows, uploaded before the next sample
            buf.add(0, random_transition(rng, terminated=False))


@needs_cuda
def test_trainer_sampler_writes_into_the_captured_update_batch():
    algo = toy_omad("cuda", compile_=False, cuda_graphs=True)
    buf = filled_buffer(100, 80, np.random.default_rng(0))
    sample = make_sampler(buf, torch.device("cuda"), 32, algo.batch_rows)
    batch = sample(np.random.default_rng(0))
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(batch, algo.graphs.batch))
    want = buf.sample(np.random.default_rng(0), 32)
    for key in ReplaySample._fields:
        assert torch.equal(getattr(batch, key).cpu(), torch.from_numpy(getattr(want, key))), key


@needs_cuda
@pytest.mark.parametrize("compile_", [False, True], ids=["eager", "compiled"])
def test_acting_moves_one_observation_batch_per_step(compile_):
    """One host-to-device copy per act (the stacked observations of every agent and env copy), and
    the same actions as the eager actors given the same noise."""
    from torch.profiler import ProfilerActivity, profile

    algo = toy_omad("cuda", compile_=compile_)
    obs = np.random.default_rng(0).standard_normal((3, 4, 7)).astype(np.float32)
    for _ in range(3):  # compile and record (reduce-overhead) before counting
        algo.act(obs)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        algo.act(obs)
    copies = [e for e in prof.events() if "HtoD" in e.name]
    assert len(copies) == 1, [e.name for e in copies]
    torch.cuda.manual_seed(5)
    got = algo.act(obs)
    torch.cuda.manual_seed(5)
    with torch.no_grad():
        noise = algo.noise(4)
        want = algo.actors(torch.from_numpy(obs).cuda(), noise, with_cost=False).action.cpu().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# -- serving ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A verified export of one agent with random weights (obs 11, act 3, asymmetric bounds, K = 3)."""
    from omad.core.envs.base import AgentSpec, EnvSpec
    from omad.export.onnx import export_policy
    from omad.train.algos.omad import make_actors
    from omad.train.policies import AgentPolicy

    spec = EnvSpec("toy", (AgentSpec("agent_0", 11, 3, (-1.0, -2.0, 0.0), (1.0, 0.5, 3.0)),), 4, 1)
    cfg = build_config(dict(env="mpe:simple_spread_v3", denoising_steps=3, actor_hidden=[32, 32]))
    torch.manual_seed(0)
    policy = AgentPolicy("agent_0", make_actors(cfg, AgentLayout(spec)).agent_hparams(0)).eval()
    path = tmp_path_factory.mktemp("export") / "agent_0.onnx"
    export_policy(policy, path, env_id="mamujoco:HalfCheetah-2x3", algo="omad", source_run="tests/test_cuda.py")
    return path


def test_bound_runner_computes_what_the_session_computes(model_path):
    """Serving's CUDA code path (I/O binding, buffers per batch size, refilled per call) on the CPU."""
    policy = OnnxPolicy(model_path)
    runner = BoundRunner(policy.session, policy.info, "cpu", graphs=False)
    for seed, batch in enumerate([1, 5, 1, 64, 5, 5]):
        obs, noise = random_inputs(policy, batch, seed)
        got = runner.run(obs, noise)
        np.testing.assert_array_equal(got, policy.run(obs, noise))
    assert sorted(runner.bound) == [1, 5, 64]


@needs_ort_cuda
def test_cuda_provider_gives_the_cpu_provider_actions(model_path):
    cpu, cuda = OnnxPolicy(model_path), OnnxPolicy(model_path, provider="cuda")
    assert cuda.session.get_providers()[0] == "CUDAExecutionProvider"
    for seed, batch in enumerate([1, 1, 1, 7, 7, 7, 64, 64, 1]):  # repeats: graph capture, then replays
        obs, noise = random_inputs(cpu, batch, seed)
        np.testing.assert_allclose(cuda.run(obs, noise), cpu.run(obs, noise), rtol=1e-4, atol=1e-5)


@needs_ort_cuda
def test_merged_batch_on_cuda_matches_single_requests(model_path):
    """Twelve requests merged into one batch against each alone, on CUDA: equal to float tolerance
    (bit-identity is what bench/gpu_check.py measures and reports)."""
    policy = OnnxPolicy(model_path, provider="cuda")
    obs, noise = random_inputs(policy, 12, 0)
    merged = policy.run(obs, noise)
    for _ in range(2):
        alone = np.concatenate([policy.run(obs[i : i + 1], noise[:, i : i + 1]) for i in range(12)])
    np.testing.assert_allclose(merged, alone, rtol=1e-5, atol=1e-6)


@needs_ort_cuda
def test_serve_with_the_cuda_provider_answers_as_the_cpu_provider(model_path):
    from omad.serve.client import PolicyClient
    from omad.serve.config import ServeConfig
    from omad.serve.testing import ServerThread

    cpu = OnnxPolicy(model_path)
    with (
        ServerThread(ServeConfig(model=model_path, port=0, provider="cuda")) as server,
        PolicyClient(server.addr, retries=0, timeout_s=30) as client,
    ):
        for seed, batch in enumerate([1, 3, 3, 3]):
            obs, noise = random_inputs(cpu, batch, seed)
            np.testing.assert_allclose(client.act(obs, noise=noise), cpu.run(obs, noise), rtol=1e-4, atol=1e-5)


# -- several jobs per device (omad sweep --jobs-per-device) -----------------------------------------
def test_jobs_per_device_gives_each_device_w_worker_slots(monkeypatch):
    from omad.experiments.sweep import SweepError, device_slots, run_sweep

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # the ids a worker must see are the visible ones
    assert device_slots(2, "auto") == ["3", "3", "5", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert device_slots(3, "cuda") == ["0", "0", "0", "1", "1", "1"]
    assert device_slots(2, "cpu") == [None, None]  # jobs on the CPU: it is the one device
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert device_slots(4, "auto") == [None] * 4
    with pytest.raises(SweepError, match="torch sees no CUDA device"):
        device_slots(2, "cuda")
    with pytest.raises(SweepError, match="at least 1"):
        device_slots(0, "auto")
    with pytest.raises(SweepError, match="not both"):
        run_sweep("unused", ["mpe:simple_spread_v3"], ["omad"], [0], local_workers=2, jobs_per_device=2)
