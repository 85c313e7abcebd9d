"""What the benchmark scripts share: where results go, and how a result records the command that made it
(paths relative to the repository root, so result files carry no absolute paths)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def repo_relative(path: str | os.PathLike) -> str:
    """`path` as result files record it: relative to the repository root (the scripts' working directory)."""
    return os.path.relpath(Path(path).resolve(), REPO) if os.path.isabs(path) else str(path)


def command(module: str, argv: list[str]) -> str:
    """`python -m MODULE ARGS` as run from the repository root; absolute paths among ARGS (also in
    --flag=PATH) are made relative to it."""

    def shown(arg: str) -> str:
        flag, eq, value = arg.partition("=")
        if eq and flag.startswith("--") and os.path.isabs(value):
            return f"{flag}={repo_relative(value)}"
        return repo_relative(arg) if os.path.isabs(arg) else arg

    return shlex.join(["python", "-m", module, *map(shown, argv)])
