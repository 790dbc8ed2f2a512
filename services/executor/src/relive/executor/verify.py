"""Verification: a relaunch against its original, node by node, from their recorded events.

Per node it compares model sha256s, prediction digests, the scored inputs, swap positions,
approvals, errors and stats (within a relative tolerance). System stats (wall time, CPU,
memory) differ between any two runs and are left out. Beside the nodes it lists what
differed between the two runs' recorded inputs, and names each mismatched node's likeliest
cause among them (``inputs`` works those out from the two launch specs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relive.executor.v1 import executor_pb2 as pb
from relive.pipeline.events import struct_to_dict
from relive.recorder.v1 import event_pb2

Key = tuple[Any, ...]


@dataclass
class Fact:
    key: Key
    value: Any
    event: str  # the event's resource name
    is_stat: bool = False


def facts(events: Iterable[event_pb2.Event], node: str) -> tuple[list[Fact], bool, dict[str, str]]:
    """The comparable facts of one node, whether it was executed, and its reused outputs."""
    out: list[Fact] = []
    seen: dict[Key, int] = {}
    executed = False
    reused: dict[str, str] = {}

    def add(key: Key, value: Any, e: event_pb2.Event, is_stat: bool = False) -> None:
        n = seen.get(key, 0)
        seen[key] = n + 1
        out.append(Fact((*key, n), value, e.name or e.event_id, is_stat))

    for e in events:
        if e.node != node:
            continue
        kind = e.WhichOneof("attributes")
        c = e.component
        if e.type == "node.started":
            executed = True
        elif e.type == "node.skipped":
            reused = {
                k: str(v) for k, v in struct_to_dict(e.lifecycle.details).get("outputs", {}).items()
            }
        elif e.type == "model.logged":
            add(("model", c), e.model.sha256, e)
        elif e.type == "model.swapped":
            add(("swap",), (e.model.batch, e.model.sha256), e)
        elif e.type == "prediction_digest":
            data = struct_to_dict(e.custom.data)
            add(("predictions", c, data.get("batch")), data.get("digest"), e)
        elif e.type == "stream.batch":
            data = struct_to_dict(e.custom.data)
            add(("input", c, data.get("batch")), data.get("sha256"), e)
        elif e.type == "human.approval":
            add(("approval", c), e.human_action.action, e)
        elif kind == "error" and e.type == "component.failed":
            add(("error", c), e.error.error_type, e)
        elif kind == "stat":
            if e.stat.labels.get("system") == "true" or e.stat.name.startswith("sys."):
                continue
            add(("stat", c, e.stat.name, e.stat.step), e.stat.value, e, True)
    return out, executed, reused


def _same(a: Fact, b: Fact, tolerance: float) -> bool:
    if a.is_stat:
        x, y = float(a.value), float(b.value)
        if math.isnan(x) and math.isnan(y):
            return True
        return math.isclose(x, y, rel_tol=tolerance, abs_tol=tolerance * 1e-6)
    return bool(a.value == b.value)


def _describe(key: Key) -> str:
    what, *rest = key
    return f"{what} " + " ".join(str(p) for p in rest[:-1] if p not in ("", None))


def compare_node(
    node: str,
    original: Sequence[event_pb2.Event],
    relaunch: Sequence[event_pb2.Event],
    tolerance: float,
    original_outputs: dict[str, str] | None = None,
) -> pb.NodeVerification:
    a, a_exec, a_reused = facts(original, node)
    b, b_exec, b_reused = facts(relaunch, node)
    result = pb.NodeVerification(node=node, status=pb.VERIFICATION_STATUS_MATCH)
    if not b_exec and not b:
        # The relaunch reused the recorded models: they must be the original's.
        result.reused = True
        want = dict(original_outputs or a_reused)
        diff = [k for k, v in b_reused.items() if want and want.get(k) not in (None, v)]
        result.compared = len(b_reused)
        if diff:
            result.status = pb.VERIFICATION_STATUS_MISMATCH
            result.reason = (
                f"reused output {diff[0]} is {b_reused[diff[0]]}, the original made {want[diff[0]]}"
            )
        return result
    by_key = {f.key: f for f in b}
    compared = 0
    for fa in a:
        fb = by_key.pop(fa.key, None)
        if fb is None:
            result.status = pb.VERIFICATION_STATUS_MISMATCH
            result.first_divergent_event = fa.event
            result.reason = (
                f"{_describe(fa.key)}: recorded in the original, missing in the relaunch"
            )
            break
        compared += 1
        if not _same(fa, fb, tolerance):
            result.status = pb.VERIFICATION_STATUS_MISMATCH
            result.first_divergent_event = fa.event
            result.reason = (
                f"{_describe(fa.key)}: original {_short(fa.value)}, relaunch {_short(fb.value)}"
            )
            break
    else:
        if by_key:
            extra = next(f for f in b if f.key in by_key)
            result.status = pb.VERIFICATION_STATUS_MISMATCH
            result.first_divergent_event = extra.event
            result.reason = f"{_describe(extra.key)}: only in the relaunch"
    result.compared = compared
    if a_exec != b_exec and result.status == pb.VERIFICATION_STATUS_MATCH and not a_reused:
        result.status = pb.VERIFICATION_STATUS_MISMATCH
        result.reason = "executed in only one of the two runs"
    return result


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) > 16:
        return value[:12] + "…"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def verify(
    original: str,
    relaunch: str,
    nodes: Sequence[str],
    original_events: Sequence[event_pb2.Event],
    relaunch_events: Sequence[event_pb2.Event],
    tolerance: float,
    original_outputs: dict[str, dict[str, str]] | None = None,
    differences: Sequence[pb.InputDifference] = (),
    causes: Mapping[str, str] | None = None,
) -> pb.Verification:
    """Node by node; ``differences`` are the inputs that differ, and ``causes`` the
    likeliest of them per node, given to each node that does not match."""
    out = pb.Verification(
        original=original,
        relaunch=relaunch,
        tolerance=tolerance,
        status=pb.VERIFICATION_STATUS_MATCH,
        differences=list(differences),
    )
    for node in nodes:
        nv = compare_node(
            node, original_events, relaunch_events, tolerance, (original_outputs or {}).get(node)
        )
        if nv.status != pb.VERIFICATION_STATUS_MATCH:
            out.status = pb.VERIFICATION_STATUS_MISMATCH
            nv.likely_cause = (causes or {}).get(node, "")
        out.nodes.append(nv)
    return out
