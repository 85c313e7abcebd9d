"""Closed-loop evaluation: torch == ONNX == gRPC returns, recordings, and failure modes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import replace

import numpy as np
import pytest
from helpers import serve_all, three_way, tiny_config

from omad.evaluation import AgentEndpoint, EvalError, grpc_source, onnx_source, run_eval, torch_source

HALF_CHEETAH = {"max_episode_steps": 60}  # short episodes keep the test fast


@pytest.fixture(scope="module")
def cheetah_run(tmp_path_factory):
    from omad.export.onnx import export_run
    from omad.train.trainer import train

    root = tmp_path_factory.mktemp("cheetah")
    cfg = tiny_config(
        env="mamujoco:HalfCheetah-2x3",
        env_options=HALF_CHEETAH,
        total_steps=200,
        learning_starts=100,
        eval_every=200,
        checkpoint_every=200,
    )
    train(cfg, root / "run")
    export_run(root / "run", root / "export")
    return root / "run", root / "export"


@pytest.mark.parametrize("zero_noise", [False, True])
def test_three_sources_give_the_same_returns_on_mpe(tiny_run_dir, tiny_export_dir, zero_noise):
    reports = three_way("mpe:simple_spread_v3", tiny_run_dir, tiny_export_dir, zero_noise=zero_noise)
    torch_returns = np.array(reports["torch"]["returns"])
    np.testing.assert_allclose(reports["onnx"]["returns"], torch_returns, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(reports["grpc"]["returns"], reports["onnx"]["returns"])  # the same graph
    assert set(reports["grpc"]["latency_us"]) == {"agent_0", "agent_1", "agent_2"}
    assert reports["grpc"]["lengths"] == [25, 25, 25]


def test_three_sources_agree_on_half_cheetah(cheetah_run):
    """Contact dynamics amplify float-level action differences (~1e-7) into different trajectories
    after a few dozen steps, so torch == ONNX returns hold on short episodes; gRPC == ONNX is exact
    (the same graph), and along a whole trajectory torch and ONNX actions agree to 1e-5."""
    run_dir, export_dir = cheetah_run
    short = {"max_episode_steps": 15}
    reports = three_way("mamujoco:HalfCheetah-2x3", run_dir, export_dir, options=short)
    np.testing.assert_allclose(reports["onnx"]["returns"], reports["torch"]["returns"], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(reports["grpc"]["returns"], reports["onnx"]["returns"])
    assert reports["grpc"]["lengths"] == [15, 15, 15]

    with ExitStack() as stack:
        servers = serve_all(stack, export_dir)
        grpc_report = run_eval(
            "mamujoco:HalfCheetah-2x3", grpc_source([s.addr for s in servers]), 3, 7, options=HALF_CHEETAH
        )
    onnx, reference = onnx_source(export_dir), torch_source(run_dir)
    onnx_act, worst = onnx.act, []

    def teacher_forced(obs, noise):  # act with ONNX, and run torch on the very same inputs
        actions = onnx_act(obs, noise)
        worst.append(max(np.abs(a - b).max() for a, b in zip(actions, reference.act(obs, noise))))
        return actions

    onnx.act = teacher_forced
    onnx_report = run_eval("mamujoco:HalfCheetah-2x3", onnx, 3, 7, options=HALF_CHEETAH)
    np.testing.assert_array_equal(grpc_report["returns"], onnx_report["returns"])
    assert len(worst) == 60 and max(worst) <= 1e-5


def test_different_seeds_give_different_returns(tiny_export_dir):
    a = run_eval("mpe:simple_spread_v3", onnx_source(tiny_export_dir), 2, seed=1)
    b = run_eval("mpe:simple_spread_v3", onnx_source(tiny_export_dir), 2, seed=2)
    assert a["returns"] != b["returns"]


@pytest.mark.parametrize(
    ("env_id", "which"), [("mpe:simple_spread_v3", "mpe"), ("mamujoco:HalfCheetah-2x3", "cheetah")]
)
def test_recording_is_written_and_not_blank(env_id, which, tiny_export_dir, cheetah_run, tmp_path):
    from PIL import Image, ImageSequence

    export_dir = tiny_export_dir if which == "mpe" else cheetah_run[1]
    options = None if which == "mpe" else HALF_CHEETAH
    path = tmp_path / "episode.gif"
    report = run_eval(env_id, onnx_source(export_dir), 1, seed=0, record=path, options=options)
    assert report["recording"] == str(path)
    frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(path))]
    assert len(frames) >= 10
    assert all(f.std() > 5 for f in frames)  # not a flat image
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 0.1  # and something moved


def test_unreachable_server_is_named_after_bounded_retries():
    start = time.monotonic()
    with pytest.raises(EvalError, match=r"agent 0 server at 127\.0\.0\.1:1 .*UNAVAILABLE"):
        grpc_source(["127.0.0.1:1"], timeout_s=1.0, retries=2)
    assert time.monotonic() - start < 10


def test_mismatched_served_model_is_refused_before_the_first_step(tiny_export_dir):
    with ExitStack() as stack:
        servers = serve_all(stack, tiny_export_dir)
        source = grpc_source([s.addr for s in servers])
        stepped = []
        source.act = lambda *a: stepped.append(1)  # would record any step
        with pytest.raises(
            EvalError, match=r"agent_0 .*trained for env 'mpe:simple_spread_v3', not 'mamujoco:Hopper-3x1'"
        ):
            run_eval("mamujoco:Hopper-3x1", source, 1, seed=0)  # 3 agents too, other sizes and id
        assert not stepped
        source.close()


def test_mismatched_sizes_or_agent_count_are_refused(tiny_export_dir):
    from omad.core.envs import get_spec

    source = onnx_source(tiny_export_dir)
    with pytest.raises(EvalError, match="4 agents"):
        source.check_against(get_spec("mpe:simple_spread_v3", {"N": 4}))
    spec = get_spec("mpe:simple_spread_v3")
    source.check_against(spec)
    agents = list(source.agents)
    contract = agents[1].contract
    misfits = {
        r"obs/act sizes 17/5, env wants 18/5": replace(contract, obs_dim=17, env_id=""),
        r"action bounds \[0.0, 0.0, 0.0, 0.0, 0.0\]..\[1.0, 1.0, 1.0, 1.0, 0.5\], env has": replace(
            contract, action_high=(1.0, 1.0, 1.0, 1.0, 0.5)
        ),
        r"a policy for agent 'agent_2', not 'agent_1' \(check the order of the sources\)": agents[2].contract,
    }
    for message, mine in misfits.items():
        source.agents[1] = AgentEndpoint(mine, "x.onnx")
        with pytest.raises(EvalError, match=r"^agent agent_1 \(x.onnx\): " + message):
            source.check_against(spec)


def test_server_dying_mid_episode_fails_the_episode_without_hanging(tiny_export_dir):
    with ExitStack() as stack:
        servers = serve_all(stack, tiny_export_dir)
        source = grpc_source([s.addr for s in servers], timeout_s=5.0, retries=1)
        steps = []
        original = source.act

        def act(obs, noise):
            steps.append(1)
            if len(steps) == 5:
                servers[1].close()
            return original(obs, noise)

        source.act = act
        start = time.monotonic()
        with pytest.raises(EvalError, match="episode failed: agent agent_1"):
            run_eval("mpe:simple_spread_v3", source, 1, seed=0)
        assert time.monotonic() - start < 30
        assert len(steps) == 5


def omad(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "omad", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def eval_export(export_dir, *extra: str, **kw):
    """`omad eval` of an export on Cooperative Navigation, in a subprocess."""
    return omad("eval", "--env", "mpe:simple_spread_v3", "--export-dir", str(export_dir), *extra, **kw)


def test_cli_reports_and_writes_json(tiny_export_dir, tmp_path):
    proc = eval_export(tiny_export_dir, "--episodes", "2", "--json", str(tmp_path / "r.json"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "return" in out and "p99" in out
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["source"] == "onnx" and len(report["returns"]) == 2


def test_cli_unreachable_server_exits_nonzero_with_one_line():
    proc = omad(
        "eval", "--env", "mpe:simple_spread_v3", "--servers", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--timeout-s", "1"
    )
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "127.0.0.1:1" in err and "Traceback" not in err


def test_ctrl_c_stops_cleanly(tiny_export_dir):
    # A child inherits an ignored SIGINT, and a shell starts background jobs (`make test &`, nohup) with
    # SIGINT ignored: give `omad eval` the default disposition a user at a terminal has.
    proc = eval_export(
        tiny_export_dir, "--episodes", "5000", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    )
    time.sleep(6)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
