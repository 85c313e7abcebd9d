"""Run exported policies with ONNX Runtime, without torch (the serving image has none).

    policies = load_export("exports/spread")            # {agent: OnnxPolicy}, env order
    action = policies["agent_0"].act(obs, seed=0)       # obs [B, d_o] -> action [B, d_a]

Every load checks the graph against the weights_sha256 in its own metadata (so a file copied
alone is checked too) and, when a manifest.json sits beside it, the file's sha256 and metadata
against the manifest. Every request is validated (shape, finiteness) before it reaches ONNX Runtime. Errors are
`RuntimeModelError`s whose message names the file or agent and says what to fix.

On CUDA (provider "cuda") the session runs through I/O binding (`BoundRunner`): per batch size, the
inputs and the output live in device buffers bound once and refilled per call, and ONNX Runtime's
CUDA graphs replay the whole graph for each batch size after its first run.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from omad.core.errors import OmadError
from omad.runtime.schema import (
    ACTION_OUTPUT,
    EXPORT_FORMAT_VERSION,
    MANIFEST_AGENT_FIELDS,
    MANIFEST_FIELDS,
    MANIFEST_NAME,
    NOISE_INPUT,
    OBS_INPUT,
    ModelInfo,
    decode_metadata,
    weights_sha256,
)
from omad.runtime.team import team_id_of

__all__ = ["ModelInfo", "OnnxPolicy", "RuntimeModelError", "load_export", "read_manifest"]

EXECUTION_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class RuntimeModelError(OmadError):
    """An exported model, or a request to it, is unusable; the message says which and why."""


def read_manifest(export_dir: str | Path) -> dict:
    """An export dir's manifest.json, checked for the format version and the agent list."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise RuntimeModelError(f"export dir {export_dir} does not exist")
    path = export_dir / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise RuntimeModelError(
            f"{path}: missing; {export_dir} is not an export dir (make one with `omad export RUN_DIR --out DIR`)"
        ) from None
    except (OSError, ValueError) as err:
        raise RuntimeModelError(f"{path}: unreadable ({err})") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != EXPORT_FORMAT_VERSION:
        raise RuntimeModelError(
            f"{path}: export format version {version!r}, this omad reads version {EXPORT_FORMAT_VERSION}; re-export the run"
        )
    agents = manifest.get("agents")
    if not isinstance(agents, list) or not agents:
        raise RuntimeModelError(f"{path}: no 'agents' list")
    for entry in agents:
        if not isinstance(entry, dict) or not {"file", "sha256", *MANIFEST_AGENT_FIELDS} <= entry.keys():
            raise RuntimeModelError(f"{path}: malformed agent entry {entry!r}")
        # A bare file name: a manifest must not point outside its own directory.
        if not isinstance(entry["file"], str) or Path(entry["file"]).name != entry["file"]:
            raise RuntimeModelError(f"{path}: agent file {entry['file']!r} is not a plain file name")
    return manifest


def load_export(export_dir: str | Path, threads: int = 1, provider: str = "cpu") -> dict[str, OnnxPolicy]:
    """`{agent: OnnxPolicy}` in manifest (env) order; any tampered or mismatching file is refused."""
    manifest = read_manifest(export_dir)
    return {
        entry["agent"]: OnnxPolicy(Path(export_dir) / entry["file"], threads=threads, provider=provider)
        for entry in manifest["agents"]
    }


class OnnxPolicy:
    """One exported agent: `act(obs, noise)` computes `pi(obs[B, d_o], noise[K+1, B, d_a])`.

    threads: ONNX Runtime intra-op threads (1 is fastest for small batches; 0 lets ORT decide).
    provider: "cpu" or "cuda"; "cuda" without a CUDA-enabled onnxruntime is an error, never a fallback.
    Safe to call from several threads at once (ONNX Runtime sessions are; on CUDA, calls take turns).
    `cuda_graph` says whether CUDA graphs are on, `cuda_graph_error` why not where CUDA could not use them.
    """

    def __init__(self, path: str | Path, threads: int = 1, provider: str = "cpu"):
        self.path = Path(path)
        providers = execution_providers(provider)
        try:
            # Hash and load the same bytes, so the file cannot change between the check and the load.
            model_bytes = self.path.read_bytes()
        except FileNotFoundError:
            raise RuntimeModelError(f"{self.path}: model file does not exist") from None
        except OSError as err:
            raise RuntimeModelError(f"{self.path}: cannot read model file ({err})") from None
        sha256 = hashlib.sha256(model_bytes).hexdigest()

        manifest_entry = None
        if (self.path.parent / MANIFEST_NAME).is_file():
            manifest = read_manifest(self.path.parent)
            manifest_entry = self._manifest_entry(manifest)
            if manifest_entry["sha256"] != sha256:
                raise RuntimeModelError(
                    f"{self.path}: sha256 {sha256[:12]}... does not match the manifest "
                    f"({manifest_entry['sha256'][:12]}...): the file was modified or corrupted; re-export"
                )

        # The graph's shapes are static for each batch size (only B varies; `_check_graph_signature`
        # refuses anything else), so on CUDA the graph-capture option is on: one graph per batch size.
        self.cuda_graph, self.cuda_graph_error = provider == "cuda", None
        try:
            self.session = make_session(model_bytes, threads, providers, self.path, cuda_graph=self.cuda_graph)
        except RuntimeModelError as err:
            if not self.cuda_graph:
                raise
            # e.g. nodes ONNX Runtime places on the CPU, which graph capture does not allow
            self.cuda_graph, self.cuda_graph_error = False, str(err)
            self.session = make_session(model_bytes, threads, providers, self.path)
        metadata = self.session.get_modelmeta().custom_metadata_map
        try:
            self.info: ModelInfo = decode_metadata(metadata, sha256)
        except ValueError as err:
            raise RuntimeModelError(f"{self.path}: not an omad export ({err})") from None
        self.team_id = team_id_of(metadata)  # UNKNOWN_TEAM for an export made before team ids existed
        if self.info.format_version != EXPORT_FORMAT_VERSION:
            raise RuntimeModelError(
                f"{self.path}: export format version {self.info.format_version}, "
                f"this omad reads version {EXPORT_FORMAT_VERSION}; re-export the run"
            )
        try:
            actual = weights_sha256(model_bytes)
        except ValueError as err:  # ONNX Runtime parsed the bytes, so this would be a bug; still one line
            raise RuntimeModelError(f"{self.path}: cannot hash the graph ({err})") from None
        if actual != self.info.weights_sha256:
            raise RuntimeModelError(
                f"{self.path}: graph weights sha256 {actual[:12]}... does not match the weights_sha256 in its own "
                f"metadata ({self.info.weights_sha256[:12]}...): the file was modified or corrupted; re-export"
            )
        if manifest_entry is not None:
            self._check_against_manifest(manifest, manifest_entry)
        self._check_graph_signature()
        self.runner = BoundRunner(self.session, self.info, "cuda", self.cuda_graph) if provider == "cuda" else None

    def __repr__(self) -> str:
        return f"OnnxPolicy({str(self.path)!r}, agent={self.info.name!r}, provider={self.session.get_providers()[0]!r})"

    # -- requests ---------------------------------------------------------------------------------
    def act(self, obs, noise=None, seed: int | None = None, zero_noise: bool = False) -> np.ndarray:
        """Actions [B, d_a] float32 for obs [B, d_o] (or [d_o], treated as B = 1).

        noise [K+1, B, d_a] if given; otherwise drawn standard normal from `seed` (or all zeros with
        `zero_noise`, the deterministic policy).
        """
        check_noise_source(self.info.name, noise, seed, zero_noise)
        obs, noise = self.validate(obs, noise)
        if noise is None:
            noise = self.sample_noise(obs.shape[0], seed=seed, zero_noise=zero_noise)
        return self.run(obs, noise)

    def validate(self, obs, noise=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Normalized (contiguous float32, obs 2-D) copies of a request's arrays; noise stays None if
        not given. Raises RuntimeModelError with a message a client can act on."""
        info = self.info
        obs = as_float32(obs, f"{info.name}: obs")
        if obs.ndim == 1:
            obs = obs[None, :]
        if obs.ndim != 2 or obs.shape[1] != info.obs_dim:
            raise RuntimeModelError(
                f"{info.name}: obs must have shape [B, {info.obs_dim}] (or [{info.obs_dim}] for one observation), "
                f"got {list(obs.shape)}"
            )
        batch = obs.shape[0]
        if batch == 0:
            raise RuntimeModelError(f"{info.name}: obs batch is empty")
        check_finite(obs, f"{info.name}: obs")
        if noise is not None:
            noise = as_float32(noise, f"{info.name}: noise")
            expected = (info.noise_steps, batch, info.act_dim)
            if noise.shape != expected:
                raise RuntimeModelError(
                    f"{info.name}: noise must have shape [K+1, B, d_a] = {list(expected)}, got {list(noise.shape)}"
                )
            check_finite(noise, f"{info.name}: noise")
        return obs, noise

    def sample_noise(self, batch: int, seed: int | None = None, zero_noise: bool = False) -> np.ndarray:
        """Standard-normal noise [K+1, batch, d_a] from `np.random.default_rng(seed)`, or zeros."""
        shape = (self.info.noise_steps, batch, self.info.act_dim)
        if zero_noise:
            return np.zeros(shape, np.float32)
        try:
            rng = np.random.default_rng(seed)
        except (TypeError, ValueError) as err:
            raise RuntimeModelError(f"{self.info.name}: bad seed {seed!r} ({err})") from None
        return rng.standard_normal(shape, dtype=np.float32)

    def run(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """The graph itself, without validation: for arrays that came out of `validate` (and were
        perhaps concatenated into one batch: obs on axis 0, noise on axis 1)."""
        if self.runner is not None:
            return self.runner.run(obs, noise)
        return self.session.run([ACTION_OUTPUT], {OBS_INPUT: obs, NOISE_INPUT: noise})[0]

    # -- load-time checks -------------------------------------------------------------------------
    def _manifest_entry(self, manifest: dict) -> dict:
        for entry in manifest["agents"]:
            if entry["file"] == self.path.name:
                return entry
        raise RuntimeModelError(f"{self.path}: not listed in {self.path.parent / MANIFEST_NAME}")

    def _check_against_manifest(self, manifest: dict, entry: dict) -> None:
        expected = {key: manifest.get(key) for key in MANIFEST_FIELDS}
        expected.update({key: entry[key] for key in MANIFEST_AGENT_FIELDS})
        record = self.info.record()
        for key, value in expected.items():
            if record[key] != value:
                raise RuntimeModelError(
                    f"{self.path}: metadata {key} = {record[key]!r} but the manifest says {value!r}"
                )

    def _check_graph_signature(self) -> None:
        """The graph's inputs and output are the ones its metadata describes."""
        info = self.info
        expected = {
            OBS_INPUT: [None, info.obs_dim],
            NOISE_INPUT: [info.noise_steps, None, info.act_dim],
        }
        actual = {
            arg.name: [dim if isinstance(dim, int) else None for dim in arg.shape] for arg in self.session.get_inputs()
        }
        outputs = [arg.name for arg in self.session.get_outputs()]
        if actual != expected or outputs != [ACTION_OUTPUT]:
            raise RuntimeModelError(
                f"{self.path}: graph inputs {actual} / outputs {outputs} do not match its metadata "
                f"(expected inputs {expected}, output [{ACTION_OUTPUT!r}])"
            )


def check_noise_source(agent: str, noise: object, seed: int | None, zero_noise: bool) -> None:
    """A request's noise comes from at most one of: the noise itself, a seed, zero_noise (else drawn)."""
    if (noise is not None) + (seed is not None) + bool(zero_noise) > 1:
        raise RuntimeModelError(f"{agent}: give at most one of noise, seed and zero_noise")


def execution_providers(provider: str) -> list[str]:
    """ONNX Runtime providers for "cpu" or "cuda"; CUDA keeps CPU only for the nodes CUDA lacks."""
    if provider not in EXECUTION_PROVIDERS:
        raise RuntimeModelError(f"unknown provider {provider!r}; choose one of {sorted(EXECUTION_PROVIDERS)}")
    wanted = EXECUTION_PROVIDERS[provider]
    available = ort.get_available_providers()
    if wanted not in available:
        raise RuntimeModelError(
            f"provider {provider!r} asked for, but this onnxruntime has no {wanted} (available: {', '.join(available)}); "
            "on a machine with CUDA install the `gpu` extra (onnxruntime-gpu, instead of the `cpu` extra), or use provider 'cpu'"
        )
    return [wanted] if wanted == "CPUExecutionProvider" else [wanted, "CPUExecutionProvider"]


def make_session(
    model: bytes, threads: int, providers: list[str], path: Path, cuda_graph: bool = False
) -> ort.InferenceSession:
    """A session on `providers` (names; the first must be the one that runs it). cuda_graph: CUDA's
    graph capture on (ONNX Runtime refuses the session if any node would run elsewhere)."""
    if not isinstance(threads, int) or threads < 0:
        raise RuntimeModelError(f"threads must be an integer >= 0 (0: ONNX Runtime decides), got {threads!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning threads burn a core between requests; a server shares its cores with other agents.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    chosen: list = list(providers)
    if cuda_graph:
        chosen[0] = (providers[0], {"enable_cuda_graph": "1"})
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=chosen)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types for unreadable graphs
        raise RuntimeModelError(f"{path}: ONNX Runtime cannot load it ({err})") from None
    if session.get_providers()[0] != providers[0]:
        why = (
            ": onnxruntime-gpu needs the CUDA and cuDNN libraries it was built for on the library path "
            "(ONNX Runtime's warning above names the one missing)"
            if providers[0] == EXECUTION_PROVIDERS["cuda"]
            else ""
        )
        raise RuntimeModelError(
            f"{path}: {providers[0]} failed to initialise (session runs on {session.get_providers()}){why}"
        )
    return session


@dataclass
class Bound:
    """One batch size's device buffers, bound to the session's inputs and output."""

    obs: ort.OrtValue
    noise: ort.OrtValue
    binding: ort.IOBinding
    options: ort.RunOptions


class BoundRunner:
    """`run(obs, noise)` through I/O binding, the inputs and the output in `device` memory ("cuda", or
    "cpu"). Each batch size gets its buffers once; a call copies its arrays into them, so the addresses
    never change, as CUDA graph replay needs (with `graphs`: graph id = batch size, captured by ONNX
    Runtime at that size's second run). One call at a time: the buffers are shared."""

    def __init__(self, session: ort.InferenceSession, info: ModelInfo, device: str, graphs: bool):
        self.session, self.info, self.device, self.graphs = session, info, device, graphs
        self.bound: dict[int, Bound] = {}
        self.lock = threading.Lock()

    def _bind(self, batch: int) -> Bound:
        info, device = self.info, self.device
        obs = ort.OrtValue.ortvalue_from_shape_and_type([batch, info.obs_dim], np.float32, device, 0)
        noise = ort.OrtValue.ortvalue_from_shape_and_type(
            [info.noise_steps, batch, info.act_dim], np.float32, device, 0
        )
        action = ort.OrtValue.ortvalue_from_shape_and_type([batch, info.act_dim], np.float32, device, 0)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(OBS_INPUT, obs)
        binding.bind_ortvalue_input(NOISE_INPUT, noise)
        binding.bind_ortvalue_output(ACTION_OUTPUT, action)
        options = ort.RunOptions()
        if self.graphs:
            options.add_run_config_entry("gpu_graph_id", str(batch))  # ids start at 1: 0 is ONNX Runtime's own
        bound = self.bound[batch] = Bound(obs, noise, binding, options)
        return bound

    def run(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        with self.lock:
            bound = self.bound.get(obs.shape[0]) or self._bind(obs.shape[0])
            bound.obs.update_inplace(obs)
            bound.noise.update_inplace(noise)
            bound.binding.synchronize_inputs()
            self.session.run_with_iobinding(bound.binding, bound.options)
            return bound.binding.copy_outputs_to_cpu()[0]


def as_float32(value, what: str) -> np.ndarray:
    if type(value) is np.ndarray and value.dtype == np.float32 and value.flags.c_contiguous:
        return value  # already what ONNX Runtime takes (a server's decoded request): no copy, no work
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise RuntimeModelError(f"{what}: not a numeric array ({err})") from None
    if array.dtype.kind not in "fiu":
        raise RuntimeModelError(f"{what}: must be numeric, got dtype {array.dtype}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, rejected as non-finite
        return np.ascontiguousarray(array, dtype=np.float32)


def check_finite(array: np.ndarray, what: str) -> None:
    finite = np.isfinite(array)
    if np.count_nonzero(finite) != finite.size:  # (faster than .all() on a request's few values)
        where = np.argwhere(~finite)[:3].tolist()
        raise RuntimeModelError(f"{what}: contains NaN or inf (or values beyond float32) at indices {where}")
