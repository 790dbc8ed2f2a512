"""What the console's JSON API does, in terms of the three gRPC services; knows no HTTP."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from relive.client.channel import Endpoints, call, connect_channel
from relive.console.index import IndexFeeder, TimelineIndex, event_brief
from relive.errors import InvalidArgument, NotFound, ReliveError, from_rpc_error
from relive.executor.v1 import executor_pb2, executor_pb2_grpc
from relive.recorder.v1 import event_pb2, recorder_pb2, recorder_pb2_grpc
from relive.registry.v1 import registry_pb2, registry_pb2_grpc

# Individual events are listed only for windows holding at most this many.
MAX_LIST = 5000
MAX_TRACE_EVENTS = 2000
STREAM_TIMEOUT_S = 24 * 3600.0
# An ION nobody looked at for this long loses its index (and its watch) until asked again;
# a rebuilt index also forgets what retention deleted meanwhile.
INDEX_IDLE_S = 600.0


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def ts(ms: int) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromMilliseconds(int(ms))
    return out


def ts_ms(value: timestamp_pb2.Timestamp) -> int:
    return int(value.ToMilliseconds())


def ion_name(ion: str) -> str:
    ion = ion.strip("/")
    if not ion:
        raise InvalidArgument("an ION is required", field="ion")
    return ion if ion.startswith("ions/") else f"ions/{ion}"


def capture_json(c: recorder_pb2.Capture) -> dict[str, Any]:
    ion, _, cid = c.name.removeprefix("ions/").partition("/captures/")
    return {
        "name": c.name,
        "ion": f"ions/{ion}",
        "id": cid,
        "start": ts_ms(c.start_time),
        "end": ts_ms(c.end_time),
        "description": c.description,
        "owner": c.owner,
        "project": c.project,
        "create_time": ts_ms(c.create_time) if c.HasField("create_time") else None,
        "imported_from": c.imported_from,
    }


def run_json(r: executor_pb2.Run) -> dict[str, Any]:
    out = to_dict(r)
    out["state"] = executor_pb2.RunState.Name(r.state).removeprefix("RUN_STATE_")
    for node, n in zip(out.get("nodes", []), r.nodes, strict=False):
        node["state"] = executor_pb2.RunState.Name(n.state).removeprefix("RUN_STATE_")
    return out


def verification_json(v: executor_pb2.Verification) -> dict[str, Any]:
    def status(s: int) -> str:
        return executor_pb2.VerificationStatus.Name(
            executor_pb2.VerificationStatus.ValueType(s)
        ).removeprefix("VERIFICATION_STATUS_")

    return {
        "original": v.original,
        "relaunch": v.relaunch,
        "status": status(v.status),
        "tolerance": v.tolerance,
        "nodes": [
            {
                "node": n.node,
                "status": status(n.status),
                "compared": n.compared,
                "first_divergent_event": n.first_divergent_event,
                "reason": n.reason,
                "reused": n.reused,
            }
            for n in v.nodes
        ],
    }


def _node_order(definition: registry_pb2.IonDefinition) -> list[dict[str, Any]]:
    """Nodes in dependency order (ties by name), so lanes read top to bottom like the ION."""
    names = sorted(definition.nodes)
    upstream: dict[str, set[str]] = {n: set() for n in names}
    for edge in definition.edges:
        if edge.to_node in upstream and edge.from_node in upstream:
            upstream[edge.to_node].add(edge.from_node)
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and upstream[n] <= set(ordered)]
        ordered.extend(ready or [n for n in names if n not in ordered][:1])
    out: list[dict[str, Any]] = []
    for n in ordered:
        node = definition.nodes[n]
        if node.WhichOneof("kind") == "policy":
            kind = registry_pb2.PolicyType.Name(node.policy.type).removeprefix("POLICY_TYPE_")
            out.append({"node": n, "kind": "policy", "policy": kind.lower()})
        else:
            out.append(
                {
                    "node": n,
                    "kind": "pipeline",
                    "components": sorted(node.pipeline.components),
                    "streaming": node.HasField("streaming"),
                }
            )
    return out


class Backend:
    """Clients of the three services plus one timeline index per ION looked at."""

    def __init__(self, endpoints: Endpoints | Mapping[str, str]) -> None:
        if isinstance(endpoints, Mapping):
            endpoints = Endpoints(
                registry=endpoints["registry"],
                recorder=endpoints["recorder"],
                executor=endpoints["executor"],
                mongodb=endpoints.get("mongodb", ""),
            )
        self.endpoints = endpoints
        self._channels = [
            connect_channel(endpoints.registry),
            connect_channel(endpoints.recorder),
            connect_channel(endpoints.executor),
        ]
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._channels[0])
        self.recorder = recorder_pb2_grpc.RecorderServiceStub(self._channels[1])
        self.executor = executor_pb2_grpc.ExecutorServiceStub(self._channels[2])
        self._indexes: dict[str, tuple[TimelineIndex, IndexFeeder]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            feeders = [f for _, f in self._indexes.values()]
            self._indexes.clear()
        for f in feeders:
            f.stop()
        for ch in self._channels:
            ch.close()

    # -- IONs

    def list_ions(self) -> list[dict[str, Any]]:
        ions: list[dict[str, Any]] = []
        token = ""
        while True:
            resp = call(
                self.registry.ListIons,
                registry_pb2.ListIonsRequest(page_size=200, page_token=token),
            )
            for ion in resp.ions:
                ions.append(
                    {
                        "name": ion.name,
                        "id": ion.name.removeprefix("ions/"),
                        "latest_revision": ion.latest_revision,
                        "retention_days": ion.retention_days,
                    }
                )
            token = resp.next_page_token
            if not token:
                return ions

    def get_ion(self, ion: str) -> dict[str, Any]:
        name = ion_name(ion)
        got = call(self.registry.GetIon, registry_pb2.GetIonRequest(name=name))
        rev = call(
            self.registry.GetRevision,
            registry_pb2.GetRevisionRequest(name=f"{name}/revisions/{got.latest_revision}"),
        )
        index = self.index(name)
        return {
            "name": name,
            "id": name.removeprefix("ions/"),
            "latest_revision": got.latest_revision,
            "retention_days": got.retention_days,
            "nodes": _node_order(rev.definition),
            "edges": [
                {"from": e.from_node, "to": e.to_node, "carries": e.carries}
                for e in rev.definition.edges
            ],
            "source_yaml": rev.source_yaml,
            "extent": index.extent(),
            "indexed": len(index.ms),
        }

    # -- the timeline

    def index(self, ion: str, wait_s: float = 0.0) -> TimelineIndex:
        name = ion_name(ion)
        now = time.monotonic()
        idle: list[IndexFeeder] = []
        with self._lock:
            for key, (other, feeder) in list(self._indexes.items()):
                if key != name and now - other.touched > INDEX_IDLE_S and not other.has_subscribers:
                    idle.append(feeder)
                    del self._indexes[key]
            found = self._indexes.get(name)
            if found is None:
                index = TimelineIndex(name)
                feeder = IndexFeeder(
                    index, lambda req: self.recorder.WatchEvents(req, timeout=STREAM_TIMEOUT_S)
                )
                self._indexes[name] = (index, feeder)
                feeder.start()
            else:
                index = found[0]
            index.touched = now
        for feeder in idle:
            feeder.stop()
        if wait_s:
            index.wait_caught_up(wait_s)
        return index

    def histogram(
        self, ion: str, start: int | None, end: int | None, buckets: int
    ) -> dict[str, Any]:
        index = self.index(ion, wait_s=60.0)
        if start is None or end is None:
            extent = index.extent()
            now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
            lo, hi = extent if extent else (now - 3_600_000, now)
            pad = max(1000, (hi - lo) // 20)
            start = lo - pad if start is None else start
            end = hi + pad if end is None else end
        if end <= start:
            raise InvalidArgument("end must be after start", field="end")
        out = index.histogram(start, end, buckets)
        out["ion"] = index.ion
        out["run_states"] = self._run_states(index.ion)
        return out

    def _run_states(self, ion: str) -> dict[str, str]:
        """State of each run the executor knows; the timeline draws bars without it too."""
        try:
            resp = call(
                self.executor.ListRuns,
                executor_pb2.ListRunsRequest(parent=ion, page_size=500),
                timeout=5.0,
            )
        except ReliveError:
            return {}
        return {
            r.name: executor_pb2.RunState.Name(r.state).removeprefix("RUN_STATE_")
            for r in resp.runs
        }

    def list_events(
        self,
        ion: str,
        start: int,
        end: int,
        *,
        kinds: list[str] | None = None,
        nodes: list[str] | None = None,
        limit: int = MAX_LIST,
    ) -> dict[str, Any]:
        flt = recorder_pb2.EventFilter(start_time=ts(start), end_time=ts(end))
        for k in kinds or []:
            flt.kinds.append(event_pb2.EventKind.Value(f"EVENT_KIND_{k.upper()}"))
        flt.nodes.extend(nodes or [])
        events: list[dict[str, Any]] = []
        token = ""
        limit = max(1, min(limit, MAX_LIST))
        while len(events) < limit:
            resp = call(
                self.recorder.ListEvents,
                recorder_pb2.ListEventsRequest(
                    parent=ion_name(ion),
                    filter=flt,
                    page_size=min(1000, limit - len(events)),
                    page_token=token,
                ),
            )
            events.extend(event_brief(e) for e in resp.events)
            token = resp.next_page_token
            if not token:
                break
        return {"events": events[:limit], "truncated": bool(token)}

    def _find_event(self, ion: str, sequence: int, ms: int) -> event_pb2.Event:
        flt = recorder_pb2.EventFilter(start_time=ts(ms), end_time=ts(ms + 1))
        token = ""
        while True:
            resp = call(
                self.recorder.ListEvents,
                recorder_pb2.ListEventsRequest(
                    parent=ion_name(ion), filter=flt, page_size=1000, page_token=token
                ),
            )
            for e in resp.events:
                if e.sequence == sequence:
                    return e
            token = resp.next_page_token
            if not token:
                raise NotFound(f"no event {sequence} at {ms} in {ion}", field="sequence")

    def event_details(self, ion: str, sequence: int, ms: int) -> dict[str, Any]:
        """The event whole, its run's launch spec, and its trace as a span tree."""
        e = self._find_event(ion, sequence, ms)
        out: dict[str, Any] = {"event": to_dict(e), "brief": event_brief(e)}
        out["run"] = self.run_spec(ion, e.run) if e.run else None
        out["trace"] = self.trace(ion, e.trace_id) if e.trace_id else None
        return out

    def run_spec(self, ion: str, run: str) -> dict[str, Any]:
        """The executor's Run; without it, the spec recorded in the run.launched event."""
        try:
            r = call(self.executor.GetRun, executor_pb2.GetRunRequest(name=run))
            got = run_json(r)
            return {
                "name": run,
                "source": "executor",
                "state": got["state"],
                "spec": got.get("spec", {}),
                "run": got,
            }
        except ReliveError as err:
            reason = str(err)
        flt = recorder_pb2.EventFilter(runs=[run], types=["run.launched"])
        resp = call(
            self.recorder.ListEvents,
            recorder_pb2.ListEventsRequest(parent=ion_name(ion), filter=flt, page_size=1),
        )
        if resp.events:
            details = to_dict(resp.events[0].lifecycle.details)
            return {"name": run, "source": "run.launched", "state": "", "spec": details}
        return {"name": run, "source": "", "state": "", "spec": {}, "error": reason}

    def trace(self, ion: str, trace_id: str) -> dict[str, Any]:
        flt = recorder_pb2.EventFilter(trace_id=trace_id)
        events: list[event_pb2.Event] = []
        token = ""
        while len(events) < MAX_TRACE_EVENTS:
            resp = call(
                self.recorder.ListEvents,
                recorder_pb2.ListEventsRequest(
                    parent=ion_name(ion), filter=flt, page_size=1000, page_token=token
                ),
            )
            events.extend(resp.events)
            token = resp.next_page_token
            if not token:
                break
        return {
            "trace_id": trace_id,
            "roots": span_tree(events),
            "events": len(events),
            "truncated": bool(token),
        }

    # -- captures

    def list_captures(self, ion: str = "") -> list[dict[str, Any]]:
        parent = ion_name(ion) if ion else "ions/-"
        out: list[dict[str, Any]] = []
        token = ""
        while True:
            resp = call(
                self.recorder.ListCaptures,
                recorder_pb2.ListCapturesRequest(parent=parent, page_size=500, page_token=token),
            )
            out.extend(capture_json(c) for c in resp.captures)
            token = resp.next_page_token
            if not token:
                break
        out.sort(key=lambda c: c["create_time"] or 0, reverse=True)
        return out

    def create_capture(
        self, ion: str, capture_id: str, start: int, end: int, description: str = ""
    ) -> dict[str, Any]:
        c = call(
            self.recorder.CreateCapture,
            recorder_pb2.CreateCaptureRequest(
                parent=ion_name(ion),
                capture_id=capture_id,
                capture=recorder_pb2.Capture(
                    start_time=ts(start), end_time=ts(end), description=description
                ),
                request_id=uuid.uuid4().hex,
            ),
        )
        return capture_json(c)

    def get_capture(self, name: str) -> dict[str, Any]:
        return capture_json(
            call(self.recorder.GetCapture, recorder_pb2.GetCaptureRequest(name=name))
        )

    def delete_capture(self, name: str) -> None:
        call(self.recorder.DeleteCapture, recorder_pb2.DeleteCaptureRequest(name=name))

    def replay(self, name: str, speed: float, start: int | None) -> Any:
        """The ReplayCapture stream (a grpc call: iterate it, cancel it)."""
        req = recorder_pb2.ReplayCaptureRequest(name=name, speed=speed)
        if start is not None:
            req.start_time.CopyFrom(ts(start))
        return self.recorder.ReplayCapture(req, timeout=STREAM_TIMEOUT_S)

    def export(self, name: str, include_models: bool) -> Any:
        return self.recorder.ExportCapture(
            recorder_pb2.ExportCaptureRequest(name=name, include_models=include_models),
            timeout=3600.0,
        )

    # -- relaunch and verify

    def relaunch(self, capture: str, pipelines: list[str]) -> dict[str, Any]:
        req = executor_pb2.RelaunchRunRequest(
            capture=capture, pipelines=pipelines, request_id=uuid.uuid4().hex
        )
        return run_json(call(self.executor.RelaunchRun, req, timeout=120.0))

    def get_run(self, name: str) -> dict[str, Any]:
        return run_json(call(self.executor.GetRun, executor_pb2.GetRunRequest(name=name)))

    def verify(self, original: str, relaunch: str, tolerance: float) -> dict[str, Any]:
        v = call(
            self.executor.VerifyRun,
            executor_pb2.VerifyRunRequest(
                original=original, relaunch=relaunch, tolerance=tolerance
            ),
            timeout=120.0,
        )
        return verification_json(v)


def span_tree(events: list[event_pb2.Event]) -> list[dict[str, Any]]:
    """Spans nested by parent_span_id; other events of the trace hang off their span."""
    spans: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.kind != event_pb2.EVENT_KIND_SPAN or not e.span_id:
            continue
        s = e.span
        start = ts_ms(s.start_time) if s.HasField("start_time") else e.hlc.physical_ms
        end = ts_ms(s.end_time) if s.HasField("end_time") else start
        spans[e.span_id] = {
            "span_id": e.span_id,
            "parent_span_id": s.parent_span_id,
            "name": s.name or e.type,
            "service": s.service_name,
            "node": e.node,
            "start": start,
            "end": end,
            "status_code": s.status_code,
            "status_message": s.status_message,
            "attributes": to_dict(s.attributes) if s.HasField("attributes") else {},
            "sequence": e.sequence,
            "ms": e.hlc.physical_ms,
            "children": [],
            "events": [],
        }
    roots: list[dict[str, Any]] = []
    loose: list[dict[str, Any]] = []
    for e in events:
        if e.kind == event_pb2.EVENT_KIND_SPAN:
            continue
        brief = event_brief(e)
        owner = spans.get(e.span_id)
        if owner is None and e.span_id:
            # Its span was not recorded (not exported, or still open): the event still says
            # where it ran, so it hangs under its node and component.
            owner = _placeholder(spans, e, brief["ms"])
        if owner is None:
            loose.append(brief)
            continue
        owner["events"].append(brief)
    for span in sorted(spans.values(), key=lambda s: (s["start"], s["span_id"])):
        parent = spans.get(span["parent_span_id"])
        (parent["children"] if parent and parent is not span else roots).append(span)
    if loose:
        roots.append(
            {
                "span_id": "",
                "name": "(events outside any span)",
                "children": [],
                "events": loose,
                "start": loose[0]["ms"],
                "end": loose[-1]["ms"],
                "service": "",
                "node": "",
                "status_code": 0,
                "status_message": "",
                "attributes": {},
                "parent_span_id": "",
            }
        )
    return roots


def _placeholder(spans: dict[str, dict[str, Any]], e: event_pb2.Event, ms: int) -> dict[str, Any]:
    """The stand-in span for a node (and component) whose spans were not recorded."""
    parent = ""
    found: dict[str, Any] | None = None
    for key, name in ((f"~{e.node}", e.node or "(run)"), (f"~{e.node}/{e.component}", e.component)):
        if key.endswith("/"):
            break
        found = spans.get(key)
        if found is None:
            found = spans[key] = {
                "span_id": key,
                "parent_span_id": parent,
                "name": name,
                "service": "(spans not recorded)",
                "node": e.node,
                "start": ms,
                "end": ms,
                "status_code": 0,
                "status_message": "",
                "attributes": {},
                "children": [],
                "events": [],
            }
        found["start"] = min(found["start"], ms)
        found["end"] = max(found["end"], ms)
        parent = key
    assert found is not None
    return found


def rpc_error(e: grpc.RpcError) -> ReliveError:
    return from_rpc_error(e)
