"""`omad` command line. Each subcommand lives in the package that implements it; this file only
parses arguments and turns known errors into one clear line and a non-zero exit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from .errors import OmadError
from .config import ConfigError, TrainConfig, build_config, load_config_file


def add_config_flags(parser: argparse.ArgumentParser, model: type[TrainConfig]) -> None:
    """One `--field-name VALUE` flag per config field; values are parsed as YAML (lists, dicts)."""
    group = parser.add_argument_group("config fields (also settable in --config FILE)")
    for name, field in model.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default
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
    from .trainer import train

    cfg = config_from_args(args)
    record = train(cfg, Path(args.out), resume=args.resume, overwrite=args.overwrite)
    print(f"\nrun dir: {args.out}")
    for key in ("step", "eval_return_mean", "eval_return_std", "updates_per_s", "env_steps_per_s"):
        if key in record:
            print(f"  {key:<18} {record[key]:.3f}" if isinstance(record[key], float) else f"  {key:<18} {record[key]}")
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    from .envs import ENV_IDS

    print("\n".join(ENV_IDS))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omad", description="Train, export, serve and evaluate multi-agent diffusion policies.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a multi-agent policy into a run dir")
    p.add_argument("--out", required=True, help="run dir to create (or to continue with --resume)")
    p.add_argument("--config", help="YAML/JSON file of config fields; flags override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("envs", help="list the environment ids")
    p.set_defaults(func=cmd_envs)

    for register in _subcommand_registrars():
        register(sub)
    return parser


def _subcommand_registrars():
    """Subcommands from the other packages, when they are installed."""
    registrars = []
    for module in ("exporters.cli", "omad_serve.cli", "omad_train.eval_cli", "omad_train.demo",
                   "omad_train.sweep", "omad_train.report"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ImportError:
            continue
        registrars.append(mod.register)
    return registrars


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        print("error: --resume and --overwrite exclude each other", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except OmadError as err:  # errors a user can act on: one line; anything else: a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
