"""py-spy (200 Hz, --idle, raw) on an `omad serve --batching` process while C closed-loop clients load it;
writes the raw stacks to /tmp/prof/server16.txt. Produced the 16-client profile (ORT 40% of the
event loop, gRPC's reply write 30%, the handler's Python about 20%; merged batches inline then).

    .venv/bin/python -m bench.probes.serving_profile 16
"""

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

import bench.serving as S

wd = Path(tempfile.mkdtemp())
bench = S.make_bench(wd, 100, 10, 5.0, [1])
obs, _ = bench.inputs[1]
request, _ = S.act_request(obs, None, None, False)
server, addr = S.omad_server(bench, "--batching", "--max-batch", "64")
with server:
    pid = int(subprocess.check_output(["pgrep", "-f", "--", "omad serve"]).split()[0])
    spy = subprocess.Popen(
        [
            ".venv/bin/py-spy",
            "record",
            "-p",
            str(pid),
            "-f",
            "raw",
            "-o",
            "/tmp/prof/server16.txt",
            "-d",
            "12",
            "-r",
            "200",
            "--idle",
        ]
    )
    stats = asyncio.run(S.closed_loop(addr, request, int(sys.argv[1]), 10))
    spy.wait()
    print(stats)
