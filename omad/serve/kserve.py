"""The KServe v2 (Open Inference Protocol) GRPCInferenceService on the same port, so stock clients
such as tritonclient and perf_analyzer work unchanged.

The model is named after its agent, version "1". ModelInfer takes inputs `obs` [B, d_o] and
optionally `noise` [K+1, B, d_a] and gives output `action`; request parameters `seed` (int64) and
`zero_noise` (bool) are the omad.v1 ActRequest options, and the reply's parameters carry the server
times, the model's sha256 and its team id.
"""

from __future__ import annotations

import time

import grpc
import numpy as np

from omad.runtime.schema import ACTION_OUTPUT, NOISE_INPUT, OBS_INPUT
from omad.serve._generated import grpc_service_pb2 as kserve_pb2
from omad.serve.calls import Context, RequestError, ServingState, add_service, timing
from omad.serve.loaded import LoadedModel
from omad.serve.spec import server_version
from omad.serve.tensors import FLOAT32_LE, TensorError, decode_float32

KSERVE_SERVICE = kserve_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
KSERVE_MODEL_VERSION = "1"
KSERVE_PLATFORM = "onnxruntime_onnx"
Status = grpc.StatusCode


class KServeService:
    def __init__(self, state: ServingState):
        self._state = state

    def register(self, server: grpc.aio.Server) -> None:
        state = self._state
        add_service(
            server,
            KSERVE_SERVICE,
            kserve_pb2,
            {
                "ServerLive": state.unary_open("ServerLive", self.server_live),
                "ServerReady": state.unary_open("ServerReady", self.server_ready),
                "ModelReady": state.unary_open("ModelReady", self.model_ready),
                "ServerMetadata": state.unary_open("ServerMetadata", self.server_metadata),
                "ModelMetadata": state.unary("ModelMetadata", self.model_metadata),
                "ModelInfer": state.unary("ModelInfer", self.model_infer),
                "ModelConfig": state.unary("ModelConfig", self.model_config),
            },
        )

    # ---- answered with or without a model ---------------------------------------------------

    async def server_live(
        self, request: kserve_pb2.ServerLiveRequest, context: Context
    ) -> kserve_pb2.ServerLiveResponse:
        return kserve_pb2.ServerLiveResponse(live=True)

    async def server_ready(
        self, request: kserve_pb2.ServerReadyRequest, context: Context
    ) -> kserve_pb2.ServerReadyResponse:
        return kserve_pb2.ServerReadyResponse(ready=self._state.serving is not None)

    async def model_ready(
        self, request: kserve_pb2.ModelReadyRequest, context: Context
    ) -> kserve_pb2.ModelReadyResponse:
        model = self._state.serving
        ready = model is not None and _is_this_model(model, request.name, request.version)
        return kserve_pb2.ModelReadyResponse(ready=ready)

    async def server_metadata(
        self, request: kserve_pb2.ServerMetadataRequest, context: Context
    ) -> kserve_pb2.ServerMetadataResponse:
        return kserve_pb2.ServerMetadataResponse(name="omad", version=server_version())

    # ---- with the loaded model ----------------------------------------------------------------

    async def model_metadata(
        self, model: LoadedModel, request: kserve_pb2.ModelMetadataRequest, context: Context
    ) -> kserve_pb2.ModelMetadataResponse:
        _require_this_model(model, request.name, request.version)
        info = model.info
        tensor = kserve_pb2.ModelMetadataResponse.TensorMetadata
        return kserve_pb2.ModelMetadataResponse(
            name=info.name,
            versions=[KSERVE_MODEL_VERSION],
            platform=KSERVE_PLATFORM,
            inputs=[
                tensor(name=OBS_INPUT, datatype="FP32", shape=[-1, info.obs_dim]),
                tensor(name=NOISE_INPUT, datatype="FP32", shape=[info.noise_steps, -1, info.act_dim]),
            ],
            outputs=[tensor(name=ACTION_OUTPUT, datatype="FP32", shape=[-1, info.act_dim])],
        )

    async def model_config(
        self, model: LoadedModel, request: kserve_pb2.ModelConfigRequest, context: Context
    ) -> kserve_pb2.ModelConfigResponse:
        """Triton's ModelConfig (perf_analyzer asks for it): max_batch_size 0, since noise batches on axis 1."""
        _require_this_model(model, request.name, request.version)
        info, fp32 = model.info, kserve_pb2.TYPE_FP32
        return kserve_pb2.ModelConfigResponse(
            config=kserve_pb2.ModelConfig(
                name=info.name,
                platform=KSERVE_PLATFORM,
                backend="onnxruntime",
                max_batch_size=0,
                input=[
                    kserve_pb2.ModelInput(name=OBS_INPUT, data_type=fp32, dims=[-1, info.obs_dim]),
                    kserve_pb2.ModelInput(
                        name=NOISE_INPUT, data_type=fp32, dims=[info.noise_steps, -1, info.act_dim], optional=True
                    ),
                ],
                output=[kserve_pb2.ModelOutput(name=ACTION_OUTPUT, data_type=fp32, dims=[-1, info.act_dim])],
            )
        )

    async def model_infer(
        self, model: LoadedModel, request: kserve_pb2.ModelInferRequest, context: Context
    ) -> kserve_pb2.ModelInferResponse:
        received_ns = time.perf_counter_ns()
        _require_this_model(model, request.model_name, request.model_version)
        inputs = _inputs(request)
        for output in request.outputs:
            if output.name != ACTION_OUTPUT:
                raise RequestError(
                    Status.INVALID_ARGUMENT,
                    f"unknown output {output.name!r}; this model has one output, {ACTION_OUTPUT!r}",
                )
        seed, zero_noise = _noise_parameters(request)
        result = await self._state.run_policy(model, inputs[OBS_INPUT], inputs.get(NOISE_INPUT), seed, zero_noise)
        action = np.ascontiguousarray(result.action, FLOAT32_LE)
        response = kserve_pb2.ModelInferResponse(
            model_name=model.info.name,
            model_version=KSERVE_MODEL_VERSION,
            id=request.id,
            outputs=[
                kserve_pb2.ModelInferResponse.InferOutputTensor(name=ACTION_OUTPUT, datatype="FP32", shape=action.shape)
            ],
            raw_output_contents=[action.tobytes()],
        )
        times = timing(result, received_ns)
        for name in ("queue_us", "inference_us", "total_us", "batch_size"):
            response.parameters[name].int64_param = getattr(times, name)
        response.parameters["model_sha256"].string_param = model.info.sha256
        response.parameters["team_id"].string_param = model.team_id
        return response


def _is_this_model(model: LoadedModel, name: str, version: str) -> bool:
    return name == model.info.name and version in ("", KSERVE_MODEL_VERSION)


def _require_this_model(model: LoadedModel, name: str, version: str) -> None:
    if not _is_this_model(model, name, version):
        raise RequestError(
            Status.NOT_FOUND,
            f"unknown model {name!r} version {version!r}: this server serves {model.info.name!r} version {KSERVE_MODEL_VERSION}",
        )


def _inputs(request: kserve_pb2.ModelInferRequest) -> dict[str, np.ndarray]:
    raw = request.raw_input_contents
    if raw and any(tensor.HasField("contents") for tensor in request.inputs):
        raise RequestError(
            Status.INVALID_ARGUMENT, "send every input either in raw_input_contents or in its contents field, not both"
        )
    if raw and len(raw) != len(request.inputs):
        raise RequestError(
            Status.INVALID_ARGUMENT,
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input",
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name not in (OBS_INPUT, NOISE_INPUT):
            raise RequestError(
                Status.INVALID_ARGUMENT,
                f"unknown input {tensor.name!r}; this model takes {OBS_INPUT!r} and optionally {NOISE_INPUT!r}",
            )
        if tensor.name in arrays:
            raise RequestError(Status.INVALID_ARGUMENT, f"input {tensor.name!r} appears twice")
        if tensor.datatype != "FP32":
            raise RequestError(
                Status.INVALID_ARGUMENT, f"input {tensor.name!r} has datatype {tensor.datatype!r}; send FP32"
            )
        data = raw[index] if raw else np.asarray(tensor.contents.fp32_contents, FLOAT32_LE).tobytes()
        try:
            arrays[tensor.name] = decode_float32(data, tuple(tensor.shape), tensor.name)
        except TensorError as err:
            raise RequestError(Status.INVALID_ARGUMENT, str(err)) from None
    if OBS_INPUT not in arrays:
        raise RequestError(Status.INVALID_ARGUMENT, f"input {OBS_INPUT!r} is missing")
    return arrays


def _noise_parameters(request: kserve_pb2.ModelInferRequest) -> tuple[int | None, bool]:
    """Request parameters `seed` (int64) and `zero_noise` (bool): the same options as omad.v1.ActRequest."""
    seed, zero_noise = None, False
    if "seed" in request.parameters:
        param = request.parameters["seed"]
        if param.WhichOneof("parameter_choice") != "int64_param" or param.int64_param < 0:
            raise RequestError(Status.INVALID_ARGUMENT, "parameter 'seed' must be a non-negative int64")
        seed = param.int64_param
    if "zero_noise" in request.parameters:
        param = request.parameters["zero_noise"]
        if param.WhichOneof("parameter_choice") != "bool_param":
            raise RequestError(Status.INVALID_ARGUMENT, "parameter 'zero_noise' must be a bool")
        zero_noise = param.bool_param
    return seed, zero_noise
