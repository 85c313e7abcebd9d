"""A Triton Inference Server model repository for an export dir.

    EXPORT_DIR/triton/<agent>/config.pbtxt
    EXPORT_DIR/triton/<agent>/1/model.onnx      the agent's graph, batch-major (below)

Serve it with `tritonserver --model-repository EXPORT_DIR/triton`.

Triton batches on axis 0 of every input: its dynamic batcher merges requests by concatenating
them there, and with max_batch_size > 0 the config's dims leave the batch axis out. The standard
graph takes noise [K+1, B, d_a] (batch on axis 1), so the Triton copy takes noise [B, K+1, d_a]
and transposes it inside the graph; everything else is the standard graph, so both compute the
same actions from the same noise.

Torch-free and onnx-free: the batch-major graph is built by omad.export.onnx.batch_major_graph.
"""

from __future__ import annotations

from pathlib import Path

from omad.runtime.schema import ACTION_OUTPUT, NOISE_INPUT, OBS_INPUT, ModelInfo

TRITON_DIR = "triton"
TRITON_MODEL_VERSION = "1"
TRITON_MODEL_FILE = "model.onnx"
TRITON_MAX_BATCH = 64  # rows of one merged call (as `omad serve --max-batch`' default)
TRITON_MAX_QUEUE_DELAY_US = 100  # how long Triton may hold a request to merge it with others
BATCH_MAJOR_NOISE_LAYOUT = (
    "noise has shape [B, K+1, d_a] (batch-major, for Triton's batcher), all entries standard normal; "
    "noise[:, 0] is the prior draw, noise[:, k+1] the step noise of denoising step k = 0..K-1; "
    "all zeros gives the deterministic policy"
)


def triton_config(info: ModelInfo) -> str:
    """config.pbtxt for Triton's ONNX Runtime backend, with dynamic batching. Dims exclude the batch."""

    def tensor(name: str, dims: list[int]) -> str:
        return f'  {{\n    name: "{name}"\n    data_type: TYPE_FP32\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'

    inputs = [tensor(OBS_INPUT, [info.obs_dim]), tensor(NOISE_INPUT, [info.noise_steps, info.act_dim])]
    output = tensor(ACTION_OUTPUT, [info.act_dim])
    return (
        f"# Written by `omad export`: agent {info.name} of {info.env_id} ({info.algo}), K = {info.denoising_steps}.\n"
        f"# {BATCH_MAJOR_NOISE_LAYOUT}.\n"
        f'name: "{info.name}"\n'
        'backend: "onnxruntime"\n'
        f"max_batch_size: {TRITON_MAX_BATCH}\n"
        "input [\n" + ",\n".join(inputs) + "\n]\n"
        "output [\n" + output + "\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {TRITON_MAX_QUEUE_DELAY_US}\n}}\n"
        # Same threading as omad's own runtime: one thread per request is fastest for small batches.
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
        'parameters { key: "inter_op_thread_count" value: { string_value: "1" } }\n'
    )


def write_triton_repository(export_dir: Path, infos: list[ModelInfo], graphs: dict[str, bytes]) -> Path:
    """graphs: each agent's batch-major graph (omad.export.onnx.batch_major_graph)."""
    root = Path(export_dir) / TRITON_DIR
    for info in infos:
        model_dir = root / info.name
        (model_dir / TRITON_MODEL_VERSION).mkdir(parents=True, exist_ok=True)
        (model_dir / TRITON_MODEL_VERSION / TRITON_MODEL_FILE).write_bytes(graphs[info.name])
        (model_dir / "config.pbtxt").write_text(triton_config(info))
    return root
