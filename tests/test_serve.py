"""The policy server in-process (a background event-loop thread): parity with in-process ONNX Runtime
through our RPCs and through tritonclient, validation codes, fuzzing, auth, TLS, metrics, reflection."""

from __future__ import annotations

import os
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omad.runtime.onnx_policy import OnnxPolicy
from omad.serve._generated import grpc_service_pb2 as kserve_pb2
from omad.serve._generated import policy_pb2, policy_pb2_grpc
from omad.serve.client import PolicyCallError, PolicyClient
from omad.serve.config import ServeConfig
from omad.serve.testing import ServerThread

INVALID = grpc.StatusCode.INVALID_ARGUMENT
MAX_BATCH = 16


@pytest.fixture(scope="module")
def server(model_path):
    with ServerThread(ServeConfig(model=model_path, port=0, max_batch=MAX_BATCH, seed=0)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with PolicyClient(server.addr, retries=0) as c:
        yield c


def random_request(policy: OnnxPolicy, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    info = policy.info
    obs = rng.standard_normal((batch, info.obs_dim), dtype=np.float32)
    noise = rng.standard_normal((info.noise_steps, batch, info.act_dim), dtype=np.float32)
    return obs, noise


def assert_same_actions(served: np.ndarray, expected: np.ndarray) -> None:
    assert served.dtype == np.float32 and served.shape == expected.shape
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)


def raw_call(addr: str, method: str, payload: bytes, metadata=()) -> tuple[grpc.StatusCode, str]:
    """Send raw bytes to a unary method; the status code and details (OK on success)."""
    with grpc.insecure_channel(addr) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            call(payload, timeout=10, metadata=metadata)
        except grpc.RpcError as err:
            return err.code(), err.details()
    return grpc.StatusCode.OK, ""


def health_status(addr: str) -> str:
    with grpc.insecure_channel(addr) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


# ---- parity: what you serve is what you exported ------------------------------------------------


def test_spec_describes_the_served_model(client, policy):
    spec, info = client.spec(), policy.info
    assert (spec.agent, spec.obs_dim, spec.act_dim) == (info.name, info.obs_dim, info.act_dim)
    assert (spec.denoising_steps, spec.noise_steps) == (info.denoising_steps, info.noise_steps)
    assert tuple(spec.action_low) == info.action_low and tuple(spec.action_high) == info.action_high
    assert (spec.env_id, spec.algo, spec.model_sha256) == (info.env_id, info.algo, info.sha256)
    assert spec.max_batch == MAX_BATCH and spec.server_version


@pytest.mark.parametrize("batch", [1, 3, MAX_BATCH])
def test_unary_act_equals_in_process_onnx(client, policy, batch):
    obs, noise = random_request(policy, batch, seed=batch)
    actions = client.act(obs, noise=noise)
    timing = client.last_timing
    assert_same_actions(actions, policy.act(obs, noise=noise))
    assert timing.total_us >= timing.inference_us >= 0 and timing.round_trip_us >= timing.total_us
    assert timing.batch_size >= batch


def test_seed_and_zero_noise_equal_in_process_onnx(client, policy):
    obs, _ = random_request(policy, 4, seed=1)
    assert_same_actions(client.act(obs, seed=123), policy.act(obs, seed=123))
    assert_same_actions(client.act(obs, zero_noise=True), policy.act(obs, zero_noise=True))
    first, second = client.act(obs), client.act(obs)  # server-drawn noise differs per call
    assert not np.array_equal(first, second)


def test_single_observation_gives_single_action(client, policy):
    obs, noise = random_request(policy, 1, seed=5)
    action = client.act(obs[0], noise=noise[:, 0])
    assert action.shape == (policy.info.act_dim,)
    assert_same_actions(action, policy.act(obs, noise=noise)[0])


def test_stream_equals_in_process_onnx(client, policy):
    with client.stream() as session:
        for step in range(20):
            obs, noise = random_request(policy, 1 + step % 3, seed=100 + step)
            actions = session.act(obs, noise=noise, request_id=f"step-{step}")
            assert_same_actions(actions, policy.act(obs, noise=noise))
            assert session.last_timing is not None and session.last_timing.batch_size >= obs.shape[0]
        assert_same_actions(session.act(obs, seed=9), policy.act(obs, seed=9))


def test_reply_carries_model_hash_and_request_id(server, policy):
    obs, _noise = random_request(policy, 2, seed=3)
    with grpc.insecure_channel(server.addr) as channel:
        stub = policy_pb2_grpc.PolicyStub(channel)
        request = policy_pb2.ActRequest(request_id="abc")
        request.obs.shape[:] = obs.shape
        request.obs.data = obs.astype("<f4").tobytes()
        reply = stub.Act(request, timeout=5)
    assert reply.model_sha256 == policy.info.sha256 and reply.request_id == "abc"
    assert list(reply.action.shape) == [2, policy.info.act_dim]


# ---- KServe v2 / Open Inference Protocol, through the stock client ------------------------------


def test_tritonclient_infer_equals_in_process_onnx(server, policy):
    import tritonclient.grpc as triton

    info = policy.info
    triton_client = triton.InferenceServerClient(server.addr)
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready(info.name) and not triton_client.is_model_ready("no-such-agent")
    metadata = triton_client.get_model_metadata(info.name)
    shapes = {t.name: list(t.shape) for t in metadata.inputs}
    assert shapes == {"obs": [-1, info.obs_dim], "noise": [info.noise_steps, -1, info.act_dim]}
    assert [(t.name, list(t.shape)) for t in metadata.outputs] == [("action", [-1, info.act_dim])]
    assert triton_client.get_server_metadata().name == "omad"

    obs, noise = random_request(policy, 5, seed=11)
    inputs = [triton.InferInput("obs", list(obs.shape), "FP32"), triton.InferInput("noise", list(noise.shape), "FP32")]
    inputs[0].set_data_from_numpy(obs)
    inputs[1].set_data_from_numpy(noise)
    result = triton_client.infer(info.name, inputs, outputs=[triton.InferRequestedOutput("action")], request_id="r1")
    assert_same_actions(result.as_numpy("action"), policy.act(obs, noise=noise))
    assert result.get_response().id == "r1"

    only_obs = inputs[:1]  # seed as a request parameter
    result = triton_client.infer(info.name, only_obs, parameters={"seed": 42})
    assert_same_actions(result.as_numpy("action"), policy.act(obs, seed=42))
    triton_client.close()


def test_kserve_typed_contents_are_accepted(server, policy):
    obs, noise = random_request(policy, 2, seed=12)
    request = kserve_pb2.ModelInferRequest(model_name=policy.info.name)
    for name, array in (("obs", obs), ("noise", noise)):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=array.shape)
        tensor.contents.fp32_contents.extend(array.ravel().tolist())
    code, _ = raw_call(server.addr, "/inference.GRPCInferenceService/ModelInfer", request.SerializeToString())
    assert code == grpc.StatusCode.OK
    with grpc.insecure_channel(server.addr) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=kserve_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=kserve_pb2.ModelInferResponse.FromString,
        )
        response = infer(request, timeout=5)
    action = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(tuple(response.outputs[0].shape))
    assert_same_actions(action, policy.act(obs, noise=noise))


# ---- bad input: the right code, a clear message, and the server keeps serving -----------------


def act_request(obs=None, noise=None, **fields) -> policy_pb2.ActRequest:
    """An ActRequest from arrays or (shape, bytes) pairs, without the client's conveniences."""
    request = policy_pb2.ActRequest(**fields)
    for name, value in (("obs", obs), ("noise", noise)):
        if value is None:
            continue
        shape, data = (value.shape, value.astype("<f4").tobytes()) if isinstance(value, np.ndarray) else value
        getattr(request, name).shape[:] = shape
        getattr(request, name).data = data
    return request


def bad_requests(policy: OnnxPolicy) -> dict[str, tuple[policy_pb2.ActRequest, str]]:
    """name -> (request, a phrase its error message must contain)."""
    info = policy.info
    obs, noise = random_request(policy, 2, seed=0)
    nan_obs, inf_noise = obs.copy(), noise.copy()
    nan_obs[1, 3] = np.nan
    inf_noise[0, 0, 0] = np.inf
    return {
        "no obs": (act_request(), "obs"),
        "obs dim wrong": (act_request(np.zeros((2, info.obs_dim + 1), np.float32)), f"[B, {info.obs_dim}]"),
        "obs rank 3": (act_request(np.zeros((1, 2, info.obs_dim), np.float32)), "shape"),
        "obs empty batch": (act_request(np.zeros((0, info.obs_dim), np.float32)), "empty"),
        "obs nan": (act_request(nan_obs), "NaN"),
        "noise inf": (act_request(obs, inf_noise), "NaN or inf"),
        "bytes short": (act_request(((2, info.obs_dim), b"\0" * 8)), "bytes"),
        "bytes long": (act_request(((1, info.obs_dim), b"\0" * (4 * info.obs_dim + 4))), "bytes"),
        "negative dim": (act_request(((-1, info.obs_dim), b"")), "below 0"),
        "empty but huge": (act_request(((0, 2**40, 2**40), b"")), "above"),
        "huge dims": (act_request(((2**20, 2**20), b"")), "bytes"),
        "rank over limit": (act_request(((1,) * 9, b"\0" * 4)), "rank"),
        "noise batch mismatch": (act_request(obs, noise[:, :1]), "noise must have shape"),
        "noise steps wrong": (act_request(obs, noise[1:]), "noise must have shape"),
        "noise and seed": (act_request(obs, noise, seed=1), "at most one"),
        "seed and zero noise": (act_request(obs, seed=1, zero_noise=True), "at most one"),
        "batch over limit": (act_request(np.zeros((MAX_BATCH + 1, info.obs_dim), np.float32)), "--max-batch"),
    }


def test_every_bad_request_gets_invalid_argument_and_the_server_keeps_serving(server, client, policy):
    with grpc.insecure_channel(server.addr) as channel:
        stub = policy_pb2_grpc.PolicyStub(channel)
        for name, (request, phrase) in bad_requests(policy).items():
            with pytest.raises(grpc.RpcError) as caught:
                stub.Act(request, timeout=5)
            assert caught.value.code() == INVALID, name
            assert phrase in caught.value.details(), (name, caught.value.details())
    obs, noise = random_request(policy, 2, seed=1)
    assert_same_actions(client.act(obs, noise=noise), policy.act(obs, noise=noise))
    assert health_status(server.addr) == "SERVING"


def test_bad_request_on_a_stream_ends_that_stream_only(client, policy):
    obs, noise = random_request(policy, 1, seed=2)
    with client.stream() as session:
        session.act(obs, noise=noise)
        with pytest.raises(PolicyCallError) as caught:
            session.act(np.full((1, policy.info.obs_dim), np.nan, np.float32))
        assert caught.value.code == INVALID
    with client.stream() as session:
        assert_same_actions(session.act(obs, noise=noise), policy.act(obs, noise=noise))


def test_unparsable_bytes_get_invalid_argument(server):
    for method in ("/omad.v1.Policy/Act", "/inference.GRPCInferenceService/ModelInfer"):
        code, details = raw_call(server.addr, method, b"\xff\xff\xff\xff")
        assert code == INVALID and "not a valid" in details


def kserve_request(policy: OnnxPolicy, **overrides) -> kserve_pb2.ModelInferRequest:
    obs, _ = random_request(policy, 2, seed=0)
    request = kserve_pb2.ModelInferRequest(model_name=overrides.pop("model_name", policy.info.name))
    request.inputs.add(name=overrides.pop("name", "obs"), datatype=overrides.pop("datatype", "FP32"), shape=obs.shape)
    request.raw_input_contents.append(overrides.pop("raw", obs.tobytes()))
    for key, param in overrides.pop("parameters", {}).items():
        request.parameters[key].CopyFrom(param)
    for output in overrides.pop("outputs", []):
        request.outputs.add(name=output)
    assert not overrides
    return request


def both_contents(request: kserve_pb2.ModelInferRequest) -> kserve_pb2.ModelInferRequest:
    """The request's raw obs bytes also given as typed contents (the same values)."""
    values = np.frombuffer(request.raw_input_contents[0], "<f4")
    request.inputs[0].contents.fp32_contents.extend(values.tolist())
    return request


def test_kserve_bad_requests_get_clear_codes(server, policy):
    cases = {
        "unknown model": (kserve_request(policy, model_name="nope"), grpc.StatusCode.NOT_FOUND),
        "int datatype": (kserve_request(policy, datatype="INT32"), INVALID),
        "unknown input": (kserve_request(policy, name="observation"), INVALID),
        "short raw bytes": (kserve_request(policy, raw=b"\0" * 4), INVALID),
        "unknown output": (kserve_request(policy, outputs=["value"]), INVALID),
        "seed as string": (
            kserve_request(policy, parameters={"seed": kserve_pb2.InferParameter(string_param="1")}),
            INVALID,
        ),
        "missing obs": (kserve_pb2.ModelInferRequest(model_name=policy.info.name), INVALID),
        "raw and typed contents": (both_contents(kserve_request(policy)), INVALID),  # the protocol forbids both
    }
    for name, (request, expected) in cases.items():
        code, details = raw_call(server.addr, "/inference.GRPCInferenceService/ModelInfer", request.SerializeToString())
        assert code == expected, (name, code, details)
    assert (
        raw_call(server.addr, "/inference.GRPCInferenceService/ModelInfer", kserve_request(policy).SerializeToString())[
            0
        ]
        == grpc.StatusCode.OK
    )


def test_message_size_limit(model_path, policy):
    with ServerThread(ServeConfig(model=model_path, port=0, max_batch=10_000, max_message_mb=0.01)) as small:
        obs = np.zeros((1000, policy.info.obs_dim), np.float32)  # 72 kB > 10 kB
        with PolicyClient(small.addr, retries=0) as c:
            with pytest.raises(PolicyCallError) as caught:
                c.act(obs, zero_noise=True)
            assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert c.act(obs[:10], zero_noise=True).shape == (10, policy.info.act_dim)


# ---- fuzzing: random payloads only ever get OK or INVALID_ARGUMENT -------------------------------

dims = st.one_of(st.integers(-3, 40), st.sampled_from([2**31, 2**62, -(2**62)]))
tensors = st.tuples(st.lists(dims, max_size=4), st.binary(max_size=600))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    obs=tensors,
    noise=st.one_of(st.none(), tensors),
    seed=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    zero_noise=st.booleans(),
)
def test_fuzzed_tensors_get_ok_or_invalid_argument(server, obs, noise, seed, zero_noise):
    request = act_request(obs, noise, zero_noise=zero_noise)
    if seed is not None:
        request.seed = seed
    code, details = raw_call(server.addr, "/omad.v1.Policy/Act", request.SerializeToString())
    assert code in (grpc.StatusCode.OK, INVALID), (code, details)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.binary(max_size=300),
    method=st.sampled_from(["/omad.v1.Policy/Act", "/inference.GRPCInferenceService/ModelInfer"]),
)
def test_fuzzed_message_bytes_get_ok_or_invalid_argument(server, payload, method):
    code, details = raw_call(server.addr, method, payload)
    assert code in (grpc.StatusCode.OK, INVALID, grpc.StatusCode.NOT_FOUND), (code, details)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, MAX_BATCH), data=st.data())
def test_fuzzed_valid_shapes_with_random_values(server, policy, batch, data):
    """Right shapes, arbitrary float32 bit patterns: finite ones are served as in-process ONNX Runtime
    computes them, others refused (INVALID_ARGUMENT); finite inputs whose actions in-process ONNX
    Runtime computes as NaN / inf (huge values) get INTERNAL, never a non-finite action."""
    info = policy.info
    raw = data.draw(st.binary(min_size=4 * batch * info.obs_dim, max_size=4 * batch * info.obs_dim))
    obs = np.frombuffer(raw, "<f4").reshape(batch, info.obs_dim)
    with grpc.insecure_channel(server.addr) as channel:
        try:
            reply = policy_pb2_grpc.PolicyStub(channel).Act(act_request(obs, zero_noise=True), timeout=10)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.INTERNAL:
                assert np.isfinite(obs).all() and not np.isfinite(policy.act(obs, zero_noise=True)).all()
                assert "NaN or inf actions" in err.details()  # noqa: PT017 - each outcome may be right
            else:
                assert err.code() == INVALID and not np.isfinite(obs).all()  # noqa: PT017
            return
    assert np.isfinite(obs).all()
    served = np.frombuffer(reply.action.data, "<f4").reshape(batch, info.act_dim)
    assert_same_actions(served, policy.act(obs, zero_noise=True))


def test_server_is_healthy_after_fuzzing(server, client, policy):
    assert health_status(server.addr) == "SERVING"
    obs, noise = random_request(policy, 1, seed=77)
    assert_same_actions(client.act(obs, noise=noise), policy.act(obs, noise=noise))


# ---- micro-batching and deadlines -------------------------------------------------------------


@pytest.mark.parametrize("inference_thread", ["on", "off"])
def test_concurrent_requests_merge_into_one_call_with_unchanged_answers(model_path, policy, inference_thread):
    config = ServeConfig(
        model=model_path, port=0, max_batch=64, max_delay_us=300_000, inference_thread=inference_thread
    )
    with ServerThread(config) as batching_server:
        results: dict[int, tuple] = {}
        start_together = threading.Barrier(12)

        def one_client(index: int) -> None:
            obs, noise = random_request(policy, 1 + index % 3, seed=200 + index)
            with PolicyClient(batching_server.addr, retries=0) as c:
                c.spec()  # connected before the race starts
                start_together.wait(timeout=30)
                if index % 3 == 0:
                    served, expected = c.act(obs, seed=index), policy.act(obs, seed=index)
                elif index % 3 == 1:
                    served, expected = c.act(obs, noise=noise), policy.act(obs, noise=noise)
                else:
                    served, expected = c.act(obs, zero_noise=True), policy.act(obs, zero_noise=True)
                results[index] = ((served, c.last_timing), expected)

        threads = [threading.Thread(target=one_client, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(results) == 12
        for (served, _timing), expected in results.values():
            assert_same_actions(served, expected)
        assert max(timing.batch_size for (_, timing), _ in results.values()) > 3  # some calls shared a batch
        batches = batching_server.server.metrics.registry.get_sample_value("omad_batch_size_count")
        assert batches < 12 + 2  # 2 warm-up calls do not go through the batcher; merged calls are fewer


@pytest.mark.parametrize(("cores", "threads", "offload"), [(2, 1, True), (1, 1, False), (4, 3, True), (4, 4, False)])
def test_inference_thread_auto_needs_a_core_beside_onnx_runtimes(monkeypatch, model_path, cores, threads, offload):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert ServeConfig(model=model_path, threads=threads).offload_inference is offload
    for forced, expected in (("on", True), ("off", False)):
        assert ServeConfig(model=model_path, threads=threads, inference_thread=forced).offload_inference is expected


def test_expired_deadline_is_reported_and_its_work_skipped(model_path, policy):
    config = ServeConfig(model=model_path, port=0, max_batch=64, max_delay_us=300_000)
    with ServerThread(config) as slow:
        registry = slow.server.metrics.registry
        with PolicyClient(slow.addr, retries=0) as c:
            with pytest.raises(PolicyCallError) as caught:
                c.act(np.zeros((1, policy.info.obs_dim), np.float32), timeout=0.05)
            assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            # the next call runs alone: the expired one was dropped from the batch
            c.act(np.zeros((2, policy.info.obs_dim), np.float32), zero_noise=True, timeout=5)
            assert c.last_timing.batch_size == 2
        assert registry.get_sample_value("omad_batch_size_count") == 1
        assert registry.get_sample_value("omad_errors_total", {"method": "Act", "code": "DEADLINE_EXCEEDED"}) == 1


def test_health_is_not_serving_until_the_model_is_loaded(model_path):
    with ServerThread(ServeConfig(model=model_path, port=0), load=False) as starting:
        assert health_status(starting.addr) == "NOT_SERVING"
        code, details = raw_call(starting.addr, "/omad.v1.Policy/GetSpec", b"")
        assert code == grpc.StatusCode.UNAVAILABLE and "loading" in details
        starting.load()
        assert health_status(starting.addr) == "SERVING"
        assert raw_call(starting.addr, "/omad.v1.Policy/GetSpec", b"")[0] == grpc.StatusCode.OK


# ---- auth and TLS ------------------------------------------------------------------------------


def test_bearer_token(model_path, policy, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    config = ServeConfig(model=model_path, port=0, token_file=token_file)
    from omad.serve.config import read_token

    with ServerThread(config, token=read_token(config)) as guarded:
        obs = np.zeros((1, policy.info.obs_dim), np.float32)
        for token in (None, "wrong", "s3cret "):
            with PolicyClient(guarded.addr, token=token, retries=0) as c:
                with pytest.raises(PolicyCallError) as caught:
                    c.act(obs)
                assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(PolicyCallError) as caught, c.stream() as session:
                    session.act(obs)
                assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
        with PolicyClient(guarded.addr, token="s3cret") as c:
            assert c.spec().agent == policy.info.name
            with c.stream() as session:
                assert session.act(obs, zero_noise=True).shape == (1, policy.info.act_dim)
        assert health_status(guarded.addr) == "SERVING"  # health stays open for probes

        import tritonclient.grpc as triton
        from tritonclient.utils import InferenceServerException

        triton_client = triton.InferenceServerClient(guarded.addr)
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            triton_client.is_server_live()
        assert triton_client.is_server_live(headers={"authorization": "Bearer s3cret"})
        errors = guarded.server.metrics.registry.get_sample_value(
            "omad_errors_total", {"method": "Act", "code": "UNAUTHENTICATED"}
        )
        assert errors == 3


REFLECTION_SERVICE = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]
GUARDED_SERVICES = (
    kserve_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    policy_pb2.DESCRIPTOR.services_by_name["Policy"],
    REFLECTION_SERVICE,
)
WRONG_AUTHORIZATIONS = {
    "no token": None,
    "wrong token": "Bearer wrong",
    "a prefix of the token": "Bearer s3cre",
    "the token and more": "Bearer s3cretX",
    "the token without the Bearer scheme": "s3cret",
}


def first_reply_status(
    channel: grpc.Channel, service, method, payload: bytes, authorization: str | None
) -> grpc.StatusCode:
    """Call any method from its descriptor with raw request bytes; the status of its first reply."""
    path = f"/{service.full_name}/{method.name}"
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    metadata = () if authorization is None else (("authorization", authorization),)
    request = iter([payload]) if method.client_streaming else payload
    try:
        reply = kind(path)(request, timeout=10, metadata=metadata)
        if method.server_streaming:  # one reply is enough (Health.Watch never ends)
            next(reply)
            reply.cancel()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def valid_requests(policy: OnnxPolicy) -> dict[str, bytes]:
    """Method name -> a request it answers with OK; every other method is fine with an empty message."""
    agent = policy.info.name
    act = act_request(np.zeros((2, policy.info.obs_dim), np.float32), zero_noise=True)
    messages = {
        "ModelReady": kserve_pb2.ModelReadyRequest(name=agent),
        "ModelMetadata": kserve_pb2.ModelMetadataRequest(name=agent),
        "ModelConfig": kserve_pb2.ModelConfigRequest(name=agent),
        "ModelInfer": kserve_request(policy),
        "Act": act,
        "ActStream": act,
        "ServerReflectionInfo": reflection_pb2.ServerReflectionRequest(list_services=""),
    }
    return {name: message.SerializeToString() for name, message in messages.items()}


def test_token_guards_every_rpc_and_reflection_but_not_health(model_path, policy):
    """Every method of every service on the port, enumerated from the descriptors: refused without the
    right token, answered with it. Only grpc.health.v1 stays open, for probes (docs/guides/serving.md, security.py)."""
    with (
        ServerThread(ServeConfig(model=model_path, port=0), token="s3cret") as guarded,
        grpc.insecure_channel(guarded.addr) as channel,
    ):
        listed = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            timeout=10,
            metadata=(("authorization", "Bearer s3cret"),),
        )
        names = {service.name for service in next(listed).list_services_response.service}
        # a service added to the port must be added here too, as guarded or open
        assert names == {service.full_name for service in (*GUARDED_SERVICES, HEALTH_SERVICE)}

        requests = valid_requests(policy)
        for service in GUARDED_SERVICES:
            for method in service.methods:
                payload = requests.get(method.name, b"")
                for case, authorization in WRONG_AUTHORIZATIONS.items():
                    code = first_reply_status(channel, service, method, payload, authorization)
                    assert code == grpc.StatusCode.UNAUTHENTICATED, (method.full_name, case, code)
                code = first_reply_status(channel, service, method, payload, "Bearer s3cret")
                assert code == grpc.StatusCode.OK, (method.full_name, code)
        open_codes = {
            method.name: first_reply_status(channel, HEALTH_SERVICE, method, b"", None)
            for method in HEALTH_SERVICE.methods
        }
        assert grpc.StatusCode.UNAUTHENTICATED not in open_codes.values(), open_codes  # (List is not implemented)
        assert open_codes["Check"] == open_codes["Watch"] == grpc.StatusCode.OK


def test_tls(model_path, policy, certs):
    from omad.serve.config import read_tls_files

    config = ServeConfig(model=model_path, port=0, tls_cert=certs / "server.pem", tls_key=certs / "server.key")
    with ServerThread(config, tls=read_tls_files(config)) as secure:
        obs, noise = random_request(policy, 2, seed=4)
        with PolicyClient(secure.addr, tls_ca=certs / "ca.pem") as c:
            assert_same_actions(c.act(obs, noise=noise), policy.act(obs, noise=noise))
        with PolicyClient(secure.addr, retries=0, timeout_s=2) as plaintext:
            with pytest.raises(PolicyCallError) as caught:
                plaintext.spec()
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate(model_path, policy, certs):
    from omad.serve.config import read_tls_files

    config = ServeConfig(
        model=model_path,
        port=0,
        tls_cert=certs / "server.pem",
        tls_key=certs / "server.key",
        tls_client_ca=certs / "ca.pem",
    )
    with ServerThread(config, tls=read_tls_files(config)) as secure:
        with PolicyClient(
            secure.addr, tls_ca=certs / "ca.pem", tls_cert=certs / "client.pem", tls_key=certs / "client.key"
        ) as c:
            assert c.spec().agent == policy.info.name
        with PolicyClient(secure.addr, tls_ca=certs / "ca.pem", retries=0, timeout_s=2) as anonymous:
            with pytest.raises(PolicyCallError) as caught:
                anonymous.spec()
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        import argparse

        from omad.serve.cli import cmd_health

        args = dict(addr=secure.addr, timeout=3.0, service="", tls_ca=str(certs / "ca.pem"), tls_server_name=None)
        assert (
            cmd_health(
                argparse.Namespace(**args, tls_cert=str(certs / "client.pem"), tls_key=str(certs / "client.key"))
            )
            == 0
        )
        assert cmd_health(argparse.Namespace(**args, tls_cert=None, tls_key=None)) == 1


# ---- observability ------------------------------------------------------------------------------


def test_prometheus_metrics(model_path, policy):
    with ServerThread(ServeConfig(model=model_path, port=0, metrics_port=0)) as observed:
        with PolicyClient(observed.addr, retries=0) as c:
            c.act(np.zeros((3, policy.info.obs_dim), np.float32))
            with pytest.raises(PolicyCallError):
                c.act(np.zeros((3, 1), np.float32))
        # the server books a call after its response is on the wire: wait until nothing is in flight
        deadline = time.monotonic() + 5
        while True:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{observed.server.metrics_port}/metrics", timeout=5
            ) as response:
                text = response.read().decode()
            if "omad_in_flight_calls 0.0" in text or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert 'omad_requests_total{method="Act"} 2.0' in text
    assert 'omad_errors_total{code="INVALID_ARGUMENT",method="Act"} 1.0' in text
    assert 'omad_request_latency_seconds_bucket{le="0.001",method="Act"}' in text
    assert 'omad_batch_size_bucket{le="4.0"} 1.0' in text


def test_reflection_lists_every_service(server):
    with grpc.insecure_channel(server.addr) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="omad.v1.Policy"),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
        ]
        listed, policy_file, kserve_file = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert {"omad.v1.Policy", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    assert policy_file.file_descriptor_response.file_descriptor_proto
    assert kserve_file.file_descriptor_response.file_descriptor_proto
