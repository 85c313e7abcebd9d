"""`omad serve` and `omad health` (listed in the `omad` command table, omad.cli).

Importing this module is cheap and torch-free: the server, ONNX Runtime and gRPC load only when a
command runs.
"""

from __future__ import annotations

import argparse
import sys
import typing

from omad.serve.config import ServeConfig, build_serve_config

# Fields set by the launcher per agent, or given outside the ServeConfig flags.
_NOT_FLAGS = {"model"}


def configure_serve(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Serve one agent's ONNX policy on one port: omad.v1.Policy, KServe v2 GRPCInferenceService, "
        "grpc.health.v1 and reflection. With --export-dir, start one server process per agent on consecutive ports. "
        "SIGTERM drains and exits; SIGHUP reloads the model from the same path (verified, swapped in between batches)."
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", metavar="AGENT.onnx", help="one agent's graph from `omad export`")
    what.add_argument("--export-dir", metavar="DIR", help="serve every agent of this export dir, one process each")
    p.add_argument(
        "--base-port",
        type=int,
        default=50051,
        metavar="P",
        help="with --export-dir: agent i listens on P + i (0: each picks a free port); default: 50051",
    )
    _add_config_flags(p)
    p.set_defaults(func=cmd_serve)


def configure_health(h: argparse.ArgumentParser) -> None:
    h.description = "Query grpc.health.v1 at ADDR. Exit 0 when SERVING, else 1 (unreachable, NOT_SERVING, ...)."
    h.add_argument("--addr", required=True, metavar="HOST:PORT", help="server address")
    h.add_argument("--timeout", type=float, default=3.0, metavar="S", help="seconds to wait for the answer; default: 3")
    h.add_argument("--service", default="", help="service name to ask about; default: the whole server")
    h.add_argument("--tls-ca", metavar="PEM", help="CA that signed the server certificate (TLS servers)")
    h.add_argument("--tls-cert", metavar="PEM", help="client certificate (mTLS servers)")
    h.add_argument("--tls-key", metavar="PEM", help="client private key (mTLS servers)")
    h.add_argument(
        "--tls-server-name", metavar="NAME", help="name in the server certificate, if not the host of --addr"
    )
    h.set_defaults(func=cmd_health)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One `--field-name` flag per ServeConfig field, so defaults and help live in config.py only."""
    group = parser.add_argument_group("server options")
    for name, field in ServeConfig.model_fields.items():
        if name in _NOT_FLAGS:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description}; default: {field.default}"
        if field.annotation is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else None
        group.add_argument(
            flag, dest=name, default=None, choices=choices, metavar=None if choices else name.upper(), help=help_text
        )


def config_flag_values(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name, None) for name in ServeConfig.model_fields if name not in _NOT_FLAGS}


def cmd_serve(args: argparse.Namespace) -> int:
    from omad.serve import logs

    flags = config_flag_values(args)
    if args.export_dir:
        from omad.serve.launcher import launch_export

        logs.configure(flags.get("log_level") or "info")
        return launch_export(args.export_dir, args.base_port, flags)

    import asyncio
    import signal

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the server handles it (reload), not a kill
    from omad.serve.config import read_tls_files, read_token
    from omad.serve.lifecycle import serve_until_signalled

    config = build_serve_config(model=args.model, **flags)
    logs.configure(config.log_level)
    asyncio.run(serve_until_signalled(config, read_token(config), read_tls_files(config)))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    # Exit codes follow Docker's HEALTHCHECK: 0 healthy, 1 unhealthy (2 is reserved there).
    from omad.serve.client import channel_credentials, check_health

    try:
        credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    except OSError as err:
        print(f"error: cannot read a TLS file: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - e.g. a cert without its key
        print(f"error: {err}", file=sys.stderr)
        return 1
    status = check_health(args.addr, args.timeout, args.service, credentials, args.tls_server_name)
    print(f"{args.addr}: {status}")
    return 0 if status == "SERVING" else 1
