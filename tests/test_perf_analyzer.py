"""Triton's perf_analyzer (shipped in tritonclient's wheel) load-tests `omad serve` over KServe v2 gRPC:
it calls ModelMetadata, ModelConfig and ModelInfer, so this proves the Triton extension it needs is
served. Skipped where the binary can't start (it links libb64 and the CUDA runtime dynamically)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from omad.runtime.onnx_policy import read_manifest
from omad.serve.config import ServeConfig
from omad.serve.testing import ServerThread

PERF_ANALYZER = Path(sys.executable).parent / "perf_analyzer"


def _perf_analyzer_env() -> dict[str, str]:
    """The environment to run it in: libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel, if installed."""
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime  # type: ignore[import-not-found]
    except ImportError:
        return env
    libs = [str(Path(p) / "lib") for p in nvidia.cuda_runtime.__path__]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    return env


def _runnable_perf_analyzer() -> tuple[str, dict[str, str]]:
    binary = str(PERF_ANALYZER) if PERF_ANALYZER.is_file() else shutil.which("perf_analyzer")
    if binary is None:
        pytest.skip("perf_analyzer is not installed (it comes with tritonclient[all] / tritonclient wheels on Linux)")
    env = _perf_analyzer_env()
    probe = subprocess.run([binary, "--version"], capture_output=True, text=True, env=env, timeout=30)
    if "error while loading shared libraries" in probe.stderr:
        pytest.skip(
            "perf_analyzer can't start here: "
            + probe.stderr.strip().splitlines()[-1]
            + " (needs apt libb64-0d and pip nvidia-cuda-runtime-cu12)"
        )
    return binary, env


@pytest.fixture(scope="module")
def server(tiny_export_dir):
    path = Path(tiny_export_dir) / read_manifest(tiny_export_dir)["agents"][0]["file"]
    with ServerThread(ServeConfig(model=path, port=0, max_batch=16, seed=0)) as running:
        yield running


def test_model_config_describes_the_graph(server):
    from omad.serve._generated import grpc_service_pb2 as kserve_pb2

    info = server.server.loaded.info
    method = "/inference.GRPCInferenceService/ModelConfig"
    with grpc.insecure_channel(server.addr) as channel:
        call = channel.unary_unary(
            method,
            request_serializer=kserve_pb2.ModelConfigRequest.SerializeToString,
            response_deserializer=kserve_pb2.ModelConfigResponse.FromString,
        )
        config = call(kserve_pb2.ModelConfigRequest(name=info.name), timeout=10).config
        with pytest.raises(grpc.RpcError) as err:
            call(kserve_pb2.ModelConfigRequest(name="no_such_agent"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert (config.name, config.platform, config.max_batch_size) == (info.name, "onnxruntime_onnx", 0)
    dims = {t.name: list(t.dims) for t in [*config.input, *config.output]}
    assert dims == {
        "obs": [-1, info.obs_dim],
        "noise": [info.noise_steps, -1, info.act_dim],
        "action": [-1, info.act_dim],
    }
    assert {t.data_type for t in [*config.input, *config.output]} == {kserve_pb2.TYPE_FP32}


def test_model_config_through_tritonclient(server):
    """tritonclient's own stubs (Triton's full model_config.proto) decode our reply."""
    import tritonclient.grpc as triton

    info = server.server.loaded.info
    client = triton.InferenceServerClient(server.addr)
    config = client.get_model_config(info.name).config
    assert config.max_batch_size == 0 and config.platform == "onnxruntime_onnx"
    assert [list(i.dims) for i in config.input] == [[-1, info.obs_dim], [info.noise_steps, -1, info.act_dim]]
    assert triton.model_config_pb2.DataType.Name(config.output[0].data_type) == "TYPE_FP32"


def test_perf_analyzer_runs_against_the_server(server):
    binary, env = _runnable_perf_analyzer()
    info = server.server.loaded.info
    command = [
        binary,
        "-m",
        info.name,
        "-u",
        server.addr,
        "-i",
        "grpc",
        "--shape",
        f"obs:1,{info.obs_dim}",
        "--shape",
        f"noise:{info.noise_steps},1,{info.act_dim}",
        "--input-data",
        "zero",
        "--measurement-interval",
        "500",
        "--concurrency-range",
        "1:2",
        "--max-trials",
        "10",
        "--stability-percentage",
        "100",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(r"Concurrency: 1, throughput: [0-9.]+ infer/sec", output), output
    assert re.search(r"Concurrency: 2, throughput: [0-9.]+ infer/sec", output), output
