"""`omad train`: one flag per config field (the `omad` command itself is omad.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from omad.core.errors import OmadError
from omad.core.rundir import default_run_dir
from omad.train.config import (
    ALGOS,
    CONFIG_CLASSES,
    DEFAULT_ALGO,
    TrainConfigBase,
    algos_taking,
    all_fields,
    build_config,
    defaults_text,
    load_config_file,
    load_run_config,
    resume_config,
)

FIELDS_NOTE = (
    "Set in --config FILE or by flag (a flag wins). HASAC and HATD3 start from HARL's tuned values for the "
    "task (its family's where HARL has none) beneath yours; OMAD and OMAD-Gaussian from the defaults. A field "
    "the chosen --algo does not take is refused."
)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One `--field-name VALUE` flag per field of any algorithm, grouped by the algorithms that take it;
    values are parsed as YAML (lists, dicts). Each help gives the default and the presets' values."""
    groups: dict[tuple[str, ...], Any] = {}
    for name in all_fields():
        takers = tuple(algos_taking(name))
        if takers not in groups:
            every = len(takers) == len(ALGOS)
            title = "config fields of every algo" if every else f"config fields of {', '.join(takers)} only"
            groups[takers] = parser.add_argument_group(title, FIELDS_NOTE if every else None)
        field = CONFIG_CLASSES[takers[0]].model_fields[name]
        help_text = f"{field.description}; {defaults_text(name)}".replace("%", "%%")
        groups[takers].add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar="V", help=help_text)


def given_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config values the user gave: a --config file, then the flags over it."""
    given = load_config_file(args.config) if getattr(args, "config", None) else {}
    for name in all_fields():
        raw = getattr(args, name, None)
        if raw is not None:
            try:
                given[name] = yaml.safe_load(raw) if isinstance(raw, str) else raw
            except yaml.YAMLError:
                given[name] = raw
    return given


def default_out(given: dict[str, Any]) -> Path:
    """The run dir of the env, algo and seed given (each field's default where not given)."""
    fields = TrainConfigBase.model_fields
    env, seed = given.get("env", fields["env"].default), given.get("seed", fields["seed"].default)
    return default_run_dir(str(env), str(given.get("algo", DEFAULT_ALGO)), seed)


def cmd_train(args: argparse.Namespace) -> int:
    from omad.train.trainer import train

    if args.resume and args.overwrite:
        raise OmadError("--resume and --overwrite exclude each other")
    given = given_values(args)
    # A resumed run continues with its saved config: `given` may only raise --total-steps or change
    # the runtime knobs, anything else is refused naming the flag.
    out = Path(args.out) if args.out else default_out(given)
    cfg = resume_config(load_run_config(out), given) if args.resume else build_config(given)
    print(f"run dir: {out}", flush=True)
    record = train(cfg, out, resume=args.resume, overwrite=args.overwrite)
    print(f"\nrun dir: {out}")
    for key in ("step", "eval_return_mean", "eval_return_std", "updates_per_s", "env_steps_per_s"):
        if key in record:
            print(f"  {key:<18} {record[key]:.3f}" if isinstance(record[key], float) else f"  {key:<18} {record[key]}")
    return 0


def configure_train(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        help="run dir to create (or to continue with --resume); default runs/<env>-<algo>-seed<S> "
        "(the env id with ':' and other unsafe characters as '_')",
    )
    p.add_argument("--config", help="YAML/JSON file of config fields; flags override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)
