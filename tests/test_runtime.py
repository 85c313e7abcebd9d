"""The torch-free runtime: loading checks (sha256, manifest, provider), request validation, noise."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from omad.runtime.onnx_policy import ModelInfo, OnnxPolicy, RuntimeModelError, load_export
from omad.runtime.schema import ModelInfo as SchemaModelInfo
from omad.runtime.schema import decode_metadata, encode_metadata

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def policy(tiny_export_dir) -> OnnxPolicy:
    return OnnxPolicy(tiny_export_dir / "agent_0.onnx")


@pytest.fixture
def export_copy(tiny_export_dir, tmp_path) -> Path:
    """A copy to tamper with."""
    return Path(shutil.copytree(tiny_export_dir, tmp_path / "export"))


def obs_batch(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 18), dtype=np.float32)


# -- torch-free ---------------------------------------------------------------------------------
def test_runtime_never_imports_torch(tiny_export_dir):
    code = (
        "import sys, numpy as np\n"
        "import omad.runtime, omad.runtime.schema, omad.export, omad.export.triton, omad.export.cli\n"
        "from omad.runtime.onnx_policy import load_export\n"
        f"policies = load_export({str(tiny_export_dir)!r})\n"
        "action = policies['agent_0'].act(np.zeros((2, 18), np.float32), seed=0)\n"
        "assert action.shape == (2, 5), action.shape\n"
        "heavy = sorted(m for m in ('torch', 'onnx') if m in sys.modules)\n"
        "assert not heavy, f'runtime imported {heavy}'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# -- loading ------------------------------------------------------------------------------------
def test_load_export_in_env_order_with_model_info(tiny_export_dir):
    policies = load_export(tiny_export_dir)
    assert list(policies) == ["agent_0", "agent_1", "agent_2"]
    info = policies["agent_1"].info
    assert isinstance(info, ModelInfo)
    assert (info.name, info.obs_dim, info.act_dim, info.denoising_steps, info.noise_steps) == ("agent_1", 18, 5, 4, 5)
    assert info.action_low == (0.0,) * 5 and info.action_high == (1.0,) * 5
    assert (info.env_id, info.algo, info.format_version) == ("mpe:simple_spread_v3", "omad", 2)
    manifest = json.loads((tiny_export_dir / "manifest.json").read_text())
    assert info.sha256 == manifest["agents"][1]["sha256"]
    assert len(info.weights_sha256) == 64 and info.source_run == manifest["source_run"]


def test_metadata_round_trips_through_its_encoding():
    info = SchemaModelInfo("a", 3, 2, (-1.0, -2.5), (1.0, 2.5), 8, "env", "omad", "f" * 64, "w" * 64, 1, "/runs/x")
    assert decode_metadata(encode_metadata(info), "f" * 64) == info
    props = encode_metadata(info)
    del props["omad.act_dim"]
    with pytest.raises(ValueError, match=r"omad\.act_dim"):
        decode_metadata(props, "")


def test_tampered_file_is_refused_naming_it(export_copy):
    path = export_copy / "agent_1.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeModelError, match=r"agent_1\.onnx.*sha256"):
        load_export(export_copy)
    with pytest.raises(RuntimeModelError, match=r"agent_1\.onnx.*sha256"):
        OnnxPolicy(path)


def test_metadata_disagreeing_with_manifest_is_refused(export_copy):
    manifest_path = export_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["agents"][0]["obs_dim"] = 17
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(RuntimeModelError, match=r"agent_0\.onnx: metadata obs_dim = 18 but the manifest says 17"):
        load_export(export_copy)


def test_other_export_format_version_is_refused(export_copy):
    manifest_path = export_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(RuntimeModelError, match="export format version 1"):
        load_export(export_copy)


def test_manifest_cannot_point_outside_its_dir(export_copy):
    manifest_path = export_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["agents"][0]["file"] = "../agent_0.onnx"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(RuntimeModelError, match="not a plain file name"):
        load_export(export_copy)


def test_missing_manifest_or_dir_is_a_clear_error(export_copy, tmp_path):
    (export_copy / "manifest.json").unlink()
    with pytest.raises(RuntimeModelError, match=r"manifest\.json: missing; .* is not an export dir"):
        load_export(export_copy)
    with pytest.raises(RuntimeModelError, match="does not exist"):
        load_export(tmp_path / "nowhere")
    with pytest.raises(RuntimeModelError, match="does not exist"):
        OnnxPolicy(tmp_path / "nowhere.onnx")


def test_a_lone_onnx_file_loads_without_manifest(tiny_export_dir, tmp_path):
    lone = tmp_path / "agent_2.onnx"
    shutil.copyfile(tiny_export_dir / "agent_2.onnx", lone)
    assert OnnxPolicy(lone).info.name == "agent_2"


def flip_a_weight_byte(path: Path) -> None:
    """Flip one bit inside the raw bytes of the graph's largest weight (found with onnx, not our hash)."""
    import onnx

    weight = max(onnx.load(path).graph.initializer, key=lambda t: len(t.raw_data))
    data = bytearray(path.read_bytes())
    offset = bytes(data).index(weight.raw_data) + len(weight.raw_data) // 2
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_lone_file_with_a_tampered_weight_is_refused(tiny_export_dir, tmp_path):
    lone = tmp_path / "agent_0.onnx"  # no manifest beside it: only its own metadata can tell
    shutil.copyfile(tiny_export_dir / "agent_0.onnx", lone)
    flip_a_weight_byte(lone)
    with pytest.raises(
        RuntimeModelError,
        match=r"agent_0\.onnx: graph weights sha256 .* does not match the weights_sha256 in its own metadata",
    ):
        OnnxPolicy(lone)


def test_weights_hash_leaves_out_only_the_metadata(tiny_export_dir):
    """Against an independent computation: onnx's own serialization of the model without metadata."""
    import hashlib

    import onnx

    from omad.runtime.schema import weights_sha256

    data = (tiny_export_dir / "agent_1.onnx").read_bytes()
    model = onnx.load_from_string(data)
    stored = {p.key: p.value for p in model.metadata_props}["omad.weights_sha256"]
    del model.metadata_props[:]
    assert weights_sha256(data) == stored == hashlib.sha256(model.SerializeToString()).hexdigest()
    model.metadata_props.add(key="note", value="edited")  # metadata edits keep the hash ...
    assert weights_sha256(model.SerializeToString()) == stored
    model.graph.node[0].name = "renamed"  # ... any graph edit changes it
    assert weights_sha256(model.SerializeToString()) != stored
    for bad in (data[:-3] + b"\xff\xff", b"\x0f", b"\x08\x80"):  # truncated, wire type 7, unfinished varint
        with pytest.raises(ValueError, match=r"protobuf|varint"):
            weights_sha256(bad)


def test_cuda_without_cuda_is_an_error_not_a_fallback(tiny_export_dir):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(RuntimeModelError, match="CUDAExecutionProvider"):
        OnnxPolicy(tiny_export_dir / "agent_0.onnx", provider="cuda")
    with pytest.raises(RuntimeModelError, match="cuda"):
        load_export(tiny_export_dir, provider="cuda")
    with pytest.raises(RuntimeModelError, match="unknown provider"):
        OnnxPolicy(tiny_export_dir / "agent_0.onnx", provider="tpu")


def test_session_threads_and_no_spinning(tiny_export_dir):
    options = OnnxPolicy(tiny_export_dir / "agent_0.onnx", threads=2).session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


# -- requests -----------------------------------------------------------------------------------
def test_act_shapes_and_one_dimensional_obs(policy):
    assert policy.act(obs_batch(7), seed=0).shape == (7, 5)
    single = policy.act(obs_batch(1)[0], zero_noise=True)
    assert single.shape == (1, 5) and single.dtype == np.float32
    np.testing.assert_array_equal(single, policy.act(obs_batch(1), zero_noise=True))
    actions = policy.act(obs_batch(64), seed=1)
    assert ((actions >= 0.0) & (actions <= 1.0)).all(), "actions stay inside the bounds"


def test_seed_is_reproducible_and_matches_explicit_noise(policy):
    obs = obs_batch(4)
    first = policy.act(obs, seed=123)
    np.testing.assert_array_equal(first, policy.act(obs, seed=123))
    assert not np.array_equal(first, policy.act(obs, seed=124))
    noise = np.random.default_rng(123).standard_normal((5, 4, 5), dtype=np.float32)
    np.testing.assert_array_equal(first, policy.act(obs, noise))


def test_zero_noise_is_deterministic_and_equals_zero_noise_input(policy):
    obs = obs_batch(3)
    zero = policy.act(obs, zero_noise=True)
    np.testing.assert_array_equal(zero, policy.act(obs, zero_noise=True))
    np.testing.assert_array_equal(zero, policy.act(obs, np.zeros((5, 3, 5))))
    np.testing.assert_array_equal(policy.sample_noise(3, zero_noise=True), np.zeros((5, 3, 5), np.float32))


def test_validate_normalizes_to_contiguous_float32(policy):
    obs, noise = policy.validate(obs_batch(2).astype(np.float64).tolist(), np.zeros((5, 2, 5), np.float64))
    assert obs.dtype == noise.dtype == np.float32 and obs.flags.c_contiguous and noise.flags.c_contiguous
    obs, noise = policy.validate(np.asfortranarray(obs_batch(3)))
    assert obs.flags.c_contiguous and noise is None


@pytest.mark.parametrize(
    ("obs", "message"),
    [
        (np.zeros((2, 17), np.float32), r"obs must have shape \[B, 18\] .* got \[2, 17\]"),
        (np.zeros((1, 2, 18), np.float32), r"obs must have shape \[B, 18\]"),
        (np.zeros((0, 18), np.float32), "obs batch is empty"),
        (np.array([[np.nan] + [0.0] * 17]), r"obs: contains NaN or inf .* \[\[0, 0\]\]"),
        (np.array([[0.0] * 17 + [np.inf]]), "obs: contains NaN or inf"),
        (np.full((1, 18), 1e300), "obs: contains NaN or inf"),
        (np.array([["a"] * 18]), "must be numeric"),
        ([[0.0] * 18, [0.0] * 17], "not a numeric array"),
    ],
)
def test_bad_obs_is_rejected_with_a_message(policy, obs, message):
    with pytest.raises(RuntimeModelError, match=message):
        policy.act(obs, seed=0)


def test_bad_noise_and_conflicting_options_are_rejected(policy):
    obs = obs_batch(2)
    with pytest.raises(
        RuntimeModelError, match=r"noise must have shape \[K\+1, B, d_a\] = \[5, 2, 5\], got \[5, 3, 5\]"
    ):
        policy.act(obs, np.zeros((5, 3, 5), np.float32))
    bad = np.zeros((5, 2, 5), np.float32)
    bad[2, 1, 0] = np.nan
    with pytest.raises(RuntimeModelError, match=r"noise: contains NaN or inf .* \[\[2, 1, 0\]\]"):
        policy.act(obs, bad)
    with pytest.raises(RuntimeModelError, match="at most one of noise, seed and zero_noise"):
        policy.act(obs, np.zeros((5, 2, 5), np.float32), seed=1)
    with pytest.raises(RuntimeModelError, match="at most one of noise, seed and zero_noise"):
        policy.act(obs, seed=1, zero_noise=True)
    with pytest.raises(RuntimeModelError, match="bad seed"):
        policy.act(obs, seed=-1)
