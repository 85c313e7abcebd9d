"""The server's metrics and log events, read from the code, for the operations reference.

- `metric_rows()`: every metric a server exports, from its registry (omad.serve.metrics): the name a
  query uses, the type, the labels and the help text.
- `log_event_rows()`: every structured log event, found in omad.serve's source: each call of
  `logs.log_event(logger, "event", [level], field=...)` and each plain logger call, with the fields
  it writes and its level. What an event means is written in `EVENT_MEANINGS`; an event without a
  meaning, or a meaning without an event, is an error, so the reference cannot drift from the code.

The documentation build (docs/hooks_operations.py) renders both as tables; tests/test_ops_reference.py
checks the metrics table against a live server's /metrics.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from pathlib import Path

from omad.core.errors import OmadError

# Fields the JSON formatter writes on every line (omad.serve.logs.JsonFormatter).
COMMON_LOG_FIELDS = ("ts", "level", "logger", "event", "pid")
LOGGER_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}

EVENT_MEANINGS = {
    # a server's life cycle (omad.serve.lifecycle)
    "listening": "the port is bound; health is NOT_SERVING until the model is loaded. `config` holds every option",
    "exposed": "bound beyond loopback without both TLS and a token: anyone who reaches the port can call it",
    "model_loaded": "the model file was verified and warmed up",
    "serving": "health turned SERVING: calls are answered from now on",
    "reload_skipped": "a SIGHUP arrived while the server was loading, draining or failed: nothing was reloaded",
    "reload_refused": "a reload failed (unreadable or tampered file, another contract): the old model keeps serving",
    "reloaded": "a reload swapped the new model in; calls admitted from here on run on it",
    "inference_failed": "the inference machinery broke: health is NOT_SERVING and every call gets UNAVAILABLE",
    "draining": "SIGTERM: health NOT_SERVING, new calls refused, in-flight calls get up to `grace_s`",
    "stopped": "the server stopped; `unfinished_calls` were cut off by the end of the grace period",
    # calls (omad.serve.calls)
    "call_failed": "a call ended with an error status (debug level: one line per failed call)",
    "internal error in %s": "an unexpected exception in a handler (a bug): the call got INTERNAL; `error` holds the traceback",
    # the launcher of `omad serve --export-dir` (omad.serve.launcher)
    "agent_started": "the launcher started an agent's server process (`pid` is that process)",
    "agent_exited": "an agent's server exited by itself: the launcher stops the others",
    "stopping": "the launcher got SIGTERM or SIGINT and forwards it to every server",
    "reloading": "the launcher got SIGHUP and forwards it to every server",
    "agent_killed": "a server outlived its grace period after SIGTERM and was killed",
}


class ReferenceError(OmadError):
    pass


@dataclass(frozen=True)
class MetricRow:
    name: str  # as a query names it (counters with _total, histograms with _bucket/_sum/_count)
    family: str  # the family name in the exposition's TYPE line
    type: str
    labels: tuple[str, ...]
    meaning: str


@dataclass(frozen=True)
class LogEventRow:
    event: str
    levels: tuple[str, ...]
    fields: tuple[str, ...]
    modules: tuple[str, ...]
    meaning: str


def metric_rows() -> list[MetricRow]:
    """Every metric a server defines (omad.serve.metrics.ServerMetrics), in definition order."""
    from prometheus_client.metrics import MetricWrapperBase

    from omad.serve.metrics import ServerMetrics

    rows = []
    for metric in vars(ServerMetrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        family, kind, labels = metric._name, metric._type, tuple(metric._labelnames)  # (no public accessors)
        if kind == "counter":
            name = family + "_total"
        elif kind == "histogram":
            name, labels = f"{family}_bucket, _sum, _count", (*labels, "le")
        else:
            name = family
        rows.append(MetricRow(name, family, str(kind), labels, metric._documentation))
    return rows


def _level_name(node: ast.expr) -> str:
    """`logging.WARNING` -> "warning"."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "logging":
        level = getattr(logging, node.attr, None)
        if isinstance(level, int):
            return logging.getLevelName(level).lower()
    raise ReferenceError(f"line {node.lineno}: a log level must be written as logging.NAME")


def _calls(path: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    """(event, level, fields) of every log call in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        where = f"{path.name}:{node.lineno}"
        if name == "log_event":
            if (
                len(node.args) < 2
                or not isinstance(node.args[1], ast.Constant)
                or not isinstance(node.args[1].value, str)
            ):
                raise ReferenceError(f"{where}: log_event's event must be a string literal")
            level = _level_name(node.args[2]) if len(node.args) > 2 else "info"
            if any(k.arg is None for k in node.keywords):
                raise ReferenceError(f"{where}: log_event's fields must be named (no **mapping)")
            found.append((node.args[1].value, level, tuple(k.arg for k in node.keywords if k.arg)))
        elif (
            name in LOGGER_METHODS
            and isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in ("log", "logger")
        ):
            if not node.args or not isinstance(node.args[0], ast.Constant) or not isinstance(node.args[0].value, str):
                raise ReferenceError(f"{where}: a log message must be a string literal")
            level = "error" if name == "exception" else name
            found.append((node.args[0].value, level, ("error",) if name == "exception" else ()))
    return found


def log_event_rows(package_dir: Path | None = None) -> list[LogEventRow]:
    """Every log event of the serving package, merged over the places that log it, sorted by module."""
    package_dir = package_dir or Path(__file__).parent
    merged: dict[str, tuple[list[str], list[str], list[str]]] = {}
    for path in sorted(package_dir.glob("*.py")):
        for event, level, fields in _calls(path):
            levels, names, modules = merged.setdefault(event, ([], [], []))
            for value, into in [(level, levels), *((f, names) for f in fields), (path.stem, modules)]:
                if value not in into:
                    into.append(value)
    missing = sorted(set(merged) - set(EVENT_MEANINGS))
    stale = sorted(set(EVENT_MEANINGS) - set(merged))
    if missing or stale:
        raise ReferenceError(
            f"omad/serve/reference.py EVENT_MEANINGS: events without a meaning {missing}, meanings of no event {stale}"
        )
    rows = [
        LogEventRow(event, tuple(levels), tuple(fields), tuple(modules), EVENT_MEANINGS[event])
        for event, (levels, fields, modules) in merged.items()
    ]
    return sorted(rows, key=lambda r: (r.modules[0], list(EVENT_MEANINGS).index(r.event)))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def metrics_markdown() -> str:
    lines = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for row in metric_rows():
        labels = ", ".join(f"`{label}`" for label in row.labels) or "-"
        lines.append(f"| `{row.name}` | {row.type} | {labels} | {_cell(row.meaning)} |")
    return "\n".join(lines) + "\n"


def log_events_markdown() -> str:
    lines = ["| event | level | fields | logged by | meaning |", "|---|---|---|---|---|"]
    for row in log_event_rows():
        fields = ", ".join(f"`{f}`" for f in row.fields) or "-"
        modules = ", ".join(f"`omad.serve.{m}`" for m in row.modules)
        lines.append(f"| `{row.event}` | {', '.join(row.levels)} | {fields} | {modules} | {_cell(row.meaning)} |")
    return "\n".join(lines) + "\n"
