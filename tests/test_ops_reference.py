"""The operations reference and the Grafana dashboard against a live server: a server is exercised
(a good call, a bad call, a reload), its /metrics scraped, and the generated metrics table, the log
event table and every dashboard query are checked against what it really exports and logs."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO
from prometheus_client.parser import text_string_to_metric_families

from omad.serve import logs, reference
from omad.serve.client import PolicyCallError, PolicyClient
from omad.serve.config import ServeConfig
from omad.serve.testing import ServerThread


def load_dashboard_module():
    spec = importlib.util.spec_from_file_location("omad_dashboard", REPO / "deploy" / "grafana" / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Events(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, set[str]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage() if not record.args else record.msg, set(getattr(record, "fields", {}))))


@pytest.fixture(scope="module")
def live(model_path):
    """(families by name, log events seen) of a server after a good call, a bad call and a reload."""
    handler = Events()
    logger = logging.getLogger(logs.LOGGER_NAME)
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with ServerThread(ServeConfig(model=model_path, port=0, metrics_port=0, health_port=0)) as server:
            with PolicyClient(server.addr) as client:
                spec = client.spec()
                client.act(np.zeros((2, spec.obs_dim), np.float32), seed=0)  # good
                with pytest.raises(PolicyCallError):
                    client.act(np.zeros((2, spec.obs_dim + 1), np.float32))  # bad: INVALID_ARGUMENT
                assert server.run(server.server.reload())  # a reload from the same file: ok
                with client.stream() as stream:
                    stream.act(np.zeros((1, spec.obs_dim), np.float32), zero_noise=True)
            url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
            text = urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    return {f.name: f for f in text_string_to_metric_families(text)}, handler.seen


def live_labels(family) -> set[str]:
    """Label names of a family's series (the `_created` samples carry the same ones)."""
    return {name for sample in family.samples for name in sample.labels}


def test_the_metrics_table_and_the_live_output_agree_both_ways(live):
    families = dict(live[0])
    rows = {row.family: row for row in reference.metric_rows()}
    # The text format lists each counter's and histogram's `_created` series as a gauge family of its own.
    for name, row in rows.items():
        if row.type in ("counter", "histogram"):
            created = families.pop(f"{name}_created")
            assert created.type == "gauge" and live_labels(created) == set(row.labels) - {"le"}, name
    assert set(rows) == set(families), "in the table but not exported / exported but not in the table"
    for name, row in rows.items():
        family = families[name]
        assert family.type == row.type, name
        assert live_labels(family) == set(row.labels), name
        assert all(s.name.startswith(name) for s in family.samples)
        if row.type == "counter":
            assert {s.name for s in family.samples} <= {f"{name}_total", f"{name}_created"}
    # The exercise shows in the values: one good and one bad Act, an ok reload, this server's team.
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("omad_requests_total", (("method", "Act"),))] == 2
    assert samples[("omad_errors_total", (("code", "INVALID_ARGUMENT"), ("method", "Act")))] == 1
    assert samples[("omad_reloads_total", (("result", "ok"),))] == 1
    (info,) = families["omad_team_info"].samples
    assert info.value == 1 and info.labels["agent"] == "agent_0" and info.labels["team_id"] != ""


def test_the_generated_tables_render_every_row():
    metrics = reference.metrics_markdown().splitlines()
    assert len(metrics) == 2 + len(reference.metric_rows())
    events = reference.log_events_markdown().splitlines()
    assert len(events) == 2 + len(reference.log_event_rows())


def test_logged_events_are_in_the_table_with_their_fields(live):
    _, seen = live
    rows = {row.event: row for row in reference.log_event_rows()}
    assert seen, "the exercise logged nothing"
    for event, fields in seen:
        assert event in rows, f"{event!r} was logged but is not in the table"
        assert fields <= set(rows[event].fields), (event, fields - set(rows[event].fields))
    logged = {event for event, _ in seen}
    assert {"listening", "model_loaded", "serving", "call_failed", "reloaded", "stopped"} <= logged


def test_an_event_without_a_meaning_fails_the_reference(tmp_path):
    (tmp_path / "mod.py").write_text(
        "import logging\nfrom omad.serve import logs\nlog = logs.get_logger()\n"
        "logs.log_event(log, 'listening', logging.WARNING, port=1)\nlogs.log_event(log, 'brand_new', x=1)\n"
    )
    with pytest.raises(reference.ReferenceError, match=r"without a meaning \['brand_new'\]"):
        reference.log_event_rows(tmp_path)


def test_the_committed_dashboard_is_what_the_script_builds():
    module = load_dashboard_module()
    assert module.OUT.read_text() == module.render(), "run: python deploy/grafana/dashboard.py"


def queries(dashboard: dict) -> list[str]:
    found = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                found.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard)
    return found


LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
MATCHERS = re.compile(r"\{([^}]*)\}")


def test_every_dashboard_query_names_live_metrics_and_their_labels(live):
    families, _ = live
    series = {s.name: set(s.labels) for f in families.values() for s in f.samples}
    module = load_dashboard_module()
    exprs = queries(json.loads(module.OUT.read_text()))
    assert len(exprs) >= 10
    used_metrics = set()
    for expr in exprs:
        names = set(re.findall(r"\bomad_[a-z_]+\b", expr))
        assert names, expr
        for name in names:
            assert name in series, f"{name} is not exported: {expr}"
        used_metrics |= names
        available = set().union(*(series[n] for n in names)) | set(module.TARGET_LABELS)
        labels = {label.strip() for group in LABEL_LISTS.findall(expr) for label in group.split(",") if label.strip()}
        labels |= {m.split("=")[0].strip(" !~") for group in MATCHERS.findall(expr) for m in group.split(",") if m}
        assert labels <= available, f"labels {labels - available} are on none of {sorted(names)}: {expr}"
    # every metric of the brief's panels is on the dashboard
    for name in ("omad_requests_total", "omad_errors_total", "omad_request_latency_seconds_bucket",
                 "omad_batch_size_bucket", "omad_queued_requests", "omad_nonfinite_actions_total",
                 "omad_reloads_total", "omad_inference_failures_total", "omad_team_info"):  # fmt: skip
        assert name in used_metrics, name


def test_the_operations_page_holds_both_markers():
    page = (REPO / "docs" / "guides" / "operations.md").read_text()
    hook = (REPO / "docs" / "hooks_operations.py").read_text()
    for marker in ("<!-- generated: metrics -->", "<!-- generated: log-events -->"):
        assert page.count(marker) == 1 and marker in hook
    assert Path(REPO / "mkdocs.yml").read_text().count("docs/hooks_operations.py") == 1


def test_with_an_export_dir_each_agent_gets_the_next_metrics_and_health_port():
    from omad.serve.launcher import server_argv

    flags = {"host": "0.0.0.0", "metrics_port": 9100, "health_port": 8081, "port": None}
    for index in range(3):
        argv = server_argv(Path(f"agent_{index}.onnx"), 50051 + index, flags, index)
        value = {flag: argv[argv.index(flag) + 1] for flag in ("--port", "--metrics-port", "--health-port", "--host")}
        assert value == {
            "--port": str(50051 + index),
            "--metrics-port": str(9100 + index),
            "--health-port": str(8081 + index),
            "--host": "0.0.0.0",
        }
    argv = server_argv(Path("agent_2.onnx"), 0, {"metrics_port": 0, "health_port": 0}, 2)
    assert argv[argv.index("--metrics-port") + 1] == "0" and argv[argv.index("--health-port") + 1] == "0"
