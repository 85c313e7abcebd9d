"""`omad sweep`: run dirs and DONE markers, skip on re-run, resume of interrupted jobs, failures
collected, clear errors before anything runs, and the same sweep as Ray tasks."""

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import OMAD, wait_gone

from omad.cli import main
from omad.experiments.layout import DONE_FILE, SWEEP_FILE, job_dir, safe_name
from omad.experiments.sweep import SweepError, plan_jobs, run_sweep
from omad.train.config import build_config
from omad.train.trainer import train

ENV = "mpe:simple_spread_v3"
# Jobs of a few seconds: tiny networks, K = 2, two evaluations and two checkpoints in 300 steps.
TINY = dict(
    learning_starts=100,
    batch_size=32,
    eval_every=150,
    eval_episodes=1,
    checkpoint_every=150,
    denoising_steps=2,
    actor_hidden=[16, 16],
    critic_hidden=[16, 16],
    num_atoms=11,
)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_safe_name():
    assert safe_name("mpe:simple_spread_v3") == "mpe_simple_spread_v3"
    assert safe_name("mamujoco:Humanoid-9|8") == "mamujoco_Humanoid-9_8"
    assert safe_name("a/b:c") == "a_b_c"


def test_local_sweep_trains_resumes_and_skips(tmp_path):
    out = tmp_path / "sweep"
    seed0, seed1 = job_dir(out, ENV, "omad", 0), job_dir(out, ENV, "omad", 1)
    # seed 0 was interrupted after its checkpoint at step 150 (no DONE marker); seed 1 was killed
    # before its first checkpoint and left only a partial dir behind.
    train(build_config(TINY, env=ENV, seed=0, total_steps=150, progress=False, torch_threads=1), seed0)
    seed1.mkdir(parents=True)
    (seed1 / "metrics.jsonl").write_text('{"step": 150, "eval_return_mean": 0.0, "eval_return_std": 0.0}\n')

    lines = []
    summary = run_sweep(out, [ENV], ["omad"], [0, 1], total_steps=300, base=TINY, local_workers=2, log=lines.append)
    assert summary["failed"] == [] and len(summary["done"]) == 2, lines
    assert any("seed 0: resumed from step 150" in line for line in lines), lines
    assert any("seed 1: trained" in line for line in lines), lines
    for run_dir in (seed0, seed1):
        done = json.loads((run_dir / DONE_FILE).read_text())
        assert done["total_steps"] == 300 and done["final"]["step"] == 300
        assert [r["step"] for r in metrics(run_dir)] == [150, 300]
        assert json.loads((run_dir / "config.json").read_text())["torch_threads"] == 1  # 2 cores / 2 workers
        assert not (run_dir / "coverage.json").exists()  # recorded on Ant only
    assert "resume from step 150" in (seed0.parent / "seed-0.log").read_text()
    sweep = json.loads((out / SWEEP_FILE).read_text())
    assert sweep["total_steps"] == 300 and sweep["config"] == TINY
    assert sorted(j["dir"] for j in sweep["jobs"]) == [
        "mpe_simple_spread_v3/omad/seed-0",
        "mpe_simple_spread_v3/omad/seed-1",
    ]

    # A re-run trains nothing: both jobs are skipped and their files stay as they were.
    before = {p: (p / "metrics.jsonl").read_bytes() for p in (seed0, seed1)}
    t0 = time.perf_counter()
    again = run_sweep(out, [ENV], ["omad"], [0, 1], total_steps=300, base=TINY, local_workers=2, log=lines.append)
    assert again == {"done": [], "skipped": [f"{ENV} omad seed 0", f"{ENV} omad seed 1"], "failed": []}
    assert time.perf_counter() - t0 < 5
    assert before == {p: (p / "metrics.jsonl").read_bytes() for p in (seed0, seed1)}

    # Another shared config in the same dir is refused (a larger budget is allowed and would resume).
    with pytest.raises(SweepError, match="different shared config"):
        run_sweep(out, [ENV], ["omad"], [0], total_steps=300, base={**TINY, "batch_size": 64}, log=lines.append)


def test_failing_job_does_not_stop_the_others(tmp_path, capsys):
    # Hopper does not take MPE's option N: its job fails when it builds the env; spread's job trains.
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    code = main(
        [
            "sweep",
            "--envs",
            ENV,
            "mamujoco:Hopper-3x1",
            "--seeds",
            "0",
            "--total-steps",
            "150",
            "--out",
            str(tmp_path / "sweep"),
            "--config",
            str(cfg),
            "--set",
            "env_options={N: 2}",
            "--local-workers",
            "2",
        ]
    )
    text = capsys.readouterr().out
    assert code == 1, text
    assert f"done   {ENV} omad seed 0" in text
    assert "FAILED mamujoco:Hopper-3x1 omad seed 0" in text and "1 trained, 0 skipped, 1 failed" in text
    assert (job_dir(tmp_path / "sweep", ENV, "omad", 0) / DONE_FILE).is_file()
    assert not (job_dir(tmp_path / "sweep", "mamujoco:Hopper-3x1", "omad", 0) / DONE_FILE).exists()
    assert "Traceback" in (tmp_path / "sweep" / "mamujoco_Hopper-3x1" / "omad" / "seed-0.log").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--envs", "mpe:nope"], "unknown env id 'mpe:nope'"),
        (["--envs", ENV, "--algos", "omad", "sac"], "unknown algo 'sac'"),
        (["--envs", ENV, "--set", "batch_size=0"], "invalid config field 'batch_size'"),
        (["--envs", ENV, "--set", "seed=3"], "config field 'seed' is set per job"),
        (["--envs", ENV, "--set", "batch_size"], "--set expects key=value"),
    ],
)
def test_bad_values_fail_before_any_job_starts(tmp_path, capsys, args, message):
    code = main(["sweep", *args, "--out", str(tmp_path / "sweep")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_ray_sweep(tmp_path):
    import ray  # installed by scripts/setup.sh (the `ray` extra): a missing Ray fails, it does not skip

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        lines = []
        summary = run_sweep(
            tmp_path, [ENV], ["omad", "hasac"], [0], total_steps=150, base=TINY, ray_address="local", log=lines.append
        )
    finally:
        ray.shutdown()
    assert summary["failed"] == [] and len(summary["done"]) == 2, lines
    assert "ray (local)" in lines[0]
    for algo in ("omad", "hasac"):
        run_dir = job_dir(tmp_path, ENV, algo, 0)
        assert json.loads((run_dir / DONE_FILE).read_text())["final"]["step"] == 150
        assert json.loads((run_dir / "config.json").read_text())["torch_threads"] == 1  # one CPU per Ray task


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # about 80 s on the shared 2-core machine: two Ray nodes start and stop
def test_sweep_on_a_two_node_ray_cluster_with_token_auth(tmp_path):
    """The Ray recipe of docs/guides/ray.md on loopback: a head node started with RAY_AUTH_MODE=token and a token from
    `ray get-auth-token --generate`, one worker node that gets the token through RAY_AUTH_TOKEN (its HOME
    holds no token file), and `omad sweep --ray-address` from a third environment. The head has no CPUs,
    so every job can only run on the worker: a finished sweep proves the worker joined and trained."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile

    ray_cli = str(Path(sys.executable).with_name("ray"))
    homes = {name: tmp_path / name for name in ("head", "worker", "driver")}
    for home in homes.values():
        home.mkdir()
    base_env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    base_env.pop("RAY_AUTH_TOKEN", None)
    base_env.pop("RAY_AUTH_TOKEN_PATH", None)
    head_env = {**base_env, "HOME": str(homes["head"])}
    token = subprocess.run(
        [ray_cli, "get-auth-token", "--generate"], env=head_env, capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert token and (homes["head"] / ".ray" / "auth_token").read_text().strip() == token
    port = free_port()
    ray_temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]
    nodes = []
    try:
        nodes.append(
            subprocess.Popen(
                [
                    ray_cli,
                    "start",
                    "--head",
                    "--port",
                    str(port),
                    "--num-cpus",
                    "0",
                    "--include-dashboard",
                    "false",
                    "--dashboard-agent-listen-port",
                    str(free_port()),
                    "--temp-dir",
                    ray_temp,
                    *common,
                ],
                env=head_env,
                stdout=subprocess.DEVNULL,
                stderr=(tmp_path / "head.log").open("w"),
                start_new_session=True,
            )
        )
        worker_env = {**base_env, "HOME": str(homes["worker"]), "RAY_AUTH_TOKEN": token}
        nodes.append(
            subprocess.Popen(
                [
                    ray_cli,
                    "start",
                    "--address",
                    f"127.0.0.1:{port}",
                    "--num-cpus",
                    "1",
                    "--dashboard-agent-listen-port",
                    str(free_port()),
                    *common,
                ],
                env=worker_env,
                stdout=subprocess.DEVNULL,
                stderr=(tmp_path / "worker.log").open("w"),
                start_new_session=True,
            )
        )
        driver_env = {**base_env, "HOME": str(homes["driver"]), "RAY_AUTH_TOKEN": token}
        deadline = time.monotonic() + 180
        while True:  # until the worker's CPU shows: a sweep on a cluster without it would wait for ever
            status = subprocess.run(
                [ray_cli, "status", "--address", f"127.0.0.1:{port}"],
                env=driver_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if "/1.0 CPU" in status.stdout:
                break
            logs = "".join(
                f"\n-- {name}:\n" + (tmp_path / name).read_text()[-3000:] for name in ("head.log", "worker.log")
            )
            assert time.monotonic() < deadline, f"the worker node did not join: {status.stdout}{status.stderr}{logs}"
            time.sleep(3)
        tiny = [f"--set={key}={json.dumps(value)}" for key, value in TINY.items()]
        out = tmp_path / "sweep"
        sweep = subprocess.run(
            [
                sys.executable,
                "-m",
                "omad",
                "sweep",
                "--envs",
                ENV,
                "--algos",
                "omad",
                "--seeds",
                "0",
                "1",
                "--total-steps",
                "150",
                "--out",
                str(out),
                "--ray-address",
                f"127.0.0.1:{port}",
                *tiny,
            ],
            env=driver_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert sweep.returncode == 0, sweep.stdout + sweep.stderr + (tmp_path / "worker.log").read_text()[-2000:]
        assert f"ray (127.0.0.1:{port})" in sweep.stdout
        for seed in (0, 1):
            assert json.loads((job_dir(out, ENV, "omad", seed) / DONE_FILE).read_text())["final"]["step"] == 150
    finally:
        for node in reversed(nodes):  # SIGTERM: `ray start --block` stops its node's processes
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)  # whatever is left of that node's own session
        shutil.rmtree(ray_temp, ignore_errors=True)


def test_jobs_are_seed_major_so_a_cut_off_sweep_compares_every_algo(tmp_path):
    jobs = plan_jobs(tmp_path, ["mpe:simple_spread_v3"], ["omad", "hasac", "hatd3"], [0, 1], {"total_steps": 5000})
    assert [(job.algo, job.seed) for job in jobs] == [
        ("omad", 0),
        ("hasac", 0),
        ("hatd3", 0),
        ("omad", 1),
        ("hasac", 1),
        ("hatd3", 1),
    ]


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def test_sigterm_stops_the_sweep_and_its_running_jobs(tmp_path):
    """`kill <sweep>` must not leave its jobs training on, unseen, into the run dirs."""
    out = tmp_path / "sweep"
    args = ["sweep", "--envs", ENV, "--seeds", "0", "1", "--total-steps", "1000000", "--out", str(out)]
    tiny = [f"--set={key}={json.dumps(value)}" for key, value in TINY.items()]
    sweep = subprocess.Popen([*OMAD, *args, *tiny, "--local-workers", "2"], stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        logs = [out / "mpe_simple_spread_v3" / "omad" / f"seed-{seed}.log" for seed in (0, 1)]
        deadline = time.monotonic() + 120
        while not all(log.is_file() and "== " in log.read_text() for log in logs):
            assert time.monotonic() < deadline and sweep.poll() is None, "the jobs never started"
            time.sleep(0.2)
        workers = children_of(sweep.pid)
        assert len(workers) >= 2, workers  # the two jobs (and multiprocessing's resource tracker)
        sweep.send_signal(signal.SIGTERM)
        assert sweep.wait(timeout=60) == 130
        assert "interrupted" in sweep.stderr.read()
        assert wait_gone(workers, timeout_s=30) == []
        assert not any((out / "mpe_simple_spread_v3" / "omad" / f"seed-{seed}" / DONE_FILE).exists() for seed in (0, 1))
    finally:
        if sweep.poll() is None:
            sweep.kill()
        for pid in workers:  # left behind if the test failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_an_interrupt_while_a_job_process_starts_still_stops_that_job(tmp_path, monkeypatch):
    """SIGTERM lands while a job's process is starting (held 1 s here): the sweep must wait for the start
    and terminate it, not miss it and then wait for the job to train its whole budget."""
    import multiprocessing.context

    from omad.experiments.sweep import run_local

    start = multiprocessing.context.SpawnProcess.start

    def slow_start(self):
        time.sleep(1.0)
        start(self)

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", slow_start)
    base = {**TINY, "total_steps": 20_000, "progress": False, "torch_threads": 1}  # a minute or more of training
    handler = signal.getsignal(signal.SIGTERM)
    [job] = plan_jobs(tmp_path, [ENV], ["omad"], [0], base)
    outcomes = run_local([job], workers=1)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        next(outcomes)
    assert time.monotonic() - t0 < 30  # the start, then its termination: not the job's training
    assert not (Path(job.dir) / DONE_FILE).exists()
    assert signal.getsignal(signal.SIGTERM) is handler  # the sweep's handler is gone again
