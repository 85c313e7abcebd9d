"""Adam vs Adam(fused=True) on the compiled OMAD K = 8 update, HalfCheetah 2x3, 6 interleaved windows of
10 updates each. Produced the "fused Adam: 22.0 vs 22.3 updates/s".

    .venv/bin/python -m bench.probes.training_fused_adam
"""

import statistics
import time

import torch

import bench.training as T

device = torch.device("cpu")
algos = {}
for fused in (False, True):
    cfg, algo, batch = T.build("mamujoco:HalfCheetah-2x3", device, compile=True)
    if fused:
        algo.actor_opt = torch.optim.Adam(algo.actors.parameters(), lr=cfg.lr_actor, fused=True)
        algo.critic_opt = torch.optim.Adam(algo.critic.parameters(), lr=cfg.lr_critic, fused=True)
        algo.alpha_opt = torch.optim.Adam([algo.log_alpha], lr=cfg.lr_alpha, fused=True)
    for _ in range(4):
        algo.update(batch)
    algos[fused] = (algo, batch)
res = {False: [], True: []}
for w in range(6):
    for fused in (False, True) if w % 2 == 0 else (True, False):
        algo, batch = algos[fused]
        t = time.perf_counter()
        for _ in range(10):
            algo.update(batch)
        res[fused].append(10 / (time.perf_counter() - t))
print({k: round(statistics.median(v), 2) for k, v in res.items()})
