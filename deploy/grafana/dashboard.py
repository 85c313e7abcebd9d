"""The Grafana dashboard of a team of policy servers, built with grafanalib.

    python deploy/grafana/dashboard.py           # writes deploy/grafana/omad-team.json
    python deploy/grafana/dashboard.py --check   # exit 1 if the committed JSON is not what this builds

Every panel is per agent: the servers' metrics carry no agent label, so each query keeps Prometheus's
`instance` label (one per server) and joins the agent's name from `omad_team_info` (the server's
info metric: agent, team_id, model_sha256). tests/test_dashboard.py checks that the JSON is up to
date and that every query names metrics and labels a live server exports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    Dashboard,
    GridPos,
    RowPanel,
    Stat,
    Table,
    Target,
    Template,
    Templating,
    TimeSeries,
)

OUT = Path(__file__).with_name("omad-team.json")
DATASOURCE = "${datasource}"
RATE = "$__rate_interval"
# Labels Prometheus attaches to every scraped series (the target's); the servers export the others.
TARGET_LABELS = ("instance", "job")
# Each server's agent name, by scrape target, for the selected agents (the value is 1).
AGENTS = 'group by (instance, agent) (omad_team_info{agent=~"$agent"})'


def per_agent(expr_by_instance: str) -> str:
    """An expression that keeps `instance`, labelled with (and filtered to) the selected agents."""
    return f"({expr_by_instance}) * on (instance) group_left (agent) {AGENTS}"


def target(expr: str, legend: str, ref: str, **extra) -> Target:
    return Target(expr=expr, legendFormat=legend, refId=ref, datasource=DATASOURCE, **extra)


def quantiles(histogram: str, unit_legend: str) -> list[Target]:
    return [
        target(
            per_agent(f"histogram_quantile({q}, sum by (instance, le) (rate({histogram}_bucket[{RATE}])))"),
            f"{{{{agent}}}} p{round(q * 100)}{unit_legend}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


def timeseries(title: str, targets: list[Target], pos: tuple[int, int, int, int], unit: str = "", **kw) -> TimeSeries:
    return TimeSeries(
        title=title,
        dataSource=DATASOURCE,
        targets=targets,
        gridPos=GridPos(*pos),
        unit=unit,
        legendDisplayMode="table",
        legendCalcs=["lastNotNull", "max"],
        **kw,
    )


def row(title: str, y: int) -> RowPanel:
    return RowPanel(title=title, gridPos=GridPos(h=1, w=24, x=0, y=y))


def build() -> Dashboard:
    team_ids = Stat(
        title="Team ids in use",
        description="Distinct team ids among the selected agents' servers: 1 is one export; more is a mixed team "
        "(a rollout in progress, or a server serving another export's graph).",
        dataSource=DATASOURCE,
        targets=[target('count(count by (team_id) (omad_team_info{agent=~"$agent"}))', "team ids", "A")],
        gridPos=GridPos(h=6, w=6, x=0, y=1),
        reduceCalc="lastNotNull",
        graphMode="none",
        colorMode="background",
        extraJson={
            "fieldConfig": {
                "defaults": {
                    "thresholds": {
                        "mode": "absolute",
                        "steps": [{"color": "green", "value": None}, {"color": "red", "value": 2}],
                    }
                }
            }
        },
    )
    team_table = Table(
        title="Team id per agent",
        description="Each server's agent, team id and model sha256 (omad_team_info); a row whose team id "
        "differs from the others is a mixed team.",
        dataSource=DATASOURCE,
        targets=[target('omad_team_info{agent=~"$agent"}', "", "A", instant=True, format="table")],
        gridPos=GridPos(h=6, w=18, x=6, y=1),
        transformations=[
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value": True, "__name__": True},
                    "indexByName": {"agent": 0, "team_id": 1, "model_sha256": 2, "instance": 3},
                },
            }
        ],
    )
    panels = [
        row("Team", 0),
        team_ids,
        team_table,
        row("Traffic", 7),
        timeseries(
            "Requests/s by method",
            [
                target(
                    per_agent(f"sum by (instance, method) (rate(omad_requests_total[{RATE}]))"),
                    "{{agent}} {{method}}",
                    "A",
                )
            ],
            (8, 12, 0, 8),
            unit="reqps",
        ),
        timeseries(
            "Errors/s by gRPC code",
            [
                target(
                    per_agent(f"sum by (instance, code) (rate(omad_errors_total[{RATE}]))"), "{{agent}} {{code}}", "A"
                )
            ],
            (8, 12, 12, 8),
            unit="reqps",
        ),
        row("Latency", 16),
        timeseries("Request latency (server time)", quantiles("omad_request_latency_seconds", ""), (8, 12, 0, 17), "s"),
        timeseries("Inference time per call", quantiles("omad_inference_seconds", ""), (8, 12, 12, 17), "s"),
        row("Batching", 25),
        timeseries(
            "Batch size (rows per inference call)",
            [
                target(
                    per_agent(
                        f"sum by (instance) (rate(omad_batch_size_sum[{RATE}])) "
                        f"/ sum by (instance) (rate(omad_batch_size_count[{RATE}]))"
                    ),
                    "{{agent}} mean",
                    "A",
                ),
                target(
                    per_agent(
                        f"histogram_quantile(0.99, sum by (instance, le) (rate(omad_batch_size_bucket[{RATE}])))"
                    ),
                    "{{agent}} p99",
                    "B",
                ),
            ],
            (8, 12, 0, 26),
        ),
        timeseries(
            "Queued requests and calls in flight",
            [
                target(per_agent("max by (instance) (omad_queued_requests)"), "{{agent}} queued", "A"),
                target(per_agent("max by (instance) (omad_in_flight_calls)"), "{{agent}} in flight", "B"),
            ],
            (8, 12, 12, 26),
        ),
        row("Faults", 34),
        timeseries(
            "Non-finite actions refused",
            [
                target(
                    per_agent(f"sum by (instance) (increase(omad_nonfinite_actions_total[{RATE}]))"), "{{agent}}", "A"
                )
            ],
            (8, 8, 0, 35),
        ),
        timeseries(
            "Reloads by result",
            [
                target(
                    per_agent(f"sum by (instance, result) (increase(omad_reloads_total[{RATE}]))"),
                    "{{agent}} {{result}}",
                    "A",
                )
            ],
            (8, 8, 8, 35),
        ),
        timeseries(
            "Inference failures",
            [
                target(
                    per_agent(f"sum by (instance) (increase(omad_inference_failures_total[{RATE}]))"), "{{agent}}", "A"
                )
            ],
            (8, 8, 16, 35),
        ),
    ]
    return Dashboard(
        title="omad team",
        uid="omad-team",
        description="A team of omad policy servers, one per agent (generated by deploy/grafana/dashboard.py)",
        tags=["omad"],
        timezone="utc",
        refresh="30s",
        panels=panels,
        templating=Templating(
            list=[
                Template(name="datasource", label="Data source", query="prometheus", type="datasource"),
                Template(
                    name="agent",
                    label="Agent",
                    query="label_values(omad_team_info, agent)",
                    dataSource=DATASOURCE,
                    includeAll=True,
                    multi=True,
                    default="$__all",
                    allValue=".*",
                    refresh=2,
                ),
            ]
        ),
    ).auto_panel_ids()


def render() -> str:
    return json.dumps(build().to_json_data(), cls=DashboardEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs from the build")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python deploy/grafana/dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
