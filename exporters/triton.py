"""A Triton Inference Server model repository for an export dir (torch-free).

    EXPORT_DIR/triton/<agent>/config.pbtxt
    EXPORT_DIR/triton/<agent>/1/model.onnx      the same bytes as EXPORT_DIR/<agent>.onnx

Serve it with `tritonserver --model-repository EXPORT_DIR/triton`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from exporters.schema import ACTION_OUTPUT, NOISE_INPUT, OBS_INPUT, ONNX_SUFFIX, ModelInfo

TRITON_DIR = "triton"
TRITON_MODEL_VERSION = "1"
TRITON_MODEL_FILE = "model.onnx"


def triton_config(info: ModelInfo) -> str:
    """config.pbtxt for Triton's ONNX Runtime backend.

    The noise input carries the batch on axis 1, and Triton's own batching always adds axis 0 to
    every input, so batching is off (max_batch_size: 0) and every shape is explicit, -1 being the batch.
    """

    def tensor(name: str, dims: list[int]) -> str:
        return f'  {{\n    name: "{name}"\n    data_type: TYPE_FP32\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'

    inputs = [tensor(OBS_INPUT, [-1, info.obs_dim]), tensor(NOISE_INPUT, [info.noise_steps, -1, info.act_dim])]
    output = tensor(ACTION_OUTPUT, [-1, info.act_dim])
    return (
        f"# Written by `omad export`: agent {info.agent} of {info.env_id} ({info.algo}), K = {info.denoising_steps}.\n"
        f"# noise[0] is the prior draw, noise[k+1] the step noise of step k, all standard normal.\n"
        f'name: "{info.agent}"\n'
        'backend: "onnxruntime"\n'
        "max_batch_size: 0\n"
        "input [\n" + ",\n".join(inputs) + "\n]\n"
        "output [\n" + output + "\n]\n"
        # Same threading as omad's own runtime: one thread per request is fastest for small batches.
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
        'parameters { key: "inter_op_thread_count" value: { string_value: "1" } }\n'
    )


def write_triton_repository(export_dir: Path, infos: list[ModelInfo]) -> Path:
    root = Path(export_dir) / TRITON_DIR
    for info in infos:
        model_dir = root / info.agent
        (model_dir / TRITON_MODEL_VERSION).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(export_dir) / (info.agent + ONNX_SUFFIX), model_dir / TRITON_MODEL_VERSION / TRITON_MODEL_FILE)
        (model_dir / "config.pbtxt").write_text(triton_config(info))
    return root
