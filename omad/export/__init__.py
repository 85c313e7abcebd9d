"""Checkpoint -> ONNX export dir (+ Triton model repository).

- `omad.export.onnx`: trace a run dir's policies into graphs and verify them (needs torch).
- `omad.export.triton`: a Triton model repository for an export dir.

The package's import stays torch-free; only `omad.export.onnx` loads torch.
"""
