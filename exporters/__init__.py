"""Checkpoint -> ONNX export dir (+ Triton model repository), and a torch-free runtime for it.

- `exporters.runtime`: load and run exported graphs with ONNX Runtime (no torch; used by serving).
- `exporters.onnx_export`: trace a run dir's policies and verify the graphs (needs torch).
- `exporters.schema`: what an export dir holds (metadata keys, manifest), read by both.

This package's import must stay torch-free: the serving image has no torch.
"""
