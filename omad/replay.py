"""`omad replay FILE`: recompute every action of an evaluation trace and report the largest difference.

The trace (`omad eval --trace FILE`, format in omad.runtime.trace) holds each step's observations and
noise. Replay feeds them, step by step and in the same batches, to a policy source (servers, an
export or a run dir) and compares its actions with the recorded ones. The verdict is the largest
absolute difference over every step, agent and action entry, against a tolerance:

- 0 (bit-identical) when both the trace and the replay ran ONNX Runtime (in-process or served);
- 1e-5 when either side is the torch run dir, the bound `omad export` verifies ONNX against torch.

`--tolerance` sets another. The exit status is 0 within it, 1 past it; 2 for a trace or source that
cannot be used. The model sha256 each side used is shown beside the difference: a changed model
explains a difference, and the same model with a difference points at the runtime.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from omad.core.errors import OmadError
from omad.evaluation import PolicySource, add_connection_flags, add_source_flags, source_from_args
from omad.runtime.team import ModelRef
from omad.runtime.trace import Trace, load_trace

ONNX_KINDS = frozenset({"onnx", "grpc"})  # sources that run the exported graph on ONNX Runtime
TORCH_TOLERANCE = 1e-5  # omad.export.onnx.PARITY_TOLERANCE: what an export guarantees against torch


class ReplayError(OmadError):
    pass


@dataclass(frozen=True)
class AgentReplay:
    agent: str
    max_abs_diff: float
    worst_step: int
    recorded_models: list[str]  # sha256 of each model the trace saw answering this agent
    replay_models: list[str]  # and those that answered the replay


@dataclass(frozen=True)
class ReplayResult:
    trace_source: str
    replay_source: str
    steps: int
    agents: list[AgentReplay]
    tolerance: float

    @property
    def largest(self) -> float:
        return max(a.max_abs_diff for a in self.agents)

    @property
    def ok(self) -> bool:
        return self.largest <= self.tolerance  # (NaN compares False: a NaN difference fails)


def default_tolerance(trace_kind: str, replay_kind: str) -> float:
    """0 between two ONNX Runtime sources, else the export's bound against torch."""
    return 0.0 if trace_kind in ONNX_KINDS and replay_kind in ONNX_KINDS else TORCH_TOLERANCE


def check_agents(trace: Trace, source: PolicySource) -> None:
    """The source's agents are the trace's, in the same order, with the same sizes and noise steps."""
    mine = [(a.name, a.obs_dim, a.act_dim, a.noise_steps) for a in trace.agents]
    theirs = [(a.contract.name, a.contract.obs_dim, a.contract.act_dim, a.contract.noise_steps) for a in source.agents]
    if mine != theirs:
        raise ReplayError(
            f"the {source.kind} source's agents {theirs} are not the trace's {mine} (name, obs_dim, act_dim, noise steps)"
        )


def replay(trace: Trace, source: PolicySource, tolerance: float | None = None) -> ReplayResult:
    """Recompute every step of `trace` with `source` (closed afterwards) and compare the actions."""
    try:
        check_agents(trace, source)
        n = len(trace.agents)
        worst = np.zeros(n)
        worst_step = np.zeros(n, np.int64)
        seen: list[list[ModelRef]] = [[] for _ in range(n)]
        for t in range(trace.steps):
            obs, noise, recorded = trace.step(t)
            actions = source.act(obs, noise)
            for i in range(n):
                diff = np.abs(np.asarray(actions[i], np.float64) - recorded[i])
                largest = float(diff.max()) if np.isfinite(diff).all() else float("inf")
                if largest > worst[i] or t == 0:
                    worst[i], worst_step[i] = largest, t
                model = source.model_ref(i)
                if model not in seen[i]:
                    seen[i].append(model)
    finally:
        source.close()
    trace_kind = str(trace.meta.get("source", ""))
    return ReplayResult(
        trace_source=trace_kind,
        replay_source=source.kind,
        steps=trace.steps,
        agents=[
            AgentReplay(
                agent=a.name,
                max_abs_diff=float(worst[i]),
                worst_step=int(worst_step[i]),
                recorded_models=[m.sha256 for m in a.models],
                replay_models=[m.sha256 for m in seen[i]],
            )
            for i, a in enumerate(trace.agents)
        ],
        tolerance=default_tolerance(trace_kind, source.kind) if tolerance is None else tolerance,
    )


def format_result(result: ReplayResult) -> str:
    def models(shas: list[str]) -> str:
        return ",".join(s[:12] for s in shas) or "-"

    head = f"replayed {result.steps} steps of {len(result.agents)} agents"
    lines = [
        f"{head} (trace from {result.trace_source}, replayed on {result.replay_source})",
        f"{'agent':<12}{'max |diff|':>12}  {'at step':>7}  {'trace model':<14}{'replay model':<14}",
    ]
    comparable = result.trace_source in ONNX_KINDS and result.replay_source in ONNX_KINDS  # both hash .onnx files
    for a in result.agents:
        same = "  (models differ)" if comparable and a.recorded_models != a.replay_models else ""
        lines.append(
            f"{a.agent:<12}{a.max_abs_diff:>12.3g}  {a.worst_step:>7}  "
            f"{models(a.recorded_models):<14}{models(a.replay_models):<14}{same}"
        )
    verdict = "ok" if result.ok else "FAILED"
    lines.append(f"largest difference {result.largest:.3g} (tolerance {result.tolerance:g}): {verdict}")
    return "\n".join(lines)


# -- `omad replay` --------------------------------------------------------------------------------
def configure_replay(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Recompute every action of an `omad eval --trace` file from its recorded observations and noise, and report "
        "the largest difference; exit 1 past the tolerance (0 between ONNX Runtime sources, 1e-5 against torch)."
    )
    p.add_argument("trace", metavar="FILE", help="trace written by `omad eval --trace`")
    add_source_flags(p)
    p.add_argument(
        "--tolerance", type=float, default=None, help="largest allowed difference; default: 0, or 1e-5 with torch"
    )
    p.add_argument("--json", metavar="PATH", help="write the result as JSON here")
    add_connection_flags(p)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (--export-dir)")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    if args.tolerance is not None and not args.tolerance >= 0:
        raise ReplayError(f"--tolerance must be >= 0, got {args.tolerance}")
    trace = load_trace(args.trace)
    result = replay(trace, source_from_args(args), args.tolerance)
    print(format_result(result))
    if args.json:
        Path(args.json).write_text(
            json.dumps({**asdict(result), "largest": result.largest, "ok": result.ok}, indent=2) + "\n"
        )
    return 0 if result.ok else 1
