"""`omad serve --max-delay-us D` at C clients: actions/s, p50/p99, and the mean batch and ORT time per
call from the server's own metrics. Produced the merge-window numbers (D = 0: mean batch 4.9,
456 us per call; D = 500: 9.3, and 4384 vs 4429 actions/s at 16 clients). Those ran with merged
batches inline (the default before --inference-thread auto); pass flags to the server to match.

    .venv/bin/python -m bench.probes.serving_merge_window 16,64 0,500     # client counts, delays (us)
"""

import asyncio
import re
import sys
import tempfile
import urllib.request
from pathlib import Path

import bench.serving as S


def g(text, key):
    return float(re.search(rf"^{key} (\S+)", text, re.M).group(1))


wd = Path(tempfile.mkdtemp())
bench = S.make_bench(wd, 100, 10, 5.0, [1])
obs, _ = bench.inputs[1]
request, _ = S.act_request(obs, None, None, False)
for delay in sys.argv[2].split(","):
    port = S.pick_ports("127.0.0.1", 0, 1)[0]
    srv, addr = S.omad_server(
        bench, "--batching", "--max-batch", "64", "--max-delay-us", delay, "--metrics-port", str(port)
    )
    with srv:
        for c in map(int, sys.argv[1].split(",")):
            m0 = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            s = asyncio.run(S.closed_loop(addr, request, c, 4))
            m = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            rows = g(m, "omad_batch_size_sum") - g(m0, "omad_batch_size_sum")
            n = g(m, "omad_batch_size_count") - g(m0, "omad_batch_size_count")
            inf = g(m, "omad_inference_seconds_sum") - g(m0, "omad_inference_seconds_sum")
            print(
                f"delay {delay} C {c}: {s['actions_per_s']:.0f}/s p50 {s['median_us']:.0f} p99 {s['p99_us']:.0f}  mean batch {rows / n:.1f}  ORT per call {inf / n * 1e6:.0f} us",
                flush=True,
            )
