"""Bearer-token authentication and TLS credentials for the server.

The token guards every RPC except the standard health check: a container HEALTHCHECK or a load
balancer probe needs no secret, and health reveals nothing beyond SERVING / NOT_SERVING.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import grpc

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
UNAUTHENTICATED_MESSAGE = "missing or bad bearer token: send metadata 'authorization: Bearer <token>'"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, on_reject: Callable[[str], None] | None = None):
        self._expected = f"Bearer {token}".encode()
        self._on_reject = on_reject  # (method path), for metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES) or self._authorized(handler_call_details):
            return handler
        if self._on_reject is not None:
            self._on_reject(method)
        return _denying_handler_like(handler)

    def _authorized(self, details) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)
        return False


def _denying_handler_like(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind that only refuses, so streaming clients get the status at once."""

    async def deny(_request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


def server_credentials(cert_chain: bytes, private_key: bytes, client_ca: bytes | None) -> grpc.ServerCredentials:
    """TLS; with a client CA also mTLS: clients must present a certificate that chains to it."""
    return grpc.ssl_server_credentials(
        [(private_key, cert_chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
