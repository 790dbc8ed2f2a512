"""Runs one run: its nodes in dependency order, each in its own thread, from start to end.

``RunExecution`` is the graph scheduler: it owns the ``Run`` message while the run is live,
reports every change through ``on_change``, and records the run's and the nodes' lifecycle
events. The parts it drives: ``components`` (pipeline components as Ray tasks), ``streaming``
(the streaming node and its retraining rounds), ``policy_context`` (the policy kinds of
``relive.policies``) and ``spans`` (the run's trace). Components record their own events
from inside their Ray tasks.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NoReturn

from relive.executor import graph
from relive.executor.components import ComponentRunner
from relive.executor.execution import (
    NodeFailed,
    NodeResult,
    RunEnv,
    RunScope,
    RunStopped,
    incoming,
    now_ts,
)
from relive.executor.policy_context import NodePolicyContext, PersonGate, run_policy
from relive.executor.relaunch import RelaunchPlan
from relive.executor.spans import RunTrace
from relive.executor.streaming import StreamingNode
from relive.executor.v1 import executor_pb2 as pb
from relive.pipeline.task import ComponentFailed
from relive.recorder.v1.event_pb2 import Event

log = logging.getLogger(__name__)

_ENDS: dict[int, str] = {
    pb.RUN_STATE_SUCCEEDED: "run.finished",
    pb.RUN_STATE_FAILED: "run.failed",
    pb.RUN_STATE_CANCELLED: "run.cancelled",
}
_OPEN = (pb.RUN_STATE_PENDING, pb.RUN_STATE_RUNNING, pb.RUN_STATE_WAITING)
_DONE = (pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED)


class RunExecution:
    def __init__(
        self,
        run: pb.Run,
        env: RunEnv,
        plan: RelaunchPlan,
        on_change: Callable[[pb.Run], None],
        run_span: str = "",
    ) -> None:
        self.run = run
        self.env = env
        self.plan = plan
        self._on_change = on_change
        self.spec = run.spec
        self.definition = run.spec.definition
        self.ion = "/".join(run.name.split("/")[:2])
        self.trace = RunTrace(self.ion, run.name, run.trace_id, run_span, env.sink.emit)
        self.factory = self.trace.factory
        self.scope = RunScope(run.name, self.ion, self.spec, env, self.factory, self._check)
        self.components = ComponentRunner(self.scope, self.trace, run.trace_id)
        self.gate = PersonGate(self._check, self._waiting_changed)
        self.deps = graph.dependencies(self.definition)
        self.order = graph.topo_order(self.deps)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._failure: str | None = None
        self._thread: threading.Thread | None = None

    # ----- control from the service

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=f"run {self.run.name}", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)

    def snapshot(self) -> pb.Run:
        """A copy of the run as it is now."""
        out = pb.Run()
        with self._lock:
            out.CopyFrom(self.run)
        return out

    def cancel(self, reason: str = "cancelled by request") -> None:
        with self._lock:
            if self._failure is None:
                self._failure = reason
            self._stop.set()
        self.gate.wake()
        self.components.cancel_all()

    def decide(self, node: str, approve: bool, user: str, comment: str) -> bool:
        """Hands a person's decision to a waiting gate; False when the gate is not waiting."""
        return self.gate.decide(node, approve, user, comment)

    # ----- bookkeeping

    def _emit(self, event: Event) -> None:
        self.env.sink.emit(event)

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
                self.trace.open_node(name)
            if state in _DONE:
                n.end_time.CopyFrom(now_ts())
                self.trace.close_node(name, error)
            if error:
                n.error_message = error
            if executed is not None:
                n.executed = executed
            if outputs:
                n.outputs.update(outputs)
            self._refresh_run_state()
        self._changed()

    def _waiting_changed(self, name: str, round_: int, waiting: bool) -> None:
        """A gate of round 0 shows as a WAITING node (and run) while a person decides."""
        with self._lock:
            if round_ == 0:
                node = self._node(name)
                if waiting:
                    node.state = pb.RUN_STATE_WAITING
                elif node.state == pb.RUN_STATE_WAITING:
                    node.state = pb.RUN_STATE_RUNNING
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
        self.trace.open(self.trace.run_span)
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
                if n.state in _OPEN:
                    n.state = (
                        pb.RUN_STATE_CANCELLED
                        if state != pb.RUN_STATE_SUCCEEDED
                        else pb.RUN_STATE_SUCCEEDED
                    )
                    if not n.HasField("end_time"):
                        n.end_time.CopyFrom(now_ts())
        self.trace.close_all(error)
        if state == pb.RUN_STATE_SUCCEEDED:
            self._emit(self.factory.lifecycle(_ENDS[state], "SUCCEEDED"))
        else:
            error_type = "RunFailed" if state == pb.RUN_STATE_FAILED else "RunCancelled"
            self._emit(self.factory.error(_ENDS[state], error_type, error))
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

    def _await_deps(self, name: str, futures: Mapping[str, Future[NodeResult]]) -> None:
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

    def _reused(self, name: str) -> dict[str, str] | None:
        """The recorded model versions a node reuses instead of running, or None when it runs:
        a relaunch of chosen pipelines skips the others, and a pipeline whose every output is
        pinned (a schedule skipped this launch) reuses them."""
        node = self.definition.nodes[name]
        pinned = {
            k.split(".", 1)[1]: v
            for k, v in self.spec.pinned_models.items()
            if k.split(".", 1)[0] == name
        }
        execute = self.plan.execute
        skip = (execute is not None and name not in execute) or (
            node.WhichOneof("kind") == "pipeline"
            and pinned
            and set(node.pipeline.outputs) <= set(pinned)
            and execute is None
        )
        return pinned if skip else None

    def _node_main(
        self, name: str, futures: Mapping[str, Future[NodeResult]], results: dict[str, NodeResult]
    ) -> NodeResult:
        self._await_deps(name, futures)
        pinned = self._reused(name)
        if pinned is not None:
            details = {
                "executed": False,
                "outputs": pinned,
                "reason": "reused recorded model versions" if pinned else "not selected",
            }
            self._emit(
                self.factory.lifecycle(
                    "node.skipped", "SUCCEEDED", details, node=name, component=""
                )
            )
            self._set_node(name, pb.RUN_STATE_SUCCEEDED, executed=False, outputs=pinned)
            results[name] = NodeResult(outputs=pinned, executed=False)
            return results[name]
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
            self._node_failed(name, exc)
        results[name] = result
        details = {"executed": True, "outputs": result.outputs}
        self._emit(
            self.factory.lifecycle("node.finished", "SUCCEEDED", details, node=name, component="")
        )
        self._set_node(name, pb.RUN_STATE_SUCCEEDED, outputs=result.outputs)
        return result

    def _node_failed(self, name: str, exc: Exception) -> NoReturn:
        """Records a node's failure, stops the run, and raises NodeFailed with the reason."""
        expected = isinstance(exc, NodeFailed | ComponentFailed)
        message = str(exc) if expected else f"node {name} failed: {type(exc).__name__}: {exc}"
        if not expected:
            log.warning("node %s of %s failed\n%s", name, self.run.name, traceback.format_exc())
        self._emit(
            self.factory.error("node.failed", type(exc).__name__, message, node=name, component="")
        )
        self._set_node(name, pb.RUN_STATE_FAILED, error=message)
        self._fail(message)
        raise NodeFailed(message) from exc

    def _execute_node(
        self, name: str, results: Mapping[str, NodeResult], round_: int
    ) -> NodeResult:
        node = self.definition.nodes[name]
        if node.WhichOneof("kind") == "policy":
            ctx = NodePolicyContext(self.scope, self.gate, self.plan, results, name, round_)
            return run_policy(ctx, node.policy)
        models, _ = incoming(self.definition, name, results)
        if node.HasField("streaming") and round_ == 0:
            stream = StreamingNode(
                self.scope,
                self.components,
                self.plan,
                self.deps,
                self.order,
                self._execute_node,
                name,
                results,
                models,
            )
            return stream.run()
        return self.components.run_pipeline(name, node.pipeline, models, round_)
