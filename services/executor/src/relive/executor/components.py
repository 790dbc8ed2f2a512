"""Pipeline components as Ray tasks: building a task, submitting it, waiting for it, and
collecting a pipeline's outputs, stats and predictions."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from relive.executor import graph
from relive.executor.execution import NodeFailed, NodeResult, RunScope, params_of
from relive.executor.spans import RunTrace
from relive.pipeline.models import model_id
from relive.pipeline.task import ComponentFailed, ComponentResult, ComponentTask
from relive.recorder.v1.event_pb2 import Event
from relive.registry.v1 import registry_pb2

log = logging.getLogger(__name__)


def ray_options(component: registry_pb2.Component) -> dict[str, Any]:
    """The task options a component's ``resources`` ask for; unset ones keep the default of
    one CPU and nothing else."""
    r = component.resources
    options: dict[str, Any] = {"num_cpus": r.num_cpus or 1}
    if r.num_gpus:
        options["num_gpus"] = r.num_gpus
    if r.memory_bytes:
        options["memory"] = r.memory_bytes
    if r.custom:
        options["resources"] = dict(r.custom)
    return options


class ComponentRunner:
    """Runs one run's components on Ray and keeps the tasks in flight, to cancel them."""

    def __init__(self, scope: RunScope, trace: RunTrace, trace_id: str) -> None:
        self.scope = scope
        self.trace = trace
        self.trace_id = trace_id
        self.expected_datasets = {d.uri: d.sha256 for d in scope.spec.dataset_refs}
        self._lock = threading.Lock()
        self._inflight: set[Any] = set()
        self._task_of: dict[Any, ComponentTask] = {}

    def cancel_all(self) -> None:
        with self._lock:
            refs = list(self._inflight)
        for ref in refs:
            try:
                self.scope.env.ray.cancel(ref, force=True)
            except Exception:  # already finished, or Ray refuses: the flag still stops the run
                log.debug("cancel of a Ray task failed", exc_info=True)

    def task(
        self,
        name: str,
        comp_id: str,
        comp: registry_pb2.Component,
        models: Mapping[str, str],
        round_: int,
        outputs: Mapping[str, str],
    ) -> ComponentTask:
        env = self.scope.env
        code = env.code.of(name, comp_id) if env.code is not None else None
        return ComponentTask(
            ion=self.scope.ion,
            run=self.scope.run,
            node=name,
            component=comp_id,
            call=comp.call,
            command=list(code.command if code is not None else comp.command),
            params=params_of(self.scope.spec, name, comp_id),
            root_seed=self.scope.spec.seed,
            round=round_,
            models=dict(models),
            outputs=dict(outputs),
            expected_datasets=self.expected_datasets,
            allow_drift=env.allow_drift,
            recorder=env.recorder,
            registry=env.registry,
            access=env.access,
            snapshot=code.snapshot if code is not None else "",
            links=dict(code.links) if code is not None else {},
            trace_id=self.trace_id,
            span_id=os.urandom(8).hex(),
            hlc=self.scope.events.clock.now(),
            return_events=True,
        )

    def submit(self, task: ComponentTask, upstream: Mapping[str, Any]) -> Any:
        self.trace.open(task.span_id)
        names = sorted(upstream)
        options = ray_options(
            self.scope.definition.nodes[task.node].pipeline.components[task.component]
        )
        if self.scope.env.code is not None:
            options.update(self.scope.env.code.of(task.node, task.component).ray_options())
        ref = self.scope.env.remote.options(name=f"{task.node}.{task.label}", **options).remote(
            task, names, *[upstream[n] for n in names]
        )
        with self._lock:
            self._inflight.add(ref)
            self._task_of[ref] = task
        return ref

    def get(self, ref: Any) -> ComponentResult:
        ray = self.scope.env.ray
        try:
            while True:
                self.scope.check()
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
                self.scope.check()
                raise ComponentFailed(f"a Ray task stopped: {type(e).__name__}") from None
        except ComponentFailed as failed:
            self._close_span(ref, str(failed))
            raise
        finally:
            with self._lock:
                self._inflight.discard(ref)
        self.scope.events.clock.observe(*result.hlc)
        self._close_span(ref)
        self._forward(result.events)
        return result

    def _close_span(self, ref: Any, error: str = "") -> None:
        with self._lock:
            task = self._task_of.pop(ref, None)
        if task is not None:
            parent = self.trace.span_of(task.node, "")
            self.trace.close(
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
            self.scope.emit(Event.FromString(data))

    def submit_all(
        self,
        name: str,
        pipeline: registry_pb2.Pipeline,
        order: list[str],
        models: Mapping[str, str],
        round_: int,
        outputs_by_comp: Mapping[str, Mapping[str, str]],
    ) -> dict[str, Any]:
        """Submits ``order``'s components, each fed the results of those it runs after."""
        refs: dict[str, Any] = {}
        for comp_id in order:
            comp = pipeline.components[comp_id]
            task = self.task(name, comp_id, comp, models, round_, outputs_by_comp.get(comp_id, {}))
            refs[comp_id] = self.submit(
                task, {a: refs[a] for a in graph.ancestors(pipeline, comp_id) if a in refs}
            )
        return refs

    def run_pipeline(
        self,
        name: str,
        pipeline: registry_pb2.Pipeline,
        models: Mapping[str, str],
        round_: int,
    ) -> NodeResult:
        order = graph.components_order(pipeline)
        outputs_by_comp: dict[str, dict[str, str]] = {}
        for out, maker in pipeline.outputs.items():
            outputs_by_comp.setdefault(maker, {})[out] = model_id(self.scope.ion_id, name, out)
        refs = self.submit_all(name, pipeline, order, models, round_, outputs_by_comp)
        return self.collect(name, pipeline, order, refs)

    def collect(
        self,
        name: str,
        pipeline: registry_pb2.Pipeline,
        order: list[str],
        refs: Mapping[str, Any],
    ) -> NodeResult:
        results = {c: self.get(refs[c]) for c in order}
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
