"""A policy kind: the declaration one module makes, and its entry in the table of kinds."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from relive.policies import params as p
from relive.policies.context import Outcome, PolicyContext
from relive.registry.v1 import registry_pb2

Run = Callable[[PolicyContext, dict[str, Any]], Outcome]
CrossCheck = Callable[[Mapping[str, Any], p.Fail], None]
GraphRefs = Callable[[registry_pb2.IonDefinition, str], list[str]]


def _no_check(values: Mapping[str, Any], fail: p.Fail) -> None:
    return None


def _no_graph_refs(definition: registry_pb2.IonDefinition, name: str) -> list[str]:
    return []


@dataclass(frozen=True)
class PolicySpec:
    """Everything a kind's module declares."""

    params: Sequence[p.Param]
    run: Run
    # Checks across parameters (a weight per member...), after each one passed its own.
    check: CrossCheck = _no_check
    # Nodes it reads that no parameter names (a canary's primary), found in the graph.
    graph_refs: GraphRefs = _no_graph_refs
    # The event type of its recorded decision, replayed by node and round on a relaunch.
    replays: str = ""
    # In a relaunch of chosen pipelines, whether it reruns only when all the nodes it depends
    # on rerun (a canary compares two of them), rather than when any does.
    reruns_with_all_inputs: bool = False


@dataclass(frozen=True)
class Kind:
    """One row of the table: the ION name, the proto enum value, and the module's spec."""

    name: str
    enum: registry_pb2.PolicyType.ValueType
    spec: PolicySpec

    def validate(self, values: Mapping[str, Any], fail: p.Fail) -> None:
        """Raises ``fail(path, problem)`` for the first thing wrong with ``values``."""
        p.validate(self.name, self.spec.params, values, fail)
        self.spec.check(values, fail)

    def node_refs(self, values: Mapping[str, Any]) -> list[tuple[p.Path, str]]:
        """The node ids its parameters name, with their paths under ``params``."""
        return p.node_refs(self.spec.params, values)

    def depends_on(self, definition: registry_pb2.IonDefinition, name: str) -> list[str]:
        """Nodes policy ``name`` reads besides its incoming edges."""
        values = json_format.MessageToDict(definition.nodes[name].policy.params)
        refs = [str(ref) for _, ref in self.node_refs(values)]
        return refs + self.spec.graph_refs(definition, name)

    def with_defaults(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return p.with_defaults(self.spec.params, values)

    def run(self, ctx: PolicyContext, values: Mapping[str, Any]) -> Outcome:
        return self.spec.run(ctx, self.with_defaults(values))
