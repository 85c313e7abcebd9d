"""`omad demo --quick`: every stage of the product path, end to end, as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path


def test_demo_quick_runs_every_stage_and_stops_its_servers(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "omad", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    served = report["served"]
    assert served["source"] == "grpc" and len(served["returns"]) == 3
    assert set(served["latency_us"]) == {"agent_0", "agent_1"}  # HalfCheetah 2x3
    assert all(p["p50"] > 0 for p in served["latency_us"].values())
    assert report["servers_exit_code"] == 0
    for path in report["artifacts"].values():
        assert Path(path).exists(), path
    assert (out / "episode.gif").stat().st_size > 10_000
    assert "random" in proc.stdout and "p99" in proc.stdout
    leftover = subprocess.run(["pgrep", "-f", f"serve --model {out}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "a server outlived the demo"
