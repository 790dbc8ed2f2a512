"""Relaunch planning: what the original run recorded, and what a relaunch takes from it
instead of people, clocks and luck (recorded decisions, retraining starts and swaps, and the
model versions of the nodes it does not run again)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from relive import errors, policies
from relive.executor import graph
from relive.executor.v1 import executor_pb2 as pb
from relive.pipeline.events import struct_to_dict
from relive.recorder.v1.event_pb2 import Event

# (node, round) -> event type -> the recorded event
Decisions = dict[tuple[str, int], dict[str, Event]]
# stream node -> [(round, batch position)]
Positions = dict[str, list[tuple[int, int]]]


@dataclass
class RelaunchPlan:
    """What a relaunch takes from the recorded original (empty for a first launch)."""

    # The decisions policies recorded (an approval, a champion/challenger verdict), replayed.
    decisions: Decisions = field(default_factory=dict)
    # stream node -> [(round, batch position of the swap)]
    swaps: Positions = field(default_factory=dict)
    # stream node -> [(round, batch position where its retraining started)]
    retrains: Positions = field(default_factory=dict)
    # Nodes to execute; None means all. The others reuse spec.pinned_models.
    execute: set[str] | None = None
    # True for a relaunch: retraining and swaps follow the recording, not the clock.
    relaunch: bool = False

    def recorded(self, node: str, round_: int, event_type: str) -> Event | None:
        return self.decisions.get((node, round_), {}).get(event_type)


@dataclass
class Recorded:
    """What the original run recorded: node outputs, decisions, swaps and retrainings."""

    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    decisions: Decisions = field(default_factory=dict)
    swaps: Positions = field(default_factory=dict)
    retrains: Positions = field(default_factory=dict)


def _replayed() -> set[str]:
    """The event types of the decisions policy kinds replay (``PolicySpec.replays``)."""
    return {k.spec.replays for k in policies.KINDS if k.spec.replays}


def recorded_types() -> list[str]:
    """The event types a relaunch reads from its original."""
    return ["node.finished", "node.skipped", *sorted(_replayed()), "stream.swap", "stream.retrain"]


def _round_of(e: Event) -> int:
    """Policies record round N (of a retraining chain) as component "@N"."""
    return int(e.component[1:]) if e.component.startswith("@") else 0


def read_recorded(events: Iterable[Event], stored: pb.Run | None) -> Recorded:
    """Reads ``recorded_types()`` events of one run; ``stored`` (the run as this executor
    saved it, if it did) fills in outputs the events do not hold."""
    out = Recorded()
    replayed = _replayed()
    for e in events:
        if e.type in ("node.finished", "node.skipped"):
            details = struct_to_dict(e.lifecycle.details)
            if int(details.get("round", 0)) == 0:
                out.outputs[e.node] = {k: str(v) for k, v in details.get("outputs", {}).items()}
        elif e.type in replayed:
            out.decisions.setdefault((e.node, _round_of(e)), {})[e.type] = e
        elif e.type in ("stream.swap", "stream.retrain"):
            d = struct_to_dict(e.custom.data)
            target = out.swaps if e.type == "stream.swap" else out.retrains
            target.setdefault(e.node, []).append((int(d["round"]), int(d["batch"])))
    if stored is not None:
        for n in stored.nodes:
            if n.outputs and n.node not in out.outputs:
                out.outputs[n.node] = dict(n.outputs)
    return out


def chosen_nodes(spec: pb.LaunchSpec, pipelines: Sequence[str]) -> set[str]:
    """The chosen pipelines and the policies that run again with them: a policy reruns when
    any node it depends on does (or all of them, when its kind needs them all)."""
    definition = spec.definition
    for p in pipelines:
        node = definition.nodes.get(p)
        if node is None or node.WhichOneof("kind") != "pipeline":
            known = sorted(
                n for n, d in definition.nodes.items() if d.WhichOneof("kind") == "pipeline"
            )
            raise errors.InvalidArgument(
                f"--pipeline {p}: the ION has no pipeline node {p!r} (pipelines: "
                + ", ".join(known)
                + ")",
                field="pipelines",
            )
    deps = graph.dependencies(definition)
    chosen = set(pipelines)
    for n in graph.topo_order(deps):
        node = definition.nodes[n]
        if node.WhichOneof("kind") == "policy" and deps[n]:
            kind = policies.by_enum(node.policy.type)
            needs_all = kind is not None and kind.spec.reruns_with_all_inputs
            hits = [d in chosen for d in deps[n]]
            if all(hits) if needs_all else any(hits):
                chosen.add(n)
    return chosen


def plan(
    spec: pb.LaunchSpec, recorded: Recorded, pipelines: Sequence[str]
) -> tuple[RelaunchPlan, pb.LaunchSpec]:
    """The relaunch's plan and spec: the original's, with the model versions of the nodes
    it does not run again pinned when only ``pipelines`` run."""
    new_spec = pb.LaunchSpec()
    new_spec.CopyFrom(spec)
    out = RelaunchPlan(
        decisions=recorded.decisions,
        swaps=recorded.swaps,
        retrains=recorded.retrains,
        relaunch=True,
    )
    if pipelines:
        chosen = chosen_nodes(spec, pipelines)
        out.execute = chosen
        for n in spec.definition.nodes:
            if n in chosen:
                continue
            for output, version in recorded.outputs.get(n, {}).items():
                new_spec.pinned_models[f"{n}.{output}"] = version
    return out, new_spec
