"""ONNX export: graph shape and contents, parity with torch (two runtimes), metadata, CLI, failures."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from omad.cli import main as omad_main
from omad.export import onnx as onnx_export
from omad.export.onnx import ExportError, export_policy, export_run, forbidden_ops
from omad.runtime.onnx_policy import load_export
from omad.runtime.schema import ACTION_OUTPUT, MANIFEST_NAME, NOISE_LAYOUT, metadata_key
from omad.train.checkpoint import latest_checkpoint, sha256_file
from omad.train.policies import AgentPolicy, load_policies, load_spec

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def torch_policies(tiny_run_dir):
    return load_policies(tiny_run_dir)


def random_inputs(policy, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((batch, policy.obs_dim), dtype=np.float32)
    noise = rng.standard_normal((policy.denoising_steps + 1, batch, policy.act_dim), dtype=np.float32)
    return obs, noise


def torch_act(policy, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return policy(torch.from_numpy(obs), torch.from_numpy(noise)).numpy()


# -- files and graph ----------------------------------------------------------------------------
def test_manifest_lists_agents_in_env_order_with_file_hashes(tiny_run_dir, tiny_export_dir):
    spec = load_spec(tiny_run_dir)
    manifest = json.loads((tiny_export_dir / MANIFEST_NAME).read_text())
    assert [entry["agent"] for entry in manifest["agents"]] == spec.agent_names
    assert manifest["env_id"] == "mpe:simple_spread_v3" and manifest["format_version"] == 2
    for entry in manifest["agents"]:
        assert entry["file"] == entry["agent"] + ".onnx"
        assert entry["sha256"] == sha256_file(tiny_export_dir / entry["file"])
    assert not list(tiny_export_dir.parent.glob(".*")), "no staging dir left next to the export"


def test_metadata_holds_what_a_server_needs(tiny_run_dir, tiny_export_dir):
    spec = load_spec(tiny_run_dir)
    checkpoint = latest_checkpoint(tiny_run_dir)
    for agent in spec.agents:
        model = onnx.load(tiny_export_dir / f"{agent.name}.onnx")
        props = {p.key: p.value for p in model.metadata_props}
        assert props[metadata_key("format_version")] == "2"
        assert props[metadata_key("agent")] == agent.name
        assert json.loads(props[metadata_key("obs_dim")]) == agent.obs_dim
        assert json.loads(props[metadata_key("act_dim")]) == agent.act_dim
        assert json.loads(props[metadata_key("action_low")]) == list(agent.action_low)
        assert json.loads(props[metadata_key("action_high")]) == list(agent.action_high)
        assert json.loads(props[metadata_key("denoising_steps")]) == 4
        assert json.loads(props[metadata_key("noise_steps")]) == 5
        assert props[metadata_key("noise_layout")] == NOISE_LAYOUT
        assert props[metadata_key("env_id")] == spec.env_id
        assert props[metadata_key("algo")] == "omad"
        assert props[metadata_key("actor_kind")] == "diffusion"
        assert props[metadata_key("source_run")] == str(tiny_run_dir.resolve())
        assert props[metadata_key("source_checkpoint")] == checkpoint.name
        weights = checkpoint / "actors" / f"{agent.name}.safetensors"
        assert props[metadata_key("checkpoint_sha256")] == sha256_file(weights)
        del model.metadata_props[:]  # weights_sha256: the file without its metadata (tests/test_runtime.py)
        assert props[metadata_key("weights_sha256")] == hashlib.sha256(model.SerializeToString()).hexdigest()


def test_matmul_weights_are_2d_so_rows_do_not_depend_on_the_batch(tiny_export_dir):
    """ONNX Runtime prepacks only 2-D constant MatMul weights; packed, every row is computed the same
    way whatever the batch (docs/guides/serving.md, "Merged batches are exact")."""
    for path in sorted(tiny_export_dir.glob("*.onnx")):
        graph = onnx.load(path).graph
        weights = {t.name: list(t.dims) for t in graph.initializer}
        matmuls = [node for node in graph.node if node.op_type == "MatMul"]
        assert matmuls
        for node in matmuls:
            assert len(weights[node.input[1]]) == 2, (path.name, node.input[1], weights[node.input[1]])


def test_prepackable_rewrite_keeps_the_function():
    """A 3-D [1, K, N] weight against a rank-3 input becomes [K, N]; a rank-2 input keeps it (shapes differ)."""
    h, rng = onnx.helper, np.random.default_rng(0)
    w3, w2 = rng.standard_normal((1, 4, 3), dtype=np.float32), rng.standard_normal((1, 3, 2), dtype=np.float32)
    graph = h.make_graph(
        [h.make_node("MatMul", ["a", "w3"], ["y"]), h.make_node("MatMul", ["b", "w2"], ["z"])],
        "g",
        [
            h.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1, "n", 4]),
            h.make_tensor_value_info("b", onnx.TensorProto.FLOAT, ["n", 3]),
        ],
        [
            h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None),
            h.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None),
        ],
        [onnx.numpy_helper.from_array(w3, "w3"), onnx.numpy_helper.from_array(w2, "w2")],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    assert onnx_export.prepackable_matmul_weights(model) == 1
    assert {t.name: list(t.dims) for t in model.graph.initializer} == {"w3": [4, 3], "w2": [1, 3, 2]}
    a, b = rng.standard_normal((1, 5, 4), dtype=np.float32), rng.standard_normal((5, 3), dtype=np.float32)
    y, z = ReferenceEvaluator(model).run(None, {"a": a, "b": b})
    np.testing.assert_allclose(y, a @ w3, rtol=1e-6)
    assert z.shape == (1, 5, 2)


def test_graph_signature_has_a_dynamic_batch(tiny_export_dir, torch_policies):
    policy = torch_policies["agent_0"]
    model = onnx.load(tiny_export_dir / "agent_0.onnx")

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = {v.name: v for v in model.graph.input}
    assert list(inputs) == ["obs", "noise"] and [v.name for v in model.graph.output] == ["action"]
    assert dims(inputs["obs"]) == ["batch", policy.obs_dim]
    assert dims(inputs["noise"]) == [5, "batch", policy.act_dim]
    assert dims(model.graph.output[0]) == ["batch", policy.act_dim]
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_graph_is_unrolled_without_control_flow_or_random_ops(tiny_export_dir):
    for path in sorted(tiny_export_dir.glob("*.onnx")):
        model = onnx.load(path)
        op_types = {node.op_type for node in model.graph.node}
        assert forbidden_ops(model) == []
        assert not op_types & {"Loop", "If", "Scan"} and not any(op.startswith("Random") for op in op_types)
        assert not model.functions
        onnx.checker.check_model(model, full_check=True)


def test_forbidden_op_finder_sees_nested_graphs():
    h = onnx.helper
    noise = h.make_node("RandomNormal", [], ["r"], shape=[1])
    body = h.make_graph([noise], "body", [], [h.make_tensor_value_info("r", onnx.TensorProto.FLOAT, [1])])
    branch = h.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body)
    graph = h.make_graph(
        [branch],
        "g",
        [h.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    assert forbidden_ops(h.make_model(graph)) == ["If", "RandomNormal"]


# -- parity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnx_runtime_matches_torch_at_any_batch(tiny_export_dir, torch_policies, batch):
    exported = load_export(tiny_export_dir)
    for name, policy in torch_policies.items():
        obs, noise = random_inputs(policy, batch, seed=batch)
        actions = exported[name].act(obs, noise)
        assert actions.shape == (batch, policy.act_dim) and actions.dtype == np.float32
        assert np.abs(actions - torch_act(policy, obs, noise)).max() <= TOLERANCE


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_reference_evaluator_matches_torch(tiny_export_dir, torch_policies, batch):
    """ONNX's own reference evaluator: an independent runtime, so the graph (not ORT) is right."""
    policy = torch_policies["agent_1"]
    evaluator = ReferenceEvaluator(str(tiny_export_dir / "agent_1.onnx"))
    obs, noise = random_inputs(policy, batch, seed=10 + batch)
    (actions,) = evaluator.run(None, {"obs": obs, "noise": noise})
    assert np.abs(actions - torch_act(policy, obs, noise)).max() <= TOLERANCE


def test_round_trip_export_acts_like_the_checkpoint(tiny_run_dir, tiny_export_dir):
    checkpoint_policies = load_policies(tiny_run_dir)
    exported = load_export(tiny_export_dir)
    assert list(exported) == list(checkpoint_policies)
    for name, policy in checkpoint_policies.items():
        obs, noise = random_inputs(policy, 16, seed=3)
        obs *= 3.0  # beyond the unit scale of the export's own parity check
        assert np.abs(exported[name].act(obs, noise) - torch_act(policy, obs, noise)).max() <= TOLERANCE


def test_zero_noise_equals_torch_with_zero_noise(tiny_export_dir, torch_policies):
    policy = torch_policies["agent_2"]
    exported = load_export(tiny_export_dir)["agent_2"]
    obs, noise = random_inputs(policy, 5)
    first = exported.act(obs, zero_noise=True)
    np.testing.assert_array_equal(first, exported.act(obs, zero_noise=True))
    assert np.abs(first - torch_act(policy, obs, np.zeros_like(noise))).max() <= TOLERANCE


# -- CLI and failures ---------------------------------------------------------------------------
def test_cli_export_with_triton_repository(tiny_run_dir, tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    out = tmp_path / "export"
    assert omad_main(["export", str(tiny_run_dir), "--out", str(out), "--triton"]) == 0
    report = capsys.readouterr().out
    assert "max err B=1" in report and "max err B=64" in report and report.count(" ok ") == 3

    import onnxruntime as ort

    rng = np.random.default_rng(0)
    for entry in json.loads((out / MANIFEST_NAME).read_text())["agents"]:
        model_dir = out / "triton" / entry["agent"]
        config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.name == entry["agent"] and config.backend == "onnxruntime"
        # Triton batches on axis 0: dims leave the batch out, and its dynamic batcher is on
        assert config.max_batch_size > 0 and config.HasField("dynamic_batching")
        shapes = {t.name: list(t.dims) for t in [*config.input, *config.output]}
        assert shapes == {"obs": [entry["obs_dim"]], "noise": [5, 5], "action": [5]}
        assert all(t.data_type == model_config_pb2.TYPE_FP32 for t in [*config.input, *config.output])

        # the batch-major graph computes the standard one's actions from the same (transposed) noise
        batch_major = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        inputs = {i.name: i.shape for i in batch_major.get_inputs()}
        assert inputs["noise"][1:] == [5, 5] and isinstance(inputs["noise"][0], str)
        standard = load_export(out)[entry["agent"]]
        obs = rng.standard_normal((7, entry["obs_dim"]), dtype=np.float32)
        noise = rng.standard_normal((5, 7, 5), dtype=np.float32)
        (actions,) = batch_major.run(["action"], {"obs": obs, "noise": np.ascontiguousarray(noise.transpose(1, 0, 2))})
        np.testing.assert_array_equal(actions, standard.act(obs, noise))
        props = {p.key: p.value for p in onnx.load(model_dir / "1" / "model.onnx").metadata_props}
        assert "[B, K+1, d_a]" in props[metadata_key("noise_layout")]

    # an existing export is kept unless --overwrite, and then replaced
    assert omad_main(["export", str(tiny_run_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "triton").is_dir()


def test_cli_missing_run_dir_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "export"
    assert omad_main(["export", str(tmp_path / "no-such-run"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and "\n" not in err
    assert not out.exists()


def test_cli_other_checkpoint_format_version_is_one_line(tiny_run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    manifest_path = latest_checkpoint(run) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 999
    manifest_path.write_text(json.dumps(manifest))
    assert omad_main(["export", str(run), "--out", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err.strip()
    assert "format version 999" in err and "\n" not in err
    assert not (tmp_path / "export").exists()


def test_overwrite_never_deletes_a_dir_that_is_not_an_export(tiny_run_dir, tmp_path):
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an export dir"):
        export_run(tiny_run_dir, keep, overwrite=True)
    assert (keep / "notes.txt").read_text() == "mine"


def test_failed_verification_leaves_no_export_dir(tiny_run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "PARITY_TOLERANCE", -1.0)
    out = tmp_path / "exports" / "bad"
    with pytest.raises(ExportError, match="differs from torch"):
        export_run(tiny_run_dir, out)
    assert not out.exists()
    assert list((tmp_path / "exports").iterdir()) == [], "the staging dir is removed too"


def test_unsupported_opset_is_refused_not_silently_changed(tiny_run_dir, tmp_path):
    with pytest.raises(ExportError, match="cannot export at opset 5"):
        export_run(tiny_run_dir, tmp_path / "export", opset=5)
    assert not (tmp_path / "export").exists()


# -- the parity gate with non-finite errors -----------------------------------------------------
def small_policy() -> AgentPolicy:
    hparams = {
        "obs_dims": [3],
        "act_dims": [2],
        "action_low": [[0.0, -0.4]],
        "action_high": [[1.0, 0.4]],
        "hidden": [8],
        "denoising_steps": 2,
        "prior_std": 2.5,
        "time_features": 16,
    }
    return AgentPolicy("agent_0", hparams, "diffusion").eval()


def export_small(policy, path):
    return export_policy(policy, path, env_id="test", algo="omad", source_run="test", checkpoint_sha256="0" * 64)


def test_export_refuses_a_policy_that_outputs_nan(tmp_path):
    """A diverged run (a NaN weight): torch and ONNX both give NaN, |NaN - NaN| is NaN, and a NaN
    error must fail the gate, not slip through a `>` comparison."""
    policy = small_policy()
    with torch.no_grad():
        policy.actors.out.bias[0, 0, 0] = float("nan")
    with pytest.raises(ExportError, match="differs from torch by nan"):
        export_small(policy, tmp_path / "diverged.onnx")


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_export_refuses_a_graph_that_breaks_one_action_entry(tmp_path, monkeypatch, value):
    """An exporter bug that makes one action entry non-finite while torch stays finite: the
    verification runs the corrupted graph and must refuse it, however small the rest of the error."""
    trace = onnx_export.trace_to_onnx

    def corrupted_trace(policy, opset):
        model = trace(policy, opset)
        graph = model.graph
        (producer,) = [node for node in graph.node if ACTION_OUTPUT in node.output]
        producer.output[list(producer.output).index(ACTION_OUTPUT)] = "clean_action"
        broken = np.zeros(policy.act_dim, np.float32)
        broken[0] = value
        graph.initializer.append(onnx.numpy_helper.from_array(broken, "broken"))
        graph.node.append(onnx.helper.make_node("Add", ["clean_action", "broken"], [ACTION_OUTPUT]))
        return model

    monkeypatch.setattr(onnx_export, "trace_to_onnx", corrupted_trace)
    with pytest.raises(ExportError, match=f"differs from torch by {value}"):
        export_small(small_policy(), tmp_path / "agent_0.onnx")
