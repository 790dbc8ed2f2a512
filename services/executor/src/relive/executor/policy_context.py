"""The executor's side of the policy kinds (``relive.policies``): their context, the gate
where approvals wait for a person, and the dispatch through the table of kinds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from relive import policies
from relive.executor.execution import NodeFailed, NodeResult, RunScope, incoming, params_of
from relive.executor.relaunch import RelaunchPlan
from relive.pipeline.events import EventFactory
from relive.pipeline.models import StoredModel, dumps, loads, model_id
from relive.policies.context import Decision, Where
from relive.recorder.v1.event_pb2 import Event
from relive.registry.v1 import registry_pb2

# Called when a gate starts (True) and stops (False) waiting for a person, by node and round.
OnWait = Callable[[str, int, bool], None]


class PersonGate:
    """Approval gates waiting for a person's decision, by (node, round)."""

    def __init__(self, check: Callable[[], None], on_wait: OnWait) -> None:
        self._check = check
        self._on_wait = on_wait
        self._cond = threading.Condition()
        self._waiting: set[tuple[str, int]] = set()
        self._decisions: dict[tuple[str, int], Decision] = {}

    def decide(self, node: str, approve: bool, user: str, comment: str) -> bool:
        """Hands a person's decision to a waiting gate; False when the gate is not waiting."""
        with self._cond:
            keys = [k for k in self._waiting if k[0] == node]
            if not keys:
                return False
            self._decisions[keys[0]] = Decision(approve, user, comment)
            self._cond.notify_all()
            return True

    def wake(self) -> None:
        """Lets waiting gates see that the run is stopping."""
        with self._cond:
            self._cond.notify_all()

    def wait(
        self,
        node: str,
        round_: int,
        timeout: float,
        on_timeout: str,
        announce: Callable[[], None],
    ) -> Decision:
        key = (node, round_)
        with self._cond:
            self._waiting.add(key)
        self._on_wait(node, round_, True)
        announce()
        deadline = time.monotonic() + timeout
        try:
            with self._cond:
                while key not in self._decisions:
                    self._check()
                    left = deadline - time.monotonic()
                    if left <= 0 and on_timeout:
                        self._decisions[key] = Decision(
                            on_timeout == "approve", "timeout", f"no decision within {timeout:g} s"
                        )
                        break
                    if left <= 0:
                        raise NodeFailed(
                            f"approval gate {node} timed out after {timeout:g} s "
                            "waiting for a decision (relive run approve RUN NODE)"
                        )
                    self._cond.wait(min(left, 0.5))
                return self._decisions.pop(key)
        finally:
            with self._cond:
                self._waiting.discard(key)
            self._on_wait(node, round_, False)


@dataclass
class NodePolicyContext:
    """``relive.policies.PolicyContext`` for one policy node of a run, in one round."""

    scope: RunScope
    gate: PersonGate
    plan: RelaunchPlan
    results: Mapping[str, NodeResult]
    node: str
    round: int

    @property
    def definition(self) -> registry_pb2.IonDefinition:
        return self.scope.definition

    @property
    def seed(self) -> int:
        return self.scope.spec.seed

    @property
    def events(self) -> EventFactory:
        return self.scope.events

    @property
    def where(self) -> Where:
        return {"node": self.node, "component": "" if self.round == 0 else f"@{self.round}"}

    def emit(self, event: Event) -> None:
        self.scope.emit(event)

    def incoming(self) -> tuple[dict[str, str], dict[str, float]]:
        return incoming(self.scope.definition, self.node, self.results)

    def result(self, node: str) -> NodeResult | None:
        return self.results.get(node)

    def model_sha256(self, version: str) -> str:
        return self.scope.env.store.load(version)[1]

    def load_model(self, version: str) -> Any:
        return loads(self.scope.env.store.load(version)[0])

    def store_model(self, model: Any, labels: Mapping[str, str]) -> StoredModel:
        return self.scope.env.store.store(
            model_id(self.scope.ion_id, self.node, "model"),
            dumps(model),
            run=self.scope.run,
            node=self.node,
            labels=labels,
            dataset_refs=(),
        )

    def wait_for_person(self, timeout: float, on_timeout: str) -> Decision:
        def announce() -> None:
            self.emit(
                self.events.lifecycle(
                    "approval.waiting",
                    "WAITING",
                    {"timeout_s": timeout, "round": self.round},
                    node=self.node,
                    component="",
                )
            )

        return self.gate.wait(self.node, self.round, timeout, on_timeout, announce)

    def recorded(self, event_type: str) -> Event | None:
        return self.plan.recorded(self.node, self.round, event_type)


def run_policy(ctx: NodePolicyContext, policy: registry_pb2.Policy) -> NodeResult:
    """Runs a policy node through the table of kinds, with its declared defaults."""
    kind = policies.by_enum(policy.type)
    if kind is None:
        raise NodeFailed(f"node {ctx.node}: unknown policy type {policy.type}")
    try:
        outcome = kind.run(ctx, params_of(ctx.scope.spec, ctx.node))
    except policies.PolicyFailed as e:
        raise NodeFailed(str(e)) from e
    return NodeResult(outputs=outcome.outputs, stats=outcome.stats)
