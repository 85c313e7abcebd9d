from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SpecRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Spec(_message.Message):
    __slots__ = ("agent", "obs_dim", "act_dim", "action_low", "action_high", "denoising_steps", "noise_steps", "env_id", "algo", "model_sha256", "server_version", "max_batch", "weights_sha256", "format_version", "source_run", "team_id")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    OBS_DIM_FIELD_NUMBER: _ClassVar[int]
    ACT_DIM_FIELD_NUMBER: _ClassVar[int]
    ACTION_LOW_FIELD_NUMBER: _ClassVar[int]
    ACTION_HIGH_FIELD_NUMBER: _ClassVar[int]
    DENOISING_STEPS_FIELD_NUMBER: _ClassVar[int]
    NOISE_STEPS_FIELD_NUMBER: _ClassVar[int]
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    ALGO_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_RUN_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    agent: str
    obs_dim: int
    act_dim: int
    action_low: _containers.RepeatedScalarFieldContainer[float]
    action_high: _containers.RepeatedScalarFieldContainer[float]
    denoising_steps: int
    noise_steps: int
    env_id: str
    algo: str
    model_sha256: str
    server_version: str
    max_batch: int
    weights_sha256: str
    format_version: str
    source_run: str
    team_id: str
    def __init__(self, agent: _Optional[str] = ..., obs_dim: _Optional[int] = ..., act_dim: _Optional[int] = ..., action_low: _Optional[_Iterable[float]] = ..., action_high: _Optional[_Iterable[float]] = ..., denoising_steps: _Optional[int] = ..., noise_steps: _Optional[int] = ..., env_id: _Optional[str] = ..., algo: _Optional[str] = ..., model_sha256: _Optional[str] = ..., server_version: _Optional[str] = ..., max_batch: _Optional[int] = ..., weights_sha256: _Optional[str] = ..., format_version: _Optional[str] = ..., source_run: _Optional[str] = ..., team_id: _Optional[str] = ...) -> None: ...

class ActRequest(_message.Message):
    __slots__ = ("obs", "noise", "seed", "zero_noise", "request_id")
    OBS_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ZERO_NOISE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    obs: Tensor
    noise: Tensor
    seed: int
    zero_noise: bool
    request_id: str
    def __init__(self, obs: _Optional[_Union[Tensor, _Mapping]] = ..., noise: _Optional[_Union[Tensor, _Mapping]] = ..., seed: _Optional[int] = ..., zero_noise: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_us", "inference_us", "total_us", "batch_size")
    QUEUE_US_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    queue_us: int
    inference_us: int
    total_us: int
    batch_size: int
    def __init__(self, queue_us: _Optional[int] = ..., inference_us: _Optional[int] = ..., total_us: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ActReply(_message.Message):
    __slots__ = ("action", "timing", "model_sha256", "request_id", "team_id")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    action: Tensor
    timing: Timing
    model_sha256: str
    request_id: str
    team_id: str
    def __init__(self, action: _Optional[_Union[Tensor, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., model_sha256: _Optional[str] = ..., request_id: _Optional[str] = ..., team_id: _Optional[str] = ...) -> None: ...
