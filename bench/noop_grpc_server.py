"""A no-op omad.v1.Policy server: the floor that Python gRPC itself sets (bench.serving, parts 3-5).

    python -m bench.noop_grpc_server PORT ACT_DIM              # serves 127.0.0.1:PORT until SIGTERM / SIGINT
    python -m bench.noop_grpc_server PORT ACT_DIM MODEL.onnx   # the same, plus ONNX Runtime in the handler

Same process layout as `omad serve` (one grpc.aio process, the same messages), but Act and
ActStream answer a constant action without reading the request: no validation, no inference.
With a model, each handler decodes obs and noise and runs the graph inline, and nothing else (no
validation, batching, timing or metrics): the fastest a Python gRPC server of that model can be,
so `omad serve` / this server is the overhead omad's own serving code adds.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

from omad.serve._generated import policy_pb2, policy_pb2_grpc
from omad.serve.tensors import from_tensor, to_tensor


class NoopPolicy(policy_pb2_grpc.PolicyServicer):
    def __init__(self, act_dim: int, model: str | None = None):
        action = policy_pb2.Tensor(shape=[1, act_dim], data=bytes(4 * act_dim))
        self.reply = policy_pb2.ActReply(action=action, timing=policy_pb2.Timing(batch_size=1), model_sha256="0" * 64)
        self.policy = None
        if model is not None:
            from omad.runtime.onnx_policy import OnnxPolicy

            self.policy = OnnxPolicy(model, threads=1)

    def answer(self, request: policy_pb2.ActRequest) -> policy_pb2.ActReply:
        if self.policy is None:
            return self.reply
        action = self.policy.run(from_tensor(request.obs, "obs"), from_tensor(request.noise, "noise"))
        return policy_pb2.ActReply(action=to_tensor(action))

    async def Act(self, request, context):
        return self.answer(request)

    async def ActStream(self, requests, context):
        async for request in requests:  # same shape as omad serve's handler: read one, write one
            await context.write(self.answer(request))


async def serve(port: int, act_dim: int, model: str | None) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    policy_pb2_grpc.add_PolicyServicer_to_server(NoopPolicy(act_dim, model), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
