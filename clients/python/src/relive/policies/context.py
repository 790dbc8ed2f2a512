"""What a policy can do and see while it runs: the protocol the executor implements.

A policy's behaviour is written against :class:`PolicyContext` only, so it can be run and
tested without Ray, servers or a store (``tests/unit`` has a small in-memory implementation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from relive.pipeline.events import EventFactory
from relive.pipeline.models import StoredModel
from relive.recorder.v1.event_pb2 import Event
from relive.registry.v1 import registry_pb2


class Where(TypedDict):
    """Where a policy's events go: ``**where`` them into the ``EventFactory`` methods."""

    node: str
    component: str  # "", or "@<round>" in a retraining round


class PolicyFailed(Exception):
    """The policy node fails, with this message as the node's (and the run's) error."""


@dataclass(frozen=True)
class Decision:
    """A person's decision at an approval gate (or the rule's, or the timeout's)."""

    approve: bool
    user: str
    comment: str


@dataclass
class Outcome:
    """What a policy passes on: its outputs (output name -> model version) and stats."""

    outputs: dict[str, str] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


class NodeOutput(Protocol):
    """What another node of the run produced."""

    @property
    def outputs(self) -> Mapping[str, str]: ...
    @property
    def stats(self) -> Mapping[str, float]: ...
    @property
    def predictions(self) -> Any: ...


class PolicyContext(Protocol):
    """One policy node, in one round (0, or a retraining round of a streaming run)."""

    @property
    def node(self) -> str:
        """The policy node's id."""

    @property
    def round(self) -> int: ...

    @property
    def definition(self) -> registry_pb2.IonDefinition:
        """The ION, for the graph around the node (its edges, the nodes it reads)."""

    @property
    def seed(self) -> int:
        """The run's root seed; derive the policy's own with ``relive.pipeline.derive_seed``."""

    @property
    def events(self) -> EventFactory:
        """Builds the run's events; pass ``**where`` to place one at this node and round."""

    @property
    def where(self) -> Where: ...

    def emit(self, event: Event) -> None: ...

    def incoming(self) -> tuple[dict[str, str], dict[str, float]]:
        """The models on the node's incoming edges (by what they carry, and by
        ``<from>.<carries>``), and the stats of the nodes they come from."""

    def result(self, node: str) -> NodeOutput | None:
        """What ``node`` produced in this run (None when it has not run)."""

    def model_sha256(self, version: str) -> str: ...

    def load_model(self, version: str) -> Any:
        """The model object of a model version."""

    def store_model(self, model: Any, labels: Mapping[str, str]) -> StoredModel:
        """Stores a model the policy built, as a new version of this node's ``model``."""

    def wait_for_person(self, timeout: float, on_timeout: str) -> Decision:
        """Blocks until a person decides (``relive run approve``); after ``timeout`` seconds
        ``on_timeout`` ("approve" or "reject") decides, or, when it is empty, the node fails."""

    def recorded(self, event_type: str) -> Event | None:
        """On a relaunch, the original run's event of ``event_type`` at this node and round:
        the decision to replay instead of asking again. None on a first launch."""


def model_of(ctx: PolicyContext, node: str) -> str:
    """The model version ``node`` made: its ``model`` output, or its only one, or what an
    edge from it carries here; "" when it made none."""
    result = ctx.result(node)
    outputs = result.outputs if result is not None else {}
    version = outputs.get("model") or (next(iter(outputs.values())) if len(outputs) == 1 else "")
    models, _ = ctx.incoming()
    return version or next((v for k, v in models.items() if k.startswith(f"{node}.")), "")


def models_of(ctx: PolicyContext, nodes: list[str], what: str) -> list[str]:
    """``model_of`` each node; the policy fails naming the first that made none."""
    versions = []
    for n in nodes:
        version = model_of(ctx, n)
        if not version:
            raise PolicyFailed(f"{what}: node {n} made no model")
        versions.append(version)
    return versions
