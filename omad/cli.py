"""The `omad` command: one table of subcommands, each implemented in the package that owns it.

`omad --help` lists the table without importing any subcommand. `omad CMD ...` imports only CMD's
module, so `omad serve` loads the server and nothing of training (the serving image holds only what
the server imports). Errors a user can act on (`OmadError`) print one line and exit 2; anything else
is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass

from omad.core.errors import OmadError


@dataclass(frozen=True)
class Command:
    target: str  # "module:function"; function(parser) adds the command's flags and sets `func`
    help: str

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    def configure(self, parser: argparse.ArgumentParser) -> None:
        module, _, function = self.target.partition(":")
        configure: Callable[[argparse.ArgumentParser], None] = getattr(importlib.import_module(module), function)
        configure(parser)


COMMANDS: dict[str, Command] = {
    "train": Command("omad.train.cli:configure_train", "train a multi-agent policy into a run dir"),
    "envs": Command("omad.cli:configure_envs", "list the registered environment ids and their packages"),
    "export": Command(
        "omad.export.cli:configure_export", "export a run dir's per-agent policies to ONNX, verified against torch"
    ),
    "serve": Command(
        "omad.serve.cli:configure_serve", "serve an exported agent over gRPC (or every agent of an export dir)"
    ),
    "health": Command(
        "omad.serve.cli:configure_health", "exit 0 if a policy server reports SERVING (for HEALTHCHECK and scripts)"
    ),
    "eval": Command(
        "omad.evaluation:configure_eval", "evaluate policies closed-loop (gRPC servers, ONNX export or torch run dir)"
    ),
    "deploy": Command(
        "omad.deploy.cli:configure_deploy",
        "write Kubernetes manifests for an export: one Deployment and Service per agent, models, NetworkPolicy",
    ),
    "replay": Command(
        "omad.replay:configure_replay",
        "recompute an eval trace's actions (servers, export or run dir) and report the largest difference",
    ),
    "demo": Command(
        "omad.demo:configure_demo", "train, export, serve one gRPC server per agent, evaluate closed-loop, report"
    ),
    "sweep": Command(
        "omad.experiments.sweep:configure_sweep",
        "train every (env, algo, seed) combination, locally or on Ray; resumable",
    ),
    "report": Command(
        "omad.experiments.report:configure_report",
        "curves, final returns, sample-efficiency ratios and coverage of a sweep",
    ),
}


def configure_envs(parser: argparse.ArgumentParser) -> None:
    def cmd_envs(args: argparse.Namespace) -> int:
        from omad.core.envs import registrations

        rows = [
            (env_id, f"{r.package} {r.version}", r.target + ("  (conflict: registered twice)" if len(regs) > 1 else ""))
            for env_id, regs in registrations().items()
            for r in regs
        ]
        header = ("id", "package", "factory")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(2)]
        for row in [header, *rows]:
            print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}")
        print("(any module.path:factory returning a PettingZoo ParallelEnv works as an id too)")
        return 0

    parser.set_defaults(func=cmd_envs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand is listed; only `command`'s module is imported to add its flags."""
    parser = argparse.ArgumentParser(
        prog="omad", description="Train, export, serve and evaluate multi-agent diffusion policies."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, entry in COMMANDS.items():
        p = sub.add_parser(name, help=entry.help, description=entry.help)
        if name == command:
            entry.configure(p)
    return parser


def missing_package(command: str) -> str | None:
    """The package `command` lives in, when this installation lacks it (the serving image has no training)."""
    module = COMMANDS[command].module
    package = module.rpartition(".")[0] or module  # omad.train.cli -> omad.train
    return package if importlib.util.find_spec(package) is None else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in COMMANDS and (package := missing_package(command)):
        print(f"error: `omad {command}` is not part of this installation (no {package} package)", file=sys.stderr)
        return 2
    args = build_parser(command).parse_args(argv)
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
