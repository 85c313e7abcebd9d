"""The omad.v1.Policy service (protos/omad/v1/policy.proto): GetSpec, Act and ActStream."""

from __future__ import annotations

import asyncio
import time

import grpc

from omad.serve._generated import policy_pb2
from omad.serve.calls import (
    DRAINING_MESSAGE,
    Context,
    OpenStream,
    RequestError,
    ServingState,
    add_service,
    check_parsed,
    timing,
)
from omad.serve.loaded import LoadedModel
from omad.serve.tensors import TensorError, from_tensor, to_tensor

POLICY_SERVICE = policy_pb2.DESCRIPTOR.services_by_name["Policy"]


class PolicyService:
    def __init__(self, state: ServingState):
        self._state = state

    def register(self, server: grpc.aio.Server) -> None:
        state = self._state
        add_service(
            server,
            POLICY_SERVICE,
            policy_pb2,
            {
                "GetSpec": state.unary("GetSpec", self.get_spec),
                "Act": state.unary("Act", self.act),
                "ActStream": state.stream("ActStream", self.act_stream),
            },
        )

    async def get_spec(self, model: LoadedModel, request: policy_pb2.SpecRequest, context: Context) -> policy_pb2.Spec:
        return model.spec

    async def act(self, model: LoadedModel, request: policy_pb2.ActRequest, context: Context) -> policy_pb2.ActReply:
        return await self._act_once(model, request, time.perf_counter_ns())

    async def act_stream(self, stream: OpenStream, context: Context) -> None:
        """One reply per request, in order, each from the model serving when the request arrived. A
        drain ends the stream with UNAVAILABLE: at once if it is waiting for a request, else right
        after the current reply."""
        state = self._state
        while not state.draining:
            stream.idle = True
            try:
                request = await context.read()
            except asyncio.CancelledError:
                if not stream.drained:  # the client went away or its deadline passed
                    raise
                task = asyncio.current_task()
                assert task is not None
                task.uncancel()
                break
            stream.idle = False
            if request is grpc.aio.EOF:
                return
            received_ns = time.perf_counter_ns()
            model = state.admit()
            await context.write(await self._act_once(model, check_parsed(request), received_ns))
            state.metrics.observe_request("ActStream", (time.perf_counter_ns() - received_ns) / 1e9)
        raise RequestError(grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE)

    async def _act_once(
        self, model: LoadedModel, request: policy_pb2.ActRequest, received_ns: int
    ) -> policy_pb2.ActReply:
        try:
            obs = from_tensor(request.obs, "obs")
            noise = from_tensor(request.noise, "noise") if request.HasField("noise") else None
        except TensorError as err:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
        seed = request.seed if request.HasField("seed") else None
        result = await self._state.run_policy(model, obs, noise, seed, request.zero_noise)
        return policy_pb2.ActReply(
            action=to_tensor(result.action),
            timing=timing(result, received_ns),
            model_sha256=model.info.sha256,
            request_id=request.request_id,
            team_id=model.team_id,
        )
