"""omad serving: a per-agent gRPC policy server (`omad serve`), its client, and the health check.

    from omad.serve import PolicyClient

Torch-free by design: the serving image has no torch. Attributes load lazily, so `omad --help`
does not pay for gRPC.
"""

from __future__ import annotations

__all__ = ["ActTiming", "PolicyCallError", "PolicyClient"]


def __getattr__(name: str):
    if name in __all__:
        from omad.serve import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
