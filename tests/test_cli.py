"""The `omad` command table: help without imports, each command imported on demand, and no import
error turned into something else."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from omad import cli


def test_help_lists_every_command_and_imports_none():
    code = (
        "import sys\n"
        "from omad.cli import COMMANDS, build_parser\n"
        "text = build_parser().format_help()\n"
        "assert all(name in text for name in COMMANDS), text\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('omad.train', 'omad.serve', 'omad.export')))\n"
        "assert not loaded and 'omad.evaluation' not in sys.modules, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_adds_its_flags_and_handler(name):
    parser = cli.build_parser(name)
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert subparsers.choices[name].get_default("func") is not None


def test_a_command_whose_package_is_not_installed_is_one_line(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "omad.train" else real(name, *a))
    assert cli.main(["train", "--out", "x"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: `omad train` is not part of this installation (no omad.train package)"
    )


def test_an_import_error_inside_a_command_is_not_swallowed(monkeypatch, tmp_path):
    (tmp_path / "broken_command.py").write_text("import a_module_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "broken", cli.Command("broken_command:configure", "a command with a bug"))
    with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist"):
        cli.main(["broken"])


def test_train_help_groups_the_fields_by_algo_and_gives_each_algos_default():
    parser = cli.build_parser("train")
    subparsers = next(a for a in parser._actions if a.dest == "command")
    train = subparsers.choices["train"]
    groups = {g.title: [a.dest for a in g._group_actions] for g in train._action_groups}
    assert {"denoising_steps", "dt_init", "time_features"} == set(groups["config fields of omad only"])
    assert {"explore_std", "target_noise", "target_noise_clip"} == set(groups["config fields of hatd3 only"])
    assert "num_atoms" in groups["config fields of omad, omad-gaussian only"]
    assert "alpha_init" in groups["config fields of omad, hasac, omad-gaussian only"]
    assert {"env", "algo", "lr_actor", "compile"} <= set(groups["config fields of every algo"])
    text = " ".join(train.format_help().split())  # argparse wraps lines
    assert "default 0.0003 (HARL presets: hasac 0.001 on mamujoco, 0.0005 on mpe; hatd3 0.0005)" in text
    assert "default runs/<env>-<algo>-seed<S>" in text
