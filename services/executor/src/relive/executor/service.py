"""The executor's domain logic: launch, runs, approvals, relaunch and verification.

It knows no gRPC: it takes and returns protobuf messages and raises relive.core errors.
"""

from __future__ import annotations

import getpass
import importlib.metadata
import logging
import os
import platform
import random
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import yaml
from google.protobuf import json_format, struct_pb2

from relive.client.channel import Access
from relive.client.recorder import EventSink
from relive.core import errors, identity
from relive.core.names import check_id, decode_token, encode_token, page_size, parse_name
from relive.executor import drift, policies
from relive.executor.backends import Recorder, Registry
from relive.executor.runner import Replay, RunEnv, RunExecution, now_ts
from relive.executor.store import RunStore
from relive.executor.v1 import executor_pb2 as pb
from relive.executor.verify import verify as compare_runs
from relive.pipeline import datasets
from relive.pipeline.events import EventFactory, struct_to_dict
from relive.recorder.v1 import event_pb2
from relive.registry.v1 import registry_pb2

log = logging.getLogger(__name__)

RUN_PATTERN = "ions/{ion}/runs/{run}"
RESTART_REASON = (
    "the executor restarted while this run was in progress; relaunch it with `relive relaunch RUN`"
)


def environment(ray_version: str) -> pb.Environment:
    packages = {}
    for dist in importlib.metadata.distributions():
        name = dist.name
        if name:
            packages[name.lower()] = dist.version
    return pb.Environment(
        python_version=sys.version.split()[0],
        packages=packages,
        platform=platform.platform(),
        ray_version=ray_version,
    )


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


class ExecutorService:
    def __init__(
        self,
        *,
        store: RunStore,
        registry: Registry,
        recorder: Recorder,
        ray: Any,
        remote: Callable[..., Any],
        code_path: Sequence[str],
        access: Access | None = None,
    ) -> None:
        self.store = store
        # The executor's own access (service token, CA); components get the caller's token.
        self.access = access or Access()
        self.registry = registry
        self.recorder = recorder
        self.ray = ray
        self.remote = remote
        self.code_path = list(code_path)
        self._active: dict[str, RunExecution] = {}
        self._sinks: dict[str, EventSink] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._dirty: dict[str, pb.Run] = {}
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._writer_thread = threading.Thread(target=self._writer, name="run-writer", daemon=True)
        self._writer_thread.start()

    # ----- lifecycle of the service

    def recover(self) -> int:
        """Marks runs that a previous executor left unfinished as FAILED, with the reason."""
        count = 0
        for run, project in self.store.unfinished():
            if run.name in self._active:
                continue
            run.state = pb.RUN_STATE_FAILED
            run.is_terminal = True
            run.error_message = RESTART_REASON
            run.end_time.CopyFrom(now_ts())
            for n in run.nodes:
                if n.state in (pb.RUN_STATE_PENDING, pb.RUN_STATE_RUNNING, pb.RUN_STATE_WAITING):
                    n.state = pb.RUN_STATE_CANCELLED
            self.store.save(run)
            try:
                sink = self._sink(_ion_of(run.name), project)
                sink.emit(
                    EventFactory(_ion_of(run.name), run.name, trace_id=run.trace_id).error(
                        "run.failed", "ExecutorRestarted", RESTART_REASON
                    )
                )
                sink.flush()
            except Exception:
                log.warning("could not record that run %s failed", run.name, exc_info=True)
            count += 1
        return count

    def shutdown(self, wait: float = 5.0) -> None:
        with self._lock:
            active = list(self._active.values())
        for ex in active:
            ex.cancel("the executor stopped while the run was in progress")
        for ex in active:
            ex.join(wait)
        self._closing.set()
        self._wake.set()
        self._writer_thread.join(5)
        for sink in list(self._sinks.values()):
            try:
                sink.close()
            except Exception:
                log.warning("could not flush events on shutdown", exc_info=True)

    def _sink(self, ion: str, project: str) -> EventSink:
        """The executor's own events of ``ion`` (an ION's project never changes)."""
        with self._lock:
            if ion not in self._sinks:
                self._sinks[ion] = self.recorder.sink(ion, project)
            return self._sinks[ion]

    # ----- who sees what: another project's IONs and runs do not exist for the caller

    def _ion_project(self, ion: str, field: str) -> str:
        """The project of ``ions/{ion}``; NotFound when the caller cannot see it. An ION since
        deleted keeps the project of its runs."""
        project = self.registry.project_of(ion) or self.store.project_of_ion(ion)
        return self._visible(project, f"ION ions/{ion}", field)

    def _known_project(self, name: str) -> str | None:
        """The project of a run of this executor (one store read at most), or None."""
        with self._lock:
            ex = self._active.get(name)
        return ex.env.project if ex is not None else self.store.project_of(name)

    def _run_project(self, name: str, field: str) -> str:
        """The project of a run of this executor; NotFound when the caller cannot see it."""
        return self._visible(self._known_project(name), f"run {name}", field)

    def _recorded_run_project(self, name: str, field: str) -> str:
        """As _run_project, for a run that may be known only by its events (an import)."""
        project = self._known_project(name)
        if project is None:
            return self._ion_project(parse_name(name, RUN_PATTERN, field)["ion"], field)
        return self._visible(project, f"run {name}", field)

    @staticmethod
    def _visible(project: str | None, what: str, field: str) -> str:
        if project is None or not identity.current().sees(project):
            raise errors.NotFound(f"{what} does not exist", field=field)
        return project

    def _delegated(self, project: str) -> Access:
        """What a run's components call the services with: the caller's own token, so that
        user code never holds the executor's service token."""
        return replace(self.access, token=identity.current().token, project=project)

    # ----- runs

    def get(self, name: str) -> pb.Run:
        parse_name(name, RUN_PATTERN)
        with self._lock:
            ex = self._active.get(name)
        if ex is not None:
            self._visible(ex.env.project, f"run {name}", "name")
            with ex._lock:
                return _copy(ex.run)
        run, project = self.store.get_with_project(name) or (None, None)
        self._visible(project, f"run {name}", "name")
        assert run is not None
        return run

    def list(self, parent: str, size: int, token: str) -> tuple[list[pb.Run], str]:
        ion = parse_name(parent, "ions/{ion}", "parent")["ion"]
        self._ion_project(ion, "parent")
        limit = page_size(size)
        cursor = decode_token(token, {"parent": parent}).get("before")
        rows = self.store.list_runs(ion, limit + 1, cursor)
        runs = [self._fresh(r) for _, r in rows[:limit]]
        next_token = (
            encode_token({"parent": parent, "before": rows[limit - 1][0]})
            if len(rows) > limit
            else ""
        )
        return runs, next_token

    def _fresh(self, run: pb.Run) -> pb.Run:
        with self._lock:
            ex = self._active.get(run.name)
        if ex is None:
            return run
        with ex._lock:
            return _copy(ex.run)

    def cancel(self, name: str) -> pb.Run:
        run = self.get(name)
        if run.is_terminal:
            raise errors.FailedPrecondition(
                f"run {name} already ended ({pb.RunState.Name(run.state)}); there is nothing "
                "to cancel",
                field="name",
            )
        with self._lock:
            ex = self._active.get(name)
        if ex is None:
            raise errors.FailedPrecondition(
                f"run {name} is not running in this executor", field="name"
            )
        ex.cancel("cancelled by request")
        ex.join(30)
        return self.get(name)

    def watch(self, name: str, alive: Callable[[], bool]) -> Iterator[pb.Run]:
        run = self.get(name)
        yield run
        last = run.SerializeToString()
        while not run.is_terminal and alive():
            with self._changed:
                self._changed.wait(0.5)
            run = self.get(name)
            data = run.SerializeToString()
            if data != last:
                last = data
                yield run

    def approve(self, run_name: str, node: str, approve: bool, comment: str, user: str) -> pb.Run:
        parse_name(run_name, RUN_PATTERN, "run")
        self._run_project(run_name, "run")
        run = self.get(run_name)
        if node not in run.spec.definition.nodes:
            raise errors.NotFound(f"run {run_name} has no node {node!r}", field="node")
        with self._lock:
            ex = self._active.get(run_name)
        if ex is None or not ex.decide(node, approve, user or "anonymous", comment):
            state = next((pb.RunState.Name(n.state) for n in run.nodes if n.node == node), "?")
            raise errors.FailedPrecondition(
                f"node {node} of run {run_name} is not waiting for approval (it is {state})",
                field="node",
                reason="NOT_WAITING",
            )
        return self.get(run_name)

    def _on_change(self, run: pb.Run) -> None:
        """Watchers hear at once; the store gets the newest state from a background writer,
        except the terminal state, which is written before anyone is told the run ended."""
        if run.is_terminal:
            with self._lock:
                self._dirty.pop(run.name, None)
            self.store.save(run)
            with self._lock:
                self._active.pop(run.name, None)
        else:
            with self._lock:
                self._dirty[run.name] = run
            self._wake.set()
        with self._changed:
            self._changed.notify_all()

    def _writer(self) -> None:
        while not self._closing.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            self._write_dirty()
            self._closing.wait(0.1)

    def _write_dirty(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, {}
        for name, _run in dirty.items():
            ex = self._active.get(name)
            if ex is None:
                continue  # ended meanwhile: its terminal state was written already
            with ex._lock:
                snapshot = _copy(ex.run)
            if not snapshot.is_terminal:
                try:
                    self.store.save(snapshot)
                except Exception:
                    log.warning("could not save run %s", name, exc_info=True)

    # ----- launch

    def launch(
        self,
        parent: str,
        revision_id: int,
        overrides: Mapping[str, str],
        seed: int,
        request_id: str,
    ) -> pb.Run:
        ion = parse_name(parent, "ions/{ion}", "parent")["ion"]
        project = self._ion_project(ion, "parent")
        request_key = f"{ion}:{request_id}" if request_id else ""
        if request_key and (existing := self.store.by_request(request_key)):
            return self._fresh(existing)
        if revision_id < 0:
            raise errors.InvalidArgument(
                f"revision_id must be positive, got {revision_id}", field="revision_id"
            )
        rev_name = f"{parent}/revisions/{revision_id or 'latest'}"
        try:
            revision = self.registry.get_revision(rev_name, project)
        except errors.NotFound as e:
            what = f"revision {revision_id}" if revision_id else "any revision"
            raise errors.NotFound(
                f"ION {ion} has no {what}: {e.message}",
                field="revision_id" if revision_id else "parent",
            ) from e
        spec = pb.LaunchSpec(
            revision=revision.name,
            definition_sha256=revision.definition_sha256,
            definition=revision.definition,
            seed=seed or random.randrange(1, 2**31),
            environment=environment(getattr(self.ray, "__version__", "")),
        )
        spec.code_refs.extend(revision.code_refs)
        spec.overrides.update(overrides)
        self._resolve_params(spec, revision.definition, overrides)
        self._resolve_datasets(spec)
        spec.launch_number = self.store.next_number(f"launch:{ion}")
        self._pin_scheduled(spec, ion)
        return self._start(ion, project, spec, Replay(), request_key=request_key)

    def _resolve_params(
        self,
        spec: pb.LaunchSpec,
        definition: registry_pb2.IonDefinition,
        overrides: Mapping[str, str],
    ) -> None:
        resolved: dict[str, dict[str, Any]] = {}
        for node_id, node in definition.nodes.items():
            if node.WhichOneof("kind") == "pipeline":
                for comp_id, comp in node.pipeline.components.items():
                    resolved[f"{node_id}.{comp_id}"] = struct_to_dict(comp.params)
            elif node.WhichOneof("kind") == "policy":
                resolved[node_id] = struct_to_dict(node.policy.params)
        for key, text in sorted(overrides.items()):
            field = f"overrides[{key}]"
            target, _, param = key.rpartition(".")
            if not target or not param:
                raise errors.InvalidArgument(
                    f"--set {key}: use NODE.COMPONENT.PARAM (or NODE.PARAM for a policy)",
                    field=field,
                )
            if target not in resolved:
                node_id = target.split(".")[0]
                if node_id not in definition.nodes:
                    raise errors.InvalidArgument(
                        f"--set {key}: the ION has no node {node_id!r} "
                        f"(nodes: {', '.join(sorted(definition.nodes))})",
                        field=field,
                    )
                raise errors.InvalidArgument(
                    f"--set {key}: node {node_id!r} has no component {target.partition('.')[2]!r}",
                    field=field,
                )
            if param not in resolved[target]:
                known = ", ".join(sorted(resolved[target])) or "none"
                raise errors.InvalidArgument(
                    f"--set {key}: {target} has no parameter {param!r} (its parameters: {known})",
                    field=field,
                )
            resolved[target][param] = _parse_value(text)
        for key, values in resolved.items():
            s = struct_pb2.Struct()
            s.update(values)
            spec.params[key].CopyFrom(s)

    def _resolve_datasets(self, spec: pb.LaunchSpec) -> None:
        seen: set[str] = set()
        for key in sorted(spec.params):
            for param, value in struct_to_dict(spec.params[key]).items():
                if not datasets.looks_like_dataset(param, value):
                    continue
                uri = datasets.normalize(str(value))
                if uri in seen:
                    continue
                seen.add(uri)
                try:
                    digest, size = datasets.content_hash(uri)
                except (OSError, ValueError) as e:
                    raise errors.InvalidArgument(
                        f"{key}.{param}: dataset {value!r} cannot be read: {e}",
                        field=f"params[{key}.{param}]",
                    ) from e
                spec.dataset_refs.append(
                    registry_pb2.DatasetRef(uri=uri, sha256=digest, size_bytes=size)
                )

    def _pin_scheduled(self, spec: pb.LaunchSpec, ion: str) -> None:
        """Nodes whose schedule skips this launch reuse the newest models they made before."""
        for node_id, node in spec.definition.nodes.items():
            every = node.schedule.every_launches
            if every <= 1 or (spec.launch_number - 1) % every == 0:
                continue
            for run in self.store.all_of(ion):
                nr = next((n for n in run.nodes if n.node == node_id), None)
                if nr and nr.state == pb.RUN_STATE_SUCCEEDED and nr.outputs:
                    for out, version in nr.outputs.items():
                        spec.pinned_models[f"{node_id}.{out}"] = version
                    break

    def _start(
        self,
        ion: str,
        project: str,
        spec: pb.LaunchSpec,
        replay: Replay,
        *,
        request_key: str = "",
        relaunch_of: str = "",
        source_capture: str = "",
        allow_drift: bool = False,
    ) -> pb.Run:
        policies.topo_order(policies.dependencies(spec.definition))
        number = self.store.next_number(f"run:{ion}")
        name = f"ions/{ion}/runs/run-{number}-{os.urandom(3).hex()}"
        run = pb.Run(
            name=name,
            state=pb.RUN_STATE_PENDING,
            spec=spec,
            relaunch_of=relaunch_of,
            source_capture=source_capture,
            trace_id=os.urandom(16).hex(),
        )
        run.create_time.CopyFrom(now_ts())
        for node_id in sorted(spec.definition.nodes):
            run.nodes.add(node=node_id, state=pb.RUN_STATE_PENDING)
        self.store.create(run, ion, project, number, request_key)
        sink = self._sink(f"ions/{ion}", project)
        # run.launched opens the run's trace: it belongs to the run's span.
        run_span = os.urandom(8).hex()
        factory = EventFactory(f"ions/{ion}", name, trace_id=run.trace_id, span_id=run_span)
        sink.emit(
            factory.lifecycle(
                "run.launched",
                "PENDING",
                {
                    "spec": json_format.MessageToDict(spec, preserving_proto_field_name=True),
                    "relaunch_of": relaunch_of,
                    "source_capture": source_capture,
                    "launched_by": getpass.getuser(),
                },
            )
        )
        sink.flush()
        env = RunEnv(
            recorder=self.recorder.endpoint,
            registry=self.registry.endpoint,
            code_path=self.code_path,
            # Its flush at the run's end fails the run if the recorder refused its events.
            sink=sink.for_run(name),
            store=self.registry.models(project),
            remote=self.remote,
            ray=self.ray,
            project=project,
            access=self._delegated(project),
            allow_drift=allow_drift,
        )
        ex = RunExecution(run, env, replay, self._on_change, run_span=run_span)
        with self._lock:
            self._active[name] = ex
        ex.start()
        return self.get(name)

    # ----- relaunch

    def relaunch(
        self, run: str, capture: str, pipelines: Sequence[str], allow_drift: bool, request_id: str
    ) -> pb.Run:
        if bool(run) == bool(capture):
            raise errors.InvalidArgument("give exactly one of run or capture", field="source")
        if run:
            ion = parse_name(run, RUN_PATTERN, "run")["ion"]
            project = self._recorded_run_project(run, "run")
            spec, original = self._spec_of_run(run, project)
        else:
            ion = parse_name(capture, "ions/{ion}/captures/{capture}", "capture")["ion"]
            project = self._ion_project(ion, "capture")
            spec, original = self._spec_of_capture(capture, project)
        request_key = f"{ion}:relaunch:{request_id}" if request_id else ""
        if request_key and (existing := self.store.by_request(request_key)):
            return self._fresh(existing)
        if not allow_drift:
            problems = drift.code_problems(spec.code_refs, self.code_path)
            reason = "CODE_UNREACHABLE"
            if not problems:
                problems = drift.dataset_problems(spec.dataset_refs)
                reason = "DATASET_CHANGED"
            if problems:
                raise errors.FailedPrecondition(
                    f"cannot relaunch {original}: {problems[0]}; pass --allow-drift to run anyway",
                    field="allow_drift",
                    reason=reason,
                )
        recorded = self._recorded(ion, project, original)
        new_spec = pb.LaunchSpec()
        new_spec.CopyFrom(spec)
        replay = Replay(
            approvals=recorded["approvals"],
            swaps=recorded["swaps"],
            retrains=recorded["retrains"],
            relaunch=True,
        )
        if pipelines:
            deps = policies.dependencies(spec.definition)
            for p in pipelines:
                node = spec.definition.nodes.get(p)
                if node is None or node.WhichOneof("kind") != "pipeline":
                    raise errors.InvalidArgument(
                        f"--pipeline {p}: the ION has no pipeline node {p!r} (pipelines: "
                        + ", ".join(
                            sorted(
                                n
                                for n, d in spec.definition.nodes.items()
                                if d.WhichOneof("kind") == "pipeline"
                            )
                        )
                        + ")",
                        field="pipelines",
                    )
            chosen = set(pipelines)
            for n in policies.topo_order(deps):
                node = spec.definition.nodes[n]
                if node.WhichOneof("kind") == "policy" and deps[n]:
                    kind = node.policy.type
                    needs_all = kind == registry_pb2.POLICY_TYPE_CANARY
                    hits = [d in chosen for d in deps[n]]
                    if all(hits) if needs_all else any(hits):
                        chosen.add(n)
            replay.execute = chosen
            outputs: dict[str, dict[str, str]] = recorded["outputs"]
            for n in spec.definition.nodes:
                if n in chosen:
                    continue
                for out, version in outputs.get(n, {}).items():
                    new_spec.pinned_models[f"{n}.{out}"] = version
        return self._start(
            ion,
            project,
            new_spec,
            replay,
            request_key=request_key,
            relaunch_of=original,
            source_capture=capture,
            allow_drift=allow_drift,
        )

    def _spec_of_run(self, name: str, project: str) -> tuple[pb.LaunchSpec, str]:
        run = self.store.get(name)
        if run is not None:
            return run.spec, name
        ion = _ion_of(name)
        for e in self.recorder.events(ion, project=project, runs=[name], types=["run.launched"]):
            return _spec_from_event(e), name
        raise errors.NotFound(
            f"run {name} does not exist here, and the recorder holds no run.launched event for it",
            field="run",
        )

    def _spec_of_capture(self, name: str, project: str) -> tuple[pb.LaunchSpec, str]:
        cap = self.recorder.get_capture(name, project)
        ion = "/".join(name.split("/")[:2])
        for e in self.recorder.events(
            ion, project=project, types=["run.launched"], start=cap.start_time, end=cap.end_time
        ):
            if e.type == "run.launched" and "spec" in struct_to_dict(e.lifecycle.details):
                return _spec_from_event(e), e.run
        raise errors.FailedPrecondition(
            f"capture {name} holds no launch spec: there is no run.launched event in its window "
            f"{cap.start_time.ToJsonString()} to {cap.end_time.ToJsonString()}; make a capture "
            "whose window covers the launch",
            field="capture",
            reason="NO_LAUNCH_SPEC",
        )

    def _recorded(self, ion: str, project: str, run: str) -> dict[str, Any]:
        """What the original run recorded: node outputs, approvals, swaps and retrainings."""
        outputs: dict[str, dict[str, str]] = {}
        approvals: dict[tuple[str, int], tuple[bool, str, str]] = {}
        swaps: dict[str, list[tuple[int, int]]] = {}
        retrains: dict[str, list[tuple[int, int]]] = {}
        wanted = [
            "node.finished",
            "node.skipped",
            "human.approval",
            "stream.swap",
            "stream.retrain",
        ]
        for e in self.recorder.events(f"ions/{ion}", project=project, runs=[run], types=wanted):
            if e.type in ("node.finished", "node.skipped"):
                details = struct_to_dict(e.lifecycle.details)
                if int(details.get("round", 0)) == 0:
                    outputs[e.node] = {k: str(v) for k, v in details.get("outputs", {}).items()}
            elif e.type == "human.approval":
                round_ = int(e.component[1:]) if e.component.startswith("@") else 0
                approvals[(e.node, round_)] = (
                    e.human_action.action == "approve",
                    e.human_action.user,
                    e.human_action.comment,
                )
            elif e.type in ("stream.swap", "stream.retrain"):
                d = struct_to_dict(e.custom.data)
                target = swaps if e.type == "stream.swap" else retrains
                target.setdefault(e.node, []).append((int(d["round"]), int(d["batch"])))
        stored = self.store.get(run)
        if stored is not None:
            for n in stored.nodes:
                if n.outputs and n.node not in outputs:
                    outputs[n.node] = dict(n.outputs)
        return {"outputs": outputs, "approvals": approvals, "swaps": swaps, "retrains": retrains}

    # ----- verification

    def verify(self, original: str, relaunch: str, tolerance: float) -> pb.Verification:
        ion_a = parse_name(original, RUN_PATTERN, "original")["ion"]
        ion_b = parse_name(relaunch, RUN_PATTERN, "relaunch")["ion"]
        if tolerance < 0:
            raise errors.InvalidArgument("tolerance must not be negative", field="tolerance")
        tol = tolerance or 1e-9
        project_a = self._recorded_run_project(original, "original")
        project_b = self._recorded_run_project(relaunch, "relaunch")
        a = list(self.recorder.events(f"ions/{ion_a}", project=project_a, runs=[original]))
        b = list(self.recorder.events(f"ions/{ion_b}", project=project_b, runs=[relaunch]))
        for events, name, field in ((a, original, "original"), (b, relaunch, "relaunch")):
            if not events:
                raise errors.NotFound(f"the recorder holds no events of run {name}", field=field)
        launched = next((e for e in a if e.type == "run.launched"), None)
        if launched is not None:
            nodes = sorted(_spec_from_event(launched).definition.nodes)
        else:
            nodes = sorted({e.node for e in a if e.node})
        stored = self.store.get(original)
        outputs = {n.node: dict(n.outputs) for n in stored.nodes} if stored else None
        return compare_runs(original, relaunch, nodes, a, b, tol, outputs)


def _copy(run: pb.Run) -> pb.Run:
    out = pb.Run()
    out.CopyFrom(run)
    return out


def _ion_of(run_name: str) -> str:
    return "/".join(run_name.split("/")[:2])


def _spec_from_event(e: event_pb2.Event) -> pb.LaunchSpec:
    details = json_format.MessageToDict(e.lifecycle.details, preserving_proto_field_name=True)
    spec = pb.LaunchSpec()
    json_format.ParseDict(details.get("spec", {}), spec, ignore_unknown_fields=True)
    return spec


__all__ = ["ExecutorService", "check_id"]
