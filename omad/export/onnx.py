"""Export a run dir's per-agent policies to ONNX, and prove each graph computes what torch does.

Imports torch (tracing needs it), so only `omad export` imports this module; serving uses
`omad.runtime.onnx_policy`. Every export is verified before it becomes visible:
  1. the graph holds no Loop / If / Scan / Random* node (the K steps are unrolled, noise is an input);
  2. `onnx.checker.check_model(full_check=True)`;
  3. ONNX Runtime vs the torch module on random obs and noise at batch 1 and 64, max abs error <= 1e-5;
  4. the whole dir loads through the runtime (manifest, sha256, metadata).
Once every agent passed, each graph is stamped with the team id (omad.runtime.team: the hash of
all agents' weights hashes), which leaves the weights hash as it was.
It is written into a temporary sibling of the target and renamed at the end, so a failed check
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.shape_inference
import torch

from omad.core.agent import AgentContract
from omad.core.errors import OmadError
from omad.core.rundir import RunDir, actor_file
from omad.export.triton import BATCH_MAJOR_NOISE_LAYOUT, TRITON_DIR, write_triton_repository
from omad.runtime.onnx_policy import OnnxPolicy, load_export
from omad.runtime.schema import (
    ACTION_OUTPUT,
    BATCH_AXIS,
    DEFAULT_OPSET,
    EXPORT_FORMAT_VERSION,
    FORBIDDEN_OP_PREFIX,
    FORBIDDEN_OP_TYPES,
    MANIFEST_NAME,
    NOISE_INPUT,
    NOISE_LAYOUT,
    OBS_INPUT,
    ONNX_SUFFIX,
    ModelInfo,
    build_manifest,
    encode_metadata,
    metadata_key,
    weights_sha256,
)
from omad.runtime.team import stamp_team_id, team_id
from omad.train.checkpoint import CheckpointError, latest_checkpoint, sha256_file
from omad.train.policies import AgentPolicy, load_policies, load_spec

PARITY_TOLERANCE = 1e-5
PARITY_BATCHES = (1, 64)
PARITY_SEED = 0


class ExportError(OmadError):
    """An export cannot be made or failed verification (`export_run` then leaves nothing behind)."""


@dataclass(frozen=True)
class AgentReport:
    agent: str
    checker_ok: bool
    max_error: dict[int, float]  # batch size -> max |ORT - torch|
    size_bytes: int
    sha256: str
    info: ModelInfo


@dataclass(frozen=True)
class ExportReport:
    out: Path
    env_id: str
    algo: str
    opset: int
    agents: list[AgentReport]
    triton_dir: Path | None


# -- one policy ---------------------------------------------------------------------------------
def export_policy(
    policy: AgentPolicy,
    path: Path,
    *,
    env_id: str,
    algo: str,
    source_run: str,
    checkpoint_sha256: str = "",
    source_checkpoint: str = "",
    opset: int = DEFAULT_OPSET,
) -> AgentReport:
    """Write one agent's verified graph to `path` (an AgentPolicy-like module: name, obs_dim,
    act_dim, denoising_steps, action_low/high, kind). checkpoint_sha256: of the actor file it was
    traced from, kept in the metadata as provenance."""
    path = Path(path)
    model = trace_to_onnx(policy, opset)
    prepackable_matmul_weights(model)
    forbidden = forbidden_ops(model)
    if forbidden:
        raise ExportError(
            f"{policy.name}: the graph contains forbidden ops {forbidden} (it must be loop-free and noise-free)"
        )
    model.doc_string = f"omad policy of {policy.name} ({env_id}, {algo}): action = pi(obs, noise). {NOISE_LAYOUT}"
    info = ModelInfo.describing(
        AgentContract.of(policy, env_id),
        algo=algo,
        sha256="",  # known once the file exists
        weights_sha256=weights_sha256(model.SerializeToString()),  # everything but the metadata, set next
        format_version=EXPORT_FORMAT_VERSION,
        source_run=source_run,
    )
    onnx.helper.set_model_props(
        model,
        encode_metadata(
            info,
            noise_layout=NOISE_LAYOUT,
            actor_kind=policy.kind,
            source_checkpoint=source_checkpoint,
            checkpoint_sha256=checkpoint_sha256,
        ),
    )
    onnx.save_model(model, path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:  # noqa: BLE001 - ValidationError or InferenceError
        raise ExportError(f"{info.name}: onnx.checker rejects the graph ({one_line(err)})") from None
    max_error = parity_errors(policy, OnnxPolicy(path))
    for batch, error in max_error.items():
        if not error <= PARITY_TOLERANCE:  # also catches NaN
            raise ExportError(
                f"{info.name}: ONNX Runtime differs from torch by {error:.3g} at batch {batch} "
                f"(tolerance {PARITY_TOLERANCE:g})"
            )
    sha256 = sha256_file(path)
    return AgentReport(info.name, True, max_error, path.stat().st_size, sha256, replace(info, sha256=sha256))


def trace_to_onnx(policy: AgentPolicy, opset: int) -> onnx.ModelProto:
    """The policy as an ONNX graph with the K steps unrolled and a dynamic batch axis.

    The dynamo exporter constant-folds everything that does not depend on obs or noise (time
    embeddings, learned step sizes), so the graph holds only the per-request arithmetic.
    """
    # Batch 2 as the example: torch.export specialises dimensions of size 1.
    obs = torch.zeros(2, policy.obs_dim)
    noise = torch.zeros(policy.denoising_steps + 1, 2, policy.act_dim)
    batch = torch.export.Dim(BATCH_AXIS)
    try:
        with quiet_torch_exporter():
            program = torch.onnx.export(
                policy.eval(),
                (obs, noise),
                input_names=[OBS_INPUT, NOISE_INPUT],
                output_names=[ACTION_OUTPUT],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes={"obs": {0: batch}, "noise": {1: batch}},
                optimize=True,
                verbose=False,
            )
    except Exception as err:  # noqa: BLE001 - the exporter fails in many ways; each is one line for the user
        raise ExportError(f"{policy.name}: torch.onnx.export failed at opset {opset} ({one_line(err)})") from None
    if program is None:
        raise ExportError(f"{policy.name}: torch.onnx.export returned no program")
    model = program.model_proto
    actual_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if actual_opset != opset:  # the exporter falls back to its own opset when it cannot convert
        raise ExportError(f"{policy.name}: cannot export at opset {opset} (the exporter produced opset {actual_opset})")
    strip_debug_info(model)
    return model


def prepackable_matmul_weights(model: onnx.ModelProto) -> int:
    """Store each MatMul weight [1, K, N] (torch's batched matmul of a stacked actor) as [K, N].

    MatMul(A, W) is the same function either way when A has rank >= 3 (a leading 1 broadcasts like
    no axis), but ONNX Runtime prepacks only 2-D constant weights, and the packed GEMM computes
    every row with the same instruction sequence whatever the batch. Unpacked, a batch of one takes
    MLAS's single-row kernel, which rounds differently from the batched one, so a request's actions
    would depend on whether the server merged it with others. Prepacked weights are also faster at
    batch >= 2. Returns how many weights were reshaped.
    """
    graph = model.graph
    ranks = {
        value.name: len(value.type.tensor_type.shape.dim)
        for value in [*onnx.shape_inference.infer_shapes(model).graph.value_info, *graph.input]
        if value.type.tensor_type.HasField("shape")
    }
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    reshaped = 0
    for weight in graph.initializer:
        uses = users.get(weight.name, [])
        if (
            len(weight.dims) == 3
            and weight.dims[0] == 1
            and uses
            and all(
                n.op_type == "MatMul" and list(n.input).index(weight.name) == 1 and ranks.get(n.input[0], 0) >= 3
                for n in uses
            )
        ):
            array = onnx.numpy_helper.to_array(weight)
            weight.CopyFrom(onnx.numpy_helper.from_array(array.reshape(array.shape[1:]), weight.name))
            reshaped += 1
            for value in [v for v in graph.value_info if v.name == weight.name]:  # a stale 3-D shape
                graph.value_info.remove(value)
    return reshaped


def batch_major_graph(model_bytes: bytes) -> bytes:
    """For Triton, which batches on axis 0: the standard graph with noise taken as [B, K+1, d_a] and
    transposed to [K+1, B, d_a] inside. Its metadata says so (noise_layout), and its weights_sha256
    is recomputed for the new graph, so the file stays self-consistent."""
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    (noise,) = [value for value in graph.input if value.name == NOISE_INPUT]
    steps, _batch, act_dim = (d.dim_value for d in noise.type.tensor_type.shape.dim)
    inner = NOISE_INPUT + "_step_major"
    for node in graph.node:
        node.input[:] = [inner if name == NOISE_INPUT else name for name in node.input]
    graph.node.insert(
        0, onnx.helper.make_node("Transpose", [NOISE_INPUT], [inner], perm=[1, 0, 2], name="noise_to_step_major")
    )
    noise.CopyFrom(
        onnx.helper.make_tensor_value_info(NOISE_INPUT, onnx.TensorProto.FLOAT, [BATCH_AXIS, steps, act_dim])
    )
    props = {p.key: p.value for p in model.metadata_props}
    props[metadata_key("noise_layout")] = BATCH_MAJOR_NOISE_LAYOUT
    props[metadata_key("weights_sha256")] = weights_sha256(model.SerializeToString())
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def strip_debug_info(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node annotations (torch stack traces, node names): they are most of
    the file's size and hold paths of the exporting machine."""
    graph = model.graph
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in [*graph.input, *graph.output, *graph.value_info]:
        del value.metadata_props[:]


@contextlib.contextmanager
def quiet_torch_exporter():
    """The exporter warns about things irrelevant here (torchvision ops, deprecations); real
    problems surface as exceptions or in the checks that follow."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def one_line(err: Exception) -> str:
    """An exception as one line for the CLI (exporter and checker messages span many)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def forbidden_ops(model: onnx.ModelProto) -> list[str]:
    """Forbidden node types anywhere in the model: main graph, subgraphs and local functions."""
    found = set()
    pending = [list(model.graph.node)] + [list(f.node) for f in model.functions]
    while pending:
        for node in pending.pop():
            if node.op_type in FORBIDDEN_OP_TYPES or node.op_type.startswith(FORBIDDEN_OP_PREFIX):
                found.add(node.op_type)
            for attr in node.attribute:  # If / Loop bodies and any other nested graph
                if attr.HasField("g"):
                    pending.append(list(attr.g.node))
                pending.extend(list(graph.node) for graph in attr.graphs)
    return sorted(found)


def parity_errors(policy: AgentPolicy, exported: OnnxPolicy, seed: int = PARITY_SEED) -> dict[int, float]:
    """Max |ONNX Runtime - torch| over random standard-normal obs and noise, per batch size."""
    rng = np.random.default_rng(seed)
    errors = {}
    for batch in PARITY_BATCHES:
        obs = rng.standard_normal((batch, policy.obs_dim), dtype=np.float32)
        noise = rng.standard_normal((policy.denoising_steps + 1, batch, policy.act_dim), dtype=np.float32)
        with torch.no_grad():
            expected = policy(torch.from_numpy(obs), torch.from_numpy(noise)).numpy()
        actual = exported.act(obs, noise)
        if actual.shape != expected.shape:
            raise ExportError(
                f"{policy.name}: ONNX output shape {actual.shape} != torch {expected.shape} at batch {batch}"
            )
        errors[batch] = float(np.abs(actual - expected).max())
    return errors


# -- a run dir ----------------------------------------------------------------------------------
def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    triton: bool = False,
    overwrite: bool = False,
) -> ExportReport:
    """Export every agent of a run dir's latest checkpoint into the export dir `out`."""
    run_dir, out = Path(run_dir).resolve(), Path(out).resolve()
    check_target(out, overwrite)
    checkpoint = latest_checkpoint(
        run_dir, files=[]
    )  # missing run dir, other format version (load_policies hashes the actors)
    spec = load_spec(run_dir)
    algo = read_algo(run_dir)
    policies = load_policies(run_dir)
    if latest_checkpoint(run_dir, files=[]) != checkpoint:
        raise ExportError(
            f"{run_dir}: a new checkpoint appeared during the export (training still running?); run it again"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; an export is meant to be read by servers
    try:
        reports = []
        for name, policy in policies.items():
            reports.append(
                export_policy(
                    policy,
                    staging / (name + ONNX_SUFFIX),
                    env_id=spec.reference,  # the env with the options it was trained with: what eval reads back
                    algo=algo,
                    source_run=str(run_dir),
                    checkpoint_sha256=sha256_file(checkpoint / actor_file(name)),
                    source_checkpoint=checkpoint.name,
                    opset=opset,
                )
            )
        team = team_id([report.info.weights_sha256 for report in reports])
        reports = [stamp_team(report, staging / (report.agent + ONNX_SUFFIX), team) for report in reports]
        infos = [report.info for report in reports]
        (staging / MANIFEST_NAME).write_text(json.dumps(build_manifest(infos, opset), indent=2) + "\n")
        load_export(staging)  # the dir as a server will see it
        if triton:
            graphs = {
                info.name: batch_major_graph((staging / (info.name + ONNX_SUFFIX)).read_bytes()) for info in infos
            }
            write_triton_repository(staging, infos, graphs)
        replace_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
    return ExportReport(
        out=out,
        env_id=spec.reference,
        algo=algo,
        opset=opset,
        agents=reports,
        triton_dir=out / TRITON_DIR if triton else None,
    )


def stamp_team(report: AgentReport, path: Path, team: str) -> AgentReport:
    """Write the team id into an exported graph's metadata; of its hashes only the file's own changes."""
    path.write_bytes(stamp_team_id(path.read_bytes(), team))
    sha256 = sha256_file(path)
    return replace(report, size_bytes=path.stat().st_size, sha256=sha256, info=replace(report.info, sha256=sha256))


def check_target(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise ExportError(f"{out} already exists; pass --overwrite to replace it")
    # --overwrite deletes the old dir: only ever an earlier export (or an empty dir), never a run dir.
    if not out.is_dir() or not ((out / MANIFEST_NAME).is_file() or not any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an export dir (no {MANIFEST_NAME}); refusing to replace it")


def read_algo(run_dir: Path) -> str:
    path = RunDir(run_dir).config
    try:
        return str(json.loads(path.read_text())["algo"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: missing or unreadable run config ({err})") from None


def replace_dir(staging: Path, out: Path) -> None:
    """Put `staging` at `out`, replacing an old export; each step is one rename."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old)


def format_report(report: ExportReport) -> str:
    batches = PARITY_BATCHES
    header = ["agent", "checker"] + [f"max err B={b}" for b in batches] + ["size", "sha256"]
    rows = [
        [a.agent, "ok" if a.checker_ok else "FAILED"]
        + [f"{a.max_error[b]:.2e}" for b in batches]
        + [f"{a.size_bytes / 1024:.1f} KiB", a.sha256[:12]]
        for a in report.agents
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        f"exported {len(report.agents)} agents of {report.env_id} ({report.algo}, opset {report.opset}) to {report.out}",
        "  ".join(h.ljust(w) for h, w in zip(header, widths)),
    ]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.append(f"parity ONNX Runtime vs torch: all within {PARITY_TOLERANCE:g}")
    lines.append(f"team id {team_id([a.info.weights_sha256 for a in report.agents])}")
    if report.triton_dir:
        lines.append(f"Triton model repository: {report.triton_dir}")
    return "\n".join(lines)
