"""Merged batches inline on the event loop vs on the inference thread: two `omad serve` processes
(--inference-thread off / on), C closed-loop streaming clients, interleaved 4-second windows.
Produced the A/B (16 and 64 clients, 4 windows each: 4059 vs 3440, 5919 vs 5230 actions/s).

    .venv/bin/python -m bench.probes.serving_inline_vs_thread 16,64 4     # client counts, windows each
"""

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

import bench.serving as S

wd = Path(tempfile.mkdtemp())
bench = S.make_bench(wd, 100, 10, 5.0, [1])
obs, _ = bench.inputs[1]
request, _ = S.act_request(obs, None, None, False)
a, addr_a = S.omad_server(bench, "--batching", "--max-batch", "64", "--inference-thread", "off")
b, addr_b = S.omad_server(bench, "--batching", "--max-batch", "64", "--inference-thread", "on")
res = {"off": [], "on": []}
with a, b:
    for c in map(int, sys.argv[1].split(",")):
        for rep in range(int(sys.argv[2])):
            for name, addr in (("off", addr_a), ("on", addr_b)) if rep % 2 == 0 else (("on", addr_b), ("off", addr_a)):
                s = asyncio.run(S.closed_loop(addr, request, c, 4))
                res[name].append(s)
                print(c, name, f"{s['actions_per_s']:.0f}/s p50 {s['median_us']:.0f} p99 {s['p99_us']:.0f}", flush=True)
        for name in res:
            print(
                "==",
                c,
                name,
                "median actions/s",
                statistics.median(r["actions_per_s"] for r in res[name]),
                "median p99",
                statistics.median(r["p99_us"] for r in res[name]),
            )
        res = {"off": [], "on": []}
