"""torch.profiler over 10 compiled OMAD K = 8 updates on HalfCheetah 2x3 (bench/training.py's synthetic
batch). Produced the profile of the compiled update (baddbmm + bmm 65%, inductor's fused
kernels about 20%, Adam 6%).

    .venv/bin/python -m bench.probes.training_profile
"""

import time

import torch
from torch.profiler import ProfilerActivity, profile

import bench.training as T

device = torch.device("cpu")
cfg, algo, batch = T.build("mamujoco:HalfCheetah-2x3", device, compile=True)
t = time.perf_counter()
for _ in range(4):
    algo.update(batch)
print("warm/compile s", time.perf_counter() - t)
t = time.perf_counter()
for _ in range(20):
    algo.update(batch)
print("upd/s", 20 / (time.perf_counter() - t))
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(10):
        algo.update(batch)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
