"""Sweeps over (env, algo, seed) and their backends (local processes, Ray), which launch training
jobs; aggregation, statistics, plots and reports over their results, which are torch-free.
"""
