"""What every part of one run's execution shares: where things are, the run's scope, node
results, and the two ways a node stops."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf.timestamp_pb2 import Timestamp

from relive.client.channel import Access
from relive.core.identity import DEFAULT_PROJECT
from relive.executor.v1 import executor_pb2 as pb
from relive.pipeline.events import EventFactory, EventSink, struct_to_dict
from relive.pipeline.models import ModelStore
from relive.recorder.v1.event_pb2 import Event
from relive.registry.v1 import registry_pb2

if TYPE_CHECKING:
    from relive.executor.code import RunCode


class RunStopped(Exception):
    """The run was cancelled, or another node failed first."""


class NodeFailed(Exception):
    pass


@dataclass
class RunEnv:
    """What the runner needs from outside: where things are and how to record."""

    recorder: str
    registry: str
    sink: EventSink
    store: ModelStore
    remote: Any  # the Ray remote function that runs a component
    ray: Any  # the ray module
    project: str = DEFAULT_PROJECT  # the run's (its ION's) project
    access: Access | None = None  # what components call the services with
    allow_drift: bool = False
    # Each component's code snapshot and its Ray working_dir; None runs components from the
    # import path of wherever they run (in one process, as bench/relaunch.py does).
    code: RunCode | None = None


@dataclass
class NodeResult:
    outputs: dict[str, str] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    predictions: Any = None
    executed: bool = True


@dataclass
class RunScope:
    """One run as its parts see it: its names, spec, environment and events, and the check
    that stops a part once the run is stopping."""

    run: str  # the run's resource name
    ion: str  # "ions/{ion}"
    spec: pb.LaunchSpec
    env: RunEnv
    events: EventFactory
    check: Callable[[], None]  # raises RunStopped once the run is stopping

    @property
    def definition(self) -> registry_pb2.IonDefinition:
        return self.spec.definition

    @property
    def ion_id(self) -> str:
        return self.ion.split("/")[-1]

    def emit(self, event: Event) -> None:
        self.env.sink.emit(event)


def now_ts() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def intify(value: Any) -> Any:
    """Struct numbers are doubles; whole ones go back to int (n_estimators=10, not 10.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: intify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [intify(v) for v in value]
    return value


def params_of(spec: pb.LaunchSpec, node: str, component: str = "") -> dict[str, Any]:
    key = f"{node}.{component}" if component else node
    return intify(struct_to_dict(spec.params[key])) if key in spec.params else {}


def incoming(
    definition: registry_pb2.IonDefinition, name: str, results: Mapping[str, NodeResult]
) -> tuple[dict[str, str], dict[str, float]]:
    """The models on the edges into ``name`` (by what they carry, and by ``<from>.<carries>``)
    and the stats of the nodes they come from."""
    models: dict[str, str] = {}
    stats: dict[str, float] = {}
    for e in definition.edges:
        if e.to_node != name or e.from_node not in results:
            continue
        up = results[e.from_node]
        stats.update(up.stats)
        version = up.outputs.get(e.carries) or (
            next(iter(up.outputs.values())) if len(up.outputs) == 1 else ""
        )
        if version:
            models.setdefault(e.carries, version)
            models[f"{e.from_node}.{e.carries}"] = version
    return models, stats
