"""Mutation testing (mutmut) of the modules that carry the math and the serving edge.

    make mutation                                  # = .venv/bin/python -m bench.mutation
    .venv/bin/python -m bench.mutation --only 'omad.train.critic.*'   # re-test some mutants, keep the rest
    .venv/bin/python -m bench.mutation --report-only                  # rewrite the report from mutants/

mutmut 3 copies the code into mutants/, mutates every function of the files under [tool.mutmut]
`only_mutate` in pyproject.toml and, for each mutant in SCOPE below, runs the tests of the fast
selection (`pytest_add_cli_args_test_selection`) that call the mutated function. Decorated
functions are not mutated (mutmut 3 cannot wrap them); the report lists them.

Survivors that change no behaviour, and survivors in code that runs only on CUDA, are listed with the
reason in bench/mutation_equivalent.yaml and left out of the score: killed / (mutants - listed),
timeouts counted as killed. Runs on purpose, not in CI (about an hour on 2 cores). Writes
bench/results/mutation.json and mutation.md.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

import yaml

from bench.common import REPO, RESULTS

EQUIVALENT = REPO / "bench" / "mutation_equivalent.yaml"

# module file -> the mutant names counted for it (mutmut names: module.x_func / module.xǁClassǁmethod)
RUNTIME_VALIDATION = (
    "xǁOnnxPolicyǁact",
    "xǁOnnxPolicyǁvalidate",
    "xǁOnnxPolicyǁsample_noise",
    "x_as_float32",
    "x_check_finite",
)
SCOPE = {
    "omad/train/critic.py": ["omad.train.critic.*"],
    "omad/train/replay.py": ["omad.train.replay.*"],
    "omad/train/algos/omad.py": ["omad.train.algos.omad.*"],
    "omad/train/algos/sequential.py": ["omad.train.algos.sequential.*"],
    "omad/train/algos/common.py": ["omad.train.algos.common.*"],
    "omad/train/diffusion.py": ["omad.train.diffusion.*"],
    "omad/train/actors.py": ["omad.train.actors.*"],
    # the deployable cut of one agent's actor (loading a run dir is tested against real runs elsewhere)
    "omad/train/policies.py": ["omad.train.policies.xǁAgentPolicyǁ*"],
    "omad/serve/batching.py": ["omad.serve.batching.*"],
    "omad/serve/security.py": ["omad.serve.security.*"],
    "omad/serve/tensors.py": ["omad.serve.tensors.*"],
    # the request validation only; loading and its checks are tested against a real export in test_runtime.py
    "omad/runtime/onnx_policy.py": [f"omad.runtime.onnx_policy.{name}__mutmut_*" for name in RUNTIME_VALIDATION],
}
DETECTED = ("killed", "timeout")
# kinds of entry in bench/mutation_equivalent.yaml -> their column in the report
LISTED_KINDS = {"equivalent": "equivalent", "cuda": "CUDA only"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested in parallel")
    parser.add_argument("--only", nargs="+", help="re-test only these mutant-name patterns, keeping the other results")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from mutants/")
    parser.add_argument(
        "--allow-dirty", action="store_true", help="run although the mutated modules have uncommitted changes"
    )
    args = parser.parse_args()
    os.chdir(REPO)  # mutmut reads pyproject.toml and writes mutants/ in the working directory

    previous = json.loads((RESULTS / "mutation.json").read_text()) if (RESULTS / "mutation.json").exists() else {}
    run = previous.get("run", {})
    if not args.report_only:
        dirty = subprocess.run(
            ["git", "diff", "--name-only", "HEAD", "--", *SCOPE], capture_output=True, text=True
        ).stdout.split()
        if dirty and not args.allow_dirty:
            sys.exit(f"uncommitted changes in {dirty}: the score must describe committed code (or pass --allow-dirty)")
        if not args.only:
            shutil.rmtree("mutants", ignore_errors=True)  # mutmut would keep stale results of files it thinks unchanged
        patterns = args.only or [p for patterns in SCOPE.values() for p in patterns]
        started = time.monotonic()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one core per mutant worker
        mutmut = Path(sys.executable).parent / "mutmut"
        subprocess.run([str(mutmut), "run", "--max-children", str(args.max_children), *patterns], env=env, check=True)
        elapsed = time.monotonic() - started
        if args.only:
            run = {**run, "last_partial": {"patterns": args.only, "seconds": round(elapsed), "commit": head_commit()}}
        else:
            run = {
                "command": "make mutation",
                "seconds": round(elapsed),
                "max_children": args.max_children,
                "commit": head_commit(),
                "date": time.strftime("%Y-%m-%d"),
            }
    report = build_report(run)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mutation.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (RESULTS / "mutation.md").write_text(format_report(report))
    print(format_summary(report))


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


# ---- reading mutmut's results ------------------------------------------------------------------


def function_of(mutant: str) -> str:
    """omad.train.critic.xǁCategoricalCriticǁlogits__mutmut_6 -> omad.train.critic.CategoricalCritic.logits"""
    module, _, mangled = mutant.rpartition("__mutmut_")[0].rpartition(".")
    return f"{module}.{mangled[2:].replace('ǁ', '.') if mangled.startswith('xǁ') else mangled[2:]}"


def changed_lines(diff: str) -> tuple[str, str]:
    """(before, after) of a mutant's unified diff, each changed line stripped, several joined by ' / '."""
    lines = [line for line in diff.splitlines() if line[:3] not in ("---", "+++")]
    before = " / ".join(line[1:].strip() for line in lines if line.startswith("-"))
    after = " / ".join(line[1:].strip() for line in lines if line.startswith("+"))
    return before, after


def load_listed() -> dict[tuple[str, str, str], tuple[str, str]]:
    """bench/mutation_equivalent.yaml: (function, before, after) -> (kind, why). Kind `equivalent` (the
    default) changes no behaviour; kind `cuda` changes code that only runs on a CUDA device. An `after`
    of "*" stands for every mutant of the line."""
    entries = yaml.safe_load(EQUIVALENT.read_text()) or []
    out = {}
    for e in entries:
        kind = e.get("kind", "equivalent")
        if kind not in LISTED_KINDS:
            raise ValueError(f"{EQUIVALENT.name}: kind {kind!r} of {e['function']} is not one of {LISTED_KINDS}")
        out[e["function"], e["before"], e["after"]] = (kind, e["why"])
    return out


def tally(mutants: list[dict], listed: dict[tuple[str, str, str], tuple[str, str]]) -> tuple[Counter, list, list]:
    """Count one module's mutants by status. `mutants`: {"mutant", "status", "before", "after"} each (before
    and after only needed for the undetected). An undetected mutant listed in bench/mutation_equivalent.yaml
    counts under its kind and goes to the second list with its reason; any other goes to the survivors."""
    counts: Counter = Counter(mutants=len(mutants))
    survivors, matched = [], []
    for m in mutants:
        if m["status"] in DETECTED:
            counts[m["status"]] += 1
            continue
        exact = (function_of(m["mutant"]), m["before"], m["after"])
        key = exact if exact in listed else (exact[0], exact[1], "*")  # "*": any mutant of the line
        if key in listed:
            kind, why = listed[key]
            counts[LISTED_KINDS[kind]] += 1
            matched.append({**m, "kind": kind, "why": why, "key": key})
        else:
            counts[m["status"]] += 1
            survivors.append(m)
    return counts, survivors, matched


def decorated_functions(path: str) -> list[str]:
    """Functions mutmut 3 leaves alone: decorated with anything but staticmethod/classmethod."""
    out = []
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.ClassDef):
            funcs = [(f"{node.name}.", f) for f in node.body if isinstance(f, ast.FunctionDef)]
        elif isinstance(node, ast.Module):
            funcs = [("", f) for f in node.body if isinstance(f, ast.FunctionDef)]
        else:
            continue
        for prefix, f in funcs:
            names = [ast.unparse(d) for d in f.decorator_list]
            if names and names not in (["staticmethod"], ["classmethod"]):
                out.append(f"{prefix}{f.name} (@{', @'.join(names)})")
    return out


def build_report(run: dict) -> dict:
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    listed = load_listed()
    modules, survivors, matched = {}, [], []
    for path, patterns in SCOPE.items():
        meta = json.loads(Path("mutants", path + ".meta").read_text())["exit_code_by_key"]
        names = sorted(
            (n for n in meta if any(fnmatch(n, p) for p in patterns)),
            key=lambda n: (n.rpartition("__mutmut_")[0], int(n.rpartition("_")[2])),
        )
        mutants = []
        for name in names:
            status = status_by_exit_code[meta[name]]
            before, after = ("", "") if status in DETECTED else changed_lines(get_diff_for_mutant(name, path=path))
            mutants.append({"mutant": name, "status": status, "before": before, "after": after})
        counts, module_survivors, module_matched = tally(mutants, listed)
        modules[path] = dict(counts)
        survivors += module_survivors
        matched += module_matched
    totals = sum((Counter(c) for c in modules.values()), Counter())
    relevant = scored(totals)
    detected = sum(totals[s] for s in DETECTED)
    used = {m.pop("key") for m in matched}
    return {
        "run": run,
        "score": round(detected / relevant, 4) if relevant else None,
        "detected": detected,
        "scored": relevant,
        "totals": dict(totals),
        "modules": modules,
        "survivors": survivors,
        "equivalent": [m for m in matched if m["kind"] == "equivalent"],
        "cuda_only": [m for m in matched if m["kind"] == "cuda"],
        "stale_equivalent_entries": [list(k) for k in listed if k not in used],
        "not_mutated": {path: funcs for path in SCOPE if (funcs := decorated_functions(path))},
    }


def scored(counts: dict) -> int:
    """The mutants the score counts: all but the listed (equivalent, and CUDA-only on a CPU run)."""
    return counts.get("mutants", 0) - sum(counts.get(column, 0) for column in LISTED_KINDS.values())


# ---- writing it --------------------------------------------------------------------------------


def format_summary(report: dict) -> str:
    totals = report["totals"]
    return (
        f"mutation score {report['score']:.2%}: {report['detected']} of {report['scored']} scored "
        f"mutants killed ({totals.get('equivalent', 0)} equivalent, {totals.get('CUDA only', 0)} CUDA only, "
        f"{len(report['survivors'])} survivors)"
    )


def format_report(report: dict) -> str:
    run = report["run"]
    columns = ["mutants", "killed", "timeout", "survived", "no tests", *LISTED_KINDS.values()]
    columns += sorted(set(report["totals"]) - set(columns))  # e.g. suspicious, segfault, not checked
    partial = run.get("last_partial")
    retested = (
        f" Then re-tested on commit {partial.get('commit', '?')} ({partial['seconds']} s), keeping the other results: "
        f"`{' '.join(partial['patterns'])}`."
        if partial
        else ""
    )
    lines = [
        "# Mutation testing",
        "",
        (
            f"`{run.get('command', 'make mutation')}` (mutmut, {run.get('max_children', '?')} workers): "
            f"{run.get('seconds', 0) / 60:.0f} min on commit {run.get('commit', '?')}, {run.get('date', '?')}.{retested}"
        ),
        "",
        f"**{format_summary(report)}.** Score = (killed + timeout) / (mutants - equivalent - CUDA only).",
        "",
        "| module | " + " | ".join(columns) + " | score |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for path, counts in [*report["modules"].items(), ("total", report["totals"])]:
        relevant = scored(counts)
        score = sum(counts.get(s, 0) for s in DETECTED) / relevant if relevant else 1.0
        lines.append(f"| {path} | " + " | ".join(str(counts.get(c, 0)) for c in columns) + f" | {score:.1%} |")
    sections = [
        (
            "Surviving mutants",
            [f"- `{s['mutant']}` ({s['status']}): `{s['before']}` -> `{s['after']}`" for s in report["survivors"]],
        ),
        (
            "Equivalent mutants (no behaviour change; not in the score)",
            [f"- `{e['mutant']}`: `{e['before']}` -> `{e['after']}`. {e['why']}" for e in report["equivalent"]],
        ),
        (
            "CUDA-only mutants (code a CPU run cannot execute; not in the score)",
            [
                f"- `{e['mutant']}` ({e['status']}): `{e['before']}` -> `{e['after']}`. {e['why']}"
                for e in report["cuda_only"]
            ],
        ),
        (
            "Not mutated (decorated functions, which mutmut 3 skips)",
            [f"- {path}: {', '.join(funcs)}" for path, funcs in report["not_mutated"].items()],
        ),
    ]
    if report["stale_equivalent_entries"]:
        sections.append(
            (
                "Entries of bench/mutation_equivalent.yaml that matched no survivor",
                [f"- `{f}`: `{b}` -> `{a}`" for f, b, a in report["stale_equivalent_entries"]],
            )
        )
    for title, items in sections:
        lines += ["", f"## {title}", "", *(items or ["None."])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
