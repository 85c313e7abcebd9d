"""`omad train`: one flag per config field (the `omad` command itself is omad.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from omad_core.errors import OmadError
from omad_train.config import TrainConfig, build_config, load_config_file


def add_config_flags(parser: argparse.ArgumentParser, model: type[TrainConfig]) -> None:
    """One `--field-name VALUE` flag per config field; values are parsed as YAML (lists, dicts)."""
    group = parser.add_argument_group("config fields (also settable in --config FILE)")
    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description + '; ' if field.description else ''}default: {default}"
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar="V", help=help_text)


def config_from_args(args: argparse.Namespace, model: type[TrainConfig] = TrainConfig) -> TrainConfig:
    base = load_config_file(args.config) if getattr(args, "config", None) else {}
    overrides = {}
    for name in model.model_fields:
        raw = getattr(args, name, None)
        if raw is not None:
            try:
                overrides[name] = yaml.safe_load(raw) if isinstance(raw, str) else raw
            except yaml.YAMLError:
                overrides[name] = raw
    return build_config(base, **overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from omad_train.trainer import train

    if args.resume and args.overwrite:
        raise OmadError("--resume and --overwrite exclude each other")
    cfg = config_from_args(args)
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
