"""Tests written to kill mutants of `make mutation` (bench/mutation.py), each against a hand computation
or an independent implementation, and fast enough to run for every mutant (no trained model, no
server): request validation on a hand-built ONNX graph, the wire tensor codec, the bearer-token
interceptor with fake gRPC calls, and the critics against a forward pass written out in numpy."""

from __future__ import annotations

import asyncio
import re
import struct
from collections import namedtuple

import grpc
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from exporters.runtime import OnnxPolicy, RuntimeModelError
from exporters.schema import EXPORT_FORMAT_VERSION, ModelInfo, encode_metadata
from omad_serve._generated import grpc_service_pb2, policy_pb2
from omad_serve.security import UNAUTHENTICATED_MESSAGE, BearerTokenInterceptor
from omad_serve.tensors import MAX_DIM, MAX_RANK, TensorError, decode_float32, from_tensor, to_tensor
from omad_train.critic import CategoricalCritic, TwinQCritic, project_distribution

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
        agent="agent_0", obs_dim=D_O, act_dim=D_A, denoising_steps=K, noise_steps=K + 1, action_low=(0.0, -0.4),
        action_high=(1.0, 0.4), env_id="hand-built", algo="omad", sha256="", weights_sha256="0" * 64,
        format_version=EXPORT_FORMAT_VERSION, source_run="hand-built",
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
    for obs in (obs_batch(2).astype(np.float64).tolist(), np.arange(6, dtype=np.int64).reshape(2, 3),
                np.arange(6, dtype=np.uint8).reshape(2, 3), np.asfortranarray(obs_batch(2).astype(np.float64))):
        checked, noise = policy.validate(obs)
        assert checked.dtype == np.float32 and checked.flags.c_contiguous and noise is None
        np.testing.assert_array_equal(checked, np.asarray(obs, np.float32))
    _, noise = policy.validate(obs_batch(2), np.ones((K + 1, 2, D_A), np.float64)[:, :, ::-1])
    assert noise.dtype == np.float32 and noise.flags.c_contiguous and noise.shape == (K + 1, 2, D_A)


@pytest.mark.parametrize(
    ("obs", "message"),
    [
        (np.zeros((2, D_O + 1)), rf"agent_0: obs must have shape \[B, {D_O}\] \(or \[{D_O}\] for one observation\), got \[2, {D_O + 1}\]"),
        (np.zeros((2, D_O - 1)), rf"got \[2, {D_O - 1}\]"),
        (np.zeros((1, 2, D_O)), rf"got \[1, 2, {D_O}\]"),
        (np.float32(1.0), r"got \[1, 1\]"),  # a scalar is one observation of one value
        (np.zeros((0, D_O)), "agent_0: obs batch is empty"),
        (np.array([[True] * D_O]), "agent_0: obs: must be numeric, got dtype bool"),
        (np.array([[1j] * D_O]), "must be numeric, got dtype complex128"),
        (np.array([["a"] * D_O]), "must be numeric"),
        ([[0.0] * D_O, [0.0]], "agent_0: obs: not a numeric array"),
        (np.full((1, D_O), 1e39), r"agent_0: obs: contains NaN or inf \(or values beyond float32\) at indices \[\[0, 0\], \[0, 1\], \[0, 2\]\]"),
    ],
)
def test_bad_obs_is_refused_with_what_to_fix(policy, obs, message):
    with pytest.raises(RuntimeModelError, match=message):
        policy.validate(obs)


def test_non_finite_values_are_located_by_their_first_three_indices(policy):
    obs = obs_batch(4)
    obs[0, 1], obs[2, 0], obs[2, 2], obs[3, 1] = np.nan, np.inf, -np.inf, np.nan
    with pytest.raises(RuntimeModelError, match=r"obs: contains NaN or inf .* at indices \[\[0, 1\], \[2, 0\], \[2, 2\]\]$"):
        policy.validate(obs)
    noise = np.zeros((K + 1, 4, D_A), np.float32)
    noise[K, 3, 1] = np.nan
    with pytest.raises(RuntimeModelError, match=r"agent_0: noise: contains NaN or inf .* at indices \[\[2, 3, 1\]\]$"):
        policy.validate(obs_batch(4), noise)


@pytest.mark.parametrize("shape", [(K, 2, D_A), (K + 2, 2, D_A), (K + 1, 3, D_A), (K + 1, 1, D_A), (K + 1, 2, D_A + 1), (K + 1, 2 * D_A)])
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
        with pytest.raises(TensorError, match=re.escape(f"noise: shape {list(shape)} has a dimension below 0 or above {MAX_DIM}")):
            decode_float32(b"", shape, "noise")
    data = np.array([1.5, -2.0, 3.0, 0.25, 8.0, -1.0], "<f4").tobytes()
    np.testing.assert_array_equal(decode_float32(data, (2, 3), "obs"), [[1.5, -2.0, 3.0], [0.25, 8.0, -1.0]])
    for shape, got in (((2, 2), 24), ((7,), 24)):
        with pytest.raises(TensorError, match=rf"^obs: shape \[.*\] needs {4 * int(np.prod(shape))} bytes of little-endian float32, got {got} bytes$"):
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
    for metadata in ((("authorization", f"Bearer {TOKEN}"),), (("x-other", "1"), ("authorization", f"Bearer {TOKEN}".encode()))):
        rejected = []
        assert intercept(method, metadata, handler, rejected) is handler and rejected == []


def test_health_is_open_and_unknown_methods_are_left_to_grpc():
    rejected = []
    for method in ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"):
        handler = handler_for(False, method.endswith("Watch"))
        assert intercept(method, (), handler, rejected) is handler
    assert intercept("/omad.v1.Policy/NoSuchMethod", (), None, rejected) is None  # gRPC answers UNIMPLEMENTED
    assert rejected == []


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
        np.testing.assert_allclose(critic.q_values(state, action)[head].detach().numpy(), probs @ atoms, rtol=1e-4, atol=1e-4)


def test_twin_q_critic_is_a_relu_mlp_per_head():
    critic = TwinQCritic(5, [16, 8])
    params = randomized_params(critic.net)
    state, action = torch.randn(6, 3), torch.rand(6, 2) * 2 - 1
    q = critic(state, action)
    assert q.shape == (2, 6)
    x = torch.cat([state, action], -1).double().numpy()
    for head in range(2):
        np.testing.assert_allclose(q[head].detach().numpy(), mlp_by_hand(x, params, head, 2, layer_norm=False)[:, 0], rtol=1e-4, atol=1e-4)


def test_projection_onto_a_support_with_half_unit_spacing():
    """Support -1, -0.5, ..., 2 (delta 0.5). Each source atom's mass goes to the two support atoms
    around its target, split linearly; targets outside [-1, 2] clip to the ends."""
    probs = torch.tensor([[0.05, 0.1, 0.15, 0.2, 0.25, 0.15, 0.1]])
    targets = torch.tensor([[0.8, -1.3, 2.0, 0.0, 1.1, 2.7, -0.2]])
    # 0.8: 0.4 / 0.6 onto 0.5 / 1.0; -1.3 -> -1; 2.0 and 2.7 -> 2; 0.0 on atom 0.0; 1.1: 0.8 / 0.2 onto
    # 1.0 / 1.5; -0.2: 0.4 / 0.6 onto -0.5 / 0.0
    expected = torch.tensor([[0.1, 0.04, 0.2 + 0.06, 0.02, 0.03 + 0.2, 0.05, 0.15 + 0.15]])
    torch.testing.assert_close(project_distribution(probs, targets, -1.0, 2.0, 7), expected, rtol=0, atol=1e-6)
