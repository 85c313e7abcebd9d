"""The export format (metadata keys, manifest, hashes) and the ONNX policy runtime that serving and
evaluation load exported graphs with. Torch-free: the serving image has no torch.
"""
