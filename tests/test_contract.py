"""The agent contract (omad.core.agent) and everything derived from it: its record, the export metadata
(read back from the keys an export of format 2 holds), the manifest entries, the served GetSpec reply,
the reload check and the environment check."""

from __future__ import annotations

import hashlib
import types
from dataclasses import replace

import numpy as np
import pytest

from omad.core.agent import CONTRACT_KEYS, AgentContract, AgentSpec, ContractError
from omad.runtime.schema import ModelInfo, build_manifest, decode_metadata, encode_metadata

# Unequal sizes and asymmetric bounds, so that a swapped field or a shared default shows.
CONTRACT = AgentContract(
    name="left_leg",
    obs_dim=7,
    act_dim=3,
    action_low=(-0.4, -1.0, 0.0),
    action_high=(0.4, 2.5, 1.0),
    denoising_steps=4,
    env_id="mamujoco:Walker2d-2x3",
)
INFO = ModelInfo.describing(
    CONTRACT, algo="omad", sha256="f" * 64, weights_sha256="a" * 64, format_version=2, source_run="/runs/walker"
)
# metadata_props exactly as an export of format version 2 writes them (the keys existing exports hold)
STORED = {
    "omad.agent": "left_leg",
    "omad.obs_dim": "7",
    "omad.act_dim": "3",
    "omad.denoising_steps": "4",
    "omad.noise_steps": "5",
    "omad.action_low": "[-0.4, -1.0, 0.0]",
    "omad.action_high": "[0.4, 2.5, 1.0]",
    "omad.env_id": "mamujoco:Walker2d-2x3",
    "omad.algo": "omad",
    "omad.weights_sha256": "a" * 64,
    "omad.format_version": "2",
    "omad.source_run": "/runs/walker",
}


def test_record_spells_the_contract_with_its_external_keys_and_round_trips():
    assert CONTRACT.noise_steps == 5
    record = CONTRACT.record()
    assert record == {
        "agent": "left_leg",
        "obs_dim": 7,
        "act_dim": 3,
        "action_low": (-0.4, -1.0, 0.0),
        "action_high": (0.4, 2.5, 1.0),
        "denoising_steps": 4,
        "env_id": "mamujoco:Walker2d-2x3",
        "noise_steps": 5,
    }
    assert tuple(record) == CONTRACT_KEYS
    # as a wire or JSON reader gives it back: lists, and ints of any width
    assert AgentContract.from_record({**record, "action_low": [-0.4, -1, 0], "obs_dim": 7}) == CONTRACT


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"noise_steps": 4}, r"K = 4 but 4 noise steps \(expected K \+ 1\)"),
        ({"action_low": [0.0, 0.0]}, "action_low must be a tuple of act_dim = 3 numbers"),
        ({"action_high": [0.4, -2.0, 1.0]}, r"action_low \(-0.4, -1.0, 0.0\) is above action_high"),
        ({"action_low": "abc"}, "'action_low' must be a list of numbers"),
        ({"action_low": [0.0, None, 0.0]}, "'action_low' must be a list of numbers"),
        ({"obs_dim": 0}, "obs_dim must be an integer >= 1, got 0"),
        ({"obs_dim": 7.0}, "'obs_dim' must be an integer, got 7.0"),
        ({"act_dim": True}, "'act_dim' must be an integer, got True"),
        ({"denoising_steps": -1, "noise_steps": 0}, r"denoising_steps \(K\) must be an integer >= 0, got -1"),
        ({"agent": ""}, "an agent's name must be a non-empty string"),
        ({"env_id": 3}, "'env_id' must be text, got 3"),
    ],
)
def test_a_record_that_cannot_hold_is_refused_naming_the_field(change, message):
    with pytest.raises(ContractError, match=message):
        AgentContract.from_record({**CONTRACT.record(), **change})


def test_a_record_missing_a_key_is_refused():
    record = CONTRACT.record()
    del record["act_dim"]
    with pytest.raises(ContractError, match="'act_dim' is missing"):
        AgentContract.from_record(record)


def test_a_policy_object_describes_its_contract():
    policy = types.SimpleNamespace(
        name="left_leg", obs_dim=7, act_dim=3, action_low=[-0.4, -1, 0], action_high=[0.4, 2.5, 1], denoising_steps=4
    )
    assert AgentContract.of(policy, "mamujoco:Walker2d-2x3") == CONTRACT


def test_model_info_is_the_contract_plus_provenance():
    assert INFO.contract == CONTRACT and type(INFO.contract) is AgentContract
    assert INFO.spec == AgentSpec("left_leg", 7, 3, (-0.4, -1.0, 0.0), (0.4, 2.5, 1.0))
    assert INFO.record() == {
        **CONTRACT.record(),
        "algo": "omad",
        "weights_sha256": "a" * 64,
        "format_version": 2,
        "source_run": "/runs/walker",
    }


def test_export_metadata_keeps_the_keys_existing_exports_hold():
    assert decode_metadata(STORED, "f" * 64) == INFO
    assert encode_metadata(INFO) == STORED
    extra = encode_metadata(INFO, actor_kind="diffusion")
    assert extra == {**STORED, "omad.actor_kind": "diffusion"}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("omad.obs_dim", "seven", r"metadata key 'omad.obs_dim' is not JSON: 'seven'"),
        ("omad.noise_steps", "4", r"metadata: K = 4 but 4 noise steps"),
        ("omad.action_high", "[0.4, 2.5]", "metadata: agent 'left_leg': action_high must be a tuple of act_dim = 3"),
        ("omad.format_version", '"2"', "metadata: 'format_version' must be an integer"),
    ],
)
def test_bad_metadata_is_one_clear_error(key, value, message):
    with pytest.raises(ValueError, match=message):
        decode_metadata({**STORED, key: value}, "")


def test_manifest_entries_come_from_the_record():
    other = replace(INFO, name="right_leg", obs_dim=5, action_low=(-1.0,) * 3, sha256="e" * 64)
    manifest = build_manifest([INFO, other], opset=18)
    assert manifest == {
        "format_version": 2,
        "env_id": "mamujoco:Walker2d-2x3",
        "algo": "omad",
        "source_run": "/runs/walker",
        "opset": 18,
        # the team id: sha256 of the agents' weights hashes in env order, one per line
        "team_id": hashlib.sha256((("a" * 64 + "\n") * 2).encode()).hexdigest(),
        "agents": [
            {
                "agent": "left_leg",
                "obs_dim": 7,
                "act_dim": 3,
                "denoising_steps": 4,
                "weights_sha256": "a" * 64,
                "file": "left_leg.onnx",
                "sha256": "f" * 64,
            },
            {
                "agent": "right_leg",
                "obs_dim": 5,
                "act_dim": 3,
                "denoising_steps": 4,
                "weights_sha256": "a" * 64,
                "file": "right_leg.onnx",
                "sha256": "e" * 64,
            },
        ],
    }


def test_the_served_spec_carries_the_record_and_gives_the_contract_back():
    from omad.serve._generated import policy_pb2
    from omad.serve.spec import contract_from_spec, server_version, spec_message

    assert set(INFO.record()) <= set(policy_pb2.Spec.DESCRIPTOR.fields_by_name)  # every part has a wire field
    spec = spec_message(INFO, max_batch=32)
    assert (spec.agent, spec.obs_dim, spec.act_dim, spec.denoising_steps, spec.noise_steps) == ("left_leg", 7, 3, 4, 5)
    assert list(spec.action_low) == [-0.4, -1.0, 0.0] and list(spec.action_high) == [0.4, 2.5, 1.0]
    assert (spec.env_id, spec.algo, spec.source_run) == ("mamujoco:Walker2d-2x3", "omad", "/runs/walker")
    assert (spec.model_sha256, spec.weights_sha256, spec.format_version) == ("f" * 64, "a" * 64, "2")
    assert (spec.max_batch, spec.server_version) == (32, server_version())
    assert contract_from_spec(spec) == CONTRACT
    spec.noise_steps = 0  # a server that says the model takes no noise, with K = 4
    with pytest.raises(ContractError, match="K = 4 but 0 noise steps"):
        contract_from_spec(spec)


def test_differences_name_every_changed_part_of_the_contract():
    assert CONTRACT.differences(INFO.contract) == {}
    other = replace(CONTRACT, name="right_leg", denoising_steps=2, action_high=(0.4, 2.5, 2.0))
    assert other.differences(CONTRACT) == {
        "agent": ("right_leg", "left_leg"),
        "action_high": ((0.4, 2.5, 2.0), (0.4, 2.5, 1.0)),
        "denoising_steps": (2, 4),
    }


def test_misfits_against_an_environment_agent():
    env_agent = CONTRACT.spec
    assert CONTRACT.misfits("mamujoco:Walker2d-2x3", env_agent) == []
    assert replace(CONTRACT, env_id="").misfits("anything", env_agent) == []  # a source that does not say
    assert CONTRACT.misfits("mpe:simple_spread_v3", env_agent) == [
        "trained for env 'mamujoco:Walker2d-2x3', not 'mpe:simple_spread_v3'"
    ]
    assert CONTRACT.misfits("mamujoco:Walker2d-2x3", replace(env_agent, name="right_leg")) == [
        "a policy for agent 'left_leg', not 'right_leg' (check the order of the sources)"
    ]
    assert CONTRACT.misfits("mamujoco:Walker2d-2x3", replace(env_agent, obs_dim=8)) == [
        "obs/act sizes 7/3, env wants 8/3"
    ]
    # bounds compare at float32 precision: a float32 copy of 0.4 is the same bound, 0.41 is not
    float32_copy = replace(env_agent, action_low=tuple(float(x) for x in np.float32([-0.4, -1.0, 0.0])))
    assert float32_copy.action_low != CONTRACT.action_low
    assert CONTRACT.misfits("mamujoco:Walker2d-2x3", float32_copy) == []
    wider = replace(env_agent, action_low=(-0.41, -1.0, 0.0))
    assert CONTRACT.misfits("mamujoco:Walker2d-2x3", wider) == [
        "action bounds [-0.4, -1.0, 0.0]..[0.4, 2.5, 1.0], env has [-0.41, -1.0, 0.0]..[0.4, 2.5, 1.0]"
    ]
