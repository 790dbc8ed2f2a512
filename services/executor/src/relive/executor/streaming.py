"""The streaming node: it scores batches from a live source for the whole run, while the
nodes that retrain into it run in rounds and their models are swapped in.

On a first launch retraining starts by its schedule and a model is swapped in as soon as it
is ready; on a relaunch both happen at the batch positions the original recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from relive.executor import graph
from relive.executor.components import ComponentRunner
from relive.executor.execution import NodeResult, RunScope, incoming, params_of
from relive.executor.relaunch import RelaunchPlan
from relive.pipeline.task import ComponentFailed
from relive.registry.v1 import registry_pb2

log = logging.getLogger(__name__)

# Runs one node (in a retraining round): the scheduler's, so a chain runs like any node.
ExecuteNode = Callable[[str, Mapping[str, NodeResult], int], NodeResult]
Trigger = Callable[[int, float, int], bool]


def retrain_plan(
    definition: registry_pb2.IonDefinition,
    deps: Mapping[str, set[str]],
    order: list[str],
    stream_node: str,
) -> tuple[list[str], Trigger]:
    """Nodes that retrain into a streaming node, and when the schedule says to start."""
    ups = graph.upstream(deps, stream_node)
    scheduled = [
        n
        for n in ups
        if definition.nodes[n].schedule.every_batches > 0
        or definition.nodes[n].schedule.every_seconds > 0
    ]
    if not scheduled:
        return [], lambda b, t, r: False
    chain = set(scheduled) | (graph.downstream(deps, scheduled) & ups)
    ordered = [n for n in order if n in chain]
    sched = definition.nodes[scheduled[0]].schedule

    def trigger(batch: int, elapsed: float, next_round: int) -> bool:
        if sched.every_batches > 0:
            return batch > 0 and batch % sched.every_batches == 0
        return elapsed >= next_round * sched.every_seconds

    return ordered, trigger


def _by_batch(recorded: list[tuple[int, int]]) -> dict[int, list[int]]:
    """batch position -> rounds, in recorded order (several can land on one batch)."""
    out: dict[int, list[int]] = {}
    for r, b in recorded:
        out.setdefault(b, []).append(r)
    return out


class StreamingNode:
    """One streaming node of one run, from its first batch to its last."""

    def __init__(
        self,
        scope: RunScope,
        components: ComponentRunner,
        plan: RelaunchPlan,
        deps: Mapping[str, set[str]],
        order: list[str],
        execute: ExecuteNode,
        name: str,
        results: Mapping[str, NodeResult],
        models: Mapping[str, str],
    ) -> None:
        self.scope = scope
        self.components = components
        self.execute = execute
        self.name = name
        self.node = scope.definition.nodes[name]
        self.results = results
        self.current = dict(models)  # the models the score component uses now
        self.chain, self.trigger = retrain_plan(scope.definition, deps, order, name)
        self.replaying = plan.relaunch
        self.recorded_swaps = _by_batch(plan.swaps.get(name, []))
        self.recorded_retrains = _by_batch(plan.retrains.get(name, []))
        self.rounds: dict[int, Future[dict[str, NodeResult]]] = {}
        self.next_round = 1
        self.started = time.monotonic()
        self.errors = 0
        self.preds: list[Any] = []
        self.stats: dict[str, float] = {}

    def run(self) -> NodeResult:
        stream, pipeline = self.node.streaming, self.node.pipeline
        score_id = stream.score or next(iter(pipeline.components))
        score = pipeline.components[score_id]
        order = graph.components_order(pipeline, exclude=score_id)
        refs = self.components.submit_all(self.name, pipeline, order, self.current, 0, {})
        # The live source: a component the score runs after, or ctx.live_batch(uri) inside it.
        source = next((a for a in score.after if a in refs), "")
        for c in order:  # surface failures of the source components
            self.components.get(refs[c])
        interval = float(params_of(self.scope.spec, self.name, score_id).get("interval_s", 0) or 0)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-retrain")
        self.started = time.monotonic()  # the schedule's clock starts with the first batch
        try:
            for b in range(max(1, stream.batches)):
                self.scope.check()
                if self.chain:
                    self._start_rounds(b, pool)
                self._swap_ready(b)
                self._score(b, score_id, score, source, refs)
                if interval:
                    time.sleep(interval)
            for r in sorted(self.rounds):  # retraining still running when the source ended
                self.rounds[r].result()
        finally:
            pool.shutdown(wait=True)
        events = self.scope.events
        self.scope.emit(events.stat("stream.batches", stream.batches, node=self.name, component=""))
        self.scope.emit(events.stat("stream.errors", self.errors, node=self.name, component=""))
        preds = np.concatenate(self.preds) if self.preds else None
        return NodeResult(stats=self.stats, predictions=preds)

    def _start_rounds(self, batch: int, pool: ThreadPoolExecutor) -> None:
        """Retraining starts: at recorded positions on a relaunch, by schedule otherwise."""
        if self.replaying:
            starting = self.recorded_retrains.get(batch, [])
        elif self.trigger(batch, time.monotonic() - self.started, self.next_round):
            starting = [self.next_round]
        else:
            starting = []
        for round_ in starting:
            self.scope.emit(
                self.scope.events.custom(
                    "stream.retrain",
                    {"round": round_, "batch": batch},
                    node=self.name,
                    component="",
                )
            )
            self.rounds[round_] = pool.submit(self._retrain, round_)
            self.next_round = round_ + 1

    def _retrain(self, round_: int) -> dict[str, NodeResult]:
        local = dict(self.results)
        events = self.scope.events
        for n in self.chain:
            self.scope.check()
            self.scope.emit(
                events.lifecycle("node.started", "RUNNING", {"round": round_}, node=n, component="")
            )
            local[n] = self.execute(n, local, round_)
            details = {"round": round_, "executed": True, "outputs": local[n].outputs}
            self.scope.emit(
                events.lifecycle("node.finished", "SUCCEEDED", details, node=n, component="")
            )
        return {n: local[n] for n in self.chain}

    def _swap_ready(self, batch: int) -> None:
        """Swaps: at recorded positions on a relaunch, when a model is ready otherwise."""
        if self.replaying:
            ready = self.recorded_swaps.get(batch, [])
        else:
            ready = sorted(r for r, f in self.rounds.items() if f.done())
        for r in ready:
            fut = self.rounds.pop(r)
            while not fut.done():
                self.scope.check()
                time.sleep(0.02)
            new_models, _ = incoming(self.scope.definition, self.name, fut.result())
            if not new_models.get("model") or new_models["model"] == self.current.get("model"):
                continue
            self.current.update(new_models)
            version = self.current["model"]
            _data, digest = self.scope.env.store.load(version)
            events = self.scope.events
            self.scope.emit(
                events.model("swapped", version, digest, batch, node=self.name, component="")
            )
            self.scope.emit(
                events.custom(
                    "stream.swap",
                    {"round": r, "batch": batch, "model_version": version},
                    node=self.name,
                    component="",
                )
            )

    def _score(
        self,
        batch: int,
        score_id: str,
        score: registry_pb2.Component,
        source: str,
        refs: Mapping[str, Any],
    ) -> None:
        task = self.components.task(self.name, score_id, score, self.current, 0, {})
        task.batch_index = batch
        task.batch_size = self.node.streaming.batch_size
        task.source = source
        ref = self.components.submit(task, {source: refs[source]} if source else {})
        try:
            res = self.components.get(ref)
            self.stats.update(res.stats)
            if res.predictions is not None:
                self.preds.append(res.predictions)
        except ComponentFailed as e:  # one bad batch does not stop a live service
            self.errors += 1
            log.info("streaming node %s: batch %d failed: %s", self.name, batch, e)
