"""The executor's domain logic: launch, runs, approvals, relaunch and verification.

It knows no gRPC: it takes and returns protobuf messages and raises relive.errors.
Freezing a launch spec is ``launch``'s, the code a run runs is ``code``'s, reading what a
run recorded is ``recorded``'s, planning a relaunch from it is ``relaunch``'s, the runs in
progress are ``live``'s, and running a run is ``runner``'s.
"""

from __future__ import annotations

import getpass
import logging
import os
import random
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from google.protobuf import json_format

from relive import errors
from relive.client.channel import Access
from relive.client.sink import EventSink
from relive.core import identity
from relive.core.names import check_id, decode_token, encode_token, page_size, parse_name
from relive.executor import drift, graph, launch, relaunch
from relive.executor.backends import Recorder, Registry
from relive.executor.code import CodeKeeper
from relive.executor.execution import RunEnv, now_ts
from relive.executor.live import LiveRuns
from relive.executor.recorded import RecordedRuns, ion_of
from relive.executor.relaunch import RelaunchPlan
from relive.executor.runner import RunExecution
from relive.executor.store import RunStore
from relive.executor.v1 import executor_pb2 as pb
from relive.pipeline.events import EventFactory

log = logging.getLogger(__name__)

RUN_PATTERN = "ions/{ion}/runs/{run}"
RESTART_REASON = (
    "the executor restarted while this run was in progress; relaunch it with `relive relaunch RUN`"
)


class ExecutorService:
    def __init__(
        self,
        *,
        store: RunStore,
        registry: Registry,
        recorder: Recorder,
        ray: Any,
        remote: Callable[..., Any],
        code: CodeKeeper,
        access: Access | None = None,
    ) -> None:
        self.store = store
        # The executor's own access (service token, CA); components get the caller's token.
        self.access = access or Access()
        self.registry = registry
        self.recorder = recorder
        self.ray = ray
        self.remote = remote
        self.code = code
        self.live = LiveRuns(store)
        self.recorded = RecordedRuns(recorder, store, code.snapshots_of)
        self._sinks: dict[str, EventSink] = {}
        self._lock = threading.Lock()

    # ----- lifecycle of the service

    def recover(self) -> int:
        """Marks runs that a previous executor left unfinished as FAILED, with the reason."""
        count = 0
        for run, project in self.store.unfinished():
            if self.live.get(run.name) is not None:
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
                sink = self._sink(ion_of(run.name), project)
                sink.emit(
                    EventFactory(ion_of(run.name), run.name, trace_id=run.trace_id).error(
                        "run.failed", "ExecutorRestarted", RESTART_REASON
                    )
                )
                sink.flush()
            except Exception:
                log.warning("could not record that run %s failed", run.name, exc_info=True)
            count += 1
        return count

    def shutdown(self, wait: float = 5.0) -> None:
        active = self.live.all()
        for ex in active:
            ex.cancel("the executor stopped while the run was in progress")
        for ex in active:
            ex.join(wait)
        self.live.close()
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
        ex = self.live.get(name)
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
        ex = self.live.get(name)
        if ex is not None:
            self._visible(ex.env.project, f"run {name}", "name")
            return ex.snapshot()
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
        runs = [self.live.fresh(r) for _, r in rows[:limit]]
        next_token = (
            encode_token({"parent": parent, "before": rows[limit - 1][0]})
            if len(rows) > limit
            else ""
        )
        return runs, next_token

    def cancel(self, name: str) -> pb.Run:
        run = self.get(name)
        if run.is_terminal:
            raise errors.FailedPrecondition(
                f"run {name} already ended ({pb.RunState.Name(run.state)}); there is nothing "
                "to cancel",
                field="name",
            )
        ex = self.live.get(name)
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
            with self.live.changed:
                self.live.changed.wait(0.5)
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
        ex = self.live.get(run_name)
        if ex is None or not ex.decide(node, approve, user or "anonymous", comment):
            state = next((pb.RunState.Name(n.state) for n in run.nodes if n.node == node), "?")
            raise errors.FailedPrecondition(
                f"node {node} of run {run_name} is not waiting for approval (it is {state})",
                field="node",
                reason="NOT_WAITING",
            )
        return self.get(run_name)

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
            return self.live.fresh(existing)
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
            environment=launch.environment(getattr(self.ray, "__version__", "")),
        )
        spec.overrides.update(overrides)
        launch.resolve_params(spec, revision.definition, overrides)
        launch.resolve_datasets(spec)
        # What the components run now, whatever the revision's refs (what the CLI saw) say.
        spec.code_refs.extend(self.code.record(revision.definition, project).refs)
        spec.launch_number = self.store.next_number(f"launch:{ion}")
        launch.pin_scheduled(spec, lambda: self.store.all_of(ion))
        return self._start(ion, project, spec, RelaunchPlan(), request_key=request_key)

    def _start(
        self,
        ion: str,
        project: str,
        spec: pb.LaunchSpec,
        plan: RelaunchPlan,
        *,
        request_key: str = "",
        relaunch_of: str = "",
        source_capture: str = "",
        allow_drift: bool = False,
    ) -> pb.Run:
        graph.topo_order(graph.dependencies(spec.definition))
        # Before the run exists: a snapshot that cannot be had fails the call, not the run.
        code = self.code.prepare(spec.code_refs, spec.definition, project, plan.execute)
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
            # Its flush at the run's end fails the run if the recorder refused its events.
            sink=sink.for_run(name),
            store=self.registry.models(project),
            remote=self.remote,
            ray=self.ray,
            project=project,
            access=self._delegated(project),
            allow_drift=allow_drift,
            code=code,
        )
        ex = RunExecution(run, env, plan, self.live.on_change, run_span=run_span)
        self.live.add(name, ex)
        ex.start()
        return self.get(name)

    # ----- relaunch

    def relaunch(
        self,
        run: str,
        capture: str,
        pipelines: Sequence[str],
        allow_drift: bool,
        request_id: str,
        code: pb.CodeSource.ValueType = pb.CODE_SOURCE_RECORDED,
    ) -> pb.Run:
        if bool(run) == bool(capture):
            raise errors.InvalidArgument("give exactly one of run or capture", field="source")
        if code not in (
            pb.CODE_SOURCE_UNSPECIFIED,
            pb.CODE_SOURCE_RECORDED,
            pb.CODE_SOURCE_CURRENT,
        ):
            raise errors.InvalidArgument(
                f"code must be CODE_SOURCE_RECORDED or CODE_SOURCE_CURRENT, got {int(code)}",
                field="code",
            )
        if run:
            ion = parse_name(run, RUN_PATTERN, "run")["ion"]
            project = self._recorded_run_project(run, "run")
            spec, original = self.recorded.spec_of_run(run, project)
        else:
            ion = parse_name(capture, "ions/{ion}/captures/{capture}", "capture")["ion"]
            project = self._ion_project(ion, "capture")
            spec, original = self.recorded.spec_of_capture(capture, project)
        request_key = f"{ion}:relaunch:{request_id}" if request_id else ""
        if request_key and (existing := self.store.by_request(request_key)):
            return self.live.fresh(existing)
        if not allow_drift:
            self._refuse_drift(spec, original)
        recorded = self.recorded.for_relaunch(f"ions/{ion}", project, original)
        plan, new_spec = relaunch.plan(spec, recorded, pipelines)
        # The relaunch's own environment, compared with the original's at verification.
        new_spec.environment.CopyFrom(launch.environment(getattr(self.ray, "__version__", "")))
        if code == pb.CODE_SOURCE_CURRENT:
            del new_spec.code_refs[:]
            new_spec.code_refs.extend(self.code.record(new_spec.definition, project).refs)
        return self._start(
            ion,
            project,
            new_spec,
            plan,
            request_key=request_key,
            relaunch_of=original,
            source_capture=capture,
            allow_drift=allow_drift,
        )

    def _refuse_drift(self, spec: pb.LaunchSpec, original: str) -> None:
        """FailedPrecondition when a recorded dataset changed (code needs no such check: the
        relaunch runs the recorded snapshots)."""
        problems = drift.dataset_problems(spec.dataset_refs)
        if problems:
            raise errors.FailedPrecondition(
                f"cannot relaunch {original}: {problems[0]}; pass --allow-drift to run anyway",
                field="allow_drift",
                reason="DATASET_CHANGED",
            )

    # ----- verification

    def verify(self, original: str, relaunch: str, tolerance: float) -> pb.Verification:
        parse_name(original, RUN_PATTERN, "original")
        parse_name(relaunch, RUN_PATTERN, "relaunch")
        if tolerance < 0:
            raise errors.InvalidArgument("tolerance must not be negative", field="tolerance")
        project_a = self._recorded_run_project(original, "original")
        project_b = self._recorded_run_project(relaunch, "relaunch")
        return self.recorded.verify((original, project_a), (relaunch, project_b), tolerance or 1e-9)


__all__ = ["ExecutorService", "check_id"]
