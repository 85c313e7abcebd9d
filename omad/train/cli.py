"""`omad train`: one flag per config field (the `omad` command itself is omad.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from omad.core.errors import OmadError
from omad.train.config import TrainConfig, build_config, load_config_file, load_run_config, resume_config


def add_config_flags(parser: argparse.ArgumentParser, model: type[TrainConfig]) -> None:
    """One `--field-name VALUE` flag per config field; values are parsed as YAML (lists, dicts)."""
    group = parser.add_argument_group("config fields (also settable in --config FILE)")
    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description + '; ' if field.description else ''}default: {default}"
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar="V", help=help_text)


def given_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config values the user gave: a --config file, then the flags over it."""
    given = load_config_file(args.config) if getattr(args, "config", None) else {}
    for name in TrainConfig.model_fields:
        raw = getattr(args, name, None)
        if raw is not None:
            try:
                given[name] = yaml.safe_load(raw) if isinstance(raw, str) else raw
            except yaml.YAMLError:
                given[name] = raw
    return given


def cmd_train(args: argparse.Namespace) -> int:
    from omad.train.trainer import train

    if args.resume and args.overwrite:
        raise OmadError("--resume and --overwrite exclude each other")
    given = given_values(args)
    # A resumed run continues with its saved config: `given` may only raise --total-steps or change
    # the runtime knobs, anything else is refused naming the flag.
    cfg = resume_config(load_run_config(Path(args.out)), given) if args.resume else build_config(given)
    record = train(cfg, Path(args.out), resume=args.resume, overwrite=args.overwrite)
    print(f"\nrun dir: {args.out}")
    for key in ("step", "eval_return_mean", "eval_return_std", "updates_per_s", "env_steps_per_s"):
        if key in record:
            print(f"  {key:<18} {record[key]:.3f}" if isinstance(record[key], float) else f"  {key:<18} {record[key]}")
    return 0


def configure_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run dir to create (or to continue with --resume)")
    p.add_argument("--config", help="YAML/JSON file of config fields; flags override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=cmd_train)
