"""`omad export` (listed in the `omad` command table, omad.cli).

Importing this module stays cheap and torch-free; torch is imported when the command runs.
"""

from __future__ import annotations

import argparse

from omad.runtime.schema import DEFAULT_OPSET


def configure_export(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write one ONNX graph per agent (K denoising steps unrolled, dynamic batch) plus manifest.json, "
        "after checking each graph with onnx.checker and against the torch policy (max abs error <= 1e-5)."
    )
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="run dir made by `omad train` (its latest checkpoint is exported)"
    )
    p.add_argument("--out", required=True, metavar="EXPORT_DIR", help="export dir to create")
    p.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, metavar="N", help=f"ONNX opset; default: {DEFAULT_OPSET}"
    )
    p.add_argument("--triton", action="store_true", help="also write a Triton model repository in EXPORT_DIR/triton")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export dir at --out")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from omad.export.onnx import export_run, format_report

    print(f"exporting {args.run_dir} ...", flush=True)
    report = export_run(args.run_dir, args.out, opset=args.opset, triton=args.triton, overwrite=args.overwrite)
    print(format_report(report))
    return 0
