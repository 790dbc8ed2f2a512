"""Runs one run: its nodes in dependency order, each pipeline component as a Ray task, the
policies in between, and a streaming node with model swaps at batch positions.

The runner owns the ``Run`` message while the run is live and reports every change through
``on_change``. It records the run's, the nodes' and the policies' events itself; components
record their own from inside their Ray tasks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from relive.client.channel import Access
from relive.core.identity import DEFAULT_PROJECT
from relive.executor import policies
from relive.executor.v1 import executor_pb2 as pb
from relive.pipeline.events import EventFactory, EventSink, struct_to_dict
from relive.pipeline.models import ABSplit, Ensemble, ModelStore, dumps, loads, model_id
from relive.pipeline.seeds import derive_seed
from relive.pipeline.task import ComponentFailed, ComponentResult, ComponentTask
from relive.recorder.v1.event_pb2 import Event
from relive.registry.v1 import registry_pb2

log = logging.getLogger(__name__)

POLICY_NAMES: dict[int, str] = {
    registry_pb2.POLICY_TYPE_MODEL_TRANSFER: "model_transfer",
    registry_pb2.POLICY_TYPE_APPROVAL: "approval",
    registry_pb2.POLICY_TYPE_CANARY: "canary",
    registry_pb2.POLICY_TYPE_ENSEMBLE: "ensemble",
    registry_pb2.POLICY_TYPE_AB_SPLIT: "ab_split",
}


class RunStopped(Exception):
    """The run was cancelled, or another node failed first."""


class NodeFailed(Exception):
    pass


@dataclass
class Replay:
    """What a relaunch takes from the recorded original instead of people, clocks and luck."""

    # (node, round) -> (approve, user, comment)
    approvals: dict[tuple[str, int], tuple[bool, str, str]] = field(default_factory=dict)
    # stream node -> [(round, batch position of the swap)]
    swaps: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    # stream node -> [(round, batch position where its retraining started)]
    retrains: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    # Nodes to execute; None means all. The others reuse spec.pinned_models.
    execute: set[str] | None = None
    # True for a relaunch: retraining and swaps follow the recording, not the clock.
    relaunch: bool = False


@dataclass
class RunEnv:
    """What the runner needs from outside: where things are and how to record."""

    recorder: str
    registry: str
    code_path: list[str]
    sink: EventSink
    store: ModelStore
    remote: Any  # the Ray remote function that runs a component
    ray: Any  # the ray module
    project: str = DEFAULT_PROJECT  # the run's (its ION's) project
    access: Access | None = None  # what components call the services with
    allow_drift: bool = False


@dataclass
class NodeResult:
    outputs: dict[str, str] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    predictions: Any = None
    executed: bool = True


def now_ts() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def _intify(value: Any) -> Any:
    """Struct numbers are doubles; whole ones go back to int (n_estimators=10, not 10.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _intify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_intify(v) for v in value]
    return value


def params_of(spec: pb.LaunchSpec, node: str, component: str = "") -> dict[str, Any]:
    key = f"{node}.{component}" if component else node
    return _intify(struct_to_dict(spec.params[key])) if key in spec.params else {}


def _ancestors(pipeline: registry_pb2.Pipeline, comp: str) -> list[str]:
    """Every component ``comp`` runs after, directly or not: all of them are its inputs."""
    seen: list[str] = []
    todo = list(pipeline.components[comp].after)
    while todo:
        c = todo.pop()
        if c not in seen and c in pipeline.components:
            seen.append(c)
            todo.extend(pipeline.components[c].after)
    return sorted(seen)


class RunExecution:
    def __init__(
        self,
        run: pb.Run,
        env: RunEnv,
        replay: Replay,
        on_change: Callable[[pb.Run], None],
        run_span: str = "",
    ) -> None:
        self.run = run
        self.env = env
        self.replay = replay
        self._on_change = on_change
        self.spec = run.spec
        self.definition = run.spec.definition
        self.ion = "/".join(run.name.split("/")[:2])
        # The run's trace: a span for the run, one per node, one per component.
        self.run_span = run_span or os.urandom(8).hex()
        self._node_spans: dict[str, str] = {}
        self._span_starts: dict[str, tuple[tuple[int, int], Timestamp]] = {}
        self._task_of: dict[Any, ComponentTask] = {}
        self.factory = EventFactory(
            self.ion, run.name, trace_id=run.trace_id, span_of=self._span_of
        )
        self.deps = policies.dependencies(self.definition)
        self.order = policies.topo_order(self.deps)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._failure: str | None = None
        self._inflight: set[Any] = set()
        self._decisions: dict[tuple[str, int], tuple[bool, str, str]] = {}
        self._waiting: set[tuple[str, int]] = set()
        self._thread: threading.Thread | None = None
        self.expected_datasets = {d.uri: d.sha256 for d in self.spec.dataset_refs}
        self._stream_nodes = {
            n for n, d in self.definition.nodes.items() if d.HasField("streaming")
        }

    # ----- control from the service

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=f"run {self.run.name}", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)

    def cancel(self, reason: str = "cancelled by request") -> None:
        with self._lock:
            if self._failure is None:
                self._failure = reason
            self._stop.set()
            refs = list(self._inflight)
            self._cond.notify_all()
        for ref in refs:
            try:
                self.env.ray.cancel(ref, force=True)
            except Exception:  # already finished, or Ray refuses: the flag still stops the run
                log.debug("cancel of a Ray task failed", exc_info=True)

    def waiting_nodes(self) -> set[str]:
        with self._lock:
            return {n for n, _ in self._waiting}

    def decide(self, node: str, approve: bool, user: str, comment: str) -> bool:
        """Hands a person's decision to a waiting gate; False when the gate is not waiting."""
        with self._lock:
            keys = [k for k in self._waiting if k[0] == node]
            if not keys:
                return False
            self._decisions[keys[0]] = (approve, user, comment)
            self._cond.notify_all()
            return True

    # ----- bookkeeping

    def _emit(self, event: Any) -> None:
        self.env.sink.emit(event)

    # ----- the run's trace

    def _span_of(self, node: str, component: str) -> str:
        """Run-level events belong to the run's span, node events to the node's."""
        with self._lock:
            return self._node_spans.get(node, self.run_span) if node else self.run_span

    def _open_span(self, span_id: str) -> None:
        started = Timestamp()
        started.GetCurrentTime()
        with self._lock:
            self._span_starts[span_id] = (tuple(self.factory.clock.now()), started)  # type: ignore[assignment]

    def _close_span(
        self, name: str, span_id: str, parent: str, error: str = "", **where: str
    ) -> None:
        with self._lock:
            start = self._span_starts.pop(span_id, None)
        if start is not None:
            self._emit(self.factory.span(name, span_id, parent, start, error, **where))

    def _changed(self) -> None:
        self._on_change(self.run)

    def _node(self, name: str) -> pb.NodeRun:
        for n in self.run.nodes:
            if n.node == name:
                return n
        raise KeyError(name)

    def _set_node(
        self,
        name: str,
        state: int,
        error: str = "",
        executed: bool | None = None,
        outputs: Mapping[str, str] | None = None,
    ) -> None:
        with self._lock:
            n = self._node(name)
            n.state = state  # type: ignore[assignment]
            if state == pb.RUN_STATE_RUNNING and not n.HasField("start_time"):
                n.start_time.CopyFrom(now_ts())
                self._node_spans[name] = os.urandom(8).hex()
                self._open_span(self._node_spans[name])
            if state in (pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED):
                n.end_time.CopyFrom(now_ts())
                if name in self._node_spans:
                    self._close_span(
                        f"node {name}", self._node_spans[name], self.run_span, error, node=name
                    )
            if error:
                n.error_message = error
            if executed is not None:
                n.executed = executed
            if outputs:
                n.outputs.update(outputs)
            self._refresh_run_state()
        self._changed()

    def _refresh_run_state(self) -> None:
        if self.run.is_terminal:
            return
        waiting = any(n.state == pb.RUN_STATE_WAITING for n in self.run.nodes)
        self.run.state = pb.RUN_STATE_WAITING if waiting else pb.RUN_STATE_RUNNING

    def _check(self) -> None:
        if self._stop.is_set():
            raise RunStopped(self._failure or "stopped")

    # ----- the run

    def _main(self) -> None:
        self._open_span(self.run_span)
        try:
            with self._lock:
                self.run.state = pb.RUN_STATE_RUNNING
                self.run.start_time.CopyFrom(now_ts())
            self._changed()
            self._emit(
                self.factory.lifecycle(
                    "run.started",
                    "RUNNING",
                    {
                        "relaunch_of": self.run.relaunch_of,
                        "source_capture": self.run.source_capture,
                    },
                )
            )
            self._run_graph()
            self._finish(pb.RUN_STATE_SUCCEEDED, "")
        except RunStopped:
            cancelled = self._failure is not None and self._failure.startswith("cancelled")
            self._finish(
                pb.RUN_STATE_CANCELLED if cancelled else pb.RUN_STATE_FAILED,
                self._failure or "stopped",
            )
        except Exception as exc:  # a bug of ours: fail the run with the reason, never hang
            log.exception("run %s failed", self.run.name)
            self._finish(pb.RUN_STATE_FAILED, self._failure or f"{type(exc).__name__}: {exc}")

    def _finish(self, state: int, error: str) -> None:
        with self._lock:
            for n in self.run.nodes:
                if n.state in (pb.RUN_STATE_PENDING, pb.RUN_STATE_RUNNING, pb.RUN_STATE_WAITING):
                    n.state = (
                        pb.RUN_STATE_CANCELLED
                        if state != pb.RUN_STATE_SUCCEEDED
                        else pb.RUN_STATE_SUCCEEDED
                    )
                    if not n.HasField("end_time"):
                        n.end_time.CopyFrom(now_ts())
        ends: dict[int, str] = {
            pb.RUN_STATE_SUCCEEDED: "run.finished",
            pb.RUN_STATE_FAILED: "run.failed",
            pb.RUN_STATE_CANCELLED: "run.cancelled",
        }
        kind = ends[state]
        for node, span_id in list(self._node_spans.items()):
            self._close_span(f"node {node}", span_id, self.run_span, error, node=node)
        self._close_span(f"run {self.run.name}", self.run_span, "", error)
        if state == pb.RUN_STATE_SUCCEEDED:
            self._emit(self.factory.lifecycle(kind, "SUCCEEDED"))
        else:
            self._emit(
                self.factory.error(
                    kind, "RunFailed" if state == pb.RUN_STATE_FAILED else "RunCancelled", error
                )
            )
        try:
            self.env.sink.flush()
        except Exception as exc:
            log.exception("could not record the end of run %s", self.run.name)
            if state == pb.RUN_STATE_SUCCEEDED:
                state, error = pb.RUN_STATE_FAILED, f"the recorder did not take the events: {exc}"
        with self._lock:
            self.run.state = state  # type: ignore[assignment]
            self.run.is_terminal = True
            self.run.error_message = error
            self.run.end_time.CopyFrom(now_ts())
        self._changed()

    def _run_graph(self) -> None:
        results: dict[str, NodeResult] = {}
        futures: dict[str, Future[NodeResult]] = {}
        pool = ThreadPoolExecutor(max_workers=max(1, len(self.order)), thread_name_prefix="node")
        try:
            for name in self.order:
                futures[name] = pool.submit(self._node_main, name, futures, results)
            for name in self.order:
                with contextlib.suppress(NodeFailed, RunStopped):
                    futures[name].result()
            self._check()
        finally:
            pool.shutdown(wait=True)

    def _fail(self, message: str) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = message
        self.cancel(message)

    def _node_main(
        self, name: str, futures: Mapping[str, Future[NodeResult]], results: dict[str, NodeResult]
    ) -> NodeResult:
        for dep in sorted(self.deps[name]):
            while True:
                self._check()
                try:
                    futures[dep].result(timeout=0.2)
                    break
                except TimeoutError:
                    continue
                except (NodeFailed, RunStopped) as e:
                    raise RunStopped(str(e)) from e
        self._check()
        node = self.definition.nodes[name]
        pinned = {
            k.split(".", 1)[1]: v
            for k, v in self.spec.pinned_models.items()
            if k.split(".", 1)[0] == name
        }
        skip = (self.replay.execute is not None and name not in self.replay.execute) or (
            node.WhichOneof("kind") == "pipeline"
            and pinned
            and set(node.pipeline.outputs) <= set(pinned)
            and self.replay.execute is None
        )
        if skip:
            result = NodeResult(outputs=pinned, executed=False)
            self._emit(
                self.factory.lifecycle(
                    "node.skipped",
                    "SUCCEEDED",
                    {
                        "executed": False,
                        "outputs": pinned,
                        "reason": "reused recorded model versions" if pinned else "not selected",
                    },
                    node=name,
                    component="",
                )
            )
            self._set_node(name, pb.RUN_STATE_SUCCEEDED, executed=False, outputs=pinned)
            results[name] = result
            return result
        self._set_node(name, pb.RUN_STATE_RUNNING, executed=True)
        self._emit(
            self.factory.lifecycle("node.started", "RUNNING", {"round": 0}, node=name, component="")
        )
        try:
            result = self._execute_node(name, results, 0)
        except RunStopped:
            self._set_node(name, pb.RUN_STATE_CANCELLED)
            raise
        except Exception as exc:
            message = (
                str(exc)
                if isinstance(exc, NodeFailed | ComponentFailed)
                else (f"node {name} failed: {type(exc).__name__}: {exc}")
            )
            if not isinstance(exc, NodeFailed | ComponentFailed):
                log.warning("node %s of %s failed\n%s", name, self.run.name, traceback.format_exc())
            self._emit(
                self.factory.error(
                    "node.failed", type(exc).__name__, message, node=name, component=""
                )
            )
            self._set_node(name, pb.RUN_STATE_FAILED, error=message)
            self._fail(message)
            raise NodeFailed(message) from exc
        results[name] = result
        self._emit(
            self.factory.lifecycle(
                "node.finished",
                "SUCCEEDED",
                {"executed": True, "outputs": result.outputs},
                node=name,
                component="",
            )
        )
        self._set_node(name, pb.RUN_STATE_SUCCEEDED, outputs=result.outputs)
        return result

    def _incoming(
        self, name: str, results: Mapping[str, NodeResult]
    ) -> tuple[dict[str, str], dict[str, float]]:
        models: dict[str, str] = {}
        stats: dict[str, float] = {}
        for e in self.definition.edges:
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

    def _execute_node(
        self, name: str, results: Mapping[str, NodeResult], round_: int
    ) -> NodeResult:
        node = self.definition.nodes[name]
        if node.WhichOneof("kind") == "policy":
            return self._policy(name, node.policy, results, round_)
        models, _ = self._incoming(name, results)
        if node.HasField("streaming") and round_ == 0:
            return self._streaming(name, node, results, models)
        return self._pipeline(name, node.pipeline, models, round_)

    # ----- pipelines

    def _task(
        self,
        name: str,
        comp_id: str,
        comp: registry_pb2.Component,
        models: Mapping[str, str],
        round_: int,
        outputs: Mapping[str, str],
    ) -> ComponentTask:
        return ComponentTask(
            ion=self.ion,
            run=self.run.name,
            node=name,
            component=comp_id,
            call=comp.call,
            command=list(comp.command),
            params=params_of(self.spec, name, comp_id),
            root_seed=self.spec.seed,
            round=round_,
            models=dict(models),
            outputs=dict(outputs),
            expected_datasets=self.expected_datasets,
            allow_drift=self.env.allow_drift,
            recorder=self.env.recorder,
            registry=self.env.registry,
            access=self.env.access,
            code_path=self.env.code_path,
            trace_id=self.run.trace_id,
            span_id=os.urandom(8).hex(),
            hlc=self.factory.clock.now(),
            return_events=True,
        )

    def _submit(self, task: ComponentTask, upstream: Mapping[str, Any]) -> Any:
        self._open_span(task.span_id)
        names = sorted(upstream)
        ref = self.env.remote.options(name=f"{task.node}.{task.label}").remote(
            task, names, *[upstream[n] for n in names]
        )
        with self._lock:
            self._inflight.add(ref)
            self._task_of[ref] = task
        return ref

    def _get(self, ref: Any) -> ComponentResult:
        ray = self.env.ray
        try:
            while True:
                self._check()
                ready, _ = ray.wait([ref], timeout=0.2)
                if ready:
                    break
            try:
                result: ComponentResult = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else None
                if isinstance(cause, ComponentFailed):
                    self._forward(cause.events)
                    raise cause from None
                raise ComponentFailed(str(cause or e).strip().splitlines()[-1]) from None
            except (ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError) as e:
                self._check()
                raise ComponentFailed(f"a Ray task stopped: {type(e).__name__}") from None
        except ComponentFailed as failed:
            self._close_component_span(ref, str(failed))
            raise
        finally:
            with self._lock:
                self._inflight.discard(ref)
        self.factory.clock.observe(*result.hlc)
        self._close_component_span(ref)
        self._forward(result.events)
        return result

    def _close_component_span(self, ref: Any, error: str = "") -> None:
        with self._lock:
            task = self._task_of.pop(ref, None)
        if task is not None:
            parent = self._span_of(task.node, "")
            self._close_span(
                f"component {task.node}.{task.label}",
                task.span_id,
                parent,
                error,
                node=task.node,
                component=task.label,
            )

    def _forward(self, events: list[bytes]) -> None:
        """Appends the events a component handed back, in the executor's batches."""
        for data in events:
            self._emit(Event.FromString(data))

    def _components_order(self, pipeline: registry_pb2.Pipeline, exclude: str = "") -> list[str]:
        deps = {
            c: {a for a in comp.after if a != exclude}
            for c, comp in pipeline.components.items()
            if c != exclude
        }
        return policies.topo_order(deps)

    def _pipeline(
        self,
        name: str,
        pipeline: registry_pb2.Pipeline,
        models: Mapping[str, str],
        round_: int,
        exclude: str = "",
    ) -> NodeResult:
        order = self._components_order(pipeline, exclude)
        outputs_by_comp: dict[str, dict[str, str]] = {}
        ion_id = self.ion.split("/")[-1]
        for out, maker in pipeline.outputs.items():
            outputs_by_comp.setdefault(maker, {})[out] = model_id(ion_id, name, out)
        refs: dict[str, Any] = {}
        for comp_id in order:
            comp = pipeline.components[comp_id]
            task = self._task(name, comp_id, comp, models, round_, outputs_by_comp.get(comp_id, {}))
            refs[comp_id] = self._submit(
                task, {a: refs[a] for a in _ancestors(pipeline, comp_id) if a in refs}
            )
        return self._collect(name, pipeline, order, refs)

    def _collect(
        self,
        name: str,
        pipeline: registry_pb2.Pipeline,
        order: list[str],
        refs: Mapping[str, Any],
        extra: Mapping[str, ComponentResult] | None = None,
    ) -> NodeResult:
        results = {c: self._get(refs[c]) for c in order}
        results.update(extra or {})
        out = NodeResult()
        preds = []
        for c in order:
            r = results[c]
            out.stats.update(r.stats)
            if r.predictions is not None:
                preds.append(r.predictions)
        for output, comp in pipeline.outputs.items():
            if comp in results and output in results[comp].outputs:
                out.outputs[output] = results[comp].outputs[output]
            elif comp in results:
                raise NodeFailed(
                    f"node {name}: component {comp} made no model for output "
                    f"{output!r}; return the model or call ctx.log_model"
                )
        out.predictions = np.concatenate(preds) if preds else None
        return out

    # ----- streaming

    def _streaming(
        self,
        name: str,
        node: registry_pb2.Node,
        results: Mapping[str, NodeResult],
        models: dict[str, str],
    ) -> NodeResult:
        stream = node.streaming
        pipeline = node.pipeline
        score_id = stream.score or next(iter(pipeline.components))
        score = pipeline.components[score_id]
        order = self._components_order(pipeline, exclude=score_id)
        refs: dict[str, Any] = {}
        for comp_id in order:
            comp = pipeline.components[comp_id]
            task = self._task(name, comp_id, comp, models, 0, {})
            refs[comp_id] = self._submit(
                task, {a: refs[a] for a in _ancestors(pipeline, comp_id) if a in refs}
            )
        # The live source: a component the score runs after, or ctx.live_batch(uri) inside it.
        source = next((a for a in score.after if a in refs), "")
        for c in order:  # surface failures of the source components
            self._get(refs[c])
        interval = float(params_of(self.spec, name, score_id).get("interval_s", 0) or 0)
        chain, trigger = self._retrain_plan(name)
        # batch position -> rounds, in recorded order (several can land on one batch)
        swaps: dict[int, list[int]] = {}
        for r, b in self.replay.swaps.get(name, []):
            swaps.setdefault(b, []).append(r)
        replay_retrains: dict[int, list[int]] = {}
        for r, b in self.replay.retrains.get(name, []):
            replay_retrains.setdefault(b, []).append(r)
        replaying = self.replay.relaunch
        rounds: dict[int, Future[dict[str, NodeResult]]] = {}
        round_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-retrain")
        current = dict(models)
        errors = 0
        preds: list[Any] = []
        stats: dict[str, float] = {}
        started = time.monotonic()
        next_round = 1
        try:
            for b in range(max(1, stream.batches)):
                self._check()
                # Retraining starts: at recorded positions on a relaunch, by schedule otherwise.
                if chain:
                    if replaying:
                        starting = replay_retrains.get(b, [])
                    elif trigger(b, time.monotonic() - started, next_round):
                        starting = [next_round]
                    else:
                        starting = []
                    for start_round in starting:
                        self._emit(
                            self.factory.custom(
                                "stream.retrain",
                                {"round": start_round, "batch": b},
                                node=name,
                                component="",
                            )
                        )
                        rounds[start_round] = round_pool.submit(
                            self._retrain, chain, name, results, start_round
                        )
                        next_round = start_round + 1
                # Swaps: at recorded positions on a relaunch, when a model is ready otherwise.
                ready: list[int] = []
                if replaying:
                    ready = swaps.get(b, [])
                else:
                    ready = sorted(r for r, f in rounds.items() if f.done())
                for r in ready:
                    fut = rounds.pop(r)
                    while not fut.done():
                        self._check()
                        time.sleep(0.02)
                    new_models = self._round_models(name, fut.result())
                    if new_models.get("model") and new_models["model"] != current.get("model"):
                        current.update(new_models)
                        _data, digest = self.env.store.load(current["model"])
                        self._emit(
                            self.factory.model(
                                "swapped", current["model"], digest, b, node=name, component=""
                            )
                        )
                        self._emit(
                            self.factory.custom(
                                "stream.swap",
                                {"round": r, "batch": b, "model_version": current["model"]},
                                node=name,
                                component="",
                            )
                        )
                task = self._task(name, score_id, score, current, 0, {})
                task.batch_index = b
                task.batch_size = stream.batch_size
                task.source = source
                ref = self._submit(task, {source: refs[source]} if source else {})
                try:
                    res = self._get(ref)
                    stats.update(res.stats)
                    if res.predictions is not None:
                        preds.append(res.predictions)
                except ComponentFailed as e:  # one bad batch does not stop a live service
                    errors += 1
                    log.info("streaming node %s: batch %d failed: %s", name, b, e)
                if interval:
                    time.sleep(interval)
            for r in sorted(rounds):  # retraining still running when the source ended
                rounds[r].result()
        finally:
            round_pool.shutdown(wait=True)
        self._emit(self.factory.stat("stream.batches", stream.batches, node=name, component=""))
        self._emit(self.factory.stat("stream.errors", errors, node=name, component=""))
        return NodeResult(stats=stats, predictions=np.concatenate(preds) if preds else None)

    def _retrain_plan(
        self, stream_node: str
    ) -> tuple[list[str], Callable[[int, float, int], bool]]:
        """Nodes that retrain into a streaming node, and when the schedule says to start."""
        ups = policies.upstream(self.deps, stream_node)
        scheduled = [
            n
            for n in ups
            if self.definition.nodes[n].schedule.every_batches > 0
            or self.definition.nodes[n].schedule.every_seconds > 0
        ]
        if not scheduled:
            return [], lambda b, t, r: False
        chain = set(scheduled) | (policies.downstream(self.deps, scheduled) & ups)
        ordered = [n for n in self.order if n in chain]
        sched = self.definition.nodes[scheduled[0]].schedule

        def trigger(batch: int, elapsed: float, next_round: int) -> bool:
            if sched.every_batches > 0:
                return batch > 0 and batch % sched.every_batches == 0
            return elapsed >= next_round * sched.every_seconds

        return ordered, trigger

    def _retrain(
        self, chain: list[str], stream_node: str, results: Mapping[str, NodeResult], round_: int
    ) -> dict[str, NodeResult]:
        local = dict(results)
        for n in chain:
            self._check()
            self._emit(
                self.factory.lifecycle(
                    "node.started", "RUNNING", {"round": round_}, node=n, component=""
                )
            )
            local[n] = self._execute_node(n, local, round_)
            self._emit(
                self.factory.lifecycle(
                    "node.finished",
                    "SUCCEEDED",
                    {"round": round_, "executed": True, "outputs": local[n].outputs},
                    node=n,
                    component="",
                )
            )
        return {n: local[n] for n in chain}

    def _round_models(
        self, stream_node: str, round_results: Mapping[str, NodeResult]
    ) -> dict[str, str]:
        models, _ = self._incoming(stream_node, round_results)
        return models

    # ----- policies

    def _policy(
        self, name: str, policy: registry_pb2.Policy, results: Mapping[str, NodeResult], round_: int
    ) -> NodeResult:
        kind = POLICY_NAMES.get(policy.type, "")
        params = params_of(self.spec, name)
        models, stats = self._incoming(name, results)
        where = {"node": name, "component": "" if round_ == 0 else f"@{round_}"}
        if kind == "model_transfer":
            version = models.get("model") or next(iter(models.values()), "")
            if not version:
                raise NodeFailed(f"model transfer {name}: no model reaches it")
            _, digest = self.env.store.load(version)
            self._emit(
                self.factory.model(
                    "transferred", version, digest, node=where["node"], component=where["component"]
                )
            )
            return NodeResult(outputs={"model": version}, stats=stats)
        if kind == "approval":
            return self._approval(name, params, models, stats, round_, where)
        if kind == "canary":
            return self._canary(name, params, results, where)
        if kind in ("ensemble", "ab_split"):
            return self._combine(kind, name, params, models, results, round_, where)
        raise NodeFailed(f"node {name}: unknown policy type {policy.type}")

    def _approval(
        self,
        name: str,
        params: Mapping[str, Any],
        models: dict[str, str],
        stats: dict[str, float],
        round_: int,
        where: dict[str, str],
    ) -> NodeResult:
        key = (name, round_)
        decision = self.replay.approvals.get(key)
        rule = str(params.get("auto_if", "") or "")
        if decision is None and rule:
            try:
                ok = policies.evaluate_rule(rule, stats)
            except policies.RuleError as e:
                raise NodeFailed(f"approval gate {name}: {e}") from e
            if ok:
                decision = (True, "auto_if", rule)
            self._emit(
                self.factory.custom(
                    "approval.rule",
                    {"rule": rule, "result": ok},
                    node=where["node"],
                    component=where["component"],
                )
            )
        if decision is None:
            timeout = float(params.get("timeout_s", 600) or 600)
            on_timeout = str(params.get("on_timeout", "") or "")
            decision = self._wait_for_person(name, key, timeout, on_timeout)
        approve, user, comment = decision
        self._emit(
            self.factory.human(
                user,
                "approve" if approve else "reject",
                comment,
                node=where["node"],
                component=where["component"],
            )
        )
        if not approve:
            raise NodeFailed(
                f"approval gate {name}: rejected by {user}" + (f": {comment}" if comment else "")
            )
        version = models.get("model") or next(iter(models.values()), "")
        out = {"model": version} if version else {}
        return NodeResult(outputs=out, stats=stats)

    def _wait_for_person(
        self, name: str, key: tuple[str, int], timeout: float, on_timeout: str = ""
    ) -> tuple[bool, str, str]:
        with self._lock:
            self._waiting.add(key)
            if key[1] == 0:
                self._node(name).state = pb.RUN_STATE_WAITING
            self._refresh_run_state()
        self._changed()
        self._emit(
            self.factory.lifecycle(
                "approval.waiting",
                "WAITING",
                {"timeout_s": timeout, "round": key[1]},
                node=name,
                component="",
            )
        )
        deadline = time.monotonic() + timeout
        try:
            with self._lock:
                while key not in self._decisions:
                    self._check()
                    left = deadline - time.monotonic()
                    if left <= 0 and on_timeout:
                        self._decisions[key] = (
                            on_timeout == "approve",
                            "timeout",
                            f"no decision within {timeout:g} s",
                        )
                        break
                    if left <= 0:
                        raise NodeFailed(
                            f"approval gate {name} timed out after {timeout:g} s "
                            "waiting for a decision (relive run approve RUN NODE)"
                        )
                    self._cond.wait(min(left, 0.5))
                decision = self._decisions.pop(key)
        finally:
            with self._lock:
                self._waiting.discard(key)
                if key[1] == 0 and self._node(name).state == pb.RUN_STATE_WAITING:
                    self._node(name).state = pb.RUN_STATE_RUNNING
                self._refresh_run_state()
            self._changed()
        return decision

    def _canary(
        self,
        name: str,
        params: Mapping[str, Any],
        results: Mapping[str, NodeResult],
        where: dict[str, str],
    ) -> NodeResult:
        primary = policies.canary_primary(self.definition, name)
        control = str(params.get("control") or "")
        if primary not in results or control not in results:
            raise NodeFailed(
                f"canary {name}: needs a scoring node fed by its upstream and a "
                f"control node (found primary={primary!r}, control={control!r})"
            )
        a, b = results[primary].predictions, results[control].predictions
        if a is None or b is None:
            raise NodeFailed(
                f"canary {name}: {primary if a is None else control} recorded no "
                "predictions (call ctx.log_predictions)"
            )
        n = min(len(a), len(b))
        disagreement = float(np.mean(np.asarray(a[:n]) != np.asarray(b[:n]))) if n else 0.0
        threshold = float(params.get("max_disagreement", 0.05))
        enough = n >= int(params.get("min_samples", 1) or 1)
        flagged = enough and disagreement > threshold
        self._emit(
            self.factory.stat(
                "canary.disagreement",
                disagreement,
                labels={"primary": primary, "control": control},
                node=where["node"],
                component=where["component"],
            )
        )
        self._emit(
            self.factory.stat("canary.samples", n, node=where["node"], component=where["component"])
        )
        self._emit(
            self.factory.stat(
                "canary.flagged",
                1.0 if flagged else 0.0,
                node=where["node"],
                component=where["component"],
            )
        )
        if flagged:
            self._emit(
                self.factory.log(
                    f"canary {name}: {primary} and {control} disagree on {disagreement:.1%} of "
                    f"{n} predictions, above the threshold {threshold:.1%}",
                    "WARNING",
                    node=where["node"],
                    component=where["component"],
                )
            )
        stats = {"canary.disagreement": disagreement, "canary.flagged": float(flagged)}
        version = next((v for k, v in self._incoming(name, results)[0].items() if "." not in k), "")
        return NodeResult(outputs={"model": version} if version else {}, stats=stats)

    def _member_models(
        self, nodes: list[str], models: dict[str, str], results: Mapping[str, NodeResult], what: str
    ) -> list[str]:
        out = []
        for n in nodes:
            outputs = results[n].outputs if n in results else {}
            version = outputs.get("model") or (
                next(iter(outputs.values())) if len(outputs) == 1 else ""
            )
            version = version or next((v for k, v in models.items() if k.startswith(f"{n}.")), "")
            if not version:
                raise NodeFailed(f"{what}: node {n} made no model")
            out.append(version)
        return out

    def _combine(
        self,
        kind: str,
        name: str,
        params: Mapping[str, Any],
        models: dict[str, str],
        results: Mapping[str, NodeResult],
        round_: int,
        where: dict[str, str],
    ) -> NodeResult:
        edge_nodes = [e.from_node for e in self.definition.edges if e.to_node == name]
        if kind == "ab_split":
            weights = {str(k): float(v) for k, v in dict(params.get("weights") or {}).items()}
            arms = sorted(weights) if weights else edge_nodes
            if len(arms) < 2:
                raise NodeFailed(f"A/B split {name}: needs at least two arms (got {len(arms)})")
            versions = self._member_models(arms, models, results, f"A/B split {name}")
            seed = (
                int(params["seed"])
                if "seed" in params
                else derive_seed(self.spec.seed, name, "split")
            )
            obj: Any = ABSplit(
                [loads(self.env.store.load(v)[0]) for v in versions],
                [weights.get(a, 1.0) for a in arms],
                seed,
                arms,
            )
            labels = {"policy": "ab_split", "arms": ",".join(arms)}
            for arm in arms:
                self._emit(
                    self.factory.stat(
                        f"ab.share.{arm}",
                        weights.get(arm, 1.0 / len(arms)),
                        node=where["node"],
                        component=where["component"],
                    )
                )
        else:
            members = [str(m) for m in params.get("members") or []] or edge_nodes
            if len(members) < 2:
                raise NodeFailed(
                    f"ensemble {name}: needs at least two members (got {len(members)})"
                )
            versions = self._member_models(members, models, results, f"ensemble {name}")
            obj = Ensemble(
                [loads(self.env.store.load(v)[0]) for v in versions],
                str(params.get("method", "vote")),
                params.get("weights"),
            )
            labels = {"policy": "ensemble", "members": ",".join(members)}
        data = dumps(obj)
        stored = self.env.store.store(
            model_id(self.ion.split("/")[-1], name, "model"),
            data,
            run=self.run.name,
            node=name,
            labels=labels,
            dataset_refs=(),
        )
        self._emit(
            self.factory.model(
                "logged",
                stored.name,
                stored.sha256,
                node=where["node"],
                component=where["component"],
            )
        )
        return NodeResult(outputs={"model": stored.name})
