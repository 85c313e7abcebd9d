"""Standalone float32 matmul rate (torch.mm 1024^3 and torch.bmm 2x256x256x256, 200 repetitions, 1 and 2
threads). Produced the standalone limit (169 GFLOP/s bmm, 135 mm at 2 threads).

    .venv/bin/python -m bench.probes.matmul_standalone
"""

import time

import torch

for threads in (1, 2):
    torch.set_num_threads(threads)
    for shape in [(1024, 1024, 1024), (2, 256, 256, 256)]:
        if len(shape) == 3:
            a, b = torch.randn(shape[0], shape[1]), torch.randn(shape[1], shape[2])
            product, flops = torch.mm, 2 * shape[0] * shape[1] * shape[2]
        else:
            a, b = torch.randn(shape[0], shape[1], shape[2]), torch.randn(shape[0], shape[2], shape[3])
            product, flops = torch.bmm, 2 * shape[0] * shape[1] * shape[2] * shape[3]
        for _ in range(20):
            product(a, b)
        n = 200
        t = time.perf_counter()
        for _ in range(n):
            product(a, b)
        print(threads, shape, f"{flops * n / (time.perf_counter() - t) / 1e9:.0f} GFLOP/s")
