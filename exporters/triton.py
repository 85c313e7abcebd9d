"""A Triton Inference Server model repository for an export dir.

    EXPORT_DIR/triton/<agent>/config.pbtxt
    EXPORT_DIR/triton/<agent>/1/model.onnx      the agent's graph, batch-major (below)

Serve it with `tritonserver --model-repository EXPORT_DIR/triton`.

Triton batches on axis 0 of every input: its dynamic batcher merges requests by concatenating
them there, and with max_batch_size > 0 the config's dims leave the batch axis out. The standard
graph takes noise [K+1, B, d_a] (batch on axis 1), so the Triton copy takes noise [B, K+1, d_a]
and transposes it inside the graph; everything else is the standard graph, so both compute the
same actions from the same noise.

Torch-free; `onnx` is imported only to build the batch-major graph (at export time).
"""

from __future__ import annotations

from pathlib import Path

from exporters.schema import ACTION_OUTPUT, BATCH_AXIS, NOISE_INPUT, OBS_INPUT, ONNX_SUFFIX, ModelInfo, metadata_key, weights_sha256

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
        f"# Written by `omad export`: agent {info.agent} of {info.env_id} ({info.algo}), K = {info.denoising_steps}.\n"
        f"# {BATCH_MAJOR_NOISE_LAYOUT}.\n"
        f'name: "{info.agent}"\n'
        'backend: "onnxruntime"\n'
        f"max_batch_size: {TRITON_MAX_BATCH}\n"
        "input [\n" + ",\n".join(inputs) + "\n]\n"
        "output [\n" + output + "\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {TRITON_MAX_QUEUE_DELAY_US}\n}}\n"
        # Same threading as omad's own runtime: one thread per request is fastest for small batches.
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
        'parameters { key: "inter_op_thread_count" value: { string_value: "1" } }\n'
    )


def batch_major(model_bytes: bytes) -> bytes:
    """The standard graph with noise taken as [B, K+1, d_a] and transposed to [K+1, B, d_a] inside.

    Its metadata says so (noise_layout), and its weights_sha256 is recomputed for the new graph, so
    the file stays self-consistent."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    (noise,) = [value for value in graph.input if value.name == NOISE_INPUT]
    steps, _batch, act_dim = (d.dim_value for d in noise.type.tensor_type.shape.dim)
    inner = NOISE_INPUT + "_step_major"
    for node in graph.node:
        node.input[:] = [inner if name == NOISE_INPUT else name for name in node.input]
    graph.node.insert(0, onnx.helper.make_node("Transpose", [NOISE_INPUT], [inner], perm=[1, 0, 2], name="noise_to_step_major"))
    noise.CopyFrom(onnx.helper.make_tensor_value_info(NOISE_INPUT, onnx.TensorProto.FLOAT, [BATCH_AXIS, steps, act_dim]))
    props = {p.key: p.value for p in model.metadata_props}
    props[metadata_key("noise_layout")] = BATCH_MAJOR_NOISE_LAYOUT
    props[metadata_key("weights_sha256")] = weights_sha256(model.SerializeToString())
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def write_triton_repository(export_dir: Path, infos: list[ModelInfo]) -> Path:
    root = Path(export_dir) / TRITON_DIR
    for info in infos:
        model_dir = root / info.agent
        (model_dir / TRITON_MODEL_VERSION).mkdir(parents=True, exist_ok=True)
        graph = batch_major((Path(export_dir) / (info.agent + ONNX_SUFFIX)).read_bytes())
        (model_dir / TRITON_MODEL_VERSION / TRITON_MODEL_FILE).write_bytes(graph)
        (model_dir / "config.pbtxt").write_text(triton_config(info))
    return root
