"""GetSpec's reply: an agent's contract (omad.core.agent) on the wire, with what the server adds.

The server writes it from the loaded model's `ModelInfo`; a client reads the contract back from it.
Both go through the contract's record, so a field is named once, in omad.core.agent.
"""

from __future__ import annotations

from importlib import metadata

from omad.core.agent import CONTRACT_KEYS, AgentContract
from omad.runtime.schema import ModelInfo
from omad.runtime.team import UNKNOWN_TEAM
from omad.serve._generated import policy_pb2


def server_version() -> str:
    try:
        return metadata.version("omad")
    except metadata.PackageNotFoundError:
        return "unknown"


def spec_message(info: ModelInfo, max_batch: int, team_id: str = UNKNOWN_TEAM) -> policy_pb2.Spec:
    """The model's record (contract and provenance), its file's sha256 and team id, and this server's
    version and limit."""
    record = info.record()
    record["format_version"] = str(record["format_version"])  # a string on the wire
    return policy_pb2.Spec(
        **record, model_sha256=info.sha256, team_id=team_id, server_version=server_version(), max_batch=max_batch
    )


def contract_from_spec(spec: policy_pb2.Spec) -> AgentContract:
    """The agent's contract from a server's GetSpec reply; ContractError if it cannot hold."""
    return AgentContract.from_record({key: getattr(spec, key) for key in CONTRACT_KEYS})
