"""Training loop: artifacts, checkpoint round trip, exact resume, and clear errors on bad input."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_config
from safetensors.torch import load_file

import omad.train
from omad.cli import main
from omad.train.checkpoint import CheckpointError, latest_checkpoint
from omad.train.trainer import Trainer, train


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "omad", *args], capture_output=True, text=True, timeout=300)


def test_run_dir_has_every_artifact(tiny_run_dir):
    for name in ("config.json", "spec.json", "metrics.jsonl", "curves.png"):
        assert (tiny_run_dir / name).is_file(), name
    assert list((tiny_run_dir / "tensorboard").glob("events.*"))
    record = json.loads((tiny_run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 300 and "eval_return_mean" in record and record["updates"] > 0
    ckpt = latest_checkpoint(tiny_run_dir)
    assert sorted(p.name for p in (ckpt / "actors").iterdir()) == [f"agent_{i}.safetensors" for i in range(3)]


@pytest.mark.parametrize("mode", ["stochastic", "deterministic"])
def test_every_evaluation_records_both_modes(tiny_run_dir, mode):
    """Each mode's return equals an independent evaluation of the checkpointed policies (the run ends
    on a checkpoint) with that mode's noise, on the same episode seeds; the plain key repeats the
    config's mode (stochastic for OMAD)."""
    from omad.core.rollout import evaluate
    from omad.evaluation import torch_source

    cfg = tiny_config()
    record = json.loads((tiny_run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    source = torch_source(tiny_run_dir)
    seed = cfg.seed + 1_000_003 + record["step"]
    noise_steps = [a.contract.noise_steps for a in source.agents]
    result = evaluate(cfg.env, source.act, noise_steps, cfg.eval_episodes, seed, zero_noise=mode == "deterministic")
    assert record[f"eval_{mode}_return_mean"] == pytest.approx(result.mean, abs=1e-4)
    assert record[f"eval_{mode}_return_std"] == pytest.approx(result.std, abs=1e-4)
    assert record["eval_return_mean"] == record["eval_stochastic_return_mean"]
    assert record["eval_stochastic_return_mean"] != record["eval_deterministic_return_mean"]


def test_checkpoint_round_trip_gives_the_trained_policies(tmp_path):
    cfg = tiny_config(total_steps=200, checkpoint_every=200, eval_every=200)
    trainer = Trainer(cfg, tmp_path)
    trainer.train()
    policies = omad.train.load_policies(tmp_path)
    assert list(policies) == ["agent_0", "agent_1", "agent_2"]
    obs = torch.randn(8, 18)
    noise = torch.randn(cfg.denoising_steps + 1, 8, 5)
    for i, (_name, policy) in enumerate(policies.items()):
        assert (policy.obs_dim, policy.act_dim, policy.denoising_steps) == (18, 5, cfg.denoising_steps)
        expected = trainer.algo.agent_policy(i)(obs, noise)
        assert torch.equal(policy(obs, noise), expected)
        action, bound = policy.sample_with_bound(obs, noise)
        assert torch.equal(action, expected) and bound.shape == (8,)
        assert torch.all((action >= 0) & (action <= 1))  # mpe2 bounds


@pytest.mark.parametrize("algo", ["omad", "hasac", "hatd3"])
def test_resume_is_exact(tmp_path, algo):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_config(algo=algo, total_steps=400, checkpoint_every=200), straight)
    train(tiny_config(algo=algo, total_steps=200, checkpoint_every=200), resumed)
    train(tiny_config(algo=algo, total_steps=400, checkpoint_every=200), resumed, resume=True)
    parts = sorted(
        p.relative_to(latest_checkpoint(straight))
        for p in (latest_checkpoint(straight) / "train").rglob("*.safetensors")
    )
    assert {p.parent.name for p in parts} == {"train", "modules", "optimizers"}
    for part in parts:  # every network, optimizer moment, loose tensor and the RNG state
        a = load_file(latest_checkpoint(straight) / part)
        b = load_file(latest_checkpoint(resumed) / part)
        assert a.keys() == b.keys(), part
        for k in a:
            assert torch.equal(a[k], b[k]), (part, k)

    def last(run):
        return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])

    assert last(straight)["eval_return_mean"] == last(resumed)["eval_return_mean"]


def checkpoint_step(out):
    return json.loads((latest_checkpoint(out) / "manifest.json").read_text())["step"]


def run_until_checkpoint(args, out, min_step, deadline_s=180):
    """Start `omad *args`, wait until it has checkpointed at least `min_step`, then kill it."""
    proc = subprocess.Popen([sys.executable, "-m", "omad", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        start = time.time()
        while not ((out / "checkpoints" / "LATEST").exists() and checkpoint_step(out) >= min_step):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() - start < deadline_s
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    return checkpoint_step(out)


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "--out",
        str(out),
        "--env",
        "mpe:simple_spread_v3",
        "--total-steps",
        "100000",
        "--learning-starts",
        "100",
        "--batch-size",
        "32",
        "--checkpoint-every",
        "150",
        "--eval-every",
        "100000",
        "--denoising-steps",
        "2",
        "--actor-hidden",
        "[16]",
        "--critic-hidden",
        "[16]",
        "--progress",
        "false",
        "--compile",
        "false",  # 100k steps would compile (auto) before the first checkpoint: not what this tests
    ]
    step = run_until_checkpoint(args, out, 150)
    # Killed again after the resumed run (its saved config, budget included) checkpointed further on.
    assert run_until_checkpoint(["train", "--out", str(out), "--resume"], out, step + 150) >= step + 150
    assert json.loads((out / "config.json").read_text())["total_steps"] == 100000


def test_unknown_env_lists_valid_ids(tmp_path):
    result = run_cli("train", "--env", "mpe:nope", "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert "unknown env id 'mpe:nope'" in result.stderr and "mamujoco:HalfCheetah-2x3" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_config_value_names_the_field(tmp_path):
    result = run_cli("train", "--env", "mpe:simple_spread_v3", "--batch-size", "-3", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "batch_size" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "bad.yaml").write_text("learning_rate_typo: 3\n")
    result = run_cli("train", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r2"))
    assert result.returncode == 2 and "learning_rate_typo" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_clear_line_and_no_run_dir(tmp_path):
    result = run_cli("train", "--env", "mpe:simple_spread_v3", "--device", "cuda", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "'device'" in result.stderr and "cuda" in result.stderr
    assert not (tmp_path / "r").exists()


def test_auto_device_picks_cuda_only_when_present(monkeypatch):
    from omad.train.config import ConfigError
    from omad.train.trainer import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cpu") == torch.device("cpu")


def test_existing_out_is_refused_without_resume_or_overwrite(tiny_run_dir):
    before = sorted(p.name for p in tiny_run_dir.rglob("*"))
    result = run_cli("train", "--env", "mpe:simple_spread_v3", "--out", str(tiny_run_dir))
    assert result.returncode == 2 and "already exists" in result.stderr and "--resume" in result.stderr
    assert sorted(p.name for p in tiny_run_dir.rglob("*")) == before


def test_corrupt_checkpoint_names_the_file(tmp_path):
    out = tmp_path / "run"
    train(tiny_config(total_steps=150, checkpoint_every=150, eval_every=150), out)
    actor = latest_checkpoint(out) / "actors" / "agent_1.safetensors"
    data = bytearray(actor.read_bytes())
    data[-10] ^= 0xFF
    actor.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"agent_1\.safetensors.*sha256"):
        omad.train.load_policies(out)
    result = run_cli("train", "--out", str(out), "--resume", "--total-steps", "300")
    assert result.returncode == 2 and "agent_1.safetensors" in result.stderr


def test_mismatched_checkpoint_names_file_and_tensor(tmp_path):
    out = tmp_path / "run"
    train(tiny_config(total_steps=150, checkpoint_every=150, eval_every=150), out)
    config = json.loads((out / "config.json").read_text())
    config["actor_hidden"] = [64, 64]  # the saved weights are 32-wide
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"modules/actors\.safetensors: tensor '.*' has shape"):
        Trainer(tiny_config(**{k: v for k, v in config.items() if k != "total_steps"}, total_steps=300), out).restore()


def test_resume_keeps_the_saved_config(tmp_path):
    """`--resume` continues with the run's own config: without flags nothing changes (the budget stays
    the saved one, not the code default), a larger --total-steps and the runtime knobs may change."""
    out = tmp_path / "run"
    train(tiny_config(total_steps=150, checkpoint_every=150, eval_every=150, lr_actor=1e-3), out)
    saved = json.loads((out / "config.json").read_text())
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "config.json").read_text()) == saved  # total_steps 150, lr_actor 1e-3, 32-wide nets
    assert json.loads((latest_checkpoint(out) / "manifest.json").read_text())["step"] == 150
    assert (
        main(
            [
                "train",
                "--out",
                str(out),
                "--resume",
                "--total-steps",
                "300",
                "--torch-threads",
                "1",
                "--progress",
                "true",
            ]
        )
        == 0
    )
    assert json.loads((out / "config.json").read_text()) == {
        **saved,
        "total_steps": 300,
        "torch_threads": 1,
        "progress": True,
    }
    assert json.loads((latest_checkpoint(out) / "manifest.json").read_text())["step"] == 300


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--lr-actor", "0.01"], "--lr-actor"), (["--total-steps", "100"], "--total-steps"),
     (["--total-steps", "400", "--actor-hidden", "[64]"], "--actor-hidden"), (["--seed", "3"], "--seed")],
)  # fmt: skip
def test_resume_refuses_a_changed_config(tiny_run_dir, capsys, flags, named):
    before = {p: p.stat().st_mtime_ns for p in tiny_run_dir.rglob("*")}
    assert main(["train", "--out", str(tiny_run_dir), "--resume", *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {named} ") and "saved" in lines[0], lines
    assert {p: p.stat().st_mtime_ns for p in tiny_run_dir.rglob("*")} == before


@pytest.mark.parametrize(
    ("overrides", "cxx", "expected"),
    [
        (dict(total_steps=15_000, learning_starts=5_000), "g++", True),  # 10k updates: pays
        (dict(total_steps=14_999, learning_starts=5_000), "g++", False),  # one update short
        (dict(total_steps=10_000, learning_starts=5_000, updates_per_step=2.0), "g++", True),  # UTD 2: 10k updates
        (dict(total_steps=15_000, learning_starts=5_000), None, False),  # no C++ compiler: inductor cannot run
        (dict(total_steps=100_000, algo="hasac"), "g++", False),  # auto compiles OMAD only
        (dict(total_steps=100_000, algo="omad-gaussian"), "g++", False),
        (dict(total_steps=100_000, algo="omad-gaussian", compile=True), "g++", True),  # the OMAD class compiles
        (dict(total_steps=100_000, algo="hatd3"), "g++", False),  # nothing of HATD3's compiles (true is refused)
        (dict(total_steps=1_000, learning_starts=500, compile=True), None, True),  # asked for: as asked
        (dict(total_steps=100_000, compile=False), "g++", False),
    ],
)
def test_compile_auto_turns_on_where_it_pays(monkeypatch, overrides, cxx, expected):
    from omad.train import config as config_module

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(config_module.shutil, "which", lambda name: f"/usr/bin/{name}" if name == cxx else None)
    cfg = config_module.build_config({"env": "mpe:simple_spread_v3", **overrides})
    assert config_module.compile_enabled(cfg, "cpu") is expected


def test_trainer_resolves_compile_auto_and_keeps_auto_in_the_config(tmp_path, monkeypatch):
    """A small budget under `auto` runs eager (nothing compiled), and config.json keeps the user's "auto"."""
    from torch._dynamo.utils import counters

    counters.clear()
    cfg = tiny_config(total_steps=300, learning_starts=100, compile="auto")
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.compiled is False and trainer.algo.cfg.compile is False
    trainer.train()
    assert counters["stats"]["unique_graphs"] == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["compile"] == "auto"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["compiled"] is False for r in records)  # the decision is on record


TINY_FLAGS = [
    "--env", "mpe:simple_spread_v3", "--total-steps", "150", "--learning-starts", "50", "--batch-size", "16",
    "--eval-every", "150", "--eval-episodes", "1", "--checkpoint-every", "150", "--denoising-steps", "2",
    "--actor-hidden", "[16]", "--critic-hidden", "[16]", "--num-atoms", "11", "--progress", "false",
]  # fmt: skip


def test_train_without_out_writes_the_default_run_dir_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY_FLAGS, "--seed", "3"]) == 0
    run = tmp_path / "runs" / "mpe_simple_spread_v3-omad-seed3"
    assert capsys.readouterr().out.startswith("run dir: runs/mpe_simple_spread_v3-omad-seed3\n")
    assert json.loads((run / "config.json").read_text())["seed"] == 3
    assert checkpoint_step(run) == 150
    # --resume without --out continues the same default dir (env, algo and seed as given)
    assert main(["train", "--env", "mpe:simple_spread_v3", "--seed", "3", "--resume", "--total-steps", "300"]) == 0
    assert checkpoint_step(run) == 300 and sorted(p.name for p in (tmp_path / "runs").iterdir()) == [run.name]


@pytest.mark.parametrize("algo", ["omad", "hasac", "hatd3"])
def test_a_run_whose_config_json_is_flat_resumes_exports_and_evaluates(tmp_path, algo):
    """Runs saved every algorithm's fields in config.json before configs were typed
    (tests/data/flat-config-<algo>.json was written that way); resume, export and evaluation read it,
    and the resumed run saves its typed config."""
    from omad.train.config import ALGOS, build_config, config_class, fields_for

    flat_text = (Path(__file__).parent / "data" / f"flat-config-{algo}.json").read_text()
    flat = json.loads(flat_text)
    run = tmp_path / "run"
    train(build_config(fields_for(algo, flat, ALGOS), torch_threads=1), run)
    (run / "config.json").write_text(flat_text)
    assert main(["train", "--out", str(run), "--resume", "--total-steps", "300"]) == 0
    assert checkpoint_step(run) == 300
    saved = json.loads((run / "config.json").read_text())
    assert saved == {k: v for k, v in {**flat, "total_steps": 300}.items() if k in config_class(algo).model_fields}
    (run / "config.json").write_text(flat_text.replace('"total_steps": 200', '"total_steps": 300'))
    export = tmp_path / "export"
    assert main(["export", str(run), "--out", str(export)]) == 0
    assert json.loads((export / "manifest.json").read_text())["algo"] == algo
    reports = {}
    for source in (["--run-dir", str(run)], ["--export-dir", str(export)]):
        out = tmp_path / f"eval-{source[0][2:]}.json"
        assert main(["eval", "--env", "mpe:simple_spread_v3", *source, "--episodes", "2", "--json", str(out)]) == 0
        reports[source[0]] = json.loads(out.read_text())
    np.testing.assert_allclose(
        reports["--run-dir"]["returns"], reports["--export-dir"]["returns"], rtol=1e-4, atol=1e-4
    )


def test_the_log_warns_when_the_critic_target_is_clipped(tmp_path, capsys):
    """Above 5% of the target mass clipped at the support's ends, the evaluation line is followed by a
    warning that names the share; at or below it, nothing is said."""
    from omad.train.logger import RunLogger

    logger = RunLogger(tmp_path, total_steps=300, start_step=0, progress=False)
    base = {"eval_return_mean": 1.0, "eval_return_std": 0.5, "alpha": 0.1}
    logger.log({"step": 100, **base, "critic_target_clipped": 0.05})
    logger.log({"step": 200, **base})  # HASAC/HATD3 records have no such metric
    assert "warning" not in capsys.readouterr().out
    logger.log({"step": 300, **base, "critic_target_clipped": 0.23})
    out = capsys.readouterr().out
    assert "warning: 23% of the critic's target mass fell outside its support" in out
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        100,
        200,
        300,
    ]
