"""Tests written to kill mutants of `make mutation` (bench/mutation.py), each against a hand computation
or an independent implementation, and fast enough to run for every mutant (no trained model, no
server): request validation on a hand-built ONNX graph, the wire tensor codec, the bearer-token
interceptor with fake gRPC calls, and the critics against a forward pass written out in numpy."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import math
import os
import re
import struct
import subprocess
import sys
import threading
import time
import types
import warnings
from collections import namedtuple

import grpc
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from test_batching import GatedModel, caller_job, callers_in, fake_model, plain
from test_update_math import (
    ACT_DIMS,
    DONE,
    JOINT_HIGH,
    JOINT_LOW,
    LAYOUT,
    fix_noise,
    joint_of,
    make_algo,
    make_batch,
    perturb,
)

from omad.core.envs.base import AgentSpec, EnvSpec
from omad.runtime.onnx_policy import OnnxPolicy, RuntimeModelError
from omad.runtime.schema import EXPORT_FORMAT_VERSION, ModelInfo, encode_metadata, weights_sha256
from omad.serve._generated import grpc_service_pb2, policy_pb2
from omad.serve.batching import BatcherClosed, Job, MicroBatcher
from omad.serve.security import UNAUTHENTICATED_MESSAGE, BearerTokenInterceptor, server_credentials
from omad.serve.tensors import MAX_DIM, MAX_RANK, TensorError, decode_float32, from_tensor, to_tensor
from omad.train.actors import LOG_STD_MAX, LOG_STD_MIN, GaussianActors, PerAgentActors
from omad.train.algos import make_algorithm
from omad.train.algos.common import clip_grad_norm_per_agent
from omad.train.algos.sequential import HASAC, HATD3
from omad.train.config import TrainConfig, build_config
from omad.train.critic import CategoricalCritic, TwinQCritic, project_distribution
from omad.train.layout import AgentLayout
from omad.train.policies import AgentPolicy
from omad.train.replay import ReplayBuffer, ReplaySample, Transition

# ---- request validation: OnnxPolicy on a graph computing action = obs @ W + sum_k noise[k] ---------

D_O, D_A, K = 3, 2, 2
W = np.array([[1.0, -2.0], [0.5, 0.25], [-1.0, 3.0]], np.float32)


def expected_action(obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return np.asarray(obs, np.float64) @ W + np.asarray(noise, np.float64).sum(0)


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> OnnxPolicy:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["obs", "W"], ["h"]),
            helper.make_node("ReduceSum", ["noise", "axis0"], ["n"], keepdims=0),
            helper.make_node("Add", ["h", "n"], ["action"]),
        ],
        "hand_built",
        [
            helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", D_O]),
            helper.make_tensor_value_info("noise", TensorProto.FLOAT, [K + 1, "batch", D_A]),
        ],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", D_A])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.array([0], np.int64), "axis0")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    info = ModelInfo(
        name="agent_0",
        obs_dim=D_O,
        act_dim=D_A,
        denoising_steps=K,
        action_low=(0.0, -0.4),
        action_high=(1.0, 0.4),
        env_id="hand-built",
        algo="omad",
        sha256="",
        weights_sha256=weights_sha256(model.SerializeToString()),  # every load checks the graph against it
        format_version=EXPORT_FORMAT_VERSION,
        source_run="hand-built",
    )
    helper.set_model_props(model, encode_metadata(info))
    path = tmp_path_factory.mktemp("hand_built") / "agent_0.onnx"
    onnx.save(model, path)
    return OnnxPolicy(path)


def obs_batch(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, D_O)).astype(np.float32)


def test_act_computes_the_graph_on_the_given_noise(policy):
    obs = obs_batch(4)
    noise = np.random.default_rng(1).standard_normal((K + 1, 4, D_A)).astype(np.float32)
    action = policy.act(obs, noise)
    assert action.dtype == np.float32 and action.shape == (4, D_A)
    np.testing.assert_allclose(action, expected_action(obs, noise), rtol=1e-6, atol=1e-6)


def test_seed_draws_standard_normal_noise_from_default_rng(policy):
    obs = obs_batch(5)
    noise = np.random.default_rng(7).standard_normal((K + 1, 5, D_A), dtype=np.float32)
    np.testing.assert_allclose(policy.act(obs, seed=7), expected_action(obs, noise), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(policy.sample_noise(5, seed=7), noise)
    assert policy.sample_noise(5, seed=7).dtype == np.float32


def test_zero_noise_and_server_drawn_noise(policy):
    obs = obs_batch(3)
    np.testing.assert_allclose(policy.act(obs, zero_noise=True), obs.astype(np.float64) @ W, rtol=1e-6, atol=1e-6)
    zeros = policy.sample_noise(3, zero_noise=True)
    assert zeros.shape == (K + 1, 3, D_A) and zeros.dtype == np.float32 and not zeros.any()
    drawn = policy.sample_noise(4000)  # no seed: fresh standard-normal noise
    assert drawn.shape == (K + 1, 4000, D_A)
    assert abs(drawn.mean()) < 0.05 and abs(drawn.std() - 1.0) < 0.05


def test_one_observation_is_a_batch_of_one(policy):
    obs = obs_batch(1)
    noise = np.full((K + 1, 1, D_A), 0.5, np.float32)
    action = policy.act(obs[0], noise)
    assert action.shape == (1, D_A)
    np.testing.assert_allclose(action, expected_action(obs, noise), rtol=1e-6, atol=1e-6)


def test_validate_returns_contiguous_float32_of_any_real_dtype(policy):
    for obs in (
        obs_batch(2).astype(np.float64).tolist(),
        np.arange(6, dtype=np.int64).reshape(2, 3),
        np.arange(6, dtype=np.uint8).reshape(2, 3),
        np.asfortranarray(obs_batch(2).astype(np.float64)),
    ):
        checked, noise = policy.validate(obs)
        assert checked.dtype == np.float32 and checked.flags.c_contiguous and noise is None
        np.testing.assert_array_equal(checked, np.asarray(obs, np.float32))
    _, noise = policy.validate(obs_batch(2), np.ones((K + 1, 2, D_A), np.float64)[:, :, ::-1])
    assert noise.dtype == np.float32 and noise.flags.c_contiguous and noise.shape == (K + 1, 2, D_A)


@pytest.mark.parametrize(
    ("obs", "message"),
    [
        (
            np.zeros((2, D_O + 1)),
            rf"agent_0: obs must have shape \[B, {D_O}\] \(or \[{D_O}\] for one observation\), got \[2, {D_O + 1}\]",
        ),
        (np.zeros((2, D_O - 1)), rf"got \[2, {D_O - 1}\]"),
        (np.zeros((1, 2, D_O)), rf"got \[1, 2, {D_O}\]"),
        (np.float32(1.0), r"got \[1, 1\]"),  # a scalar is one observation of one value
        (np.zeros((0, D_O)), "agent_0: obs batch is empty"),
        (np.array([[True] * D_O]), "agent_0: obs: must be numeric, got dtype bool"),
        (np.array([[1j] * D_O]), "must be numeric, got dtype complex128"),
        (np.array([["a"] * D_O]), "must be numeric"),
        ([[0.0] * D_O, [0.0]], "agent_0: obs: not a numeric array"),
        (
            np.full((1, D_O), 1e39),
            r"agent_0: obs: contains NaN or inf \(or values beyond float32\) at indices \[\[0, 0\], \[0, 1\], \[0, 2\]\]",
        ),
    ],
)
def test_bad_obs_is_refused_with_what_to_fix(policy, obs, message):
    with pytest.raises(RuntimeModelError, match=message):
        policy.validate(obs)


def test_non_finite_values_are_located_by_their_first_three_indices(policy):
    obs = obs_batch(4)
    obs[0, 1], obs[2, 0], obs[2, 2], obs[3, 1] = np.nan, np.inf, -np.inf, np.nan
    with pytest.raises(
        RuntimeModelError, match=r"obs: contains NaN or inf .* at indices \[\[0, 1\], \[2, 0\], \[2, 2\]\]$"
    ):
        policy.validate(obs)
    noise = np.zeros((K + 1, 4, D_A), np.float32)
    noise[K, 3, 1] = np.nan
    with pytest.raises(RuntimeModelError, match=r"agent_0: noise: contains NaN or inf .* at indices \[\[2, 3, 1\]\]$"):
        policy.validate(obs_batch(4), noise)


@pytest.mark.parametrize(
    "shape", [(K, 2, D_A), (K + 2, 2, D_A), (K + 1, 3, D_A), (K + 1, 1, D_A), (K + 1, 2, D_A + 1), (K + 1, 2 * D_A)]
)
def test_noise_of_the_wrong_shape_is_refused(policy, shape):
    message = f"agent_0: noise must have shape [K+1, B, d_a] = [{K + 1}, 2, {D_A}], got {list(shape)}"
    with pytest.raises(RuntimeModelError, match=re.escape(message)):
        policy.validate(obs_batch(2), np.zeros(shape, np.float32))
    with pytest.raises(RuntimeModelError, match="noise: must be numeric"):
        policy.validate(obs_batch(2), np.zeros((K + 1, 2, D_A), bool))


def test_noise_options_exclude_each_other(policy):
    obs, noise = obs_batch(2), np.zeros((K + 1, 2, D_A), np.float32)
    for kwargs in (dict(seed=1), dict(zero_noise=True), dict(seed=0, zero_noise=True)):
        with pytest.raises(RuntimeModelError, match="agent_0: give at most one of noise, seed and zero_noise"):
            policy.act(obs, noise, **kwargs)
    with pytest.raises(RuntimeModelError, match="agent_0: give at most one of noise, seed and zero_noise"):
        policy.act(obs, seed=0, zero_noise=True)
    for seed in (-1, "x"):
        with pytest.raises(RuntimeModelError, match=rf"agent_0: bad seed {seed!r} \("):
            policy.act(obs, seed=seed)


# ---- the wire tensor: raw little-endian float32 bytes plus shape -----------------------------------


def test_to_tensor_writes_little_endian_float32_bytes_and_shape():
    array = np.arange(6, dtype=np.float64).reshape(2, 3).T  # non-contiguous, float64
    tensor = to_tensor(array)
    assert list(tensor.shape) == [3, 2]
    assert tensor.data == np.ascontiguousarray(array, "<f4").tobytes()
    assert tensor.data[:8] == struct.pack("<2f", 0.0, 3.0)  # row-major, little-endian
    decoded = from_tensor(tensor, "obs")
    np.testing.assert_array_equal(decoded, array)
    assert decoded.dtype == np.dtype("<f4") and not decoded.flags.writeable


def test_decode_checks_rank_dimensions_and_byte_length():
    assert decode_float32(b"", (0,) * MAX_RANK, "obs").shape == (0,) * MAX_RANK
    with pytest.raises(TensorError, match=rf"^obs: rank {MAX_RANK + 1} is over the limit of {MAX_RANK}$"):
        decode_float32(b"", (0,) * (MAX_RANK + 1), "obs")
    assert decode_float32(b"", (0, MAX_DIM), "obs").shape == (0, MAX_DIM)
    for shape in ((0, MAX_DIM + 1), (-1, 2), (2, -1)):
        with pytest.raises(
            TensorError, match=re.escape(f"noise: shape {list(shape)} has a dimension below 0 or above {MAX_DIM}")
        ):
            decode_float32(b"", shape, "noise")
    data = np.array([1.5, -2.0, 3.0, 0.25, 8.0, -1.0], "<f4").tobytes()
    np.testing.assert_array_equal(decode_float32(data, (2, 3), "obs"), [[1.5, -2.0, 3.0], [0.25, 8.0, -1.0]])
    for shape, got in (((2, 2), 24), ((7,), 24)):
        with pytest.raises(
            TensorError,
            match=rf"^obs: shape \[.*\] needs {4 * int(np.prod(shape))} bytes of little-endian float32, got {got} bytes$",
        ):
            decode_float32(data, shape, "obs")
    assert decode_float32(b"\x00\x00\x80\x3f", (), "obs") == 1.0  # rank 0: one value


# ---- the bearer token -----------------------------------------------------------------------------

Details = namedtuple("Details", "method invocation_metadata")
TOKEN = "s3cret"


def every_method() -> list[tuple[str, bool, bool]]:
    """(path, request streaming, response streaming) of every RPC the server registers besides health."""
    methods = [
        (f"/{service.full_name}/{m.name}", m.client_streaming, m.server_streaming)
        for module in (policy_pb2, grpc_service_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    ]
    return [*methods, ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True, True)]


def handler_for(request_streaming: bool, response_streaming: bool) -> grpc.RpcMethodHandler:
    async def behaviour(request, context):
        return "served"

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[request_streaming, response_streaming]
    return make(behaviour)


class AbortingContext:
    def __init__(self):
        self.aborted = None

    async def abort(self, code, details):
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


def intercept(method: str, metadata, handler, rejected: list[str]):
    interceptor = BearerTokenInterceptor(TOKEN, on_reject=rejected.append)

    async def continuation(details):
        assert details.method == method
        return handler

    return asyncio.run(interceptor.intercept_service(continuation, Details(method, metadata)))


def refused(handler: grpc.RpcMethodHandler) -> tuple:
    """The status a (denying) handler answers with, called the way gRPC calls its kind."""
    call = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    context = AbortingContext()

    async def run():
        result = call(None, context)
        if hasattr(result, "__anext__"):
            await result.__anext__()
        else:
            await result

    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(run())
    return context.aborted


BAD_METADATA = [
    (),
    (("authorization", "Bearer wrong"),),
    (("authorization", TOKEN),),
    (("authorization", f"bearer {TOKEN}"),),
    (("authorization", f"Bearer {TOKEN} "),),
    (("authorization", f"Bearer {TOKEN[:-1]}"),),
    (("x-token", f"Bearer {TOKEN}"),),
    (("authorization", "Bearer wrong"), ("authorization", f"Bearer {TOKEN}")),  # the first one counts
]


@pytest.mark.parametrize(("method", "request_streaming", "response_streaming"), every_method())
def test_every_rpc_but_health_needs_the_token(method, request_streaming, response_streaming):
    handler = handler_for(request_streaming, response_streaming)
    for metadata in BAD_METADATA:
        rejected = []
        denying = intercept(method, metadata, handler, rejected)
        assert denying is not handler and rejected == [method], (method, metadata)
        assert (denying.request_streaming, denying.response_streaming) == (request_streaming, response_streaming)
        assert refused(denying) == (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
    for metadata in (
        (("authorization", f"Bearer {TOKEN}"),),
        (("x-other", "1"), ("authorization", f"Bearer {TOKEN}".encode())),
    ):
        rejected = []
        assert intercept(method, metadata, handler, rejected) is handler and rejected == []


def test_health_is_open_and_unknown_methods_are_left_to_grpc():
    rejected = []
    for method in ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"):
        handler = handler_for(False, method.endswith("Watch"))
        assert intercept(method, (), handler, rejected) is handler
    assert intercept("/omad.v1.Policy/NoSuchMethod", (), None, rejected) is None  # gRPC answers UNIMPLEMENTED
    assert rejected == []


def health_status_over_tls(certs, client_ca: bytes | None, client_cert: bool) -> str:
    """Serve gRPC health with server_credentials (TLS, and mTLS with a client CA) and call it once as
    a client that trusts the test CA and (with client_cert) presents the client certificate."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=1))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    credentials = server_credentials(
        (certs / "server.pem").read_bytes(), (certs / "server.key").read_bytes(), client_ca
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        client = grpc.ssl_channel_credentials(
            root_certificates=(certs / "ca.pem").read_bytes(),
            private_key=(certs / "client.key").read_bytes() if client_cert else None,
            certificate_chain=(certs / "client.pem").read_bytes() if client_cert else None,
        )
        with grpc.secure_channel(f"localhost:{port}", client) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.RpcError as err:
                return err.code().name
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    finally:
        server.stop(None)


def test_server_credentials_serve_tls_and_with_a_client_ca_demand_a_client_certificate(certs):
    ca = (certs / "ca.pem").read_bytes()
    assert health_status_over_tls(certs, client_ca=None, client_cert=False) == "SERVING"  # TLS: no client cert needed
    assert health_status_over_tls(certs, client_ca=ca, client_cert=True) == "SERVING"
    assert health_status_over_tls(certs, client_ca=ca, client_cert=False) == "UNAVAILABLE"  # mTLS: refused


# ---- the critics against an independent forward pass ------------------------------------------------


def mlp_by_hand(x: np.ndarray, params: dict[str, np.ndarray], head: int, hidden: int, layer_norm: bool) -> np.ndarray:
    """Linear (-> LayerNorm) -> ReLU per hidden layer, then a linear output, from a stack's parameters."""
    keys = iter(sorted({k.rsplit(".", 1)[0] for k in params}, key=lambda k: int(k.split(".")[-1])))
    h = x
    for _ in range(hidden):
        linear = next(keys)
        h = h @ params[f"{linear}.weight"][head] + params[f"{linear}.bias"][head]
        if layer_norm:
            norm = next(keys)
            h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
            h = h * params[f"{norm}.weight"][head] + params[f"{norm}.bias"][head]
        h = np.maximum(h, 0.0)
    out = next(keys)
    return h @ params[f"{out}.weight"][head] + params[f"{out}.bias"][head]


def randomized_params(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """Every parameter drawn anew (LayerNorm gains and offsets too, so that they matter)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)
    return {k: v.detach().double().numpy() for k, v in module.named_parameters()}


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


def test_projection_onto_a_support_with_half_unit_spacing():
    """Support -1, -0.5, ..., 2 (delta 0.5). Each source atom's mass goes to the two support atoms
    around its target, split linearly; targets outside [-1, 2] clip to the ends."""
    probs = torch.tensor([[0.05, 0.1, 0.15, 0.2, 0.25, 0.15, 0.1]])
    targets = torch.tensor([[0.8, -1.3, 2.0, 0.0, 1.1, 2.7, -0.2]])
    # 0.8: 0.4 / 0.6 onto 0.5 / 1.0; -1.3 -> -1; 2.0 and 2.7 -> 2; 0.0 on atom 0.0; 1.1: 0.8 / 0.2 onto
    # 1.0 / 1.5; -0.2: 0.4 / 0.6 onto -0.5 / 0.0
    expected = torch.tensor([[0.1, 0.04, 0.2 + 0.06, 0.02, 0.03 + 0.2, 0.05, 0.15 + 0.15]])
    torch.testing.assert_close(project_distribution(probs, targets, -1.0, 2.0, 7), expected, rtol=0, atol=1e-6)


# ---- what is deployed and what is resumed: agent policies cut out of a stack, and the state an ----
# ---- algorithm lists for checkpoints ---------------------------------------------------------------

ALGOS = ("omad", "omad-gaussian", "hasac", "hatd3")
# Agents of different sizes with asymmetric bounds, so padding and the bounds' affine map matter.
TOY = EnvSpec(
    "toy", (AgentSpec("left", 3, 2, (0.0, -0.4), (1.0, 0.4)), AgentSpec("right", 5, 1, (-2.0,), (1.0,))), 4, 1
)


def toy_algorithm(name: str, seed: int, perturbed: bool = True):
    torch.manual_seed(seed)
    cfg = build_config(
        dict(
            env="mpe:simple_spread_v3",
            algo=name,
            actor_hidden=[16, 12, 8],
            critic_hidden=[16, 16],
            denoising_steps=3,
            num_atoms=11,
            batch_size=8,
            policy_delay=1,
            lr_actor=1e-2,
            lr_critic=1e-2,
            prior_std=1.7,
            time_features=8,
            dt_init=0.07,
            explore_std=0.3,
        )
    )  # not the defaults
    algo = make_algorithm(cfg, AgentLayout(TOY), TOY.state_dim, (-5.0, 5.0))
    with torch.no_grad():  # weights large enough that every layer shows in the actions
        for p in algo.actors.parameters() if perturbed else ():
            p.add_(torch.randn_like(p) * 0.3)
    return algo


def toy_inputs(algo, B: int = 6):
    L = algo.layout
    obs = torch.zeros(L.n, B, L.obs_max)
    noise = torch.zeros(algo.actors.noise_steps, L.n, B, L.act_max)
    for i, (o, a) in enumerate(zip(L.obs_dims, L.act_dims)):
        obs[i, :, :o] = torch.randn(B, o)
        noise[:, i, :, :a] = torch.randn(algo.actors.noise_steps, B, a)
    return obs, noise


@pytest.mark.parametrize("name", ALGOS)
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


def toy_batch(B: int = 8) -> ReplaySample[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    L = AgentLayout(TOY)
    return ReplaySample(
        state=torch.randn(B, 4, generator=g),
        obs=torch.randn(B, L.n, L.obs_max, generator=g),
        action=torch.rand(B, L.joint_dim, generator=g) * 2 - 1,
        reward=torch.randn(B, generator=g),
        discount=torch.full((B,), 0.9),
        done=torch.zeros(B),
        next_state=torch.randn(B, 4, generator=g),
        next_obs=torch.randn(B, L.n, L.obs_max, generator=g),
    )


@pytest.mark.parametrize("name", ALGOS)
def test_the_state_an_algorithm_lists_is_all_it_needs_to_continue_exactly(name):
    """Copy what modules(), optimizers() and extra_tensors() list (what a checkpoint stores) from a
    trained algorithm into a fresh one: the next update of both is the same."""
    trained, fresh = toy_algorithm(name, seed=0), toy_algorithm(name, seed=1)
    batch = toy_batch()
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


def replay_step(t: int, terminated: bool = False) -> Transition:
    """Every field of step t distinct: state t, obs t + 0.25, action t + 0.5, next state t + 1, next obs t + 1.25."""
    f = np.float32
    return Transition(
        np.array([t], f),
        np.array([[t + 0.25]], f),
        np.array([t + 0.5], f),
        float(t),
        np.array([t + 1], f),
        np.array([[t + 1.25]], f),
        terminated,
        False,
    )


def test_restored_pending_windows_write_every_field_as_if_never_checkpointed():
    def buffer():
        return ReplayBuffer(100, {"state": (1,), "obs": (1, 1), "action": (1,)}, 1, 3, 0.9)

    kept, restored = buffer(), buffer()
    for t in range(4):  # 2 rows written, 2 steps pending
        kept.add(0, replay_step(t))
    restored.load_state(kept.state_arrays(), kept.state_meta())
    for b in (kept, restored):
        b.add(0, replay_step(4))
        b.add(0, replay_step(5, terminated=True))
    assert len(kept) == len(restored) == 6
    for key, values in kept.data.items():
        np.testing.assert_array_equal(restored.data[key][:6], values[:6], err_msg=key)
    np.testing.assert_allclose(restored.data["obs"][:6, 0, 0], np.arange(6) + 0.25)  # row i starts at step i
    np.testing.assert_allclose(restored.data["action"][:6, 0], np.arange(6) + 0.5)


# ---- micro-batching: call composition, the merge delay, errors, metrics and shutdown ---------------
# (the fake model and callers of test_batching.py: every action value names its caller and row)

GUARD_S = 10.0  # a hang guard, never a timing assertion


async def held_start(
    model: GatedModel, batcher: MicroBatcher, jobs: dict[int, Job], companion: int
) -> dict[int, asyncio.Task]:
    """Caller 0's call is held on the inference thread while the other callers queue behind it. A lone
    job would run on the event loop itself, so `companion` is submitted in the same loop iteration as
    caller 0: with merging on (and room) it shares caller 0's call, otherwise it waits for the next."""
    batcher.start()
    tasks = {caller: asyncio.create_task(batcher.submit(jobs[caller])) for caller in (0, companion)}
    assert await asyncio.to_thread(model.entered.wait, GUARD_S), "the first call never started"
    for caller in sorted(jobs):
        if caller not in tasks:
            tasks[caller] = asyncio.create_task(batcher.submit(jobs[caller]))
    await asyncio.sleep(0.05)  # every submit has queued its job
    return tasks


def assert_own_rows(jobs: dict[int, Job], results: dict) -> None:
    for caller, result in results.items():
        np.testing.assert_array_equal(
            result.action, fake_model(jobs[caller].obs, jobs[caller].noise), err_msg=f"caller {caller}"
        )


@pytest.mark.parametrize("merge", [True, False])
def test_calls_fill_up_to_max_batch_and_carry_the_job_that_does_not_fit(merge):
    rows = {0: 1, 1: 3, 2: 3, 3: 4, 4: 2, 5: 1}
    model = GatedModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch=6, merge=merge)
        jobs = {caller: caller_job(caller, n) for caller, n in rows.items()}
        tasks = await held_start(model, batcher, jobs, companion=1)
        model.release.set()
        done = await asyncio.wait_for(asyncio.gather(*tasks.values()), GUARD_S)
        await batcher.close()
        return jobs, dict(zip(tasks, done))

    started = time.perf_counter_ns()
    jobs, results = asyncio.run(scenario())
    elapsed = time.perf_counter_ns() - started
    assert_own_rows(jobs, results)
    calls = [callers_in(call) for call in model.calls]
    # 4 does not fit after 3 (7 > 6), so it opens the next call, which 2 fills to exactly 6
    assert calls == ([[0, 1], [2], [3, 4], [5]] if merge else [[c] for c in rows])
    call_rows = {c: len(call_obs) for call_obs in model.calls for c in callers_in(call_obs)}
    for caller, result in results.items():
        assert result.batch_size == call_rows[caller] and 0 < result.inference_ns < elapsed
        # callers after the held call were queued before it was released, which the test did 0.05 s later
        assert (0 if caller in calls[0] else 0.05e9) <= result.queue_ns < elapsed


def test_the_merge_delay_waits_for_a_second_caller_and_not_for_a_full_batch():
    calls = []

    def model(obs, noise):
        calls.append(callers_in(obs))
        return fake_model(obs, noise)

    async def scenario():
        batcher = MicroBatcher(plain(model), max_batch=8, max_delay_us=500_000)  # 0.5 s
        batcher.start()
        jobs = {1: caller_job(1, 2), 2: caller_job(2, 3), 3: caller_job(3, 8)}
        first = asyncio.create_task(batcher.submit(jobs[1]))
        await asyncio.sleep(0.05)  # well inside the 0.5 s the first call waits for company
        second = asyncio.create_task(batcher.submit(jobs[2]))
        results = dict(zip((1, 2), await asyncio.wait_for(asyncio.gather(first, second), GUARD_S)))
        slow = MicroBatcher(
            plain(model), max_batch=8, max_delay_us=600_000_000
        )  # 10 minutes: only a full batch goes at once
        slow.start()
        results[3] = await asyncio.wait_for(slow.submit(jobs[3]), GUARD_S)
        await batcher.close()
        await slow.close(timeout_s=GUARD_S)
        return jobs, results

    jobs, results = asyncio.run(scenario())
    assert_own_rows(jobs, results)
    assert calls == [[1, 2], [3]]


def test_a_failed_call_fails_each_of_its_callers_and_only_good_calls_are_metered():
    metered = []
    model = GatedModel()
    wrapped = model.run

    def failing_for_caller_2(obs, noise):
        actions = wrapped(obs, noise)
        if 2 in callers_in(obs):
            raise ValueError("model failed")
        return actions

    async def scenario():
        batcher = MicroBatcher(
            plain(failing_for_caller_2), max_batch=8, on_batch=lambda rows, seconds: metered.append((rows, seconds))
        )
        jobs = {0: caller_job(0, 1), 3: caller_job(3, 1), 1: caller_job(1, 2), 2: caller_job(2, 3)}
        tasks = await held_start(model, batcher, jobs, companion=3)
        model.release.set()
        done = await asyncio.wait_for(asyncio.gather(*tasks.values(), return_exceptions=True), GUARD_S)
        await batcher.close()
        return jobs, dict(zip(tasks, done))

    jobs, results = asyncio.run(scenario())
    assert_own_rows(jobs, {0: results[0], 3: results[3]})
    for caller in (1, 2):  # merged into the call that failed
        assert isinstance(results[caller], ValueError) and str(results[caller]) == "model failed"
    assert [rows for rows, _ in metered] == [2] and metered[0][1] > 0


def test_close_finishes_the_queued_jobs_then_refuses_new_ones():
    model = GatedModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch=2)
        jobs = {0: caller_job(0, 1), 1: caller_job(1, 2), 2: caller_job(2, 1)}
        tasks = await held_start(model, batcher, jobs, companion=1)  # 1 + 2 rows > 2: caller 0 alone
        closing = asyncio.create_task(batcher.close(timeout_s=GUARD_S))
        await asyncio.sleep(0.05)
        model.release.set()
        await asyncio.wait_for(closing, GUARD_S + 1)
        done = await asyncio.wait_for(asyncio.gather(*tasks.values()), GUARD_S)
        with pytest.raises(BatcherClosed, match=r"^the server is shutting down$"):
            await batcher.submit(caller_job(3, 1))
        await batcher.close()  # a second close is a no-op
        return jobs, dict(zip(tasks, done)), batcher._thread.is_alive()

    jobs, results, alive = asyncio.run(scenario())
    assert_own_rows(jobs, results)
    assert not alive


def test_close_stops_a_thread_that_waits_to_merge():
    async def scenario():
        batcher = MicroBatcher(plain(fake_model), max_batch=8, max_delay_us=600_000_000)
        batcher.start()
        job = caller_job(1, 2)
        task = asyncio.create_task(batcher.submit(job))
        await asyncio.sleep(0.05)  # the thread holds the job, waiting for company
        await batcher.close(timeout_s=GUARD_S)
        return job, await asyncio.wait_for(task, GUARD_S), batcher._thread.is_alive()

    job, result, alive = asyncio.run(scenario())
    np.testing.assert_array_equal(result.action, fake_model(job.obs, job.noise))
    assert not alive


def test_close_gives_up_on_a_stuck_call_and_fails_the_jobs_still_queued():
    model = GatedModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch=1)
        jobs = {0: caller_job(0, 1), 1: caller_job(1, 1), 2: caller_job(2, 1)}
        tasks = await held_start(model, batcher, jobs, companion=1)
        await asyncio.wait_for(batcher.close(timeout_s=0.2), GUARD_S)
        queued = await asyncio.wait_for(asyncio.gather(tasks[1], tasks[2], return_exceptions=True), GUARD_S)
        model.release.set()  # the stuck call still answers its caller
        return jobs, queued, await asyncio.wait_for(tasks[0], GUARD_S)

    jobs, queued, first = asyncio.run(scenario())
    for error in queued:
        assert isinstance(error, BatcherClosed) and str(error) == "the server is shutting down"
    assert_own_rows(jobs, {0: first})


def test_the_inference_thread_is_a_daemon_named_omad_infer_so_an_unclosed_batcher_lets_the_process_exit():
    """Its inference thread is a daemon named omad-infer (so a py-spy dump shows it). The child process
    gets this process's sys.path, so under `make mutation` it imports the mutated code too."""
    code = (
        "import asyncio, threading\nfrom omad.serve.batching import MicroBatcher\n"
        "async def main():\n    MicroBatcher(lambda obs, noise: obs, 4).start()\n"
        "    print([(t.name, t.daemon) for t in threading.enumerate() if t is not threading.main_thread()])\n"
        "asyncio.run(main())\n"
    )

    async def new_threads():  # in this process too: mutmut maps a test to the code it calls in-process
        before = set(threading.enumerate())
        batcher = MicroBatcher(lambda obs, noise: obs, 4)
        batcher.start()
        started = [(t.name, t.daemon) for t in set(threading.enumerate()) - before]
        await batcher.close(timeout_s=5.0)
        return started

    assert asyncio.run(new_threads()) == [("omad-infer", True)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", code], check=True, timeout=30, capture_output=True, text=True, env=env)
    assert done.stdout.strip() == "[('omad-infer', True)]"


# ---- odds and ends of the serving edge -------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_streaming", "response_streaming"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_the_refusal_has_the_streaming_kind_of_the_refused_method(request_streaming, response_streaming):
    rejected = []
    denying = intercept("/omad.v1.Policy/Probe", (), handler_for(request_streaming, response_streaming), rejected)
    assert (denying.request_streaming, denying.response_streaming) == (request_streaming, response_streaming)
    assert refused(denying) == (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)


def test_a_bad_wire_tensor_is_named_in_the_error():
    with pytest.raises(TensorError, match=r"^noise: shape \[3\] needs 12 bytes of little-endian float32, got 4 bytes$"):
        from_tensor(policy_pb2.Tensor(shape=[3], data=b"\0" * 4), "noise")


def test_values_beyond_float32_are_refused_without_a_warning(policy):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeModelError, match="contains NaN or inf"):
            policy.validate(np.full((1, D_O), 1e39))


def test_hatd3_actors_follow_the_first_critic_head():
    """TD3 trains its actors on the first head only: with heads +w.a and -w.a, the actions move along +w."""
    w = torch.tensor([2.0, -1.0, -1.5])
    algo = make_algo("hatd3", auto_alpha=False, alpha_init=1e-3, lr_actor=1e-2)
    perturb(algo.actors, 0.3, 3)
    fix_noise(algo)
    param = next(algo.critic.parameters())  # keeps the critic step's backward valid
    algo.critic.forward = lambda state, joint_action: (
        torch.stack([joint_action @ w, -(joint_action @ w)]) + 0.0 * param.sum()
    )
    batch = make_batch(DONE["none"])
    obs = batch.obs.transpose(0, 1)
    zero = torch.zeros(1, *obs.shape[:2], LAYOUT.act_max)
    with torch.no_grad():
        before = joint_of(algo.actors(obs, zero, with_cost=False).action).mean(0)
    for _ in range(20):
        algo.update(batch)
    with torch.no_grad():
        moved = (joint_of(algo.actors(obs, zero, with_cost=False).action).mean(0) - before) / (JOINT_HIGH - JOINT_LOW)
    assert torch.all(moved * w.sign() > 0.05), moved


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


@pytest.mark.parametrize("name", ["omad", "hasac", "hatd3"])
def test_even_policy_delays_and_the_update_count(name):
    """Actor steps at updates 0, d, 2d, ... for d = 2 and 4 (test_update_math.py checks d = 3); the
    counter, which the trainer logs and checkpoints, counts every update."""
    for delay in (2, 4):
        algo = make_algo(name, policy_delay=delay)
        fix_noise(algo)
        actor_opt = algo.optimizers()["actor_opt" if name == "omad" else "actor_opt_0"]
        stepped = []
        actor_opt.register_step_pre_hook(lambda *_, s=stepped, a=algo: s.append(a.num_updates))
        for u in range(8):
            algo.update(make_batch(DONE["none"], seed=u))
        assert stepped == list(range(0, 8, delay)) and algo.num_updates == 8


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


def test_a_single_agent_runs_through_the_per_agent_wrapper():
    single = GaussianActors([3], [2], [[0.0, -0.4]], [[1.0, 0.4]], hidden=[8, 8])
    wrapped = PerAgentActors([single])
    assert (wrapped.kind, wrapped.noise_steps, wrapped.num_agents) == ("gaussian", 1, 1)
    obs, noise = torch.randn(1, 4, 3), torch.randn(1, 1, 4, 2)
    out, ref = wrapped(obs, noise), single(obs, noise)
    torch.testing.assert_close(out.action, ref.action)
    torch.testing.assert_close(out.cost, ref.cost)
    torch.testing.assert_close(out.running_cost, ref.running_cost)


def test_joint_cost_sums_or_averages_over_agents():
    per_agent = torch.tensor([[1.0, 2.0, -3.0], [0.5, 4.0, 1.0]])  # [n = 2, B = 3]
    for norm, joint in (("sum", [1.5, 6.0, -2.0]), ("mean", [0.75, 3.0, -1.0])):
        algo = make_algo("omad", entropy_norm=norm, cost_budget_per_dim=-0.5)
        torch.testing.assert_close(algo.joint(per_agent), torch.tensor(joint))
        # the budget is combined the same way: act dims 2 and 1 at -0.5 per dim
        torch.testing.assert_close(algo.cost_budget, torch.tensor(-1.5 if norm == "sum" else -0.75))


def test_growing_storage_keeps_every_row_and_a_restore_allocates_what_it_needs():
    """Storage starts empty and grows only when a row does not fit: to 1024 rows, then doubling, capped at
    the capacity (amortised O(1) per row, at most twice the memory in use). 4200 one-step rows must all
    survive the growth, sample as float32, and load into a fresh buffer that never grew."""
    buf = ReplayBuffer(5000, {"state": (1,), "obs": (1, 1), "action": (1,)}, 1, 1, 0.9)
    growth = {}  # rows stored when the storage grew -> its new size
    for t in range(4200):
        allocated = len(buf.data["reward"])
        buf.add(0, replay_step(t))
        if len(buf.data["reward"]) != allocated:
            growth[len(buf)] = len(buf.data["reward"])
    assert growth == {1: 1024, 1025: 2048, 2049: 4096, 4097: 5000}
    np.testing.assert_array_equal(buf.data["state"][:4200, 0], np.arange(4200))
    np.testing.assert_allclose(buf.data["action"][:4200, 0], np.arange(4200) + 0.5)
    batch = buf.sample(np.random.default_rng(0), 64)
    assert all(v.dtype == np.float32 for v in batch)
    restored = ReplayBuffer(5000, {"state": (1,), "obs": (1, 1), "action": (1,)}, 1, 1, 0.9)
    restored.load_state(buf.state_arrays(), buf.state_meta())
    for key, values in buf.data.items():
        np.testing.assert_array_equal(restored.data[key][:4200], values[:4200], err_msg=key)


@pytest.mark.parametrize("name", ["omad", "omad-gaussian", "hasac", "hatd3"])
def test_every_tensor_an_algorithm_holds_lives_on_its_device(name):
    """The meta device stands in for an accelerator: networks, temperatures and budgets all move there."""
    algo = make_algorithm(
        TrainConfig(algo=name, actor_hidden=[8], critic_hidden=[8], compile=False, progress=False),
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


@pytest.mark.parametrize(
    ("name", "logged"),
    [
        ("omad", ["actor_loss", "alpha", "critic_loss", "entropy_bound", "q", "running_cost"]),
        ("hasac", ["actor_loss", "alpha", "critic_loss", "q"]),
        ("hatd3", ["actor_loss", "critic_loss", "q"]),
    ],
)
def test_an_update_reports_the_metrics_the_logs_and_reports_read(name, logged):
    metrics = make_algo(name).update(make_batch(DONE["none"]))
    assert sorted(metrics) == logged
    assert all(torch.isfinite(value) and value.dim() == 0 for value in metrics.values())


@pytest.mark.parametrize("cls", [HASAC, HATD3])
def test_a_baseline_built_without_a_device_is_on_the_cpu(cls):
    algo = cls(TrainConfig(algo=cls.__name__.lower(), actor_hidden=[8], critic_hidden=[8]), LAYOUT, 3)
    assert algo.device == torch.device("cpu")


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


@pytest.mark.parametrize("compile_", [True, False])
def test_omad_compiles_the_chain_and_both_losses_only_when_asked(compile_):
    """Building is enough to see it: torch.compile wraps at once and compiles at the first call."""
    algo = make_algo("omad", compile=compile_)
    wrapped = [algo.chain, algo.critic_loss_fn, algo.actor_loss_fn]
    plain = [algo.actors, algo.critic_loss, algo.actor_loss]
    assert [w != p for w, p in zip(wrapped, plain)] == [compile_] * 3  # equal bound methods compare equal
    if compile_:
        assert isinstance(algo.chain, torch._dynamo.eval_frame.OptimizedModule) and algo.chain._orig_mod is algo.actors


def test_hasac_actor_loss_is_alpha_times_log_pi_minus_the_twin_minimum():
    algo = make_algo("hasac")  # alpha_init 0.37
    q = torch.tensor([[1.0, -2.0, 0.5], [0.25, -1.0, 3.0]])  # [twin, B]
    out = types.SimpleNamespace(cost=torch.tensor([[0.5, -1.5, 2.0]]))  # [1, B]: this agent's log pi
    expected = np.mean([0.37 * 0.5 - 0.25, 0.37 * -1.5 + 2.0, 0.37 * 2.0 - 0.5])
    assert algo.actor_loss(1, q, out).item() == pytest.approx(expected, rel=1e-6)


def test_policy_noise_is_made_on_the_algorithms_device():
    """The meta device stands in for an accelerator: the noise must be created where the networks live."""
    algo = make_algo("hasac")
    algo.device = torch.device("meta")
    noise = algo.noise(5)
    assert noise.device.type == "meta" and noise.shape == (algo.actors.noise_steps, LAYOUT.n, 5, LAYOUT.act_max)


def test_a_bad_wire_tensor_is_named_in_its_error():
    """The error names the field the caller decodes (here `noise`), so the client knows which tensor to fix."""
    from omad.serve._generated import policy_pb2

    bad = policy_pb2.Tensor(shape=[2, 3], data=b"\0" * 20)  # 6 float32 need 24 bytes
    with pytest.raises(TensorError, match=r"^noise: shape \[2, 3\] needs 24 bytes .* got 20 bytes"):
        from_tensor(bad, "noise")


def test_float64_beyond_float32_is_refused_without_a_numpy_warning():
    """1e300 becomes inf in float32 and is refused as non-finite, quietly: a server must not turn every such
    request into a RuntimeWarning on its log (or an exception under -W error)."""
    from omad.runtime.onnx_policy import as_float32, check_finite

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        array = as_float32(np.full((1, 3), 1e300), "obs")
        with pytest.raises(RuntimeModelError, match="obs: contains NaN or inf"):
            check_finite(array, "obs")


@pytest.mark.parametrize(
    "make_handler",
    [
        grpc.unary_unary_rpc_method_handler,
        grpc.unary_stream_rpc_method_handler,
        grpc.stream_unary_rpc_method_handler,
        grpc.stream_stream_rpc_method_handler,
    ],
)
def test_a_refused_call_gets_a_handler_of_its_own_streaming_kind_that_aborts(make_handler):
    """Without the token every kind of RPC is refused by a handler of the same kind (a streaming client
    would otherwise hang or get a protocol error) whose one act is UNAUTHENTICATED."""
    from omad.serve.security import UNAUTHENTICATED_MESSAGE, _denying_handler_like

    original = make_handler(lambda request, context: None)
    denying = _denying_handler_like(original)
    assert (denying.request_streaming, denying.response_streaming) == (
        original.request_streaming,
        original.response_streaming,
    )
    kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
    behaviours = {kind: getattr(denying, kind) for kind in kinds}
    kind = (
        f"{'stream' if original.request_streaming else 'unary'}_{'stream' if original.response_streaming else 'unary'}"
    )
    assert [k for k, b in behaviours.items() if b is not None] == [kind]

    class Context:
        async def abort(self, code, details):
            self.aborted = (code, details)
            raise grpc.aio.AbortError()

    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(behaviours[kind](None, context))
    assert context.aborted == (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)


def test_gaussian_actor_cost_is_the_exact_log_density_per_agent_with_padded_dims():
    """cost = log pi of each agent's own action dims only, by hand: a Gaussian log-density in u minus
    log |d tanh(u)/du| (the squashed space of docs/algorithm.md: the affine map to [lo, hi] is not
    counted), with a = lo + (hi - lo) (tanh u + 1) / 2. Agent 1 has 1 action dim padded to 2: its padded
    dim must count nowhere (not in the density, its normaliser or the Jacobian)."""
    from omad.train.actors import GaussianActors

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
