"""The GPU check's steps (bench/gpu_check.sh runs them, each in its own process with its own timeout).

    python -m bench.gpu_check STEP --work DIR [--smoke] [--seconds S]

Steps (each writes DIR/STEP.json; `report` merges them into results.json and results.md):
  info     the machine: GPU, driver, torch and ONNX Runtime builds and providers
  tests    pytest tests/test_cuda.py (for at most --seconds)
  updates  OMAD K = 8 updates/s at HalfCheetah 2x3 sizes (batch 256, 256x256 networks): eager,
           compiled, compiled with CUDA graphs, and CUDA graphs without compiling; synthetic
           batches, as bench/training.py measures (its `synthetic_batch` and `time_updates`)
  serve    in-process ONNX Runtime, CPU against CUDA: merged batch (12 requests) against each
           request alone, bit-identical or the largest difference, and CUDA against CPU; then
           `omad serve` on each provider: latency at 1 closed-loop client (p50, p99) and
           actions/s at 64 (bench/serving.py's policy, server and client loop)
  jobs     `omad sweep --jobs-per-device W` for W = 1, 2, 4, 8: W seeds of a short HalfCheetah run
           (compiled: CUDA graphs) at once; env steps/s per job and summed, between the two
           evaluations (their time left out); the sweeps share --seconds
  train    `omad train` on HalfCheetah 2x3 (defaults, compile auto) for --seconds of wall time, then
           stopped: the last evaluation's return and env steps/s
  report   results.json and results.md from the steps' files

--smoke runs every step on the CPU at tiny sizes (K = 2, 32-unit networks, seconds instead of
minutes; updates without the compiled variant, which takes minutes to compile on a small CPU): it
checks the script, not the machine. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV_ID = "mamujoco:HalfCheetah-2x3"
# The smoke run's sizes: every step on the CPU in seconds.
TINY = {"denoising_steps": 2, "actor_hidden": [32, 32], "critic_hidden": [32, 32], "batch_size": 32}
W_VALUES = (1, 2, 4, 8)


def write(work: Path, step: str, result: dict, row: dict | None = None) -> None:
    """The step's file (rewritten after each row, so a step stopped at its limit keeps its rows); prints
    the new row, or the whole result."""
    (work / f"{step}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(row if row is not None else result, default=str), flush=True)


# -- info --------------------------------------------------------------------------------------------
def step_info(args) -> dict:
    import numpy
    import onnxruntime
    import torch

    info: dict = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "numpy": numpy.__version__,
        "triton": _version("triton"),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count()
        )
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        info["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
    return info


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


# -- tests -------------------------------------------------------------------------------------------------
def step_tests(args) -> dict:
    log = Path(args.work) / "tests.log"
    argv = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    code = run_until(argv, args.seconds, log, signal.SIGTERM)
    lines = log.read_text().splitlines()
    return {
        "exit_code": code,
        "summary": next((line.strip("= ") for line in reversed(lines) if " in " in line), "no summary"),
        "skipped": [line for line in lines if line.startswith("SKIPPED")],
        "failed": [line for line in lines if line.startswith(("FAILED", "ERROR"))],
    }


def run_until(argv: list[str], seconds: float, log_path: Path, stop: signal.Signals) -> int | str:
    """Run `argv` (output to `log_path`) for at most `seconds`; then send `stop` (the trainer and the
    sweep stop cleanly on it), and kill what is left 30 s later. Returns the exit code or "stopped"."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.send_signal(stop)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the workers it started too
                process.wait()
            return "stopped"


# -- updates/s -------------------------------------------------------------------------------------------
def step_updates(args) -> dict:
    import torch

    from bench.training import synthetic_batch, time_updates
    from omad.core.envs import env_family, get_spec
    from omad.train.algos.omad import OMAD
    from omad.train.config import build_config
    from omad.train.layout import AgentLayout

    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    sizes = TINY if args.smoke else {"denoising_steps": 8}
    variants = {"eager": (False, False)}
    if not args.smoke:  # compiling takes minutes on a small CPU (tests/test_omad.py covers it there)
        variants["compiled"] = (True, False)
    if cuda:
        variants.update({"compiled + CUDA graphs": (True, True), "CUDA graphs, not compiled": (False, True)})
    warmup, windows, per_window = (6, 2, 6) if args.smoke else (20, 5, 100)
    spec = get_spec(ENV_ID)
    layout = AgentLayout(spec)
    rows: list[dict] = []
    result = {"device": str(device), "env": ENV_ID, "denoising_steps": sizes["denoising_steps"], "rows": rows}
    for name, (compile_, graphs) in variants.items():
        cfg = build_config({"env": ENV_ID, "compile": compile_, **sizes})
        torch.manual_seed(0)
        value_range = cfg.value_range(env_family(ENV_ID))
        algo = OMAD(cfg, layout, spec.state_dim, value_range, device, cuda_graphs=graphs)
        batch = synthetic_batch(layout, spec.state_dim, cfg.batch_size, device)
        if algo.graphs is not None:  # the trainer's sampler writes into the static batch: no copies per update
            for static, value in zip(algo.graphs.batch, batch):
                static.copy_(value)
            batch = algo.graphs.batch
        first, _ = time_updates(algo, batch, warmup, device)  # compiles and captures
        rates = [per_window / time_updates(algo, batch, per_window, device)[0] for _ in range(windows)]
        rate = statistics.median(rates)
        row = {
            "variant": name,
            "updates_per_s": rate,
            "ms_per_update": 1e3 / rate,
            "warmup_s": first,  # compile and capture included
            "graph_replays": algo.graphs.replays if algo.graphs is not None else 0,
            "graph_failure": algo.graphs.failure if algo.graphs is not None else None,
        }
        rows.append(row)
        result["batch_size"] = cfg.batch_size
        write(Path(args.work), "updates", result, row)
    return result


# -- serving ---------------------------------------------------------------------------------------------
def step_serve(args) -> dict:
    import numpy as np
    import onnxruntime

    from bench.serving import closed_loop, make_bench, omad_server, time_calls
    from omad.runtime.onnx_policy import OnnxPolicy
    from omad.serve.client import act_request

    seconds = 1.0 if args.smoke else 4.0
    providers = ["cpu"]
    result: dict = {"providers": {}, "exactness": {}, "served": []}
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.append("cuda")
    else:
        result["cuda_unavailable"] = (
            f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider "
            f"(providers: {', '.join(onnxruntime.get_available_providers())})"
        )
    with tempfile.TemporaryDirectory() as workdir:
        sizes = {"denoising_steps": 2, "hidden": [16, 16]} if args.smoke else {}  # else the benchmark's policy
        repeats = 300 if args.smoke else 2000
        bench = make_bench(Path(workdir), repeats=repeats, warmup=20, max_seconds=seconds, threads=[1], **sizes)
        rng = np.random.default_rng(0)
        info = OnnxPolicy(bench.onnx_path).info
        obs = rng.standard_normal((12, info.obs_dim), dtype=np.float32)
        noise = rng.standard_normal((info.noise_steps, 12, info.act_dim), dtype=np.float32)
        merged_by = {}
        for provider in providers:
            policy = OnnxPolicy(bench.onnx_path, threads=1, provider=provider)
            merged = policy.run(obs, noise)
            for _ in range(2):  # on CUDA the second call at a batch size replays its captured graph
                alone = np.concatenate([policy.run(obs[i : i + 1], noise[:, i : i + 1]) for i in range(12)])
                merged = policy.run(obs, noise)
            merged_by[provider] = merged
            result["exactness"][provider] = {
                "merged_equals_alone_bitwise": bool(np.array_equal(merged, alone)),
                "max_abs_difference": float(np.abs(merged - alone).max()),
            }
            result["providers"][provider] = {
                "cuda_graph": getattr(policy, "cuda_graph", False),
                "cuda_graph_error": getattr(policy, "cuda_graph_error", None),
                "in_process": {
                    batch: time_calls(lambda o=o, n=n, p=policy: p.act(o, n), bench)
                    for batch, (o, n) in bench.inputs.items()
                },
            }
        if "cuda" in merged_by:
            result["exactness"]["cuda_vs_cpu_max_abs_difference"] = float(
                np.abs(merged_by["cuda"] - merged_by["cpu"]).max()
            )
        request, _ = act_request(bench.inputs[1][0], None, None, False)  # the server draws the noise
        for provider in providers:
            server, addr = omad_server(bench, "--provider", provider, "--batching", "--max-batch", "64")
            with server:
                for clients in (1, 64):
                    stats = asyncio.run(closed_loop(addr, request, clients, seconds))
                    row = {"provider": provider, "clients": clients, **stats}
                    result["served"].append(row)
                    write(Path(args.work), "serve", result, row)
    return result


# -- jobs per device -------------------------------------------------------------------------------------
def steady_rate(records: list[dict]) -> float | None:
    """Env steps/s between the first and the last evaluation record, evaluation and checkpoint time
    left out (a record's wall time since the start is its steps over its env_steps_per_s)."""
    if len(records) < 2:
        return None
    first, last = records[0], records[-1]

    def wall(r: dict) -> float:
        return r["step"] / r["env_steps_per_s"] - r.get("seconds_eval", 0.0) - r.get("seconds_checkpoint", 0.0)

    seconds = wall(last) - wall(first)
    return (last["step"] - first["step"]) / seconds if seconds > 0 else None


def read_records(run_dir: Path) -> list[dict]:
    from omad.core.rundir import RunDir

    path = RunDir(run_dir).metrics
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def step_jobs(args) -> dict:
    from omad.experiments.layout import job_dir

    # two evaluations (at 800 and at the end): the rate between them is the steady one, compile excluded
    settings = {"learning_starts": 400, "eval_every": 800, "eval_episodes": 1, "checkpoint_every": 10**8}
    if args.smoke:
        settings.update({**TINY, "learning_starts": 100, "eval_every": 150, "device": "cpu", "compile": False})
        total, w_values = 300, (1, 2)
    else:
        settings["compile"] = True  # as `compile: auto` chooses for a long run: compiled, CUDA graphs
        total, w_values = 1200, W_VALUES
    rows: list[dict] = []
    result = {"env": ENV_ID, "total_steps_per_job": total, "settings": settings, "rows": rows}
    deadline = time.perf_counter() + args.seconds
    for i, w in enumerate(w_values):
        out = Path(args.work) / f"sweep-w{w}"
        shutil.rmtree(out, ignore_errors=True)
        argv = [sys.executable, "-m", "omad", "sweep", "--envs", ENV_ID, "--seeds", *map(str, range(w))]
        argv += ["--total-steps", str(total), "--out", str(out), "--jobs-per-device", str(w)]
        if args.smoke:  # one thread per job: on a small, shared CPU more make each update far slower
            argv += ["--cpus-per-job", "1"]
        for key, value in settings.items():
            argv += ["--set", f"{key}={json.dumps(value)}"]
        started = time.perf_counter()
        share = (deadline - started) / (len(w_values) - i)  # the time left, shared by the sweeps left
        code = run_until(argv, share, Path(args.work) / f"sweep-w{w}.log", signal.SIGTERM)
        wall = time.perf_counter() - started
        rates = [steady_rate(read_records(job_dir(out, ENV_ID, "omad", seed))) for seed in range(w)]
        known = [r for r in rates if r is not None]
        row = {
            "W": w,
            "exit_code": code,
            "sweep_wall_s": wall,
            "env_steps_per_s_per_job": rates,
            "env_steps_per_s_total": sum(known) if len(known) == w else None,
            "log_tail": (Path(args.work) / f"sweep-w{w}.log").read_text().strip().splitlines()[-3:],
        }
        rows.append(row)
        write(Path(args.work), "jobs", result, row)
    return result


# -- a training run --------------------------------------------------------------------------------------
def step_train(args) -> dict:
    out = Path(args.work) / "train"
    shutil.rmtree(out, ignore_errors=True)
    fields: dict = {"total_steps": 10**8, "eval_every": 10_000, "eval_episodes": 2, "checkpoint_every": 10**9}
    fields["progress"] = False
    if args.smoke:
        fields.update({**TINY, "learning_starts": 100, "eval_every": 200, "eval_episodes": 1, "device": "cpu"})
        fields.update({"compile": False, "torch_threads": 1})  # `auto` would compile for the large budget
    argv = [sys.executable, "-m", "omad", "train", "--env", ENV_ID, "--out", str(out)]
    for key, value in fields.items():
        argv += [f"--{key.replace('_', '-')}", json.dumps(value)]
    started = time.perf_counter()
    code = run_until(argv, args.seconds, Path(args.work) / "train.log", signal.SIGINT)  # stops at the budget
    wall = time.perf_counter() - started
    records = read_records(out)
    last = records[-1] if records else {}
    keys = ("step", "updates", "compiled", "eval_return_mean", "eval_return_std", "eval_deterministic_return_mean")
    return {
        "env": ENV_ID,
        "exit_code": code,
        "wall_s": wall,
        "evaluations": len(records),
        "last": {k: last.get(k) for k in keys},
        "env_steps_per_s_since_start": last.get("env_steps_per_s"),  # compile and evaluations included
        "env_steps_per_s_steady": steady_rate(records),
        "updates_per_s_since_start": last.get("updates_per_s"),
        "seconds": {k: last.get(f"seconds_{k}") for k in ("env", "update", "eval", "checkpoint")},
        "returns": [(r["step"], r.get("eval_return_mean")) for r in records],
        "log_tail": (Path(args.work) / "train.log").read_text().strip().splitlines()[-5:],
    }


# -- the report ------------------------------------------------------------------------------------------
def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def step_report(args) -> dict:
    work = Path(args.work)
    steps = {}
    for name in ("setup", "info", "tests", "updates", "serve", "jobs", "train"):
        path = work / f"{name}.json"
        steps[name] = json.loads(path.read_text()) if path.is_file() else None
    status = {}
    status_file = work / "status.tsv"
    if status_file.is_file():
        for line in status_file.read_text().splitlines():
            name, code, seconds = line.split("\t")
            status[name] = {"exit_code": int(code), "seconds": float(seconds)}
    result = {"smoke": args.smoke, "status": status, **steps}
    lines = [f"# GPU check{' (smoke run on the CPU)' if args.smoke else ''}", ""]
    info = steps["info"] or {}
    lines.append(
        f"Machine: {info.get('gpu', 'no GPU')}, {info.get('cpus')} CPUs; torch {info.get('torch')} "
        f"(CUDA {info.get('torch_cuda')}), onnxruntime {info.get('onnxruntime')} "
        f"({', '.join(info.get('onnxruntime_providers', []))})."
    )
    lines += ["", "| step | exit code | seconds |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['exit_code']} | {v['seconds']:.0f} |" for k, v in status.items()]
    if steps["tests"]:
        lines += ["", f"Tests (tests/test_cuda.py): {steps['tests'].get('summary', '-')}"]
    if steps["updates"]:
        u = steps["updates"]
        lines += [
            "",
            f"OMAD K = {u['denoising_steps']} updates on {u['device']}, {u['env']} sizes, batch {u['batch_size']}:",
            "",
            "| variant | updates/s | ms/update | warm-up s (compile, capture) |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['variant']} | {r['updates_per_s']:.0f} | {r['ms_per_update']:.2f} | {r['warmup_s']:.0f} |"
            for r in u["rows"]
        ]
    if steps["serve"]:
        s = steps["serve"]
        lines += ["", "Serving, merged batch of 12 against each request alone (in-process ONNX Runtime):", ""]
        lines += ["| provider | bit-identical | largest difference |", "|---|---|---:|"]
        for provider, e in s["exactness"].items():
            if isinstance(e, dict):
                lines.append(f"| {provider} | {e['merged_equals_alone_bitwise']} | {e['max_abs_difference']:.2e} |")
        if "cuda_vs_cpu_max_abs_difference" in s["exactness"]:
            lines.append(
                f"\nCUDA against CPU, largest difference: {s['exactness']['cuda_vs_cpu_max_abs_difference']:.2e}"
            )
        if s.get("cuda_unavailable"):
            lines.append(f"\nCUDA serving not measured: {s['cuda_unavailable']}")
        lines += ["", "| provider | clients | actions/s | p50 (us) | p99 (us) |", "|---|---:|---:|---:|---:|"]
        lines += [
            f"| {r['provider']} | {r['clients']} | {r['actions_per_s']:.0f} | {r['median_us']:.0f} | {r['p99_us']:.0f} |"
            for r in s["served"]
        ]
    if steps["jobs"]:
        j = steps["jobs"]
        lines += ["", f"`omad sweep --jobs-per-device W`, {j['total_steps_per_job']} steps per job:", ""]
        lines += ["| W | env steps/s per job | env steps/s, all jobs | sweep wall s |", "|---:|---|---:|---:|"]
        for r in j["rows"]:
            per_job = ", ".join(fmt(x, ".0f") for x in r["env_steps_per_s_per_job"])
            lines.append(
                f"| {r['W']} | {per_job} | {fmt(r['env_steps_per_s_total'], '.0f')} | {r['sweep_wall_s']:.0f} |"
            )
    if steps["train"]:
        t = steps["train"]
        last = t["last"]
        lines += [
            "",
            (
                f"Training {t['env']} for {t['wall_s']:.0f} s: {fmt(last.get('step'), 'd')} env steps, "
                f"{fmt(last.get('updates'), 'd')} updates (compiled: {last.get('compiled')}); last evaluation "
                f"return {fmt(last.get('eval_return_mean'))} +- {fmt(last.get('eval_return_std'))}; env steps/s "
                f"{fmt(t['env_steps_per_s_since_start'])} since the start, {fmt(t['env_steps_per_s_steady'])} "
                "between evaluations (their time left out)."
            ),
        ]
    markdown = "\n".join(lines) + "\n"
    (work / "results.md").write_text(markdown)
    (work / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(markdown)
    return {}


STEPS = {
    "info": step_info,
    "tests": step_tests,
    "updates": step_updates,
    "serve": step_serve,
    "jobs": step_jobs,
    "train": step_train,
    "report": step_report,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--work", required=True, help="directory of the steps' JSON files")
    parser.add_argument("--smoke", action="store_true", help="on the CPU, at tiny sizes")
    parser.add_argument("--seconds", type=float, default=180.0, help="tests, train, jobs: wall seconds at most")
    args = parser.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    result = STEPS[args.step](args)
    if args.step != "report":
        write(Path(args.work), args.step, result)
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    # Leave without interpreter shutdown: gRPC's threads can hold it up long after the step's work is
    # written, and the step's time limit would count that.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
