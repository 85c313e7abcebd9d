"""The torch-free core every other package builds on: user-facing errors, the agent and environment
specs, the environment registry and adapters, the policy protocol and the episode loop.

Nothing here imports torch (an import-linter contract checks it), so the serving image and the
closed-loop evaluation client can use it.
"""
