"""omad: train multi-agent diffusion policies (OMAD), export each agent to ONNX, serve each agent over
gRPC, and evaluate the team closed-loop.

Subpackages, bottom to top: `omad.core` (environments, the agent contract, errors; torch-free),
`omad.runtime` (the export format and the ONNX policy; torch-free), `omad.train` (algorithms and the
training loop), `omad.serve` (the per-agent server, client and launcher; torch-free), `omad.export`
(checkpoint -> ONNX), `omad.experiments` (sweeps, statistics, reports), and on top `omad.evaluation`,
`omad.demo` and `omad.cli`.
"""
