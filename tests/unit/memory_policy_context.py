"""A small in-memory ``relive.policies.PolicyContext``: a real implementation of the
protocol (events into a list, models in a dict, people answering from a queue), for running
the policy kinds without Ray, servers or a store."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relive.pipeline.events import EventFactory, struct_to_dict
from relive.pipeline.models import MemoryModelStore, StoredModel, dumps, loads
from relive.policies import Decision, PolicyFailed, by_enum
from relive.policies.context import Outcome, Where
from relive.recorder.v1.event_pb2 import Event
from relive.registry import definition as ion_file
from relive.registry.servicer import definition_to_pb
from relive.registry.v1 import registry_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]


def ion(text: str) -> registry_pb2.IonDefinition:
    """An ION definition from YAML, parsed and validated as the registry does it."""
    return definition_to_pb(ion_file.parse(text, ion_id="test", code_path=[str(REPO_ROOT)]))


@dataclass
class Made:
    """What a node produced."""

    outputs: dict[str, str] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    predictions: Any = None


class MemoryContext:
    def __init__(
        self,
        definition: registry_pb2.IonDefinition,
        node: str,
        results: Mapping[str, Made] | None = None,
        *,
        round_: int = 0,
        seed: int = 7,
        recorded: Mapping[str, Event] | None = None,
        people: list[Decision] | None = None,
    ) -> None:
        self.definition = definition
        self.node = node
        self.round = round_
        self.seed = seed
        self.results = dict(results or {})
        self.emitted: list[Event] = []
        self.events = EventFactory("ions/test", "ions/test/runs/run-1")
        self.store = MemoryModelStore()
        self._recorded = dict(recorded or {})
        self.people = list(people or [])  # decisions people make, in order
        self.waited: list[tuple[float, str]] = []

    @property
    def where(self) -> Where:
        return {"node": self.node, "component": "" if self.round == 0 else f"@{self.round}"}

    def emit(self, event: Event) -> None:
        self.emitted.append(event)

    def incoming(self) -> tuple[dict[str, str], dict[str, float]]:
        models: dict[str, str] = {}
        stats: dict[str, float] = {}
        for e in self.definition.edges:
            up = self.results.get(e.from_node)
            if e.to_node != self.node or up is None:
                continue
            stats.update(up.stats)
            version = up.outputs.get(e.carries, "")
            if version:
                models.setdefault(e.carries, version)
                models[f"{e.from_node}.{e.carries}"] = version
        return models, stats

    def result(self, node: str) -> Made | None:
        return self.results.get(node)

    def model_sha256(self, version: str) -> str:
        return self.store.load(version)[1]

    def load_model(self, version: str) -> Any:
        return loads(self.store.load(version)[0])

    def store_model(self, model: Any, labels: Mapping[str, str]) -> StoredModel:
        return self.store.store(f"test-{self.node}-model", dumps(model), node=self.node)

    def wait_for_person(self, timeout: float, on_timeout: str) -> Decision:
        """The next person's decision; with nobody left, the timeout's."""
        self.waited.append((timeout, on_timeout))
        if self.people:
            return self.people.pop(0)
        if on_timeout:
            return Decision(on_timeout == "approve", "timeout", f"no decision within {timeout:g} s")
        raise PolicyFailed(f"approval gate {self.node} timed out after {timeout:g} s")

    def recorded(self, event_type: str) -> Event | None:
        return self._recorded.get(event_type)

    # ----- for the tests

    def add_model(self, node: str, model: Any) -> str:
        """Stores ``model`` as ``node``'s output and returns its version."""
        version = self.store.store(f"test-{node}-model", pickle.dumps(model)).name
        self.results.setdefault(node, Made()).outputs["model"] = version
        return version

    def run(self, params: Mapping[str, Any] | None = None) -> Outcome:
        """Runs the node's policy kind with ``params`` (default: the ION's)."""
        policy = self.definition.nodes[self.node].policy
        kind = by_enum(policy.type)
        assert kind is not None
        values = dict(params) if params is not None else struct_to_dict(policy.params)
        return kind.run(self, values)

    def of_type(self, event_type: str) -> list[Event]:
        return [e for e in self.emitted if e.type == event_type]


__all__ = ["Made", "MemoryContext", "ion"]
