"""Team identity, traces and replay, and evaluating TLS deployments.

A team id is the hash of the agents' weights hashes (checked by hand here); the export stamps it
without changing the weights hash; servers report it; evaluation refuses a team that is mixed at
connect time or becomes mixed during a real rolling reload (one agent's server reloaded to another
export's graph mid-episode), and counts the mixed steps with --allow-mixed-team. Exports without a
team id still load and say so. A trace replays exactly on the served graphs, within 1e-5 on torch,
and fails on another model. An evaluation over mTLS works from flags and from the environment."""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from helpers import serve_all, tiny_config

from omad.cli import main
from omad.evaluation import EvalError, grpc_source, onnx_source, run_eval
from omad.replay import ReplayError, replay
from omad.runtime.onnx_policy import OnnxPolicy, load_export, read_manifest
from omad.runtime.schema import MANIFEST_NAME, weights_sha256
from omad.runtime.team import TEAM_ID_METADATA_KEY, UNKNOWN_TEAM, stamp_team_id, team_id
from omad.runtime.trace import TraceError, load_trace
from omad.serve.client import PolicyClient, check_health
from omad.serve.config import ServeConfig
from omad.serve.team import TeamClient, TeamMismatch
from omad.serve.testing import ServerThread

ENV = "mpe:simple_spread_v3"


@pytest.fixture(scope="module")
def other_export_dir(tmp_path_factory) -> Path:
    """Another export of the same task and agents (a second tiny run, seed 1): another team."""
    from omad.export.onnx import export_run
    from omad.train.trainer import train

    root = tmp_path_factory.mktemp("other")
    train(tiny_config(seed=1), root / "run")
    export_run(root / "run", root / "export")
    return root / "export"


def agent_files(export_dir: Path) -> list[Path]:
    return [Path(export_dir) / a["file"] for a in read_manifest(export_dir)["agents"]]


def unstamped_copy(export_dir: Path, out: Path) -> Path:
    """The export as omad wrote it before team ids: no team id in the graphs or the manifest."""
    import onnx

    shutil.copytree(export_dir, out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    del manifest["team_id"]
    for entry in manifest["agents"]:
        model = onnx.load_model(out / entry["file"])
        kept = [p for p in model.metadata_props if p.key != TEAM_ID_METADATA_KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        onnx.save_model(model, out / entry["file"])
        entry["sha256"] = hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest()
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return out


# ---- the id ------------------------------------------------------------------------------------
def test_team_id_is_the_hash_of_the_weights_hashes_in_env_order(tiny_export_dir):
    manifest = read_manifest(tiny_export_dir)
    weights = [weights_sha256(f.read_bytes()) for f in agent_files(tiny_export_dir)]
    assert weights == [a["weights_sha256"] for a in manifest["agents"]]
    by_hand = hashlib.sha256("".join(w + "\n" for w in weights).encode()).hexdigest()
    assert manifest["team_id"] == by_hand == team_id(weights)
    assert team_id(weights[::-1]) != by_hand  # the order is part of the identity
    for policy in load_export(tiny_export_dir).values():
        assert policy.team_id == by_hand


def test_stamping_changes_the_file_but_not_the_weights_hash(tiny_export_dir):
    data = agent_files(tiny_export_dir)[0].read_bytes()
    restamped = stamp_team_id(data, "ab" * 32)
    assert restamped != data
    assert weights_sha256(restamped) == weights_sha256(data)
    team = read_manifest(tiny_export_dir)["team_id"]
    assert stamp_team_id(restamped, team) == data  # the earlier entry is replaced, nothing else moves
    with pytest.raises(ValueError, match="sha256 hex digest"):
        team_id(["not a hash"])


def test_an_export_without_a_team_id_loads_and_reports_unknown(tiny_export_dir, tmp_path):
    old = unstamped_copy(tiny_export_dir, tmp_path / "old")
    policies = load_export(old)
    assert {p.team_id for p in policies.values()} == {UNKNOWN_TEAM}
    report = run_eval(ENV, onnx_source(old), 1, seed=0)
    assert report["team"] == {
        "team_id": UNKNOWN_TEAM,
        "agents": dict.fromkeys(policies, UNKNOWN_TEAM),
        "verified": False,
    }
    with ServerThread(ServeConfig(model=agent_files(old)[0], port=0)) as server, PolicyClient(server.addr) as client:
        assert client.spec().team_id == UNKNOWN_TEAM
        client.act(np.zeros((1, client.spec().obs_dim), np.float32), zero_noise=True)
        assert client.last_model is not None and client.last_model.team_id == UNKNOWN_TEAM


# ---- mixed teams -------------------------------------------------------------------------------
def test_servers_of_two_exports_are_refused_at_connect(tiny_export_dir, other_export_dir):
    files = agent_files(tiny_export_dir)
    files[1] = agent_files(other_export_dir)[1]
    ours, theirs = read_manifest(tiny_export_dir)["team_id"], read_manifest(other_export_dir)["team_id"]
    with ExitStack() as stack:
        servers = [stack.enter_context(ServerThread(ServeConfig(model=f, port=0))) for f in files]
        addrs = [s.addr for s in servers]
        with pytest.raises(TeamMismatch) as info:
            grpc_source(addrs)
        message = str(info.value)
        assert "\n" not in message
        assert f"agent_0, agent_2 on team {ours[:12]}; agent_1 on team {theirs[:12]}" in message
        with TeamClient(addrs, allow_mixed=True) as team:
            assert team.team_id == "mixed" and team.team_ids == [ours, theirs, ours]


def test_a_rolling_reload_during_an_evaluation_fails_it_or_is_counted(tiny_export_dir, other_export_dir, tmp_path):
    """Agent 1's server reloads another export's graph after step RELOAD_AT: the very next step's reply
    carries the other team id."""
    reload_at = 5
    other = read_manifest(other_export_dir)["team_id"]
    for allow in (False, True):
        served = tmp_path / f"allow-{allow}"  # each agent's graph alone, so a reload can read another file
        served.mkdir()
        for f in agent_files(tiny_export_dir):
            shutil.copyfile(f, served / f.name)
        with ExitStack() as stack:
            servers = [
                stack.enter_context(ServerThread(ServeConfig(model=served / f.name, port=0)))
                for f in agent_files(tiny_export_dir)
            ]
            source = grpc_source([s.addr for s in servers], allow_mixed_team=allow)
            inner, steps = source.act, [0]

            def act(obs, noise, inner=inner, steps=steps, servers=servers, served=served):
                if steps[0] == reload_at:
                    replacement = served / "agent_1.onnx.new"
                    shutil.copyfile(agent_files(other_export_dir)[1], replacement)
                    replacement.rename(served / "agent_1.onnx")
                    assert servers[1].run(servers[1].server.reload())  # what SIGHUP runs
                steps[0] += 1
                return inner(obs, noise)

            source.act = act
            if not allow:
                with pytest.raises(TeamMismatch, match=rf"mixed at step {reload_at}: .*agent_1 on team {other[:12]}"):
                    run_eval(ENV, source, 2, seed=0)
                continue
            report = run_eval(ENV, source, 2, seed=0)
        team = report["team"]
        assert team["steps"] == steps[0] == max(report["lengths"])
        assert team["mixed_steps"] == steps[0] - reload_at
        assert team["first_mixed"].startswith(f"step {reload_at}: agent_0, agent_2 on team ")


def test_team_client_steps_the_team_like_the_export(tiny_export_dir):
    policies = list(load_export(tiny_export_dir).values())
    rng = np.random.default_rng(3)
    obs = [rng.standard_normal((4, p.info.obs_dim), dtype=np.float32) for p in policies]
    noise = [rng.standard_normal((p.info.noise_steps, 4, p.info.act_dim), dtype=np.float32) for p in policies]
    with ExitStack() as stack:
        servers = serve_all(stack, tiny_export_dir)
        with TeamClient([s.addr for s in servers]) as team:
            assert team.verified and team.team_id == read_manifest(tiny_export_dir)["team_id"]
            actions = team.act(obs, noise)
            assert team.check.steps == 1 and team.check.mixed_steps == 0
    for p, o, n, a in zip(policies, obs, noise, actions):
        np.testing.assert_array_equal(a, p.act(o, n))


# ---- traces and replay --------------------------------------------------------------------------
def test_a_trace_replays_exactly_on_the_served_graphs_and_fails_on_another_model(
    tiny_export_dir, tiny_run_dir, other_export_dir, tmp_path, capsys
):
    trace_path = tmp_path / "t.npz"
    with ExitStack() as stack:
        servers = serve_all(stack, tiny_export_dir)
        addrs = ",".join(s.addr for s in servers)
        assert main(["eval", "--servers", addrs, "--episodes", "2", "--seed", "4", "--trace", str(trace_path)]) == 0
        trace = load_trace(trace_path)
        assert trace.meta["source"] == "grpc" and trace.steps == 25
        manifest = read_manifest(tiny_export_dir)
        for agent, entry in zip(trace.agents, manifest["agents"]):
            assert [(m.sha256, m.team_id) for m in agent.models] == [(entry["sha256"], manifest["team_id"])]
            assert agent.obs[0].shape == (2, entry["obs_dim"]) and len(agent.latency_us) == 25
            policy = OnnxPolicy(Path(tiny_export_dir) / entry["file"])  # the trace's own actions, recomputed
            np.testing.assert_array_equal(agent.action[7], policy.act(agent.obs[7], agent.noise[7]))
        capsys.readouterr()
        assert main(["replay", str(trace_path), "--servers", addrs]) == 0
    assert "largest difference 0 (tolerance 0): ok" in capsys.readouterr().out
    assert (
        main(["replay", str(trace_path), "--export-dir", str(tiny_export_dir), "--json", str(tmp_path / "r.json")]) == 0
    )
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["largest"] == 0.0 and result["tolerance"] == 0.0
    assert main(["replay", str(trace_path), "--run-dir", str(tiny_run_dir), "--json", str(tmp_path / "t.json")]) == 0
    result = json.loads((tmp_path / "t.json").read_text())
    assert 0 <= result["largest"] <= 1e-5 and result["tolerance"] == 1e-5
    capsys.readouterr()
    assert main(["replay", str(trace_path), "--export-dir", str(other_export_dir)]) == 1
    out = capsys.readouterr().out
    assert "(models differ)" in out and "FAILED" in out


def test_replay_refuses_another_team_shape_and_unsafe_files(tiny_export_dir, tmp_path):
    trace_path = tmp_path / "t.npz"
    run_eval(ENV, onnx_source(tiny_export_dir), 1, seed=0, trace=trace_path)
    trace = load_trace(trace_path)
    source = onnx_source(tiny_export_dir)
    source.agents = source.agents[::-1]
    with pytest.raises(ReplayError, match="not the trace's"):
        replay(trace, source)
    with np.load(trace_path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["obs_0"] = np.array([object()] * len(arrays["obs_0"]), dtype=object)
    np.savez(tmp_path / "pickled.npz", **arrays)
    with pytest.raises(TraceError, match="not an omad trace"):
        load_trace(tmp_path / "pickled.npz")
    arrays["obs_0"] = np.zeros((3, 1, 1), np.float32)
    np.savez(tmp_path / "short.npz", **arrays)
    with pytest.raises(TraceError, match="obs_0"):
        load_trace(tmp_path / "short.npz")
    with pytest.raises(TraceError, match="no such trace"):
        load_trace(tmp_path / "missing.npz")


# ---- TLS ---------------------------------------------------------------------------------------
def test_eval_over_mtls_from_flags_and_from_the_environment(tiny_export_dir, certs, monkeypatch, capsys):
    tls = ((certs / "server.pem").read_bytes(), (certs / "server.key").read_bytes(), (certs / "ca.pem").read_bytes())
    with ExitStack() as stack:
        servers = [
            stack.enter_context(ServerThread(ServeConfig(model=f, port=0, health_port=0), tls=tls))
            for f in agent_files(tiny_export_dir)
        ]
        addrs = ",".join(f"localhost:{s.port}" for s in servers)
        flags = ["--tls-ca", str(certs / "ca.pem"), "--tls-cert", str(certs / "client.pem")]
        flags += ["--tls-key", str(certs / "client.key")]
        assert main(["eval", "--servers", addrs, "--episodes", "1", *flags]) == 0
        assert "team        " in capsys.readouterr().out
        # without a client certificate the mTLS servers refuse the connection: one line, exit 2
        with pytest.raises(EvalError, match="agent 0 server at localhost:"):
            grpc_source(addrs.split(","), tls_ca=certs / "ca.pem", retries=0, timeout_s=2)
        for variable, name in [("OMAD_TLS_CA", "ca.pem"), ("OMAD_TLS_CLIENT_CERT", "client.pem")]:
            monkeypatch.setenv(variable, str(certs / name))
        monkeypatch.setenv("OMAD_TLS_CLIENT_KEY", str(certs / "client.key"))
        assert main(["eval", "--servers", addrs, "--episodes", "1"]) == 0
        # the plaintext health port answers while the gRPC port speaks only TLS
        for server in servers:
            assert check_health(f"127.0.0.1:{server.server.health_port}") == "SERVING"
            assert check_health(f"127.0.0.1:{server.port}", timeout_s=1) != "SERVING"
        monkeypatch.delenv("OMAD_TLS_CLIENT_KEY")
        assert main(["eval", "--servers", addrs, "--episodes", "1"]) == 2
    assert "needs both --tls-cert and --tls-key" in capsys.readouterr().err
