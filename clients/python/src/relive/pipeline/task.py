"""Runs one component: the body of the executor's Ray task, usable without Ray too.

It records the component's lifecycle, its system stats (wall time, CPU time, peak memory),
and logs a pipeline output as a model version when the component returns one.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from relive.client import sink as recorder_sink
from relive.events import default_producer_id
from relive.pipeline.context import RunContext
from relive.pipeline.events import EventFactory, EventSink, ListSink
from relive.pipeline.models import MemoryModelStore, ModelStore, RegistryModelStore
from relive.pipeline.seeds import derive_seed

if TYPE_CHECKING:
    from relive.client.channel import Access

SYSTEM = {"system": "true"}


class ComponentFailed(RuntimeError):
    """A component raised; the message names the node, the component and the cause."""

    def __init__(
        self, message: str, error_type: str = "", events: list[bytes] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.events = list(events or [])

    def __reduce__(self) -> Any:
        return (ComponentFailed, (self.message, self.error_type, self.events))


@dataclass
class ComponentTask:
    ion: str  # "ions/{ion}"
    run: str
    node: str
    component: str
    call: str = ""
    command: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    root_seed: int = 0
    round: int = 0
    models: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> model id
    expected_datasets: dict[str, str] = field(default_factory=dict)
    allow_drift: bool = False
    recorder: str = ""
    registry: str = ""
    # As whom the component calls them: the launching user's token, never the executor's.
    access: Access | None = None
    # The code snapshot ("codeSnapshots/{sha256}") the component runs from: Ray's working_dir
    # of the task, its working directory. Empty when its code is not under a code root (an
    # installed package, a system command): then it is the environment's.
    snapshot: str = ""
    # A command's installed dependencies beside its code (node_modules): their path in the
    # snapshot -> where they are installed on the worker's machine, linked in before it runs.
    links: dict[str, str] = field(default_factory=dict)
    trace_id: str = ""
    # The component's span in the run's trace (the explicit carrier across the Ray hop).
    span_id: str = ""
    hlc: tuple[int, int] = (0, 0)
    # Streaming: the batch to score, drawn from the source component's data.
    batch_index: int | None = None
    batch_size: int = 0
    source: str = ""
    # True: hand the events back with the result, for the executor to append in its batches
    # (keeps a recorder round trip off the path between dependent components).
    return_events: bool = False

    @property
    def label(self) -> str:
        """The component as events name it; rounds after the first carry their number."""
        return self.component if self.round == 0 else f"{self.component}@{self.round}"

    @property
    def seed(self) -> int:
        return derive_seed(self.root_seed, self.node, self.component, self.round)


@dataclass
class ComponentResult:
    value: Any
    stats: dict[str, float]
    outputs: dict[str, str]
    sha256: dict[str, str]
    predictions: Any
    hlc: tuple[int, int]
    wall_s: float
    events: list[bytes] = field(default_factory=list)


def _resolve(call: str, snapshot: str = "") -> Any:
    """The function ``call`` names. From a snapshot, its module must come from the working
    directory (the snapshot): it goes first on the import path, and a module found anywhere
    else (the live code on some path entry) is refused rather than run."""
    module_name, _, attr = call.partition(":")
    if not attr:
        raise ValueError(f"component call {call!r} must look like 'package.module:function'")
    here = os.getcwd()
    if snapshot and sys.path[:1] != [here]:
        sys.path.insert(0, here)
    module = importlib.import_module(module_name)
    origin = getattr(module, "__file__", None)
    if (
        snapshot
        and origin
        and not os.path.realpath(origin).startswith(os.path.realpath(here) + os.sep)
    ):
        raise ImportError(
            f"module {module_name} was imported from {origin}, not from the run's code "
            f"snapshot {snapshot} in {here}"
        )
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part)
    return fn


def _call(fn: Any, ctx: RunContext) -> Any:
    """Calls ``fn(ctx)``, or ``fn(ctx, **params)`` when it takes keyword parameters."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn(ctx)
    ps = list(sig.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps):
        return fn(ctx, **ctx.params)
    named = {
        p.name
        for p in ps[1:]
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    return fn(ctx, **{k: v for k, v in ctx.params.items() if k in named})


def stream_batch(pool: Any, root_seed: int, index: int, size: int) -> tuple[Any, Any]:
    """Batch ``index`` of the seeded live source: rows drawn from the source's data."""
    X, y = (pool[0], pool[1]) if isinstance(pool, tuple) else (pool, None)
    X = np.asarray(X)
    rng = np.random.default_rng(derive_seed(root_seed, "stream", index))
    idx = rng.choice(len(X), size=min(size or len(X), len(X)), replace=False)
    return X[idx], (None if y is None else np.asarray(y)[idx])


def execute(
    task: ComponentTask,
    upstream: dict[str, Any],
    sink: EventSink | None = None,
    store: ModelStore | None = None,
) -> ComponentResult:
    """Runs the component and records what it did; raises ComponentFailed on error."""
    own_sink = sink is None
    returned: ListSink | None = None
    if sink is None:
        sink, returned = _open_sink(task)
    if store is None:
        store = (
            RegistryModelStore(task.registry, access=task.access)
            if task.registry
            else MemoryModelStore()
        )
    factory = EventFactory(
        task.ion, task.run, task.node, task.label, task.trace_id, span_id=task.span_id
    )
    factory.clock.observe(*task.hlc)
    ctx = _context(task, upstream, sink, store, factory)
    details: dict[str, Any] = {"round": task.round}
    if task.batch_index is not None:
        details["batch"] = task.batch_index
    sink.emit(factory.lifecycle("component.started", "RUNNING", details))
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        value = _run_body(task, ctx, factory, sink)
    except BaseException as exc:
        sink.emit(factory.stat("sys.wall_s", time.perf_counter() - t0, 0, SYSTEM))
        message = f"{type(exc).__name__}: {exc}"
        sink.emit(
            factory.error("component.failed", type(exc).__name__, message, traceback.format_exc())
        )
        _finish(sink, own_sink)
        raise ComponentFailed(
            f"component {task.node}.{task.label} failed: {message}",
            type(exc).__name__,
            _serialized(returned),
        ) from None
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    for name, v in (("sys.wall_s", wall), ("sys.cpu_s", cpu), ("sys.peak_rss_mb", peak_mb)):
        sink.emit(factory.stat(name, v, 0, SYSTEM))
    outputs = {k: v[0] for k, v in ctx.logged.items()}
    sink.emit(
        factory.lifecycle(
            "component.finished", "SUCCEEDED", {**details, "outputs": outputs, "wall_s": wall}
        )
    )
    _finish(sink, own_sink)
    preds = np.concatenate(ctx.predictions) if ctx.predictions else None
    return ComponentResult(
        value=value,
        stats=dict(ctx.stats),
        outputs=outputs,
        sha256={k: v[1] for k, v in ctx.logged.items()},
        predictions=preds,
        hlc=factory.clock.now(),
        wall_s=wall,
        events=_serialized(returned),
    )


def _open_sink(task: ComponentTask) -> tuple[EventSink, ListSink | None]:
    """Where the component's events go: back to the executor (a list it forwards), or
    straight to the recorder. A producer of its own for each attempt: a retried task's
    events are new events."""
    producer = default_producer_id(f"{task.node}.{task.label}")
    if task.return_events or not task.recorder:
        returned = ListSink(producer)
        return returned, returned
    sink = recorder_sink.EventSink(
        task.recorder, task.ion, producer_id=producer, access=task.access
    )
    return sink, None


def _context(
    task: ComponentTask,
    upstream: dict[str, Any],
    sink: EventSink,
    store: ModelStore,
    factory: EventFactory,
) -> RunContext:
    """The component's run context; a streaming node's score gets its batch, recorded."""
    batch = labels = None
    if task.batch_index is not None and task.source:
        batch, labels = stream_batch(
            upstream.get(task.source), task.root_seed, task.batch_index, task.batch_size
        )
        sink.emit(
            factory.custom(
                "stream.batch",
                {
                    "batch": task.batch_index,
                    "rows": len(batch),
                    "sha256": hashlib.sha256(np.ascontiguousarray(batch).tobytes()).hexdigest(),
                    "model_version": task.models.get("model", ""),
                },
            )
        )
    return RunContext(
        ion=task.ion,
        run=task.run,
        node=task.node,
        component=task.component,
        params=task.params,
        inputs=upstream,
        models=task.models,
        seed=task.seed,
        sink=sink,
        store=store,
        factory=factory,
        round=task.round,
        outputs=task.outputs,
        expected_datasets=task.expected_datasets,
        allow_drift=task.allow_drift,
        batch=batch,
        batch_labels=labels,
        batch_index=task.batch_index,
        root_seed=task.root_seed,
        batch_size=task.batch_size,
    )


def _run_body(task: ComponentTask, ctx: RunContext, factory: EventFactory, sink: EventSink) -> Any:
    """Calls the component (or runs its command); a returned model or predictions are
    logged when the component did not log them itself."""
    if task.command:
        value = _run_command(task, ctx, factory, sink)
    else:
        value = _call(_resolve(task.call, task.snapshot), ctx)
    if task.batch_index is not None and value is not None and not ctx.predictions:
        ctx.log_predictions(value)
    for output in task.outputs:
        if output not in ctx.logged and value is not None and not task.command:
            ctx.log_model(value, output)
    return value


def _serialized(sink: ListSink | None) -> list[bytes]:
    return [e.SerializeToString() for e in sink.events] if sink is not None else []


def _finish(sink: EventSink, own: bool) -> None:
    if own and isinstance(sink, recorder_sink.EventSink):
        sink.close()
    else:
        sink.flush()


def _link_dependencies(links: dict[str, str]) -> None:
    """Links installed dependencies into the working directory (the snapshot), where the
    command's runtime looks for them; ones not installed on this machine are left out."""
    for rel, target in links.items():
        here = os.path.join(os.getcwd(), rel)
        if os.path.lexists(here) or not os.path.isdir(target):
            continue
        os.makedirs(os.path.dirname(here), exist_ok=True)
        # Another worker of the same snapshot may have linked it first.
        with contextlib.suppress(FileExistsError):
            os.symlink(target, here, target_is_directory=True)


def _run_command(
    task: ComponentTask, ctx: RunContext, factory: EventFactory, sink: EventSink
) -> Any:
    """Runs a command component in any language. It gets RELIVE_* variables and TRACEPARENT;
    stdout lines that are JSON objects with "stat" and "value" are recorded as stats."""
    span = task.span_id or os.urandom(8).hex()
    env = dict(os.environ)
    env.update(
        {
            "RELIVE_ION": task.ion.split("/")[-1],
            "RELIVE_ION_NAME": task.ion,
            "RELIVE_RUN": task.run,
            "RELIVE_NODE": task.node,
            "RELIVE_COMPONENT": task.label,
            "RELIVE_SEED": str(task.seed % (2**32 - 1)),
            "RELIVE_ROUND": str(task.round),
            "RELIVE_PARAMS": json.dumps(task.params, sort_keys=True),
            "RELIVE_MODELS": json.dumps(task.models, sort_keys=True),
            "RELIVE_RECORDER_ENDPOINT": task.recorder,
            "RELIVE_REGISTRY_ENDPOINT": task.registry,
            "RELIVE_HLC": f"{task.hlc[0]}.{task.hlc[1]}",
            "TRACEPARENT": f"00-{task.trace_id or os.urandom(16).hex()}-{span}-01",
        }
    )
    if task.access is not None:
        env.update(task.access.environ())
    if task.snapshot:
        _link_dependencies(task.links)
    proc = subprocess.run(
        task.command,
        env=env,
        capture_output=True,
        text=True,
        check=False,  # in the worker's working directory: the snapshot, when there is one
    )
    lines = []
    for line in proc.stdout.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and "stat" in obj and "value" in obj:
            ctx.log_stat(str(obj["stat"]), float(obj["value"]), int(obj.get("step", 0)))
        else:
            lines.append(line)
    if lines:
        sink.emit(factory.log("\n".join(lines[-200:])))
    if proc.returncode != 0:
        raise RuntimeError(
            f"command {task.command[0]!r} exited with code {proc.returncode}: "
            f"{proc.stderr.strip()[-2000:]}"
        )
    return proc.stdout
