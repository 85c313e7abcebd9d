"""`omad sweep`: train every (env, algo, seed) job of a grid into its own run dir, locally in a pool of
worker processes or as Ray tasks, and pick up where a previous invocation stopped.

Layout of a sweep dir:
    sweep.json                                  the envs, algos, seeds, budget, shared config, jobs
    <env>/<algo>/seed-<S>/                      one ordinary run dir per job (`omad train` layout)
    <env>/<algo>/seed-<S>/DONE.json             written when the job's train() returned: budget + final record
    <env>/<algo>/seed-<S>.log                   the job's own output (evaluation lines, tracebacks)
where <env> is the env id made filesystem-safe (`mpe:simple_spread_v3` -> `mpe_simple_spread_v3`).

Re-running a sweep skips jobs whose DONE.json covers the budget, resumes jobs that have a checkpoint
(exactly, from the last one) and starts the others afresh. A failing job does not stop the others.
Only plain dicts and strings cross process boundaries; nothing is written with pickle.

With `--jobs-per-device W`, W jobs share each CUDA device (each local worker sees one device through
CUDA_VISIBLE_DEVICES; on Ray each task asks for 1/W of a GPU), or W jobs share the CPU when the jobs
run there. A job rarely keeps a GPU busy (acting waits for the environments, small updates wait for
their launches), so W > 1 raises the seeds trained per hour until the GPU or the cores run out: pick W
by measuring, as bench/gpu_check.py does for W = 1, 2, 4 and 8.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from omad.core.envs.registry import UnknownEnvError, check_env_id
from omad.core.errors import OmadError
from omad.core.rundir import RunDir
from omad.experiments.layout import DONE_FILE, SWEEP_FILE, job_dir, read_done
from omad.train.config import ALGOS, build_config, fields_for, load_config_file

FORMAT_VERSION = 1
# Fields that change neither what is trained nor its result: a re-run may set them differently.
_NEUTRAL_FIELDS = ("progress", "torch_threads")


class SweepError(OmadError, ValueError):
    pass


@dataclass(frozen=True)
class Job:
    env: str
    algo: str
    seed: int
    dir: str  # the run dir, absolute
    config: dict  # every TrainConfig field, validated

    @property
    def name(self) -> str:
        return f"{self.env} {self.algo} seed {self.seed}"


def is_done(job: Job) -> bool:
    done = read_done(Path(job.dir))
    return done is not None and done.get("total_steps", -1) >= job.config["total_steps"]


def has_checkpoint(run_dir: Path) -> bool:
    return RunDir(run_dir).has_checkpoint()


def _unique(values: list) -> list:
    return list(dict.fromkeys(values))


def plan_jobs(
    out: Path,
    envs: list[str],
    algos: list[str],
    seeds: list[int],
    base: dict[str, Any] | None = None,
) -> list[Job]:
    """Validate everything and build the job list; raises SweepError/ConfigError before anything runs."""
    envs, algos, seeds = _unique(envs), _unique(algos), _unique(seeds)
    if not (envs and algos and seeds):
        raise SweepError("a sweep needs at least one env, one algo and one seed")
    for env in envs:
        try:
            check_env_id(env)
        except UnknownEnvError as err:
            raise SweepError(str(err)) from None
    for algo in algos:
        if algo not in ALGOS:
            raise SweepError(f"unknown algo {algo!r}; valid algos: {', '.join(ALGOS)}")
    base = dict(base or {})
    for key in ("env", "algo", "seed"):
        if key in base:
            raise SweepError(f"config field '{key}' is set per job by --{key}s; remove it from --config/--set")
    out = Path(out).resolve()
    jobs = []  # seed-major: a sweep cut off midway holds every algorithm at the same seeds
    for env in envs:
        for seed in seeds:
            for algo in algos:
                # --config/--set hold fields of any of the sweep's algos; each job takes its algo's
                cfg = build_config(fields_for(algo, base, algos), env=env, algo=algo, seed=seed)
                jobs.append(Job(env, algo, seed, str(job_dir(out, env, algo, seed)), cfg.model_dump()))
    return jobs


# -- one job (runs in a worker process or a Ray task) ----------------------------------------------
def run_job(job: dict) -> dict:
    """Train one job to its budget: resume from its checkpoint if it has one, else start afresh.
    Returns a plain dict; never raises for a failed training (the error is in the result)."""
    run_dir = Path(job["dir"])
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    resumed_from = None
    with (
        open(run_dir.parent / f"{run_dir.name}.log", "a") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        try:
            from omad.train.trainer import train

            cfg = build_config(job["config"])
            (run_dir / DONE_FILE).unlink(missing_ok=True)
            resume = has_checkpoint(run_dir)
            if resume:  # train() verifies the whole checkpoint; here only its step is needed
                resumed_from = RunDir(run_dir).latest_step()
            what = f"resume from step {resumed_from}" if resume else "start"
            print(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {what}", flush=True)
            record = train(cfg, run_dir, resume=resume, overwrite=not resume)
            done = {"total_steps": cfg.total_steps, "final": record, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            (run_dir / DONE_FILE).write_text(json.dumps(done, indent=2) + "\n")
            return {
                "status": "done",
                "resumed_from": resumed_from,
                "record": record,
                "seconds": time.perf_counter() - t0,
            }
        except Exception as err:  # noqa: BLE001 - any failure is reported, the sweep goes on
            traceback.print_exc()
            return {
                "status": "failed",
                "resumed_from": resumed_from,
                "error": f"{type(err).__name__}: {err}",
                "seconds": time.perf_counter() - t0,
            }


def _job_process(job: dict, threads: int, conn, cuda_device: str | None = None) -> None:
    """Entry point of a local worker process (spawned): cap the thread pools, and show it its CUDA
    device alone, before torch loads."""
    if threads:  # 0 = torch's default
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
    if cuda_device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_device
    try:
        conn.send(run_job(job))
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()


# -- backends ----------------------------------------------------------------------------------------
Outcome = tuple[Job, dict]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Inside: SIGTERM raises KeyboardInterrupt, as Ctrl-C does (Python runs signal handlers on the
    main thread only; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler installed from C, which Python cannot restore
            signal.signal(signal.SIGTERM, previous)


def run_local(jobs: list[Job], workers: int, devices: list[str | None] | None = None) -> Generator[Outcome]:
    """Each job in its own spawned process, at most `workers` at a time: a crashing job cannot take
    the others down. `devices`: one entry per worker slot (overriding `workers`), the CUDA device a
    job in that slot sees (CUDA_VISIBLE_DEVICES), or None to leave the environment as it is. Yields
    (job, result) as jobs finish. SIGTERM stops the sweep as Ctrl-C does: the running jobs' processes
    are terminated, not left behind training (each resumes from its last checkpoint on the next run)."""
    ctx = multiprocessing.get_context("spawn")
    stopping = threading.Event()
    starting = threading.Lock()  # a job's process starts, or the sweep stops: never both at once
    live: set = set()
    slots: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    for device in devices if devices is not None else [None] * workers:
        slots.put(device)
    workers = len(devices) if devices is not None else workers

    def one(job: Job) -> dict:
        device = slots.get()  # a free slot: the pool runs at most as many jobs as there are slots
        try:
            return in_process(job, device)
        finally:
            slots.put(device)

    def in_process(job: Job, device: str | None) -> dict:
        with starting:
            if stopping.is_set():
                return {"status": "failed", "error": "sweep interrupted before the job started", "seconds": 0.0}
            receiver, sender = ctx.Pipe(duplex=False)
            args = (asdict(job), job.config["torch_threads"], sender, device)
            proc = ctx.Process(target=_job_process, args=args, daemon=True)
            proc.start()
            live.add(proc)
        sender.close()
        try:
            result = receiver.recv()
        except EOFError:  # the process died without answering (killed, out of memory, crashed)
            result = None
        proc.join()
        live.discard(proc)
        return result or {
            "status": "failed",
            "error": f"worker process died (exit code {proc.exitcode})",
            "seconds": 0.0,
        }

    with _sigterm_interrupts():
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            futures = {pool.submit(one, job): job for job in jobs}
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            with starting:
                stopping.set()
                for proc in list(live):
                    proc.terminate()
            pool.shutdown(wait=True, cancel_futures=True)


def run_ray(jobs: list[Job], address: str, cpus_per_job: int, gpus_per_job: float = 0.0) -> Generator[Outcome]:
    """Each job as a Ray task with `cpus_per_job` CPUs and `gpus_per_job` GPUs (a fraction: several
    jobs share one; Ray sets each task's CUDA_VISIBLE_DEVICES). `address`: "local" starts a local Ray instance,
    "auto" joins the cluster this machine belongs to, anything else is passed to ray.init(address=...).
    An already initialised Ray (e.g. by a test) is used as it is. Run dirs must be on storage that every
    node sees at the same path."""
    try:
        import ray
    except ImportError:
        raise SweepError("--ray-address needs Ray: pip install -c constraints.txt -e '.[ray]'") from None
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address=None if address == "local" else address, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=cpus_per_job, num_gpus=gpus_per_job)(run_job)
        pending = {task.remote(asdict(job)): job for job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as err:  # the worker died or the task could not run
                result = {
                    "status": "failed",
                    "error": f"{type(err).__name__}: {str(err).splitlines()[0]}",
                    "seconds": 0.0,
                }
            yield job, result
    finally:
        if owns_ray:
            ray.shutdown()


# -- the sweep ---------------------------------------------------------------------------------------
def write_sweep_file(out: Path, jobs: list[Job], base: dict[str, Any], backend: str) -> None:
    """sweep.json: merged with an earlier invocation's jobs; refuses a different shared config."""
    path = out / SWEEP_FILE
    earlier = json.loads(path.read_text()) if path.is_file() else None
    shared = {k: v for k, v in base.items() if k not in (*_NEUTRAL_FIELDS, "total_steps")}
    if earlier is not None and earlier.get("config") != shared:
        raise SweepError(
            f"{out} holds a sweep with a different shared config ({earlier.get('config')} != {shared}); "
            "use a new --out (only the budget, progress and torch_threads may change between invocations)"
        )
    entries = {j["dir"]: j for j in (earlier or {}).get("jobs", [])}
    for job in jobs:
        rel = Path(job.dir).relative_to(out.resolve()).as_posix()
        entries[rel] = {
            "env": job.env,
            "algo": job.algo,
            "seed": job.seed,
            "dir": rel,
            "total_steps": job.config["total_steps"],
        }
    jobs_json = list(entries.values())
    data = {
        "format_version": FORMAT_VERSION,
        "envs": _unique([j["env"] for j in jobs_json]),
        "algos": _unique([j["algo"] for j in jobs_json]),
        "seeds": _unique([j["seed"] for j in jobs_json]),
        "total_steps": max(j["total_steps"] for j in jobs_json),
        "config": shared,
        "backend": backend,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "jobs": jobs_json,
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def default_cpus_per_job(local_workers: int, ray_address: str | None) -> int:
    """Locally the workers share the machine's cores; on Ray each task gets one core."""
    return 1 if ray_address else max(1, (os.cpu_count() or 1) // local_workers)


def check_backend(local_workers: int, cpus_per_job: int | None) -> None:
    if local_workers < 1:
        raise SweepError("--local-workers must be at least 1")
    if cpus_per_job is not None and cpus_per_job < 1:
        raise SweepError("--cpus-per-job must be at least 1")


def device_slots(jobs_per_device: int, device: str) -> list[str | None]:
    """Local worker slots for `--jobs-per-device`: `jobs_per_device` per CUDA device (its id, as the
    job's CUDA_VISIBLE_DEVICES), or on the CPU (None) when the jobs' `device` puts them there."""
    if jobs_per_device < 1:
        raise SweepError("--jobs-per-device must be at least 1")
    ids: list[str] = []
    if device != "cpu":
        import torch  # only here: planning a sweep needs no torch

        count = torch.cuda.device_count()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [d.strip() for d in visible.split(",")][:count] if visible else [str(i) for i in range(count)]
    if not ids:
        if device == "cuda":
            raise SweepError("--jobs-per-device: the jobs ask for device cuda, but torch sees no CUDA device")
        return [None] * jobs_per_device  # the CPU is the one device
    return [d for d in ids for _ in range(jobs_per_device)]


def describe_backend(ray_address: str | None, slots: list[str | None], jobs_per_device: int | None) -> str:
    if ray_address:
        return f"ray ({ray_address})" + (f", {jobs_per_device} jobs per GPU" if jobs_per_device else "")
    if jobs_per_device is None:
        return f"local ({len(slots)} workers)"
    devices = sorted({d for d in slots if d is not None})
    where = f"CUDA device(s) {', '.join(devices)}" if devices else "the CPU"
    return f"local ({len(slots)} workers: {jobs_per_device} per device on {where})"


def run_sweep(
    out: str | Path,
    envs: list[str],
    algos: list[str],
    seeds: list[int],
    total_steps: int | None = None,
    base: dict[str, Any] | None = None,
    local_workers: int | None = None,
    ray_address: str | None = None,
    cpus_per_job: int | None = None,
    log: Callable[[str], None] = print,
    jobs_per_device: int | None = None,
) -> dict:
    """Run (or continue) a sweep; returns {"done": [...], "skipped": [...], "failed": [...]} of job names.
    Locally, `local_workers` jobs at a time (default 1), or `jobs_per_device` per device (`device_slots`)."""
    out = Path(out)
    if jobs_per_device is not None and local_workers is not None:
        raise SweepError("give --local-workers or --jobs-per-device, not both")
    check_backend(local_workers or 1, cpus_per_job)
    device = str((base or {}).get("device", "auto"))
    slots: list[str | None] = [None] * (local_workers or 1)
    if jobs_per_device is not None and not ray_address:
        slots = device_slots(jobs_per_device, device)
    if cpus_per_job is None:
        cpus_per_job = default_cpus_per_job(len(slots), ray_address)
    base = {"progress": False, "torch_threads": cpus_per_job, **(base or {})}
    if total_steps is not None:
        base["total_steps"] = total_steps
    jobs = plan_jobs(out, envs, algos, seeds, base)
    backend = describe_backend(ray_address, slots, jobs_per_device)
    write_sweep_file(out, jobs, base, backend)
    gpus_per_job = 1.0 / jobs_per_device if jobs_per_device and device != "cpu" else 0.0
    return run_jobs(
        jobs,
        len(slots),
        ray_address,
        cpus_per_job,
        log,
        title=f"sweep {out}: ",
        devices=slots,
        gpus_per_job=gpus_per_job,
    )


def run_jobs(
    jobs: list[Job],
    local_workers: int = 1,
    ray_address: str | None = None,
    cpus_per_job: int = 1,
    log: Callable[[str], None] = print,
    title: str = "",
    devices: list[str | None] | None = None,
    gpus_per_job: float = 0.0,
) -> dict:
    """Run the jobs not finished yet, in order, resuming those with a checkpoint. The jobs may come from
    several sweep dirs (each planned and recorded with `plan_jobs` and `write_sweep_file`). `devices`
    and `gpus_per_job`: see `run_local` and `run_ray`."""
    backend = f"ray ({ray_address})" if ray_address else f"local ({local_workers} workers)"
    cuda_devices = sorted({d for d in devices or [] if d is not None})
    if cuda_devices and not ray_address:
        backend = f"local ({len(devices or [])} workers on CUDA device(s) {', '.join(cuda_devices)})"
    summary: dict[str, list] = {"done": [], "skipped": [], "failed": []}
    todo = []
    for job in jobs:
        if is_done(job):
            summary["skipped"].append(job.name)
            log(f"skip   {job.name}: finished ({job.config['total_steps']} steps)")
        else:
            todo.append(job)
    resuming = sum(has_checkpoint(Path(j.dir)) for j in todo)
    log(
        f"{title}{len(jobs)} jobs, {len(summary['skipped'])} finished, {resuming} to resume, "
        f"{len(todo) - resuming} to start; {backend}, {cpus_per_job} CPU(s) per job"
    )

    if ray_address:
        outcomes = run_ray(todo, ray_address, cpus_per_job, gpus_per_job)
    else:
        outcomes = run_local(todo, local_workers, devices)
    with contextlib.closing(outcomes):  # an interrupt stops the backend's jobs, wherever it lands
        for count, (job, result) in enumerate(outcomes, start=1):
            prefix = f"[{count}/{len(todo)}]"
            if result["status"] == "done":
                summary["done"].append(job.name)
                rec = result.get("record") or {}
                how = (
                    f"resumed from step {result['resumed_from']}"
                    if result.get("resumed_from") is not None
                    else "trained"
                )
                ret = (
                    f", return {rec['eval_return_mean']:.2f} +- {rec['eval_return_std']:.2f} at step {rec['step']}"
                    if "eval_return_mean" in rec
                    else ""
                )
                log(f"{prefix} done   {job.name}: {how} in {result['seconds']:.1f} s{ret}")
            else:
                summary["failed"].append(f"{job.name}: {result['error']}")
                log(f"{prefix} FAILED {job.name}: {result['error']} (log: {job.dir}.log)")

    log(f"{title}{len(summary['done'])} trained, {len(summary['skipped'])} skipped, {len(summary['failed'])} failed")
    for line in summary["failed"]:
        log(f"  failed: {line}")
    return summary


# -- command line ------------------------------------------------------------------------------------
def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values parsed as YAML, keys may use '-' or '_'."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SweepError(f"--set expects key=value, got {item!r}")
        try:
            overrides[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            overrides[key.strip().replace("-", "_")] = value
    return overrides


def configure_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("--envs", nargs="+", required=True, metavar="ENV", help="environment ids (see `omad envs`)")
    p.add_argument(
        "--algos", nargs="+", default=["omad"], metavar="ALGO", help=f"any of {', '.join(ALGOS)}; default omad"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="S", help="default 0")
    p.add_argument(
        "--total-steps", type=int, metavar="N", help="env steps per job (default: --config's or the config default)"
    )
    p.add_argument("--out", required=True, help="sweep dir (created, or continued when it exists)")
    p.add_argument(
        "--config", help="YAML/JSON file of config fields; each job takes those of its algo (see `omad train --help`)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config field for the jobs whose algo takes it (repeatable)",
    )
    backend = p.add_mutually_exclusive_group()
    backend.add_argument("--local-workers", type=int, metavar="W", help="parallel local jobs (default 1)")
    backend.add_argument(
        "--ray-address",
        metavar="ADDR",
        help='run jobs as Ray tasks: "local" (start a local instance), "auto" (join this cluster) or an address',
    )
    p.add_argument(
        "--jobs-per-device",
        type=int,
        metavar="W",
        help="jobs sharing each CUDA device (locally: W workers per device; on Ray: 1/W GPU per job), or the CPU "
        "when the jobs run there; instead of --local-workers. Pick W by measuring (bench/gpu_check.sh)",
    )
    p.add_argument(
        "--cpus-per-job",
        type=int,
        metavar="N",
        help="torch threads per job (and Ray num_cpus); default: cores // W locally, 1 on Ray",
    )
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    base = load_config_file(args.config) if args.config else {}
    base.update(parse_set(args.set))
    summary = run_sweep(
        args.out,
        args.envs,
        args.algos,
        args.seeds,
        total_steps=args.total_steps,
        base=base,
        local_workers=args.local_workers,
        ray_address=args.ray_address,
        cpus_per_job=args.cpus_per_job,
        log=lambda line: print(line, flush=True),
        jobs_per_device=args.jobs_per_device,
    )
    return 1 if summary["failed"] else 0
