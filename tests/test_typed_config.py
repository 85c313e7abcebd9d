"""Typed configs per algorithm: which fields each algorithm takes, the one-line refusal of the others
(flags, config files, sweeps, resumes), presets beneath the user's values, and reading the flat
config.json that runs saved before the configs were typed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omad.cli import main
from omad.train.config import (
    ALGOS,
    CONFIG_CLASSES,
    PRESETS,
    ConfigError,
    HasacConfig,
    Hatd3Config,
    OmadConfig,
    OmadGaussianConfig,
    build_config,
    config_class,
    defaults_text,
    field_presets,
    fields_for,
    load_run_config,
    resume_config,
)

DATA = Path(__file__).parent / "data"
SPREAD = "mpe:simple_spread_v3"

# Which algorithm uses which field, read off the algorithms (omad/train/algos) by hand.
SHARED = {
    "env", "env_options", "algo", "seed", "total_steps", "num_envs", "learning_starts", "batch_size",
    "buffer_size", "updates_per_step", "eval_every", "eval_episodes", "eval_zero_noise", "checkpoint_every",
    "torch_threads", "compile", "device", "progress", "gamma", "tau", "n_step", "reward_scale", "grad_clip",
    "policy_delay", "actor_hidden", "lr_actor", "critic_hidden", "lr_critic",
}  # fmt: skip
TEMPERATURE = {"auto_alpha", "alpha_init", "lr_alpha", "cost_budget_per_dim"}
OMAD_UPDATE = {"prior_std", "entropy_norm", "num_atoms", "v_min", "v_max", "critic_target_reduce"}
CHAIN = {"denoising_steps", "dt_init", "time_features"}
NOISE = {"explore_std", "target_noise", "target_noise_clip"}
EXPECTED_FIELDS = {
    "omad": SHARED | TEMPERATURE | OMAD_UPDATE | CHAIN,
    "omad-gaussian": SHARED | TEMPERATURE | OMAD_UPDATE,
    "hasac": SHARED | TEMPERATURE,
    "hatd3": SHARED | NOISE,
}


@pytest.mark.parametrize("algo", ALGOS)
def test_each_algo_takes_exactly_the_fields_it_uses(algo):
    assert set(config_class(algo).model_fields) == EXPECTED_FIELDS[algo]
    assert {OmadConfig: "omad", OmadGaussianConfig: "omad-gaussian", HasacConfig: "hasac", Hatd3Config: "hatd3"}[
        config_class(algo)
    ] == algo
    cfg = build_config({"env": SPREAD, "algo": algo})
    assert type(cfg) is CONFIG_CLASSES[algo] and cfg.algo == algo
    assert all(field.description for field in type(cfg).model_fields.values())  # the config reference reads them


REFUSED = [  # (algo, field, value, the algos the message names as taking the field)
    ("hasac", "denoising_steps", 4, "omad"),
    ("omad-gaussian", "time_features", 8, "omad"),
    ("hatd3", "num_atoms", 11, "omad and omad-gaussian"),
    ("hasac", "critic_target_reduce", "min", "omad and omad-gaussian"),
    ("hatd3", "alpha_init", 0.3, "omad, hasac and omad-gaussian"),
    ("omad", "target_noise", 0.3, "hatd3"),
    ("omad-gaussian", "explore_std", 0.2, "hatd3"),
]


@pytest.mark.parametrize(("algo", "field", "value", "takers"), REFUSED)
def test_a_field_the_algo_does_not_take_is_refused_in_one_line(algo, field, value, takers):
    expected = (
        f"config field '{field}' (--{field.replace('_', '-')}) does not apply to algo {algo}: it is a field of {takers}"
    )
    with pytest.raises(ConfigError) as err:
        build_config({"env": SPREAD, "algo": algo, field: value})
    assert str(err.value) == expected


@pytest.mark.parametrize(("algo", "field", "value", "takers"), REFUSED[:3])
def test_the_cli_refuses_it_from_a_flag_or_a_config_file_before_writing(tmp_path, capsys, algo, field, value, takers):
    out = tmp_path / "run"
    flag = [f"--{field.replace('_', '-')}", json.dumps(value)]
    (tmp_path / "cfg.yaml").write_text(f"algo: {algo}\n{field}: {json.dumps(value)}\n")
    for argv in (["--algo", algo, *flag], ["--config", str(tmp_path / "cfg.yaml")]):
        assert main(["train", "--env", SPREAD, "--out", str(out), *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        assert f"'{field}'" in lines[0] and f"does not apply to algo {algo}: it is a field of {takers}" in lines[0]
        assert not out.exists()


def test_compile_true_is_refused_where_nothing_compiles():
    for algo in ("hasac", "hatd3"):
        with pytest.raises(ConfigError, match=f"'compile': {algo} has nothing to compile"):
            build_config({"env": SPREAD, "algo": algo, "compile": True})
        assert build_config({"env": SPREAD, "algo": algo, "compile": False}).compile is False
    assert build_config({"env": SPREAD, "algo": "omad-gaussian", "compile": True}).compile is True


def test_an_unknown_field_or_algo_is_still_refused():
    with pytest.raises(ConfigError, match="'learning_rate_typo': Extra inputs are not permitted"):
        build_config({"env": SPREAD, "algo": "hasac", "learning_rate_typo": 3})
    with pytest.raises(ConfigError, match="unknown algo 'sac'; valid algos: omad, hasac, hatd3, omad-gaussian"):
        build_config({"env": SPREAD, "algo": "sac", "denoising_steps": 2})


def test_presets_lie_beneath_the_users_values():
    """HASAC on Cooperative Navigation: HARL's values (lr 5e-4, batch 1000, n_step 20, 256x256) except
    what the user sets; on an Ant task (no preset of its own) the MaMuJoCo family's (HalfCheetah's)."""
    cfg = build_config({"env": SPREAD, "algo": "hasac", "lr_actor": 0.01, "batch_size": 64})
    assert (cfg.lr_actor, cfg.batch_size) == (0.01, 64)
    assert (cfg.lr_critic, cfg.n_step, cfg.actor_hidden, cfg.alpha_init, cfg.grad_clip) == (
        5e-4,
        20,
        [256, 256],
        0.2,
        0,
    )
    ant = build_config({"env": "mamujoco:Ant-2x4", "algo": "hatd3", "target_noise": 0.3})
    assert (ant.target_noise, ant.target_noise_clip, ant.lr_actor, ant.lr_critic, ant.n_step) == (
        0.3,
        0.5,
        5e-4,
        1e-3,
        10,
    )
    omad = build_config({"env": SPREAD, "algo": "omad"})  # no preset: the field defaults
    assert (omad.lr_actor, omad.batch_size, omad.n_step) == (3e-4, 256, 1)


def test_every_preset_is_a_valid_config_of_its_algo():
    for (env, algo), preset in PRESETS.items():
        assert set(preset) <= EXPECTED_FIELDS[algo], (env, algo)
        cfg = config_class(algo)(env=env, algo=algo, total_steps=100_000, **preset)
        assert {k: getattr(cfg, k) for k in preset} == preset


def test_defaults_text_names_each_algos_default():
    """What --help and the config reference say, against PRESETS by hand."""
    assert defaults_text("lr_actor") == (
        "default 0.0003 (HARL presets: hasac 0.001 on mamujoco, 0.0005 on mpe; hatd3 0.0005)"
    )
    assert defaults_text("batch_size") == "default 256 (HARL presets: hasac, hatd3 1000)"
    assert defaults_text("actor_hidden") == (
        "default [256, 256, 256] (HARL presets: hasac [256, 256]; hatd3 [256, 256] on mamujoco, [128, 128] on mpe)"
    )
    assert defaults_text("denoising_steps") == "default 8"
    assert defaults_text("v_min") == "default null"
    assert field_presets("explore_std") == {"hatd3": "0.1"}


def test_a_sweep_shares_fields_among_its_algos():
    base = {"denoising_steps": 2, "target_noise": 0.3, "batch_size": 64}
    assert fields_for("omad", base, ["omad", "hatd3"]) == {"denoising_steps": 2, "batch_size": 64}
    assert fields_for("hatd3", base, ["omad", "hatd3"]) == {"target_noise": 0.3, "batch_size": 64}
    with pytest.raises(
        ConfigError,
        match=r"'target_noise' \(--target-noise\) does not apply to algo omad and hasac: it is a field of hatd3",
    ):
        fields_for("omad", base, ["omad", "hasac"])


def test_a_sweep_set_no_algo_takes_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--envs", SPREAD, "--algos", "hasac", "hatd3", "--out", str(out), "--set", "num_atoms=11"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'num_atoms'" in err and "does not apply to algo hasac and hatd3" in err
    assert not out.exists()


@pytest.mark.parametrize("algo", ["omad", "hasac", "hatd3"])
def test_a_flat_config_json_of_an_earlier_run_loads_as_its_algos_config(tmp_path, algo):
    """tests/data/flat-config-<algo>.json were written by the one flat model that held every field
    (HASAC's holds OMAD's denoising_steps 4 and num_atoms 21, which it never used)."""
    flat = json.loads((DATA / f"flat-config-{algo}.json").read_text())
    assert set(flat) == set().union(*EXPECTED_FIELDS.values())
    (tmp_path / "config.json").write_text(json.dumps(flat))
    cfg = load_run_config(tmp_path)
    assert type(cfg) is config_class(algo)
    assert cfg.model_dump() == {k: v for k, v in flat.items() if k in EXPECTED_FIELDS[algo]}
    # user input stays strict: the same flat dict given as a config file is refused
    with pytest.raises(ConfigError, match="does not apply to algo"):
        build_config(flat)
    # and a field no algorithm knows is refused in a saved config too
    (tmp_path / "config.json").write_text(json.dumps({**flat, "bogus": 1}))
    with pytest.raises(ConfigError, match=r"config\.json: invalid config field 'bogus'"):
        load_run_config(tmp_path)


def test_a_resume_refuses_another_algos_field_and_another_algo(tmp_path):
    saved = build_config({"env": SPREAD, "algo": "hasac"})
    with pytest.raises(ConfigError, match=r"'denoising_steps' .* does not apply to algo hasac"):
        resume_config(saved, {"denoising_steps": 4})
    with pytest.raises(ConfigError, match="--algo 'omad' differs from the run's saved 'hasac'"):
        resume_config(saved, {"algo": "omad"})
    assert resume_config(saved, {"total_steps": 200_000, "algo": "hasac"}).total_steps == 200_000
