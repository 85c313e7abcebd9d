"""The torch-free runtime: loading checks (sha256, manifest, provider), request validation (on a
hand-built graph whose answer is known), noise."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from omad.runtime.onnx_policy import ModelInfo, OnnxPolicy, RuntimeModelError, load_export
from omad.runtime.schema import EXPORT_FORMAT_VERSION, decode_metadata, encode_metadata, weights_sha256
from omad.runtime.schema import ModelInfo as SchemaModelInfo

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


# -- requests on a hand-built graph, action = obs @ W + sum_k noise[k], whose answer is known -----

D_O, D_A, K = 3, 2, 2
W = np.array([[1.0, -2.0], [0.5, 0.25], [-1.0, 3.0]], np.float32)


def expected_action(obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return np.asarray(obs, np.float64) @ W + np.asarray(noise, np.float64).sum(0)


@pytest.fixture(scope="module")
def hand_policy(tmp_path_factory) -> OnnxPolicy:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["obs", "W"], ["h"]),
            helper.make_node("ReduceSum", ["noise", "axis0"], ["n"], keepdims=0),
            helper.make_node("Add", ["h", "n"], ["action"]),
        ],
        "hand_built",
        [
            helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", D_O]),
            helper.make_tensor_value_info("noise", TensorProto.FLOAT, [K + 1, "batch", D_A]),
        ],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", D_A])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.array([0], np.int64), "axis0")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    info = ModelInfo(
        name="agent_0",
        obs_dim=D_O,
        act_dim=D_A,
        denoising_steps=K,
        action_low=(0.0, -0.4),
        action_high=(1.0, 0.4),
        env_id="hand-built",
        algo="omad",
        sha256="",
        weights_sha256=weights_sha256(model.SerializeToString()),  # every load checks the graph against it
        format_version=EXPORT_FORMAT_VERSION,
        source_run="hand-built",
    )
    helper.set_model_props(model, encode_metadata(info))
    path = tmp_path_factory.mktemp("hand_built") / "agent_0.onnx"
    onnx.save(model, path)
    return OnnxPolicy(path)


def hand_obs(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, D_O)).astype(np.float32)


def test_act_computes_the_graph_on_the_given_noise(hand_policy):
    obs = hand_obs(4)
    noise = np.random.default_rng(1).standard_normal((K + 1, 4, D_A)).astype(np.float32)
    action = hand_policy.act(obs, noise)
    assert action.dtype == np.float32 and action.shape == (4, D_A)
    np.testing.assert_allclose(action, expected_action(obs, noise), rtol=1e-6, atol=1e-6)


def test_seed_draws_standard_normal_noise_from_default_rng(hand_policy):
    obs = hand_obs(5)
    noise = np.random.default_rng(7).standard_normal((K + 1, 5, D_A), dtype=np.float32)
    np.testing.assert_allclose(hand_policy.act(obs, seed=7), expected_action(obs, noise), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(hand_policy.sample_noise(5, seed=7), noise)
    assert hand_policy.sample_noise(5, seed=7).dtype == np.float32


def test_zero_noise_and_server_drawn_noise(hand_policy):
    obs = hand_obs(3)
    np.testing.assert_allclose(hand_policy.act(obs, zero_noise=True), obs.astype(np.float64) @ W, rtol=1e-6, atol=1e-6)
    zeros = hand_policy.sample_noise(3, zero_noise=True)
    assert zeros.shape == (K + 1, 3, D_A) and zeros.dtype == np.float32 and not zeros.any()
    drawn = hand_policy.sample_noise(4000)  # no seed: fresh standard-normal noise
    assert drawn.shape == (K + 1, 4000, D_A)
    assert abs(drawn.mean()) < 0.05 and abs(drawn.std() - 1.0) < 0.05


def test_one_observation_is_a_batch_of_one(hand_policy):
    obs = hand_obs(1)
    noise = np.full((K + 1, 1, D_A), 0.5, np.float32)
    action = hand_policy.act(obs[0], noise)
    assert action.shape == (1, D_A)
    np.testing.assert_allclose(action, expected_action(obs, noise), rtol=1e-6, atol=1e-6)


def test_validate_returns_contiguous_float32_of_any_real_dtype(hand_policy):
    for obs in (
        hand_obs(2).astype(np.float64).tolist(),
        np.arange(6, dtype=np.int64).reshape(2, 3),
        np.arange(6, dtype=np.uint8).reshape(2, 3),
        np.asfortranarray(hand_obs(2).astype(np.float64)),
    ):
        checked, noise = hand_policy.validate(obs)
        assert checked.dtype == np.float32 and checked.flags.c_contiguous and noise is None
        np.testing.assert_array_equal(checked, np.asarray(obs, np.float32))
    _, noise = hand_policy.validate(hand_obs(2), np.ones((K + 1, 2, D_A), np.float64)[:, :, ::-1])
    assert noise.dtype == np.float32 and noise.flags.c_contiguous and noise.shape == (K + 1, 2, D_A)


@pytest.mark.parametrize(
    ("obs", "message"),
    [
        (
            np.zeros((2, D_O + 1)),
            rf"agent_0: obs must have shape \[B, {D_O}\] \(or \[{D_O}\] for one observation\), got \[2, {D_O + 1}\]",
        ),
        (np.zeros((2, D_O - 1)), rf"got \[2, {D_O - 1}\]"),
        (np.zeros((1, 2, D_O)), rf"got \[1, 2, {D_O}\]"),
        (np.float32(1.0), r"got \[1, 1\]"),  # a scalar is one observation of one value
        (np.zeros((0, D_O)), "agent_0: obs batch is empty"),
        (np.array([[True] * D_O]), "agent_0: obs: must be numeric, got dtype bool"),
        (np.array([[1j] * D_O]), "must be numeric, got dtype complex128"),
        (np.array([["a"] * D_O]), "must be numeric"),
        ([[0.0] * D_O, [0.0]], "agent_0: obs: not a numeric array"),
        (
            np.full((1, D_O), 1e39),
            r"agent_0: obs: contains NaN or inf \(or values beyond float32\) at indices \[\[0, 0\], \[0, 1\], \[0, 2\]\]",
        ),
    ],
)
def test_bad_obs_is_refused_with_what_to_fix(hand_policy, obs, message):
    with pytest.raises(RuntimeModelError, match=message):
        hand_policy.validate(obs)


def test_non_finite_values_are_located_by_their_first_three_indices(hand_policy):
    obs = hand_obs(4)
    obs[0, 1], obs[2, 0], obs[2, 2], obs[3, 1] = np.nan, np.inf, -np.inf, np.nan
    with pytest.raises(
        RuntimeModelError, match=r"obs: contains NaN or inf .* at indices \[\[0, 1\], \[2, 0\], \[2, 2\]\]$"
    ):
        hand_policy.validate(obs)
    noise = np.zeros((K + 1, 4, D_A), np.float32)
    noise[K, 3, 1] = np.nan
    with pytest.raises(RuntimeModelError, match=r"agent_0: noise: contains NaN or inf .* at indices \[\[2, 3, 1\]\]$"):
        hand_policy.validate(hand_obs(4), noise)


@pytest.mark.parametrize(
    "shape", [(K, 2, D_A), (K + 2, 2, D_A), (K + 1, 3, D_A), (K + 1, 1, D_A), (K + 1, 2, D_A + 1), (K + 1, 2 * D_A)]
)
def test_noise_of_the_wrong_shape_is_refused(hand_policy, shape):
    message = f"agent_0: noise must have shape [K+1, B, d_a] = [{K + 1}, 2, {D_A}], got {list(shape)}"
    with pytest.raises(RuntimeModelError, match=re.escape(message)):
        hand_policy.validate(hand_obs(2), np.zeros(shape, np.float32))
    with pytest.raises(RuntimeModelError, match="noise: must be numeric"):
        hand_policy.validate(hand_obs(2), np.zeros((K + 1, 2, D_A), bool))


def test_noise_options_exclude_each_other(hand_policy):
    obs, noise = hand_obs(2), np.zeros((K + 1, 2, D_A), np.float32)
    for kwargs in (dict(seed=1), dict(zero_noise=True), dict(seed=0, zero_noise=True)):
        with pytest.raises(RuntimeModelError, match="agent_0: give at most one of noise, seed and zero_noise"):
            hand_policy.act(obs, noise, **kwargs)
    with pytest.raises(RuntimeModelError, match="agent_0: give at most one of noise, seed and zero_noise"):
        hand_policy.act(obs, seed=0, zero_noise=True)
    for seed in (-1, "x"):
        with pytest.raises(RuntimeModelError, match=rf"agent_0: bad seed {seed!r} \("):
            hand_policy.act(obs, seed=seed)


def test_values_beyond_float32_are_refused_without_a_numpy_warning(hand_policy):
    """1e39 and 1e300 become inf in float32 and are refused as non-finite, quietly: a server must not turn
    every such request into a RuntimeWarning on its log (or an exception under -W error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for value in (1e39, 1e300):
            with pytest.raises(RuntimeModelError, match=r"^agent_0: obs: contains NaN or inf"):
                hand_policy.validate(np.full((1, D_O), value))
