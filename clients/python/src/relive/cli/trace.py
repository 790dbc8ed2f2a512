"""``relive trace RUN``: a run's span tree, with the events recorded inside each span."""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from relive.cli.output import add_json_flag, emit_json, to_dict
from relive.client.channel import connect_channel, load_endpoints
from relive.client.executor import ExecutorClient
from relive.client.recorder import RecorderClient
from relive.errors import FailedPrecondition
from relive.recorder.v1 import event_pb2


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("trace", help="print a run's span tree with each span's events")
    p.add_argument("run", metavar="RUN", help="ions/{ion}/runs/{run}")
    add_json_flag(p)
    p.set_defaults(func=cmd_trace)


@dataclass
class SpanNode:
    """One span (or, for events whose span was not exported, a placeholder) and its children."""

    span_id: str
    span: event_pb2.Event | None = None
    events: list[event_pb2.Event] = field(default_factory=list)
    children: list[SpanNode] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.span is None:
            return f"(span {self.span_id or 'none'})"
        s = self.span.span
        ms = (s.end_time.ToNanoseconds() - s.start_time.ToNanoseconds()) / 1e6
        where = f" [{s.service_name}]" if s.service_name else ""
        status = " ERROR" if s.status_code == 2 else ""
        return f"{s.name}{where} {ms:.1f} ms{status}"


def build_tree(events: list[event_pb2.Event]) -> list[SpanNode]:
    """Links span events by parent id; other events hang under the span they carry.

    ``events`` come in timeline (causal) order, so children and events keep that order.
    """
    nodes: dict[str, SpanNode] = {}

    def node(span_id: str) -> SpanNode:
        if span_id not in nodes:
            nodes[span_id] = SpanNode(span_id)
        return nodes[span_id]

    # span id -> parent span id, in order of first appearance.
    parents: dict[str, str] = {}
    for e in events:
        if e.kind == event_pb2.EVENT_KIND_SPAN:
            node(e.span_id).span = e
            parents[e.span_id] = e.span.parent_span_id
        else:
            node(e.span_id).events.append(e)
            parents.setdefault(e.span_id, "")
    order = list(parents)
    roots: list[SpanNode] = []
    children: dict[str, list[str]] = defaultdict(list)
    for span_id in order:
        parent = parents[span_id]
        if parent and parent in nodes and parent != span_id:
            children[parent].append(span_id)
        else:
            roots.append(nodes[span_id])
    for parent, kids in children.items():
        nodes[parent].children = [nodes[k] for k in kids]
    return roots


def _event_line(e: event_pb2.Event) -> str:
    what = e.WhichOneof("attributes")
    detail = ""
    if what == "stat":
        detail = f" {e.stat.name}={e.stat.value:g}"
    elif what == "error":
        detail = f" {e.error.error_type}: {e.error.message}"
    elif what == "model":
        detail = f" {e.model.action} {e.model.model_version}"
    elif what == "human_action":
        detail = f" {e.human_action.user} {e.human_action.action}"
    return f"#{e.sequence} {e.type}{detail}"


def render(roots: list[SpanNode]) -> list[str]:
    lines: list[str] = []

    def walk(n: SpanNode, depth: int) -> None:
        pad = "  " * depth
        lines.append(f"{pad}{n.label}")
        for e in n.events:
            lines.append(f"{pad}  · {_event_line(e)}")
        for child in n.children:
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return lines


def _as_json(n: SpanNode) -> dict[str, Any]:
    return {
        "span_id": n.span_id,
        "span": to_dict(n.span) if n.span is not None else None,
        "events": [to_dict(e) for e in n.events],
        "children": [_as_json(c) for c in n.children],
    }


def cmd_trace(args: argparse.Namespace) -> int:
    endpoints = load_endpoints()
    run = ExecutorClient(connect_channel(endpoints.executor)).get(args.run)
    if not run.trace_id:
        raise FailedPrecondition(f"{args.run} has no trace id", field="RUN")
    ion = args.run.split("/runs/")[0]
    recorder = RecorderClient(connect_channel(endpoints.recorder))
    events = list(recorder.list_events(ion, trace_id=run.trace_id))
    roots = build_tree(events)
    if args.json:
        emit_json(
            {"run": args.run, "trace_id": run.trace_id, "spans": [_as_json(r) for r in roots]}
        )
    else:
        print(f"{args.run} trace {run.trace_id}: {len(events)} events")
        print("\n".join(render(roots)))
    return 0
