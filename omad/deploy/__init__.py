"""Deployment manifests for an export (`omad deploy`): Kubernetes, one Deployment per agent.

Torch-free; it reads the export (verified as a server would load it) and the server's defaults.
"""
