"""A team of agent servers as one client, checked to serve one export (torch-free).

    with TeamClient(["127.0.0.1:50051", "127.0.0.1:50052"]) as team:
        team.team_id                                   # the export the servers share
        actions = team.act(obs, noise)                 # one step: obs and noise per agent, in env order

Every server reports the team id of the graph it serves (omad.runtime.team): in GetSpec, and in
every reply. A team whose agents report different ids is mixed: some servers serve another export
(a rollout half done, a server pointed at the wrong files). The check runs at connect time and on
every step, because a server can be reloaded while a client talks to it. A mixed team fails with
`TeamMismatch`, one line naming the agents and their ids; with `allow_mixed` the step runs and is
counted in `mixed_steps`. Servers whose export carries no team id report "unknown": such a team
cannot be checked, and `verified` says so.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from omad.core.agent import AgentContract, ContractError
from omad.core.errors import OmadError
from omad.runtime.team import UNKNOWN_TEAM, short
from omad.serve.client import PolicyCallError, PolicyClient, PolicyStream
from omad.serve.spec import contract_from_spec


class TeamMismatch(OmadError):
    """The agents' servers serve graphs of different exports."""


class TeamConnectError(OmadError):
    """A server of the team cannot be used."""


def mixed_team(names: Sequence[str], team_ids: Sequence[str]) -> str | None:
    """None if every agent reports one team id, else a line naming each id's agents:
    'agent_0, agent_1 on team 1a2b3c4d5e6f; agent_2 on team 9f8e7d6c5b4a'."""
    if len(set(team_ids)) <= 1:
        return None
    groups: dict[str, list[str]] = {}
    for name, team in zip(names, team_ids):
        groups.setdefault(team, []).append(name)
    return "; ".join(f"{', '.join(agents)} on team {short(team)}" for team, agents in groups.items())


class TeamCheck:
    """Counts the steps of a team and those that ran on a mixed team; raises unless mixed is allowed."""

    def __init__(self, names: Sequence[str], allow_mixed: bool = False):
        self.names = list(names)
        self.allow_mixed = allow_mixed
        self.steps = 0
        self.mixed_steps = 0
        self.first_mixed: str | None = None  # the first mixed step's description
        self._lock = threading.Lock()

    def connect(self, team_ids: Sequence[str]) -> None:
        problem = mixed_team(self.names, team_ids)
        if problem is not None and not self.allow_mixed:
            raise TeamMismatch(
                f"the servers serve different exports: {problem} (pass --allow-mixed-team to run anyway)"
            )

    def step(self, team_ids: Sequence[str]) -> None:
        problem = mixed_team(self.names, team_ids)
        with self._lock:
            self.steps += 1
            if problem is None:
                return
            self.mixed_steps += 1
            if self.first_mixed is None:
                self.first_mixed = f"step {self.steps - 1}: {problem}"
        if not self.allow_mixed:
            raise TeamMismatch(
                f"the team became mixed at step {self.steps - 1}: {problem} "
                "(a rollout in progress? pass --allow-mixed-team to run anyway)"
            )


class TeamClient:
    """One client per agent server, in env order, checked to serve one export.

    Every option of `PolicyClient` (token, tls_ca, tls_cert, tls_key, tls_server_name, timeout_s,
    retries) applies to each server."""

    def __init__(self, addrs: Sequence[str], allow_mixed: bool = False, **client_options):
        if not addrs:
            raise TeamConnectError("a team needs at least one server address")
        self.addrs = list(addrs)
        self.clients: list[PolicyClient] = []
        self.contracts: list[AgentContract] = []
        self.team_ids: list[str] = []  # as reported at connect time
        self._streams: list[PolicyStream] | None = None
        self._pool: ThreadPoolExecutor | None = None
        try:
            for i, addr in enumerate(self.addrs):
                client = PolicyClient(addr, **client_options)
                self.clients.append(client)
                try:
                    spec = client.spec()
                    self.contracts.append(contract_from_spec(spec))
                except PolicyCallError as err:
                    raise TeamConnectError(
                        f"agent {i} server at {addr} is not usable ({err.code.name}: {err.details})"
                    ) from None
                except ContractError as err:
                    raise TeamConnectError(f"agent {i} server at {addr} describes an unusable agent ({err})") from None
                self.team_ids.append(spec.team_id or UNKNOWN_TEAM)
            self.check = TeamCheck([c.name for c in self.contracts], allow_mixed)
            self.check.connect(self.team_ids)
        except BaseException:
            self.close()
            raise

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.contracts]

    @property
    def team_id(self) -> str:
        """The team id all servers reported at connect time ("mixed" if they differ)."""
        return self.team_ids[0] if len(set(self.team_ids)) == 1 else "mixed"

    @property
    def verified(self) -> bool:
        """Whether the team id could be checked: every server reports one (none says "unknown")."""
        return UNKNOWN_TEAM not in self.team_ids

    @property
    def streams(self) -> list[PolicyStream]:
        """One open ActStream per agent (opened on first use)."""
        if self._streams is None:
            self._streams = [client.stream() for client in self.clients]
        return self._streams

    def check_step(self) -> None:
        """Check the team ids of the streams' latest replies (after each has answered one step)."""
        self.check.step([stream.last_model.team_id if stream.last_model else UNKNOWN_TEAM for stream in self.streams])

    def act(self, obs: Sequence[np.ndarray], noise: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One step: agent i's actions for obs[i] [B, d_o_i] and noise[i] [K_i + 1, B, d_a_i], computed on
        every server at once; then the replies' team ids are checked."""
        if len(obs) != len(self.clients) or len(noise) != len(self.clients):
            raise OmadError(f"a step of this team takes {len(self.clients)} observations and noises, one per agent")
        streams = self.streams
        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(streams), thread_name_prefix="omad-team")
        futures = [self._pool.submit(s.act, o, n) for s, o, n in zip(streams, obs, noise)]
        actions = [f.result() for f in futures]  # each stream's reply has its own deadline
        self.check_step()
        return actions

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        for stream in self._streams or []:
            stream.close()
        for client in self.clients:
            client.close()

    def __enter__(self) -> TeamClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
