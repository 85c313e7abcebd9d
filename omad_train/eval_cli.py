"""`omad eval`: closed-loop evaluation from exactly one policy source."""

from __future__ import annotations

import argparse

from omad_serve.closed_loop import EvalError, format_report, grpc_source, onnx_source, run_eval, write_json


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate policies closed-loop (gRPC servers, ONNX export or torch run dir)")
    p.add_argument("--env", required=True, help="environment id, e.g. mamujoco:HalfCheetah-2x3")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--servers", help="agent servers host:port,host:port,... in agent order")
    source.add_argument("--export-dir", help="ONNX export dir, run in-process")
    source.add_argument("--run-dir", help="training run dir, torch checkpoint in-process")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zero-noise", action="store_true", help="deterministic policy (all noise zero)")
    p.add_argument("--record", help="write episode 0 as a .gif or .mp4")
    p.add_argument("--json", help="write the report as JSON here")
    p.add_argument("--env-options", default=None, help="adapter options as YAML, e.g. '{N: 4}'")
    p.add_argument("--token-file", help="bearer token for the servers")
    p.add_argument("--timeout-s", type=float, default=5.0, help="per-call deadline for servers")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (--export-dir)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    import yaml

    if args.episodes < 1:
        raise EvalError("--episodes must be at least 1")
    options = yaml.safe_load(args.env_options) if args.env_options else None
    if args.servers:
        token = open(args.token_file).read().strip() if args.token_file else None
        addrs = [a.strip() for a in args.servers.split(",") if a.strip()]
        source = grpc_source(addrs, token=token, timeout_s=args.timeout_s)
    elif args.export_dir:
        source = onnx_source(args.export_dir, threads=args.threads)
    else:
        from .policies import torch_source  # the only source that needs torch

        source = torch_source(args.run_dir)
    report = run_eval(args.env, source, args.episodes, args.seed, args.zero_noise, args.record, options)
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
    return 0
