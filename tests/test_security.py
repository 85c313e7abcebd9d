"""The serving edge's access control without a server process: the bearer-token interceptor driven
with fake gRPC calls for every RPC the server registers and every streaming kind, and the TLS / mTLS
credentials on a real gRPC channel."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import namedtuple

import grpc
import pytest

from omad.serve._generated import grpc_service_pb2, policy_pb2
from omad.serve.security import UNAUTHENTICATED_MESSAGE, BearerTokenInterceptor, server_credentials

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


@pytest.mark.parametrize(
    ("request_streaming", "response_streaming"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_a_refused_call_gets_a_handler_of_its_own_streaming_kind_that_aborts(request_streaming, response_streaming):
    """Without the token every kind of RPC is refused by a handler of the same kind (a streaming client
    would otherwise hang or get a protocol error) with that one behaviour set, which aborts with
    UNAUTHENTICATED."""
    rejected = []
    denying = intercept("/omad.v1.Policy/Probe", (), handler_for(request_streaming, response_streaming), rejected)
    assert (denying.request_streaming, denying.response_streaming) == (request_streaming, response_streaming)
    kind = f"{'stream' if request_streaming else 'unary'}_{'stream' if response_streaming else 'unary'}"
    kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
    assert [k for k in kinds if getattr(denying, k) is not None] == [kind]
    assert refused(denying) == (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
    assert rejected == ["/omad.v1.Policy/Probe"]


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
